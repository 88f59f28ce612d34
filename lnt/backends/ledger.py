"""
L{ILedger} over SQL: one implementation for SQLite and PostgreSQL (the differences live in
L{lnt.backends.database.Engine}). Every public method is one transaction.

Secrets at rest: session keys are sealed (AES-256-GCM) with the platform's storage key before
they are written, so a copy of the database alone does not give them away.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.backends.database import Cursor, Transactor
from lnt.backends.keys import Sealer
from lnt.backends.schema import current_version
from lnt.interfaces import ILedger
from lnt.records import (
    CHINA,
    CardIdentity,
    CardKind,
    Conflict,
    NotFound,
    Order,
    OrderState,
    Payment,
    Platform,
    Session,
)

#: handshake serials are 16 decimal digits
SERIAL_DIGITS = 16


@implementer(ILedger)
class SQLLedger:
    def __init__(self, db: Transactor, sealer: Sealer) -> None:
        self.db = db
        self._sealer = sealer

    def health(self) -> Deferred[dict[str, object]]:
        def probe(cur: Cursor) -> dict[str, object]:
            return {"engine": cur.engine.name, "schema_version": current_version(cur)}

        return self.db.runInteraction("health", probe)

    # -- sessions -----------------------------------------------------------------------------

    def next_serial(self, pki_no: int, now_ms: int) -> Deferred[str]:
        def txn(cur: Cursor) -> str:
            row = cur.execute(
                "INSERT INTO handshake_serials (pki_no, created_ms) VALUES (?, ?) RETURNING serial",
                (pki_no, now_ms),
            ).fetchone()
            assert row is not None
            return str(int(row[0])).rjust(SERIAL_DIGITS, "0")

        return self.db.runInteraction("next_serial", txn)

    def note_card_random(self, pki_no: int, card_random: bytes, now_ms: int) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            seen = cur.execute(
                "SELECT 1 FROM card_randoms WHERE pki_no = ? AND card_random = ?",
                (pki_no, card_random),
            ).fetchone()
            if seen:
                return False
            cur.execute(
                "INSERT INTO card_randoms (pki_no, card_random, at_ms) VALUES (?, ?, ?)",
                (pki_no, card_random, now_ms),
            )
            return True

        return self.db.runInteraction("note_card_random", txn)

    def open_session(
        self,
        pki_no: int,
        user_id: bytes,
        serial: str,
        session_key: bytes,
        counter: int,
        now_ms: int,
        ttl_ms: int,
    ) -> Deferred[Session | None]:
        sealed = self._sealer.seal(session_key, b"session:%d" % pki_no)

        def txn(cur: Cursor) -> Session | None:
            cur.execute(
                "UPDATE pki_cards SET last_counter = ? WHERE pki_no = ? AND last_counter < ?"
                " AND status = 'active'",
                (counter, pki_no, counter),
            )
            if cur.rowcount != 1:
                return None
            cur.execute("DELETE FROM sessions WHERE pki_no = ?", (pki_no,))
            cur.execute(
                "INSERT INTO sessions (pki_no, user_id, serial, session_key, created_ms,"
                " expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (pki_no, user_id.hex(), serial, sealed, now_ms, now_ms + ttl_ms),
            )
            return Session(pki_no, user_id, serial, session_key, now_ms, now_ms + ttl_ms)

        return self.db.runInteraction("open_session", txn)

    _SESSION_COLUMNS = "pki_no, user_id, serial, session_key, created_ms, expires_ms"

    def _session(self, row: tuple[Any, ...] | None, now_ms: int) -> Session | None:
        if row is None:
            return None
        pki_no, user_id, serial, sealed, created, expires = row
        if now_ms >= expires:
            return None
        key = self._sealer.open(bytes(sealed), b"session:%d" % pki_no)
        return Session(int(pki_no), bytes.fromhex(user_id), serial, key, created, expires)

    def session(self, pki_no: int, now_ms: int) -> Deferred[Session | None]:
        def txn(cur: Cursor) -> tuple[Any, ...] | None:
            return cur.execute(
                f"SELECT {self._SESSION_COLUMNS} FROM sessions s WHERE pki_no = ?"
                " AND EXISTS (SELECT 1 FROM pki_cards c WHERE c.pki_no = s.pki_no"
                " AND c.status = 'active')",
                (pki_no,),
            ).fetchone()

        return self.db.runInteraction("session", txn).addCallback(self._session, now_ms)

    def session_by_serial(self, serial: str, now_ms: int) -> Deferred[Session | None]:
        def txn(cur: Cursor) -> tuple[Any, ...] | None:
            return cur.execute(
                f"SELECT {self._SESSION_COLUMNS} FROM sessions s WHERE serial = ?"
                " AND EXISTS (SELECT 1 FROM pki_cards c WHERE c.pki_no = s.pki_no"
                " AND c.status = 'active')",
                (serial,),
            ).fetchone()

        return self.db.runInteraction("session_by_serial", txn).addCallback(self._session, now_ms)

    def record_signin(
        self, pki_no: int | None, user_id: bytes, outcome: str, now_ms: int
    ) -> Deferred[None]:
        def txn(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO signins (pki_no, user_id, outcome, at_ms) VALUES (?, ?, ?, ?)",
                (pki_no, user_id.hex(), outcome, now_ms),
            )

        return self.db.runInteraction("record_signin", txn)

    def sessions(self) -> Deferred[dict[int, tuple[str, int]]]:
        """Every card's session, expired or not: pki_no -> (serial, expires_ms)."""

        def txn(cur: Cursor) -> dict[int, tuple[str, int]]:
            rows = cur.execute("SELECT pki_no, serial, expires_ms FROM sessions").fetchall()
            return {int(p): (str(s), int(e)) for p, s, e in rows}

        return self.db.runInteraction("sessions", txn)

    def signins(self, pki_no: int) -> Deferred[list[tuple[str, int]]]:
        """The card's sign-in attempts, oldest first: (outcome, at_ms)."""

        def txn(cur: Cursor) -> list[tuple[str, int]]:
            rows = cur.execute(
                "SELECT outcome, at_ms FROM signins WHERE pki_no = ? ORDER BY id", (pki_no,)
            ).fetchall()
            return [(str(o), int(t)) for o, t in rows]

        return self.db.runInteraction("signins", txn)

    # -- platforms, payments, orders -----------------------------------------------------------

    def platform(self, platform_no: int) -> Deferred[Platform | None]:
        def txn(cur: Cursor) -> Platform | None:
            row = cur.execute("SELECT platform_no, name, active FROM platforms"
                              " WHERE platform_no = ?", (platform_no,)).fetchone()
            return None if row is None else Platform(int(row[0]), str(row[1]), bool(row[2]))

        return self.db.runInteraction("platform", txn)

    def add_platform(self, platform: Platform) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            if cur.execute("SELECT 1 FROM platforms WHERE platform_no = ?",
                           (platform.platform_no,)).fetchone():
                return False
            cur.execute("INSERT INTO platforms (platform_no, name, active) VALUES (?, ?, ?)",
                        (platform.platform_no, platform.name, int(platform.active)))
            return True

        return self.db.runInteraction("add_platform", txn)

    def register_payment(
        self, platform_no: int, biz_serial_no: str, money: int, user_id: str, pki_no: int,
        fingerprint: str, now_ms: int,
    ) -> Deferred[tuple[Payment, bool]]:
        def txn(cur: Cursor) -> tuple[Payment, bool]:
            row = cur.execute(
                f"SELECT {_PAYMENT} FROM payments WHERE platform_no = ? AND biz_serial_no = ?",
                (platform_no, biz_serial_no),
            ).fetchone()
            if row is not None:
                if row[-1] != fingerprint:
                    raise Conflict(f"biz_serial_no {biz_serial_no} was registered with other "
                                   "fields")
                return _payment(row), False
            cur.execute(
                "INSERT INTO payments (platform_no, biz_serial_no, money, user_id, pki_no,"
                " fingerprint, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (platform_no, biz_serial_no, money, user_id, pki_no, fingerprint, now_ms),
            )
            post(cur, "payment", f"{platform_no}:{biz_serial_no}", now_ms, [
                (account_platform(platform_no), money),
                (ACCOUNT_AWAITING_LOAD, -money),
            ])
            return Payment(platform_no, biz_serial_no, money, user_id, pki_no, now_ms), True

        return self.db.runInteraction("register_payment", txn)

    def create_order(
        self, platform_no: int, biz_serial_no: str, pki_no: int, card: CardIdentity,
        amount: int, now_ms: int,
    ) -> Deferred[tuple[Order, bool]]:
        def txn(cur: Cursor) -> tuple[Order, bool]:
            payment = cur.execute(
                "SELECT money FROM payments WHERE platform_no = ? AND biz_serial_no = ?",
                (platform_no, biz_serial_no),
            ).fetchone()
            if payment is None:
                raise NotFound(f"no payment for biz_serial_no {biz_serial_no} of platform "
                               f"{platform_no}: call APPLLogin (type 5) first")
            if int(payment[0]) != amount:
                raise Conflict(f"chargeamt {amount} differs from the {payment[0]} fen paid "
                               f"under biz_serial_no {biz_serial_no}")
            row = cur.execute(f"SELECT {_ORDER} FROM orders WHERE platform_no = ? AND"
                              " biz_serial_no = ?", (platform_no, biz_serial_no)).fetchone()
            if row is not None:
                order = _order(row)
                if (order.logical_no, order.amount) != (card.logical_no, amount):
                    raise Conflict(f"biz_serial_no {biz_serial_no} already has an order for "
                                   "another card")
                return order, False
            seq = cur.execute("INSERT INTO order_numbers (created_ms) VALUES (?) RETURNING seq",
                              (now_ms,)).fetchone()
            assert seq is not None
            day = datetime.fromtimestamp(now_ms / 1000, CHINA).strftime("%Y%m%d")
            order = Order(f"{day}{int(seq[0]):012d}", platform_no, biz_serial_no, pki_no,
                          card.kind, card.logical_no, card.physical_no, amount,
                          OrderState.CREATED, now_ms, now_ms)
            cur.execute(
                f"INSERT INTO orders ({_ORDER}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order.order_no, platform_no, biz_serial_no, pki_no, card.kind.value,
                 card.logical_no, card.physical_no, amount, order.state.value, now_ms, now_ms),
            )
            return order, True

        return self.db.runInteraction("create_order", txn)

    def order(self, order_no: str) -> Deferred[Order | None]:
        def txn(cur: Cursor) -> Order | None:
            row = cur.execute(f"SELECT {_ORDER} FROM orders WHERE order_no = ?",
                              (order_no,)).fetchone()
            return None if row is None else _order(row)

        return self.db.runInteraction("order", txn)

    def orders_for_card(
        self, logical_no: str, since_ms: int | None, until_ms: int | None,
        states: list[OrderState] | None, order_no: str | None,
    ) -> Deferred[list[Order]]:
        def txn(cur: Cursor) -> list[Order]:
            sql = f"SELECT {_ORDER} FROM orders WHERE logical_no = ?"
            params: list[object] = [logical_no]
            if since_ms is not None:
                sql += " AND created_ms >= ?"
                params.append(since_ms)
            if until_ms is not None:
                sql += " AND created_ms < ?"
                params.append(until_ms)
            if states:
                sql += f" AND state IN ({', '.join('?' for _ in states)})"
                params.extend(s.value for s in states)
            if order_no is not None:
                sql += " AND order_no = ?"
                params.append(order_no)
            sql += " ORDER BY created_ms, order_no LIMIT 500"
            return [_order(r) for r in cur.execute(sql, params).fetchall()]

        return self.db.runInteraction("orders_for_card", txn)

    def balances(self) -> Deferred[dict[str, int]]:
        """Every account's balance, derived from the postings."""

        def txn(cur: Cursor) -> dict[str, int]:
            rows = cur.execute("SELECT account, SUM(amount) FROM postings GROUP BY account")
            return {str(a): int(s) for a, s in rows.fetchall()}

        return self.db.runInteraction("balances", txn)

    def close(self) -> None:
        self.db.close()


