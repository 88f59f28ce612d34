"""
L{ILedger} over SQL: one implementation for SQLite and PostgreSQL (the differences live in
L{lnt.storage.database.Engine}). Every public method is one transaction.

Secrets at rest: session keys are sealed (AES-256-GCM) with the platform's storage key before
they are written, so a copy of the database alone does not give them away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.crypto.sealing import Sealer
from lnt.domain.eligibility import card_refusal
from lnt.domain.loads import STALE_ORDER_MS, IllegalMove, Verdict, operator_decision
from lnt.domain.records import (
    CHINA,
    ApiContext,
    AtRisk,
    CardIdentity,
    CardKind,
    CardRefused,
    CardState,
    CardStatus,
    Conflict,
    ConsignmentState,
    IssuedCard,
    Load,
    LoadState,
    NotFound,
    Order,
    OrderClaim,
    OrderState,
    Payment,
    PaymentClaim,
    Platform,
    ReconRow,
    SecureStart,
    Session,
)
from lnt.interfaces import ILedger
from lnt.storage.consignments import notify_topup
from lnt.storage.database import Cursor, Transactor, by_name
from lnt.storage.decisions import decided
from lnt.storage.journal import (
    ACCOUNT_AWAITING_LOAD,
    ACCOUNT_CARD_FLOAT,
    ACCOUNT_CONSIGNMENT_FEES,
    ACCOUNT_REVERSED,
    ACCOUNT_VOUCHERS_OUTSTANDING,
    account_merchant,
    account_platform,
    post,
)
from lnt.storage.migrations import current_version
from lnt.storage.orders import ORDER_COLUMNS, insert_order, insert_payment
from lnt.storage.pkicards import active_card_of_user, card_numbered
from lnt.storage.registry import issued_card

#: what the health probe seals with the platform key, to tell a wrong key file
KEY_CHECK = b"lnt-recharge key check"


class KeyMismatch(Exception):
    """The platform key does not open the ledger's sealed data."""


#: handshake serials are 16 decimal digits
SERIAL_DIGITS = 16


