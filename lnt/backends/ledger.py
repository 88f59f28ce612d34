"""
L{ILedger} over SQL: one implementation for SQLite and PostgreSQL (the differences live in
L{lnt.backends.database.Engine}). Every public method is one transaction.

Secrets at rest: session keys are sealed (AES-256-GCM) with the platform's storage key before
they are written, so a copy of the database alone does not give them away.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.backends.database import Cursor, Transactor
from lnt.backends.keys import Sealer
from lnt.backends.schema import current_version
from lnt.interfaces import ILedger
from lnt.records import Session

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

    def close(self) -> None:
        self.db.close()