# -- the journal ------------------------------------------------------------------------------

ACCOUNT_AWAITING_LOAD = "orders:awaiting-load"
ACCOUNT_CARD_FLOAT = "cards:float"
ACCOUNT_REVERSED = "orders:reversed"


def account_platform(platform_no: int) -> str:
    """What a third-party platform owes for the recharges it sold (its collected money)."""
    return f"platform:{platform_no}:receivable"


class UnbalancedEntry(AssertionError):
    """A journal entry whose postings do not sum to zero: a bug, never written."""


def post(cur: Cursor, kind: str, reference: str, now_ms: int,
         postings: list[tuple[str, int]]) -> None:
    """
    Append one balanced journal entry (in the caller's transaction). Debits are positive,
    credits negative; they must sum to zero. Entries are never updated or deleted.
    """
    if sum(amount for _, amount in postings) != 0 or not postings:
        raise UnbalancedEntry(f"{kind} {reference}: postings do not balance")
    row = cur.execute("INSERT INTO journal_entries (kind, reference, at_ms) VALUES (?, ?, ?)"
                      " RETURNING id", (kind, reference, now_ms)).fetchone()
    assert row is not None
    cur.executemany("INSERT INTO postings (entry_id, account, amount) VALUES (?, ?, ?)",
                    [(row[0], account, amount) for account, amount in postings])


_PAYMENT = "platform_no, biz_serial_no, money, user_id, pki_no, created_ms, fingerprint"
_ORDER = ("order_no, platform_no, biz_serial_no, pki_no, card_kind, logical_no, physical_no,"
          " amount, state, created_ms, updated_ms")


def _payment(row: tuple[Any, ...]) -> Payment:
    return Payment(int(row[0]), str(row[1]), int(row[2]), str(row[3]), int(row[4]), int(row[5]))


def _order(row: tuple[Any, ...]) -> Order:
    return Order(str(row[0]), int(row[1]), str(row[2]), int(row[3]), CardKind(row[4]),
                 str(row[5]), str(row[6]), int(row[7]), OrderState(row[8]), int(row[9]),
                 int(row[10]))
