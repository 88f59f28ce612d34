"""
L{IConsignments} over SQL: merchants, consignment orders, merchant top-ups (/v2_queryBuy) and
the notification outbox. Secrets at rest (merchant keys, the card number and password of an
order still being processed) are sealed with the platform's storage key; a processed order's
card data is erased.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.crypto.consignsign import make_sign
from lnt.crypto.sealing import Sealer
from lnt.domain.eligibility import card_refusal
from lnt.domain.records import (
    CHINA,
    AlreadyExists,
    BatchFull,
    CardKind,
    CardRefused,
    Conflict,
    Consignment,
    ConsignmentState,
    InsufficientBalance,
    Merchant,
    NotFound,
    Notification,
    NotificationState,
    Order,
    OrderState,
    Payment,
)
from lnt.interfaces import IConsignments
from lnt.storage.database import Cursor, Transactor, by_name
from lnt.storage.decisions import decided
from lnt.storage.journal import (
    ACCOUNT_CONSIGNMENT_FEES,
    ACCOUNT_VOUCHERS_OUTSTANDING,
    account_merchant,
    post,
)
from lnt.storage.orders import ORDER_COLUMNS, insert_order, insert_payment
from lnt.storage.registry import issued_card

BATCH_LIMIT = 2000


def _filters(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions whose value is given (C{("column", v)} means equal,
    C{("column >=", v)} compares), and its parameters."""
    parts, params = [], []
    for condition, value in conditions:
        if value is None:
            continue
        parts.append(condition + " ?" if " " in condition else condition + " = ?")
        params.append(value)
    return (" WHERE " + " AND ".join(parts) if parts else ""), params
#: the pseudo platform of merchants' top-ups
TOPUP_PLATFORM = 0
_CONSIGNMENT = ("system_order_id, customer_id, order_id, batchno, product_code, amount,"
                " notify_url, custom, card_masked, state, message, success_amount, actual_amount,"
                " success_ms, created_ms")


def _consignment(row: Sequence[Any]) -> Consignment:
    r = by_name(_CONSIGNMENT, row)

    def optional(name: str) -> int | None:
        return None if r[name] is None else int(r[name])

    return Consignment(
        system_order_id=str(r["system_order_id"]), customer_id=str(r["customer_id"]),
        order_id=str(r["order_id"]), batchno=str(r["batchno"]),
        product_code=str(r["product_code"]), amount=int(r["amount"]),
        notify_url=str(r["notify_url"]), custom=str(r["custom"]),
        card_masked=str(r["card_masked"]), state=ConsignmentState(r["state"]),
        message=str(r["message"]), success_amount=optional("success_amount"),
        actual_amount=optional("actual_amount"), success_ms=optional("success_ms"),
        created_ms=int(r["created_ms"]))


_TOPUP_ORDER = (f"SELECT {ORDER_COLUMNS} FROM orders WHERE platform_no = ? AND"
                " biz_serial_no = ?")


def _topup_order(row: Sequence[Any], biz: str) -> Order:
    r = by_name(ORDER_COLUMNS, row)
    return Order(order_no=str(r["order_no"]), platform_no=TOPUP_PLATFORM, biz_serial_no=biz,
                 pki_no=0, card_kind=CardKind(r["card_kind"]), logical_no=str(r["logical_no"]),
                 physical_no=str(r["physical_no"]), amount=int(r["amount"]),
                 state=OrderState(r["state"]), created_ms=int(r["created_ms"]),
                 updated_ms=int(r["updated_ms"]))