@implementer(ILedger)
class SQLLedger:
    def __init__(self, db: Transactor, sealer: Sealer) -> None:
        self.db = db
        self._sealer = sealer

    def health(self, now_ms: int) -> Deferred[dict[str, object]]:
        """
        Ready to serve: a write that commits (a read-only or full database fails it) and the
        platform key opening the ledger's key check (a wrong key file fails it).
        """

        def probe(cur: Cursor) -> dict[str, object]:
            row = cur.execute("SELECT key_check FROM health WHERE id = 1").fetchone()
            if row is None:
                cur.execute("INSERT INTO health (id, probe_ms, key_check) VALUES (1, ?, ?)",
                            (now_ms, self._sealer.seal(KEY_CHECK, b"health")))
            else:
                try:
                    self._sealer.open(bytes(row[0]), b"health")
                except ValueError:
                    raise KeyMismatch("the platform key does not open this ledger's sealed "
                                      "data (a wrong key file?)") from None
                cur.execute("UPDATE health SET probe_ms = ? WHERE id = 1", (now_ms,))
            return {"engine": cur.engine.name, "schema_version": current_version(cur),
                    "writable": True, "key": "matches"}

        return self.db.runInteraction("health", probe)

    # -- sessions -----------------------------------------------------------------------------

    def next_serial(self, pki_no: int, now_ms: int) -> Deferred[str]:
        return self.db.runInteraction("next_serial", _next_serial, pki_no, now_ms)

    def note_card_random(self, pki_no: int, card_random: bytes, now_ms: int) -> Deferred[bool]:
        return self.db.runInteraction("note_card_random", _note_card_random, pki_no,
                                      card_random, now_ms)

    def begin_signin(self, pki_no: int, card_random: bytes, now_ms: int) -> Deferred[str | None]:
        def txn(cur: Cursor) -> str | None:
            if not _note_card_random(cur, pki_no, card_random, now_ms):
                return None
            return _next_serial(cur, pki_no, now_ms)

        return self.db.runInteraction("begin_signin", txn)

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
                " AND status = ?",
                (counter, pki_no, counter, CardStatus.ACTIVE.value),
            )
            if cur.rowcount != 1:
                return None
            cur.execute("DELETE FROM sessions WHERE pki_no = ?", (pki_no,))
            cur.execute(
                "INSERT INTO sessions (pki_no, user_id, serial, session_key, created_ms,"
                " expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (pki_no, user_id.hex(), serial, sealed, now_ms, now_ms + ttl_ms),
            )
            _record_signin(cur, pki_no, user_id, "ok", now_ms)
            return Session(pki_no, user_id, serial, session_key, now_ms, now_ms + ttl_ms)

        return self.db.runInteraction("open_session", txn)

    def _session(self, row: tuple[Any, ...] | None, now_ms: int) -> Session | None:
        if row is None:
            return None
        r = by_name(_SESSION_COLUMNS, row)
        if now_ms >= r["expires_ms"]:
            return None
        key = self._sealer.open(bytes(r["session_key"]), b"session:%d" % r["pki_no"])
        return Session(int(r["pki_no"]), bytes.fromhex(r["user_id"]), str(r["serial"]), key,
                       int(r["created_ms"]), int(r["expires_ms"]))

    def session(self, pki_no: int, now_ms: int) -> Deferred[Session | None]:
        return self.db.runInteraction("session", _session_row, "pki_no", pki_no).addCallback(
            self._session, now_ms)

    def session_by_serial(self, serial: str, now_ms: int) -> Deferred[Session | None]:
        return self.db.runInteraction("session_by_serial", _session_row, "serial", serial
                                      ).addCallback(self._session, now_ms)

    def record_signin(
        self, pki_no: int | None, user_id: bytes, outcome: str, now_ms: int
    ) -> Deferred[None]:
        return self.db.runInteraction("record_signin", _record_signin, pki_no, user_id, outcome,
                                      now_ms)

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
        return self.db.runInteraction("platform", _platform, platform_no)

    def _api_context(self, cur: Cursor, platform_no: int, now_ms: int, user_id: bytes | None,
                     serial: str | None) -> ApiContext:
        card = session_row = None
        if user_id is not None:
            card = active_card_of_user(cur, user_id)
            if card is not None:
                session_row = _session_row(cur, "pki_no", card.pki_no)
        elif serial is not None:
            session_row = _session_row(cur, "serial", serial)
            if session_row is not None:
                card = card_numbered(cur, int(session_row[0]))
        session = self._session(session_row, now_ms)
        if serial is not None and session is None:
            card = None  # the card of a serial is the card of its live session
        return ApiContext(_platform(cur, platform_no), card, session)

    def api_context(self, platform_no: int, now_ms: int, *, user_id: bytes | None = None,
                    serial: str | None = None) -> Deferred[ApiContext]:
        return self.db.runInteraction("api context", self._api_context, platform_no, now_ms,
                                      user_id, serial)

    def add_platform(self, platform: Platform) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            if cur.execute("SELECT 1 FROM platforms WHERE platform_no = ?",
                           (platform.platform_no,)).fetchone():
                return False
            cur.execute("INSERT INTO platforms (platform_no, name, active) VALUES (?, ?, ?)",
                        (platform.platform_no, platform.name, int(platform.active)))
            return True

        return self.db.runInteraction("add_platform", txn)

    def platforms(self) -> Deferred[list[Platform]]:
        def txn(cur: Cursor) -> list[Platform]:
            return [Platform(int(n), str(name), bool(active)) for n, name, active in
                    cur.execute("SELECT platform_no, name, active FROM platforms ORDER BY"
                                " platform_no").fetchall()]

        return self.db.runInteraction("platforms", txn)

    def set_platform_active(self, platform_no: int, active: bool) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            cur.execute("UPDATE platforms SET active = ? WHERE platform_no = ?",
                        (int(active), platform_no))
            return cur.rowcount > 0

        return self.db.runInteraction("set_platform_active", txn)

    def register_payment(
        self, platform_no: int, biz_serial_no: str, money: int, user_id: str, pki_no: int,
        fingerprint: str, now_ms: int,
    ) -> Deferred[tuple[Payment, bool]]:
        claim = PaymentClaim(biz_serial_no, money, user_id, pki_no, fingerprint)
        return self.db.runInteraction("register_payment", _register_payment, platform_no, claim,
                                      now_ms)

    def register_admitted_payment(
        self, platform_no: int, now_ms: int, user_id: bytes | None,
        admit: Callable[[ApiContext], PaymentClaim],
    ) -> Deferred[tuple[ApiContext, Payment, bool]]:
        def txn(cur: Cursor) -> tuple[ApiContext, Payment, bool]:
            ctx = self._api_context(cur, platform_no, now_ms, user_id, None)
            payment, created = _register_payment(cur, platform_no, admit(ctx), now_ms)
            return ctx, payment, created

        return self.db.runInteraction("admitted payment", txn)

    def create_order(
        self, platform_no: int, biz_serial_no: str, pki_no: int, card: CardIdentity,
        amount: int, now_ms: int,
    ) -> Deferred[tuple[Order, bool]]:
        claim = OrderClaim(biz_serial_no, pki_no, card, amount)
        return self.db.runInteraction("create_order", _create_order, platform_no, claim, now_ms)

    def create_admitted_order(
        self, platform_no: int, now_ms: int, serial: str | None,
        admit: Callable[[ApiContext], OrderClaim],
    ) -> Deferred[tuple[ApiContext, Order, bool]]:
        def txn(cur: Cursor) -> tuple[ApiContext, Order, bool]:
            ctx = self._api_context(cur, platform_no, now_ms, None, serial)
            order, created = _create_order(cur, platform_no, admit(ctx), now_ms)
            return ctx, order, created

        return self.db.runInteraction("admitted order", txn)

    def order(self, order_no: str) -> Deferred[Order | None]:
        return self.db.runInteraction("order", _order_numbered, order_no)

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

    # -- loads ----------------------------------------------------------------------------------

    def reserve_sm_seq(self, pki_no: int, serial: str, count: int) -> Deferred[int]:
        def txn(cur: Cursor) -> int:
            row = cur.execute("UPDATE sessions SET sm_seq = sm_seq + ? WHERE pki_no = ? AND"
                              " serial = ? RETURNING sm_seq", (count, pki_no, serial)).fetchone()
            if row is None:
                raise NotFound(f"session {serial} of PKI card {pki_no} is gone")
            return int(row[0]) - count + 1

        return self.db.runInteraction("reserve_sm_seq", txn)

    def secure_session(self, pki_no: int, now_ms: int, count: int, order_no: str | None
                       ) -> Deferred[SecureStart | None]:
        def txn(cur: Cursor) -> SecureStart | None:
            row = _session_row(cur, "pki_no", pki_no)
            if row is None or by_name(_SESSION_COLUMNS, row)["expires_ms"] <= now_ms:
                return None  # no seqs for an expired session
            seq = cur.execute("UPDATE sessions SET sm_seq = sm_seq + ? WHERE pki_no = ?"
                              " RETURNING sm_seq", (count, pki_no)).fetchone()
            assert seq is not None
            session = self._session(row, now_ms)
            assert session is not None  # live: checked above
            order = None if order_no is None else _order_numbered(cur, order_no)
            earlier = None if order is None else _pending_load(cur, order.logical_no)
            return SecureStart(session, int(seq[0]) - count + 1, order, earlier)

        return self.db.runInteraction("secure_session", txn)

    def pending_load(self, logical_no: str) -> Deferred[Load | None]:
        def txn(cur: Cursor) -> Load | None:
            return _pending_load(cur, logical_no)

        return self.db.runInteraction("pending_load", txn)

    def begin_load(self, load: Load) -> Deferred[Load]:
        def txn(cur: Cursor) -> Load:
            row = cur.execute("SELECT state, logical_no, amount FROM orders WHERE order_no = ?",
                              (load.order_no,)).fetchone()
            if row is None:
                raise NotFound(f"no order {load.order_no}")
            if (row[1], int(row[2])) != (load.logical_no, load.amount):
                raise Conflict(f"order {load.order_no} is for another card or amount")
            # At most one load per card in doubt (PostgreSQL's SERIALIZABLE makes two daemons
            # beginning loads on one card at once conflict; SQLite has one writer).
            earlier = _pending_load(cur, load.logical_no)
            if earlier is not None:
                raise Conflict(f"the card has a load in doubt (order {earlier.order_no}): it is "
                               "resolved first")
            cur.execute("UPDATE orders SET state = ?, updated_ms = ? WHERE order_no = ? AND"
                        " state = ?", (OrderState.PENDING.value, load.created_ms, load.order_no,
                                       OrderState.CREATED.value))
            if cur.rowcount != 1:
                raise Conflict(f"order {load.order_no} is {row[0]}, not waiting for a load")
            # an order made by a merchant's top-up names only the logical number: the first
            # load binds it to the physical card
            cur.execute("UPDATE orders SET physical_no = ?, card_kind = ? WHERE order_no = ?"
                        " AND physical_no = ''", (load.physical_no, load.card_kind.value,
                                                  load.order_no))
            cur.execute(f"INSERT INTO loads ({_LOAD}) VALUES"
                        " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _load_row(load))
            return load

        return self.db.runInteraction("begin_load", txn)

    def load(self, order_no: str) -> Deferred[Load | None]:
        def txn(cur: Cursor) -> Load | None:
            row = cur.execute(f"SELECT {_LOAD} FROM loads WHERE order_no = ?",
                              (order_no,)).fetchone()
            return None if row is None else _load(row)

        return self.db.runInteraction("load", txn)

    def _finish_load(self, order_no: str, state: LoadState, tac: str | None,
                     new_balance: int | None, now_ms: int) -> Deferred[Load]:
        def txn(cur: Cursor) -> Load:
            return _finish(cur, self._sealer, order_no, state, tac, new_balance, now_ms)

        return self.db.runInteraction(f"{state.value} load", txn)

    def settle_load(self, order_no: str, tac: str | None, new_balance: int,
                    now_ms: int) -> Deferred[Load]:
        return self._finish_load(order_no, LoadState.LOADED, tac, new_balance, now_ms)

    def reverse_load(self, order_no: str, now_ms: int) -> Deferred[Load]:
        return self._finish_load(order_no, LoadState.REVERSED, None, None, now_ms)

    # -- open / close card ----------------------------------------------------------------------

    def note_deposit_seq(self, pki_no: int, seq: int) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            cur.execute("UPDATE pki_cards SET last_deposit_seq = ? WHERE pki_no = ? AND"
                        " last_deposit_seq < ?", (seq, pki_no, seq))
            return cur.rowcount == 1

        return self.db.runInteraction("note_deposit_seq", txn)

    def record_deposit(self, logical_no: str, physical_no: str, op: int, flag: int,
                       pki_no: int, now_ms: int) -> Deferred[int]:
        def txn(cur: Cursor) -> int:
            row = cur.execute("INSERT INTO deposits (logical_no, physical_no, op, flag, pki_no,"
                              " at_ms) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                              (logical_no, physical_no, op, flag, pki_no, now_ms)).fetchone()
            assert row is not None
            # the registry follows the card: a closed card takes no order (flag 02 = closed)
            state = CardState.CLOSED if flag == 0x02 else CardState.ACTIVE
            cur.execute("UPDATE cards SET state = ?, updated_ms = ? WHERE logical_no = ?",
                        (state.value, now_ms, logical_no))
            return int(row[0])

        return self.db.runInteraction("record_deposit", txn)

    def deposit_flag(self, logical_no: str) -> Deferred[int | None]:
        def txn(cur: Cursor) -> int | None:
            row = cur.execute("SELECT flag FROM deposits WHERE logical_no = ? ORDER BY id DESC"
                              " LIMIT 1", (logical_no,)).fetchone()
            return None if row is None else int(row[0])

        return self.db.runInteraction("deposit_flag", txn)

    # -- operators' views ---------------------------------------------------------------------

    def search_orders(self, state: OrderState | None, logical_no: str | None,
                      pki_no: int | None, since_ms: int | None, until_ms: int | None,
                      limit: int) -> Deferred[list[tuple[Order, Load | None]]]:
        """Orders (newest first) with their loads, by any of the filters given."""

        def txn(cur: Cursor) -> list[tuple[Order, Load | None]]:
            o_cols = ", ".join(f"o.{c.strip()}" for c in _ORDER.split(","))
            l_cols = ", ".join(f"l.{c.strip()}" for c in _LOAD.split(","))
            sql = (f"SELECT {o_cols}, {l_cols} FROM orders o LEFT JOIN loads l ON"
                   " l.order_no = o.order_no WHERE 1 = 1")
            params: list[object] = []
            for clause, value in (("o.state = ?", state.value if state else None),
                                  ("o.logical_no = ?", logical_no), ("o.pki_no = ?", pki_no),
                                  ("o.created_ms >= ?", since_ms),
                                  ("o.created_ms < ?", until_ms)):
                if value is not None:
                    sql += f" AND {clause}"
                    params.append(value)
            sql += " ORDER BY o.created_ms DESC, o.order_no DESC LIMIT ?"
            params.append(limit)
            width = len(_ORDER.split(","))
            return [(_order(row[:width]), None if row[width] is None else _load(row[width:]))
                    for row in cur.execute(sql, params).fetchall()]

        return self.db.runInteraction("search orders", txn)

    def search_payments(self, platform_no: int | None, without_order: bool, limit: int
                        ) -> Deferred[list[dict[str, object]]]:
        """Payments (newest first): who paid what, its order if any, its refusal or refund."""

        def txn(cur: Cursor) -> list[dict[str, object]]:
            sql = ("SELECT p.platform_no, p.biz_serial_no, p.money, p.pki_no, p.created_ms,"
                   " p.refusal, p.refunded_ms, o.order_no, o.state FROM payments p LEFT JOIN"
                   " orders o ON o.platform_no = p.platform_no AND o.biz_serial_no ="
                   " p.biz_serial_no WHERE 1 = 1")
            params: list[object] = []
            if platform_no is not None:
                sql += " AND p.platform_no = ?"
                params.append(platform_no)
            if without_order:
                sql += " AND o.order_no IS NULL"
            sql += " ORDER BY p.created_ms DESC LIMIT ?"
            params.append(limit)
            columns = ("platform_no, biz_serial_no, money, pki_no, created_ms, refusal,"
                       " refunded_ms, order_no, order_state")
            return [by_name(columns, row) for row in cur.execute(sql, params).fetchall()]

        return self.db.runInteraction("search payments", txn)

    def entries(self, reference: str) -> Deferred[list[tuple[str, int, list[tuple[str, int]]]]]:
        """The journal entries that name a reference (an order, or PLATFORM:BIZ of a payment):
        (kind, at_ms, postings)."""

        def txn(cur: Cursor) -> list[tuple[str, int, list[tuple[str, int]]]]:
            out = []
            for entry, kind, at in cur.execute(
                    "SELECT id, kind, at_ms FROM journal_entries WHERE reference = ? ORDER BY id",
                    (reference,)).fetchall():
                postings = [(str(a), int(m)) for a, m in cur.execute(
                    "SELECT account, amount FROM postings WHERE entry_id = ? ORDER BY account",
                    (entry,)).fetchall()]
                out.append((str(kind), int(at), postings))
            return out

        return self.db.runInteraction("entries", txn)

    # -- the card registry --------------------------------------------------------------------

    def register_card(self, card: IssuedCard, now_ms: int) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            known = issued_card(cur, card.logical_no)
            if known is not None:
                if (known.kind, known.physical_no) != (card.kind, card.physical_no):
                    raise Conflict("a card with this logical number was issued already, as "
                                   "another card")
                return False
            cur.execute("INSERT INTO cards (logical_no, card_kind, physical_no, state,"
                        " created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
                        (card.logical_no, card.kind.value, card.physical_no.lower(),
                         card.state.value, now_ms, now_ms))
            return True

        return self.db.runInteraction("register_card", txn)

    def card(self, logical_no: str) -> Deferred[IssuedCard | None]:
        def txn(cur: Cursor) -> IssuedCard | None:
            return issued_card(cur, logical_no)

        return self.db.runInteraction("card", txn)

    # -- money at risk and operators' decisions ---------------------------------------------

    def note_payment_refusal(self, platform_no: int, biz_serial_no: str, pki_no: int,
                             reason: str, now_ms: int) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            cur.execute("UPDATE payments SET refusal = ?, refused_ms = ? WHERE platform_no = ?"
                        " AND biz_serial_no = ? AND pki_no = ? AND refunded_ms IS NULL AND NOT"
                        " EXISTS (SELECT 1 FROM orders o WHERE o.platform_no ="
                        " payments.platform_no AND o.biz_serial_no = payments.biz_serial_no)",
                        (reason[:500], now_ms, platform_no, biz_serial_no, pki_no))
            return cur.rowcount == 1

        return self.db.runInteraction("note_payment_refusal", txn)

    def money_at_risk(self, now_ms: int) -> Deferred[list[AtRisk]]:
        def txn(cur: Cursor) -> list[AtRisk]:
            out = []
            for row in cur.execute(f"SELECT {_LOAD} FROM loads WHERE state = ? ORDER BY"
                                   " created_ms", (LoadState.PENDING.value,)).fetchall():
                load = _load(row)
                out.append(AtRisk("load in doubt", load.order_no, load.amount, load.created_ms,
                                  f"{load.card_kind.value} card, terminal PKI {load.pki_no}"))
            for platform, biz, money, created, refusal in cur.execute(
                    "SELECT p.platform_no, p.biz_serial_no, p.money, p.created_ms, p.refusal"
                    " FROM payments p WHERE p.refunded_ms IS NULL AND NOT EXISTS (SELECT 1"
                    " FROM orders o WHERE o.platform_no = p.platform_no AND o.biz_serial_no ="
                    " p.biz_serial_no) ORDER BY p.created_ms").fetchall():
                out.append(AtRisk("payment without order", f"{platform}:{biz}", int(money),
                                  int(created), f"refused: {refusal}" if refusal else
                                  "no order made yet"))
            for order_no, amount, created in cur.execute(
                    "SELECT order_no, amount, created_ms FROM orders WHERE state = ?"
                    " AND created_ms < ? ORDER BY created_ms",
                    (OrderState.CREATED.value, now_ms - STALE_ORDER_MS)).fetchall():
                out.append(AtRisk("order not loaded", str(order_no), int(amount), int(created),
                                  "paid, no load for more than a day"))
            return out

        return self.db.runInteraction("money_at_risk", txn)

    def resolve_load(self, order_no: str, verdict: Verdict, reason: str, operator: str,
                     now_ms: int) -> Deferred[Load]:
        def txn(cur: Cursor) -> Load:
            row = cur.execute(f"SELECT {_LOAD} FROM loads WHERE order_no = ?",
                              (order_no,)).fetchone()
            if row is None:
                raise NotFound(f"no load of order {order_no}")
            try:
                decision = operator_decision(_load(row), verdict, reason)
            except (ValueError, IllegalMove) as e:
                raise Conflict(str(e)) from None
            state = LoadState.LOADED if verdict is Verdict.SETTLE else LoadState.REVERSED
            done = _finish(cur, self._sealer, order_no, state, None, decision.new_balance,
                           now_ms)
            decided(cur, "load", order_no, verdict.value, reason, operator, now_ms)
            return done

        return self.db.runInteraction("resolve load", txn)

    def refund_payment(self, platform_no: int, biz_serial_no: str, reason: str, operator: str,
                       now_ms: int) -> Deferred[Payment]:
        def txn(cur: Cursor) -> Payment:
            if not reason.strip():
                raise Conflict("a refund needs a reason")
            row = cur.execute(f"SELECT {_PAYMENT}, refunded_ms FROM payments WHERE"
                              " platform_no = ? AND biz_serial_no = ?",
                              (platform_no, biz_serial_no)).fetchone()
            if row is None:
                raise NotFound(f"no payment {platform_no}:{biz_serial_no}")
            if by_name(f"{_PAYMENT}, refunded_ms", row)["refunded_ms"] is not None:
                raise Conflict(f"payment {platform_no}:{biz_serial_no} was refunded already")
            if cur.execute("SELECT 1 FROM orders WHERE platform_no = ? AND biz_serial_no = ?",
                           (platform_no, biz_serial_no)).fetchone() is not None:
                raise Conflict(f"payment {platform_no}:{biz_serial_no} has an order: it is "
                               "loaded or reversed through its order, not refunded")
            payment = _payment(row)
            cur.execute("UPDATE payments SET refunded_ms = ? WHERE platform_no = ? AND"
                        " biz_serial_no = ?", (now_ms, platform_no, biz_serial_no))
            post(cur, "refund", f"{platform_no}:{biz_serial_no}", now_ms,
                 _refund_postings(platform_no, payment.user_id, payment.money))
            decided(cur, "payment", f"{platform_no}:{biz_serial_no}", "refund", reason,
                     operator, now_ms)
            return payment

        return self.db.runInteraction("refund payment", txn)

    def decisions(self, reference: str) -> Deferred[list[tuple[str, str, str, str, int]]]:
        def txn(cur: Cursor) -> list[tuple[str, str, str, str, int]]:
            return [(str(k), str(d), str(r), str(o), int(t)) for k, d, r, o, t in cur.execute(
                "SELECT kind, decision, reason, operator, at_ms FROM decisions WHERE"
                " reference = ? ORDER BY id", (reference,)).fetchall()]

        return self.db.runInteraction("decisions", txn)

    # -- checks -----------------------------------------------------------------------------------

    def check(self) -> Deferred[list[str]]:
        """Every inconsistency between the journal, the orders and the loads (none: [])."""
        return self.db.runInteraction("check", _check)

    def reconcile(self, day: str, platform_no: int | None) -> Deferred[list[ReconRow]]:
        start = datetime.strptime(day, "%Y%m%d").replace(tzinfo=CHINA)
        since = int(start.timestamp() * 1000)
        until = since + 86_400_000

        def txn(cur: Cursor) -> list[ReconRow]:
            sql = ("SELECT o.platform_no, o.biz_serial_no, o.order_no, o.logical_no, l.amount,"
                   " l.updated_ms FROM loads l JOIN orders o ON o.order_no = l.order_no"
                   " WHERE l.state = ? AND l.updated_ms >= ? AND l.updated_ms < ?")
            params: list[object] = [LoadState.LOADED.value, since, until]
            if platform_no is not None:
                sql += " AND o.platform_no = ?"
                params.append(platform_no)
            sql += " ORDER BY o.platform_no, o.biz_serial_no"
            return [ReconRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]))
                    for r in cur.execute(sql, params).fetchall()]

        return self.db.runInteraction("reconcile", txn)

    def balances(self) -> Deferred[dict[str, int]]:
        """Every account's balance, derived from the postings."""

        def txn(cur: Cursor) -> dict[str, int]:
            rows = cur.execute("SELECT account, SUM(amount) FROM postings GROUP BY account")
            return {str(a): int(s) for a, s in rows.fetchall()}

        return self.db.runInteraction("balances", txn)

    def close(self) -> None:
        self.db.close()


