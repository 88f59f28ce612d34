"""
The owner of the tables C{payments}, C{order_numbers} and C{orders}: every row of them is
written here, inside the caller's transaction, whether the order comes from the order API
(L{lnt.storage.ledger}) or from a merchant's top-up (L{lnt.storage.consignments}). Order
numbers are allocated in one place: the China-time date and a 12-digit sequence that no two
daemons sharing a database can draw twice.
"""

from __future__ import annotations

from datetime import datetime

from lnt.domain.records import CHINA, CardKind, Order, OrderState, Payment
from lnt.storage.database import Cursor
from lnt.storage.journal import ACCOUNT_AWAITING_LOAD, post

ORDER_COLUMNS = ("order_no, platform_no, biz_serial_no, pki_no, card_kind, logical_no,"
                 " physical_no, amount, state, created_ms, updated_ms")


def insert_payment(cur: Cursor, payment: Payment, payer_account: str, fingerprint: str) -> None:
    """Record a payment and post it (the payer -> orders awaiting load), once."""
    cur.execute("INSERT INTO payments (platform_no, biz_serial_no, money, user_id, pki_no,"
                " fingerprint, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (payment.platform_no, payment.biz_serial_no, payment.money, payment.user_id,
                 payment.pki_no, fingerprint, payment.created_ms))
    post(cur, "payment", f"{payment.platform_no}:{payment.biz_serial_no}", payment.created_ms,
         [(payer_account, payment.money), (ACCOUNT_AWAITING_LOAD, -payment.money)])


def allocate_order_no(cur: Cursor, now_ms: int) -> str:
    """A new 20-digit order number: YYYYMMDD (China time) and a 12-digit sequence."""
    row = cur.execute("INSERT INTO order_numbers (created_ms) VALUES (?) RETURNING seq",
                      (now_ms,)).fetchone()
    assert row is not None
    day = datetime.fromtimestamp(now_ms / 1000, CHINA).strftime("%Y%m%d")
    return f"{day}{int(row[0]):012d}"


def insert_order(cur: Cursor, platform_no: int, biz_serial_no: str, pki_no: int,
                 kind: CardKind, logical_no: str, physical_no: str, amount: int,
                 now_ms: int) -> Order:
    """A new order, waiting for a load, for a payment recorded in the same transaction."""
    order = Order(allocate_order_no(cur, now_ms), platform_no, biz_serial_no, pki_no, kind,
                  logical_no, physical_no, amount, OrderState.CREATED, now_ms, now_ms)
    cur.execute(f"INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order.order_no, platform_no, biz_serial_no, pki_no, kind.value, logical_no,
                 physical_no, amount, order.state.value, now_ms, now_ms))
    return order