def notification_fields(c: Consignment) -> dict[str, str]:
    """The fields posted to notify_url (the document's table; amounts in fen)."""
    return {
        "customerId": c.customer_id,
        "systemOrderId": c.system_order_id,
        "orderId": c.order_id,
        "status": "2" if c.state is ConsignmentState.SUCCESS else "3",
        "message": c.message,
        "money": str(c.amount),
        "successAmount": "" if c.success_amount is None else str(c.success_amount),
        "actualAmount": "" if c.actual_amount is None else str(c.actual_amount),
        "successTime": "" if c.success_ms is None else str(c.success_ms // 1000),
        "custom": c.custom,
    }


def notify_topup(cur: Cursor, sealer: Sealer, order_no: str, loaded: bool, amount: int,
                 now_ms: int) -> None:
    """
    In the transaction that settles or reverses a load: if the order is a merchant's top-up
    with a notify_url, put its notification in the outbox.
    """
    row = cur.execute("SELECT t.customer_id, t.order_id, t.notify_url, t.custom, m.md5_key FROM"
                      " topups t JOIN merchants m ON m.customer_id = t.customer_id WHERE"
                      " t.order_no = ?", (order_no,)).fetchone()
    if row is None or not row[2]:
        return
    customer, order_id, url, custom, sealed = row
    md5 = sealer.open(bytes(sealed), b"merchant:" + str(customer).encode() + b":md5").decode()
    fields = {
        "customerId": str(customer), "systemOrderId": order_no, "orderId": str(order_id),
        "status": "2" if loaded else "3",
        "message": "loaded onto the card" if loaded else "the load was reversed",
        "money": str(amount), "successAmount": str(amount) if loaded else "",
        "actualAmount": str(amount) if loaded else "",
        "successTime": str(now_ms // 1000) if loaded else "", "custom": str(custom),
    }
    fields["sign"] = make_sign(fields, md5)
    cur.execute("INSERT INTO notifications (reference, url, body, state, attempts, next_ms,"
                " created_ms) VALUES (?, ?, ?, ?, 0, ?, ?)",
                (order_no, str(url), urlencode(fields), NotificationState.PENDING.value, now_ms,
                 now_ms))


@implementer(IConsignments)
class SQLConsignments:
    def __init__(self, db: Transactor, sealer: Sealer) -> None:
        self.db = db
        self._sealer = sealer

    # -- merchants ------------------------------------------------------------------------

    def add_merchant(self, customer_id: str, rates: dict[str, int], now_ms: int
                     ) -> Deferred[Merchant]:
        aes, md5 = secrets.token_hex(8), secrets.token_hex(16)
        label = b"merchant:" + customer_id.encode()
        sealed = (self._sealer.seal(aes.encode(), label + b":aes"),
                  self._sealer.seal(md5.encode(), label + b":md5"))

        def txn(cur: Cursor) -> Merchant:
            if cur.execute("SELECT 1 FROM merchants WHERE customer_id = ?",
                           (customer_id,)).fetchone():
                raise AlreadyExists(f"merchant {customer_id} exists already")
            cur.execute("INSERT INTO merchants (customer_id, aes_key, md5_key, active,"
                        " created_ms) VALUES (?, ?, ?, 1, ?)", (customer_id, *sealed, now_ms))
            cur.executemany("INSERT INTO merchant_rates (customer_id, product_code, rate_bp)"
                            " VALUES (?, ?, ?)", [(customer_id, p, r) for p, r in rates.items()])
            return Merchant(customer_id, aes, md5, True, dict(rates))

        return self.db.runInteraction("add merchant", txn)

    def merchant(self, customer_id: str) -> Deferred[Merchant | None]:
        def txn(cur: Cursor) -> tuple[Any, ...] | None:
            row = cur.execute("SELECT aes_key, md5_key, active FROM merchants WHERE"
                              " customer_id = ?", (customer_id,)).fetchone()
            if row is None:
                return None
            rates = cur.execute("SELECT product_code, rate_bp FROM merchant_rates WHERE"
                                " customer_id = ?", (customer_id,)).fetchall()
            return (*row, {str(p): int(r) for p, r in rates})

        def unseal(row: tuple[Any, ...] | None) -> Merchant | None:
            if row is None:
                return None
            label = b"merchant:" + customer_id.encode()
            return Merchant(customer_id,
                            self._sealer.open(bytes(row[0]), label + b":aes").decode(),
                            self._sealer.open(bytes(row[1]), label + b":md5").decode(),
                            bool(row[2]), row[3])

        return self.db.runInteraction("merchant", txn).addCallback(unseal)

    def merchants(self) -> Deferred[list[tuple[str, bool, dict[str, int]]]]:
        def txn(cur: Cursor) -> list[tuple[str, bool, dict[str, int]]]:
            out = []
            for cid, active in cur.execute("SELECT customer_id, active FROM merchants ORDER BY"
                                           " customer_id").fetchall():
                rates = cur.execute("SELECT product_code, rate_bp FROM merchant_rates WHERE"
                                    " customer_id = ?", (cid,)).fetchall()
                out.append((str(cid), bool(active), {str(p): int(r) for p, r in rates}))
            return out

        return self.db.runInteraction("merchants", txn)

    def set_active(self, customer_id: str, active: bool) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            cur.execute("UPDATE merchants SET active = ? WHERE customer_id = ?",
                        (int(active), customer_id))
            return cur.rowcount == 1

        return self.db.runInteraction("merchant active", txn)

    def balance(self, customer_id: str) -> Deferred[int]:
        def txn(cur: Cursor) -> int:
            row = cur.execute("SELECT COALESCE(SUM(amount), 0) FROM postings WHERE account = ?",
                              (account_merchant(customer_id),)).fetchone()
            return -int(row[0]) if row else 0

        return self.db.runInteraction("merchant balance", txn)

    # -- consignments -----------------------------------------------------------------------

    def submit(self, customer_id: str, order_id: str, batchno: str, product_code: str,
               amount: int, notify_url: str, custom: str, card_number: str, password: str,
               card_masked: str, now_ms: int) -> Deferred[tuple[Consignment, bool]]:
        day = datetime.fromtimestamp(now_ms / 1000, CHINA).strftime("%Y%m%d")
        system_id = f"C{day}{secrets.randbelow(10**12):012d}"
        sealed = self._sealer.seal(json.dumps([card_number, password]).encode(),
                                   b"consignment:" + system_id.encode())

        def txn(cur: Cursor) -> tuple[Consignment, bool]:
            row = cur.execute(f"SELECT {_CONSIGNMENT} FROM consignments WHERE customer_id = ?"
                              " AND order_id = ?", (customer_id, order_id)).fetchone()
            if row is not None:
                return _consignment(row), False
            (count,) = cur.execute("SELECT COUNT(*) FROM consignments WHERE customer_id = ? AND"
                                   " batchno = ?", (customer_id, batchno)).fetchone() or (0,)
            if int(count) >= BATCH_LIMIT:
                raise BatchFull(f"batch {batchno} holds {BATCH_LIMIT} cards already")
            c = Consignment(system_id, customer_id, order_id, batchno, product_code, amount,
                            notify_url, custom, card_masked, ConsignmentState.PROCESSING,
                            "processing", None, None, None, now_ms)
            cur.execute(f"INSERT INTO consignments ({_CONSIGNMENT}, secrets) VALUES"
                        " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (system_id, customer_id, order_id, batchno, product_code, amount,
                         notify_url, custom, card_masked, c.state.value, c.message, None, None,
                         None, now_ms, sealed))
            return c, True

        return self.db.runInteraction("submit consignment", txn)

    def consignment(self, customer_id: str, order_id: str) -> Deferred[Consignment | None]:
        def txn(cur: Cursor) -> Consignment | None:
            row = cur.execute(f"SELECT {_CONSIGNMENT} FROM consignments WHERE customer_id = ?"
                              " AND order_id = ?", (customer_id, order_id)).fetchone()
            return None if row is None else _consignment(row)

        return self.db.runInteraction("consignment", txn)

    def by_system_id(self, system_order_id: str) -> Deferred[Consignment | None]:
        """A consignment by the platform's systemOrderId (for operators; no secrets)."""

        def txn(cur: Cursor) -> Consignment | None:
            row = cur.execute(f"SELECT {_CONSIGNMENT} FROM consignments WHERE"
                              " system_order_id = ?", (system_order_id,)).fetchone()
            return None if row is None else _consignment(row)

        return self.db.runInteraction("consignment by system id", txn)

    def processing(self) -> Deferred[list[str]]:
        def txn(cur: Cursor) -> list[str]:
            return [str(r[0]) for r in cur.execute(
                "SELECT system_order_id FROM consignments WHERE state = ? ORDER BY created_ms",
                (ConsignmentState.PROCESSING.value,)).fetchall()]

        return self.db.runInteraction("processing consignments", txn)

    def card_of(self, system_order_id: str) -> Deferred[tuple[Consignment, str, str] | None]:
        def txn(cur: Cursor) -> tuple[Any, ...] | None:
            row = cur.execute(f"SELECT {_CONSIGNMENT}, secrets FROM consignments WHERE"
                              " system_order_id = ? AND state = ?",
                              (system_order_id, ConsignmentState.PROCESSING.value)).fetchone()
            return row

        def unseal(row: tuple[Any, ...] | None) -> tuple[Consignment, str, str] | None:
            if row is None:
                return None
            number, password = json.loads(self._sealer.open(
                bytes(row[-1]), b"consignment:" + system_order_id.encode()))
            return _consignment(row[:-1]), number, password

        return self.db.runInteraction("consignment card", txn).addCallback(unseal)

    def complete(self, system_order_id: str, face_value: int | None, message: str,
                 now_ms: int) -> Deferred[Consignment]:
        """
        Finish a consignment in one transaction: its state, its journal entry (on success: the
        voucher's value to the merchant at its rate, the rest as the platform's fee), its
        notification in the outbox, and the card data erased. Idempotent.
        """

        def txn(cur: Cursor) -> Consignment:
            row = cur.execute(f"SELECT {_CONSIGNMENT} FROM consignments WHERE"
                              " system_order_id = ?", (system_order_id,)).fetchone()
            assert row is not None
            c = _consignment(row)
            if c.state is not ConsignmentState.PROCESSING:
                return c
            key_row = cur.execute("SELECT md5_key FROM merchants WHERE customer_id = ?",
                                  (c.customer_id,)).fetchone()
            if face_value is not None:
                rate = cur.execute("SELECT rate_bp FROM merchant_rates WHERE customer_id = ? AND"
                                   " product_code = ?", (c.customer_id, c.product_code)
                                   ).fetchone()
                actual = face_value * (int(rate[0]) if rate else 0) // 10_000
                post(cur, "consignment", system_order_id, now_ms, [
                    (ACCOUNT_VOUCHERS_OUTSTANDING, face_value),
                    (account_merchant(c.customer_id), -actual),
                    (ACCOUNT_CONSIGNMENT_FEES, actual - face_value),
                ])
                done = Consignment(**{**c.__dict__, "state": ConsignmentState.SUCCESS,
                                      "message": message, "success_amount": face_value,
                                      "actual_amount": actual, "success_ms": now_ms})
            else:
                done = Consignment(**{**c.__dict__, "state": ConsignmentState.FAILED,
                                      "message": message})
            cur.execute("UPDATE consignments SET state = ?, message = ?, success_amount = ?,"
                        " actual_amount = ?, success_ms = ?, secrets = NULL WHERE"
                        " system_order_id = ?", (done.state.value, done.message,
                                                 done.success_amount, done.actual_amount,
                                                 done.success_ms, system_order_id))
            if done.notify_url and key_row is not None:
                md5 = self._sealer.open(bytes(key_row[0]),
                                        b"merchant:" + c.customer_id.encode() + b":md5").decode()
                fields = notification_fields(done)
                fields["sign"] = make_sign(fields, md5)
                cur.execute("INSERT INTO notifications (reference, url, body, state, attempts,"
                            " next_ms, created_ms) VALUES (?, ?, ?, ?, 0, ?, ?)",
                            (system_order_id, done.notify_url, urlencode(fields),
                             NotificationState.PENDING.value, now_ms, now_ms))
            return done

        return self.db.runInteraction("complete consignment", txn)

    # -- top-ups (/v2_queryBuy) -------------------------------------------------------------

    def topup(self, customer_id: str, order_id: str, amount: int, logical_no: str,
              now_ms: int, notify_url: str = "", custom: str = ""
              ) -> Deferred[tuple[Order, bool]]:
        biz = f"{customer_id}:{order_id}"

        def txn(cur: Cursor) -> tuple[Order, bool]:
            row = cur.execute(_TOPUP_ORDER, (TOPUP_PLATFORM, biz)).fetchone()
            if row is not None:
                found = _topup_order(row, biz)
                if (found.logical_no, found.amount) != (logical_no, amount):
                    raise Conflict(f"orderId {order_id} was used for another top-up")
                return found, False
            # the card is checked before the merchant is debited: a top-up for a card that
            # cannot take it would be money taken for a load that never happens
            issued = issued_card(cur, logical_no)
            refusal = card_refusal(issued, amount=amount)
            if refusal is not None or issued is None:
                raise CardRefused(refusal or "unknown card")
            balance = cur.execute("SELECT COALESCE(SUM(amount), 0) FROM postings WHERE"
                                  " account = ?", (account_merchant(customer_id),)).fetchone()
            available = -int(balance[0]) if balance else 0
            if available < amount:
                raise InsufficientBalance(f"balance {available} fen does not cover {amount}")
            insert_payment(cur, Payment(TOPUP_PLATFORM, biz, amount, customer_id, 0, now_ms),
                           account_merchant(customer_id), "")
            # bound to the card as issued: kind and physical number from the registry
            order = insert_order(cur, TOPUP_PLATFORM, biz, 0, issued.kind, logical_no,
                                 issued.physical_no, amount, now_ms)
            cur.execute("INSERT INTO topups (order_no, customer_id, order_id, notify_url, custom)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (order.order_no, customer_id, order_id, notify_url, custom))
            return order, True

        return self.db.runInteraction("top-up", txn)

    def topup_order(self, customer_id: str, order_id: str) -> Deferred[Order | None]:
        biz = f"{customer_id}:{order_id}"

        def txn(cur: Cursor) -> Order | None:
            row = cur.execute(_TOPUP_ORDER, (TOPUP_PLATFORM, biz)).fetchone()
            return None if row is None else _topup_order(row, biz)

        return self.db.runInteraction("top-up order", txn)

    # -- the outbox -------------------------------------------------------------------------

    def due(self, now_ms: int, limit: int, lease_ms: int) -> Deferred[list[Notification]]:
        """Claim up to C{limit} due notifications for C{lease_ms} (one daemon at a time)."""

        def txn(cur: Cursor) -> list[Notification]:
            rows = cur.execute("SELECT id, reference, url, body, attempts FROM notifications"
                               " WHERE state = ? AND next_ms <= ? ORDER BY next_ms LIMIT ?",
                               (NotificationState.PENDING.value, now_ms, limit)).fetchall()
            out = []
            for r in rows:
                cur.execute("UPDATE notifications SET next_ms = ? WHERE id = ?",
                            (now_ms + lease_ms, r[0]))
                out.append(Notification(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])))
            return out

        return self.db.runInteraction("due notifications", txn)

    def postpone(self, notification_id: int, next_ms: int) -> Deferred[None]:
        """Put a claimed notification back for later without counting an attempt."""

        def txn(cur: Cursor) -> None:
            cur.execute("UPDATE notifications SET next_ms = ? WHERE id = ? AND state = ?",
                        (next_ms, notification_id, NotificationState.PENDING.value))

        return self.db.runInteraction("postpone notification", txn)

    def attempted(self, notification_id: int, outcome: str, delivered: bool,
                  retry_intervals: list[float], now_ms: int) -> Deferred[None]:
        def txn(cur: Cursor) -> None:
            cur.execute("INSERT INTO notify_attempts (notification_id, at_ms, outcome) VALUES"
                        " (?, ?, ?)", (notification_id, now_ms, outcome[:200]))
            row = cur.execute("SELECT attempts, state FROM notifications WHERE id = ?",
                              (notification_id,)).fetchone()
            if row is None or NotificationState(row[1]) is not NotificationState.PENDING:
                return  # decided already (a late attempt): recorded, never undone
            attempts = int(row[0]) + 1
            if delivered:
                state, next_ms = NotificationState.DELIVERED, now_ms
            elif attempts > len(retry_intervals):
                state, next_ms = NotificationState.FAILED, now_ms
            else:
                state, next_ms = (NotificationState.PENDING,
                                  now_ms + int(retry_intervals[attempts - 1] * 1000))
            cur.execute("UPDATE notifications SET attempts = ?, state = ?, next_ms = ? WHERE"
                        " id = ?", (attempts, state, next_ms, notification_id))

        return self.db.runInteraction("notification attempt", txn)

    def search(self, state: ConsignmentState | None, customer_id: str | None,
               since_ms: int | None, until_ms: int | None, limit: int
               ) -> Deferred[list[Consignment]]:
        """Consignments, newest first, filtered (for operators)."""

        def txn(cur: Cursor) -> list[Consignment]:
            where, params = _filters(("state", state.value if state else None),
                                     ("customer_id", customer_id),
                                     ("created_ms >=", since_ms), ("created_ms <", until_ms))
            rows = cur.execute(f"SELECT {_CONSIGNMENT} FROM consignments{where} ORDER BY"
                               " created_ms DESC, system_order_id DESC LIMIT ?",
                               (*params, limit)).fetchall()
            return [_consignment(r) for r in rows]

        return self.db.runInteraction("search consignments", txn)

    def search_notifications(self, state: NotificationState | None, reference: str | None,
                             limit: int) -> Deferred[list[dict[str, Any]]]:
        """The outbox, newest first: id, reference, url, state, attempts, next and created
        times, and the last attempt's outcome (for operators)."""

        def txn(cur: Cursor) -> list[dict[str, Any]]:
            where, params = _filters(("state", state.value if state else None),
                                     ("reference", reference))
            columns = "id, reference, url, state, attempts, next_ms, created_ms"
            rows = cur.execute(f"SELECT {columns} FROM notifications{where} ORDER BY id DESC"
                               " LIMIT ?", (*params, limit)).fetchall()
            out = []
            for row in rows:
                item = by_name(columns, row)
                last = cur.execute("SELECT outcome FROM notify_attempts WHERE notification_id"
                                   " = ? ORDER BY at_ms DESC LIMIT 1", (item["id"],)).fetchone()
                item["last_outcome"] = None if last is None else str(last[0])
                out.append(item)
            return out

        return self.db.runInteraction("search notifications", txn)

    def outbox(self, now_ms: int) -> Deferred[dict[str, int]]:
        """Pending notifications and the age of the oldest, in ms; failed ones (metrics)."""

        def txn(cur: Cursor) -> dict[str, int]:
            row = cur.execute("SELECT COUNT(*), MIN(created_ms) FROM notifications WHERE"
                              " state = ?", (NotificationState.PENDING.value,)).fetchone()
            failed = cur.execute("SELECT COUNT(*) FROM notifications WHERE state = ?",
                                 (NotificationState.FAILED.value,)).fetchone()
            assert row is not None and failed is not None
            return {"pending": int(row[0]),
                    "oldest_ms": 0 if row[1] is None else max(0, now_ms - int(row[1])),
                    "failed": int(failed[0])}

        return self.db.runInteraction("outbox", txn)

    def retry_notification(self, notification_id: int, reason: str, operator: str,
                           now_ms: int) -> Deferred[dict[str, Any]]:
        """
        Send a notification whose attempts all failed again, now, with a fresh set of
        attempts (audited). Errbacks with L{NotFound} (no such notification) or L{Conflict}
        (it is delivered, or still being tried).
        """

        def txn(cur: Cursor) -> dict[str, Any]:
            row = cur.execute("SELECT reference, state FROM notifications WHERE id = ?",
                              (notification_id,)).fetchone()
            if row is None:
                raise NotFound(f"no notification {notification_id}")
            if NotificationState(row[1]) is not NotificationState.FAILED:
                raise Conflict(f"notification {notification_id} is {row[1]}: only a failed one "
                               "is retried")
            cur.execute("UPDATE notifications SET state = ?, attempts = 0, next_ms = ? WHERE"
                        " id = ?", (NotificationState.PENDING.value, now_ms, notification_id))
            decided(cur, "notification", str(notification_id), "retry", reason, operator,
                    now_ms)
            return {"id": notification_id, "reference": str(row[0]), "state": "pending"}

        return self.db.runInteraction("retry notification", txn)

    def notifications(self, reference: str) -> Deferred[list[tuple[str, int, list[str]]]]:
        """(state, attempts, outcomes) of a reference's notifications, for ops and tests."""

        def txn(cur: Cursor) -> list[tuple[str, int, list[str]]]:
            out = []
            for nid, state, attempts in cur.execute(
                    "SELECT id, state, attempts FROM notifications WHERE reference = ?",
                    (reference,)).fetchall():
                outcomes = [str(o) for (o,) in cur.execute(
                    "SELECT outcome FROM notify_attempts WHERE notification_id = ? ORDER BY"
                    " at_ms", (nid,)).fetchall()]
                out.append((str(state), int(attempts), outcomes))
            return out

        return self.db.runInteraction("notifications", txn)