_SESSION_COLUMNS = "pki_no, user_id, serial, session_key, created_ms, expires_ms"


def _register_payment(cur: Cursor, platform_no: int, claim: PaymentClaim, now_ms: int
                      ) -> tuple[Payment, bool]:
    row = cur.execute(
        f"SELECT {_PAYMENT} FROM payments WHERE platform_no = ? AND biz_serial_no = ?",
        (platform_no, claim.biz_serial_no),
    ).fetchone()
    if row is not None:
        if by_name(_PAYMENT, row)["fingerprint"] != claim.fingerprint:
            raise Conflict(f"biz_serial_no {claim.biz_serial_no} was registered with other "
                           "fields")
        return _payment(row), False
    payment = Payment(platform_no, claim.biz_serial_no, claim.money, claim.user_id,
                      claim.pki_no, now_ms)
    insert_payment(cur, payment, account_platform(platform_no), claim.fingerprint)
    return payment, True


def _create_order(cur: Cursor, platform_no: int, claim: OrderClaim, now_ms: int
                  ) -> tuple[Order, bool]:
    biz_serial_no, pki_no, card, amount = (claim.biz_serial_no, claim.pki_no, claim.card,
                                           claim.amount)
    payment = cur.execute(
        "SELECT money, pki_no FROM payments WHERE platform_no = ? AND biz_serial_no = ?",
        (platform_no, biz_serial_no),
    ).fetchone()
    # Money paid for one terminal's user is bound to a card by that terminal only; to any
    # other, someone else's payment is indistinguishable from none.
    if payment is None or int(payment[1]) != pki_no:
        raise NotFound(f"no payment for biz_serial_no {biz_serial_no} of platform "
                       f"{platform_no} by this terminal: call APPLLogin (type 5) first")
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
    if payment_refunded(cur, platform_no, biz_serial_no):
        raise Conflict(f"the payment under biz_serial_no {biz_serial_no} was refunded")
    refusal = card_refusal(issued_card(cur, card.logical_no), card.kind,
                           card.physical_no, card.balance, amount)
    if refusal is not None:
        raise CardRefused(refusal)
    order = insert_order(cur, platform_no, biz_serial_no, pki_no, card.kind,
                         card.logical_no, card.physical_no, amount, now_ms)
    return order, True


def _order_numbered(cur: Cursor, order_no: str) -> Order | None:
    row = cur.execute(f"SELECT {_ORDER} FROM orders WHERE order_no = ?", (order_no,)).fetchone()
    return None if row is None else _order(row)


def _session_row(cur: Cursor, column: str, value: object) -> tuple[Any, ...] | None:
    """The session whose C{column} ("pki_no" or "serial") is C{value}, of an active card, as
    a row of L{_SESSION_COLUMNS} (expired or not: L{SQLLedger._session} decides)."""
    assert column in ("pki_no", "serial")
    return cur.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE {column} = ?"
                       " AND EXISTS (SELECT 1 FROM pki_cards c WHERE c.pki_no = s.pki_no"
                       " AND c.status = ?)", (value, CardStatus.ACTIVE.value)).fetchone()


def _platform(cur: Cursor, platform_no: int) -> Platform | None:
    row = cur.execute("SELECT platform_no, name, active FROM platforms WHERE platform_no = ?",
                      (platform_no,)).fetchone()
    return None if row is None else Platform(int(row[0]), str(row[1]), bool(row[2]))


def _next_serial(cur: Cursor, pki_no: int, now_ms: int) -> str:
    row = cur.execute(
        "INSERT INTO handshake_serials (pki_no, created_ms) VALUES (?, ?) RETURNING serial",
        (pki_no, now_ms),
    ).fetchone()
    assert row is not None
    return str(int(row[0])).rjust(SERIAL_DIGITS, "0")


def _note_card_random(cur: Cursor, pki_no: int, card_random: bytes, now_ms: int) -> bool:
    seen = cur.execute("SELECT 1 FROM card_randoms WHERE pki_no = ? AND card_random = ?",
                       (pki_no, card_random)).fetchone()
    if seen:
        return False
    cur.execute("INSERT INTO card_randoms (pki_no, card_random, at_ms) VALUES (?, ?, ?)",
                (pki_no, card_random, now_ms))
    return True


def _record_signin(cur: Cursor, pki_no: int | None, user_id: bytes, outcome: str,
                   now_ms: int) -> None:
    cur.execute("INSERT INTO signins (pki_no, user_id, outcome, at_ms) VALUES (?, ?, ?, ?)",
                (pki_no, user_id.hex(), outcome, now_ms))


def payment_refunded(cur: Cursor, platform_no: int, biz_serial_no: str) -> bool:
    row = cur.execute("SELECT refunded_ms FROM payments WHERE platform_no = ? AND"
                      " biz_serial_no = ?", (platform_no, biz_serial_no)).fetchone()
    return row is not None and row[0] is not None


def _refund_postings(platform_no: int, user_id: str, money: int) -> list[tuple[str, int]]:
    """A refund undoes the payment entry: the money goes back to who paid it."""
    payer = account_merchant(user_id) if platform_no == 0 else account_platform(platform_no)
    return [(ACCOUNT_AWAITING_LOAD, money), (payer, -money)]


def _pending_load(cur: Cursor, logical_no: str) -> Load | None:
    row = cur.execute(f"SELECT {_LOAD} FROM loads WHERE logical_no = ? AND state = ?"
                      " ORDER BY created_ms LIMIT 1",
                      (logical_no, LoadState.PENDING.value)).fetchone()
    return None if row is None else _load(row)


def _finish(cur: Cursor, sealer: Sealer, order_no: str, state: LoadState, tac: str | None,
            new_balance: int | None, now_ms: int) -> Load:
    """Settle or reverse a pending load with its journal entry (in the caller's transaction)."""
    row = cur.execute(f"SELECT {_LOAD} FROM loads WHERE order_no = ?", (order_no,)).fetchone()
    if row is None:
        raise NotFound(f"no load of order {order_no}")
    current = _load(row)
    if current.state is state:
        return current  # said twice: the first one counts
    if current.state is not LoadState.PENDING:
        raise Conflict(f"load of order {order_no} is {current.state.value} already")
    cur.execute("UPDATE loads SET state = ?, tac = ?, new_balance = ?, updated_ms = ?"
                " WHERE order_no = ? AND state = ?",
                (state.value, tac, new_balance, now_ms, order_no, LoadState.PENDING.value))
    if cur.rowcount != 1:  # pragma: no cover - serialised by the transaction
        raise Conflict(f"load of order {order_no} changed meanwhile")
    order_state = OrderState.LOADED if state is LoadState.LOADED else OrderState.REVERSED
    cur.execute("UPDATE orders SET state = ?, updated_ms = ? WHERE order_no = ?",
                (order_state.value, now_ms, order_no))
    other = ACCOUNT_CARD_FLOAT if state is LoadState.LOADED else ACCOUNT_REVERSED
    post(cur, "load" if state is LoadState.LOADED else "reversal", order_no, now_ms,
         [(ACCOUNT_AWAITING_LOAD, current.amount), (other, -current.amount)])
    notify_topup(cur, sealer, order_no, state is LoadState.LOADED, current.amount, now_ms)
    return Load(**{**current.__dict__, "state": state, "tac": tac,
                   "new_balance": new_balance, "updated_ms": now_ms})


_LOAD = ("order_no, pki_no, card_kind, logical_no, physical_no, amount, old_balance,"
         " online_serial, terminal_id, load_time, key_version, state, tac, new_balance,"
         " created_ms, updated_ms, hold_until_ms")


def _load_row(load: Load) -> tuple[Any, ...]:
    return (load.order_no, load.pki_no, load.card_kind.value, load.logical_no, load.physical_no,
            load.amount, load.old_balance, load.online_serial, load.terminal_id, load.load_time,
            load.key_version, load.state.value, load.tac, load.new_balance, load.created_ms,
            load.updated_ms, load.hold_until_ms)


def _load(row: Sequence[Any]) -> Load:
    r = by_name(_LOAD, row)
    return Load(
        order_no=str(r["order_no"]), pki_no=int(r["pki_no"]), card_kind=CardKind(r["card_kind"]),
        logical_no=str(r["logical_no"]), physical_no=str(r["physical_no"]),
        amount=int(r["amount"]), old_balance=int(r["old_balance"]),
        online_serial=_int_or_none(r["online_serial"]), terminal_id=str(r["terminal_id"]),
        load_time=str(r["load_time"]), key_version=int(r["key_version"]),
        state=LoadState(r["state"]), tac=r["tac"], new_balance=_int_or_none(r["new_balance"]),
        created_ms=int(r["created_ms"]), updated_ms=int(r["updated_ms"]),
        hold_until_ms=int(r["hold_until_ms"]))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _check(cur: Cursor) -> list[str]:
    problems: list[str] = []
    for entry, total in cur.execute("SELECT entry_id, SUM(amount) FROM postings GROUP BY"
                                    " entry_id HAVING SUM(amount) <> 0").fetchall():
        problems.append(f"journal entry {entry} does not balance ({total})")
    for (entry,) in cur.execute("SELECT id FROM journal_entries e WHERE NOT EXISTS (SELECT 1"
                                " FROM postings p WHERE p.entry_id = e.id)").fetchall():
        problems.append(f"journal entry {entry} has no postings")
    # every entry's complete postings, by what it records: (kind, reference) -> entries
    postings: dict[int, list[tuple[str, int]]] = {}
    for entry, account, amount in cur.execute(
            "SELECT entry_id, account, amount FROM postings").fetchall():
        postings.setdefault(int(entry), []).append((str(account), int(amount)))
    entries: dict[tuple[str, str], list[list[tuple[str, int]]]] = {}
    for entry, kind, ref in cur.execute(
            "SELECT id, kind, reference FROM journal_entries").fetchall():
        entries.setdefault((str(kind), str(ref)), []).append(sorted(postings.get(int(entry), [])))
    ordered = {(int(p), str(b)) for p, b in cur.execute(
        "SELECT platform_no, biz_serial_no FROM orders").fetchall()}
    for platform, biz, money, user, refunded in cur.execute(
            "SELECT platform_no, biz_serial_no, money, user_id, refunded_ms FROM"
            " payments").fetchall():
        # platform 0: a merchant's top-up (/v2_queryBuy), paid from the merchant's balance
        payer = account_merchant(str(user)) if int(platform) == 0 else \
            account_platform(int(platform))
        expected_payment = sorted([(payer, int(money)), (ACCOUNT_AWAITING_LOAD, -int(money))])
        if entries.get(("payment", f"{platform}:{biz}")) != [expected_payment]:
            problems.append(f"payment {platform}:{biz} is not posted exactly once as paid")
        refund = [sorted(_refund_postings(int(platform), str(user), int(money)))]
        if entries.get(("refund", f"{platform}:{biz}"), []) != (refund if refunded else []):
            problems.append(f"payment {platform}:{biz} is {'' if refunded else 'not '}refunded"
                            " but its refund entries are not as they must be")
        if refunded is not None and (int(platform), str(biz)) in ordered:
            problems.append(f"payment {platform}:{biz} was refunded and has an order")
    pending_cards: dict[str, int] = {}
    for (logical,) in cur.execute("SELECT logical_no FROM loads WHERE state = ?",
                                  (LoadState.PENDING.value,)).fetchall():
        pending_cards[str(logical)] = pending_cards.get(str(logical), 0) + 1
    for n in pending_cards.values():
        if n > 1:
            problems.append(f"a card has {n} loads in doubt at once")
    orders = {str(r[0]): (str(r[1]), int(r[2])) for r in
              cur.execute("SELECT order_no, state, amount FROM orders").fetchall()}
    loads = {str(r[0]): _load(r) for r in
             cur.execute(f"SELECT {_LOAD} FROM loads").fetchall()}
    for order_no, (state, amount) in orders.items():
        load = loads.get(order_no)
        posted_load = entries.get(("load", order_no), [])
        posted_rev = entries.get(("reversal", order_no), [])
        as_loaded = [sorted([(ACCOUNT_AWAITING_LOAD, amount), (ACCOUNT_CARD_FLOAT, -amount)])]
        as_reversed = [sorted([(ACCOUNT_AWAITING_LOAD, amount), (ACCOUNT_REVERSED, -amount)])]
        expected = {
            OrderState.CREATED: (None, [], []),
            OrderState.PENDING: (LoadState.PENDING, [], []),
            OrderState.LOADED: (LoadState.LOADED, as_loaded, []),
            OrderState.REVERSED: (LoadState.REVERSED, [], as_reversed),
        }[OrderState(state)]
        if (load.state if load else None, posted_load, posted_rev) != expected:
            problems.append(f"order {order_no} is {state} but its load is "
                            f"{load.state.value if load else 'absent'} with {len(posted_load)}"
                            f" load and {len(posted_rev)} reversal entries not as they must be")
        if load is not None and load.state is LoadState.LOADED and (
                load.new_balance != load.old_balance + load.amount or load.amount != amount):
            problems.append(f"order {order_no}: loaded balance does not add up")
    for system_id, state, customer, face, actual in cur.execute(
            "SELECT system_order_id, state, customer_id, success_amount, actual_amount FROM"
            " consignments").fetchall():
        posted = entries.get(("consignment", str(system_id)), [])
        if ConsignmentState(state) is ConsignmentState.SUCCESS:
            want = [sorted([(ACCOUNT_VOUCHERS_OUTSTANDING, int(face)),
                            (account_merchant(str(customer)), -int(actual)),
                            (ACCOUNT_CONSIGNMENT_FEES, int(actual) - int(face))])]
        else:
            want = []
        if posted != want:
            problems.append(f"consignment {system_id} is {state} but has {len(posted)} entries"
                            " not as they must be")
    return problems


_PAYMENT = "platform_no, biz_serial_no, money, user_id, pki_no, created_ms, fingerprint"
_ORDER = ORDER_COLUMNS


def _payment(row: Sequence[Any]) -> Payment:
    r = by_name(_PAYMENT, row[:len(_PAYMENT.split(","))])
    return Payment(platform_no=int(r["platform_no"]), biz_serial_no=str(r["biz_serial_no"]),
                   money=int(r["money"]), user_id=str(r["user_id"]), pki_no=int(r["pki_no"]),
                   created_ms=int(r["created_ms"]))


def _order(row: Sequence[Any]) -> Order:
    r = by_name(_ORDER, row)
    return Order(order_no=str(r["order_no"]), platform_no=int(r["platform_no"]),
                 biz_serial_no=str(r["biz_serial_no"]), pki_no=int(r["pki_no"]),
                 card_kind=CardKind(r["card_kind"]), logical_no=str(r["logical_no"]),
                 physical_no=str(r["physical_no"]), amount=int(r["amount"]),
                 state=OrderState(r["state"]), created_ms=int(r["created_ms"]),
                 updated_ms=int(r["updated_ms"]))
