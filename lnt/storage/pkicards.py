"""
L{IPKI} backed by the ledger's database (table C{pki_cards}) and the platform key file.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.crypto.ec import public_from_raw
from lnt.domain.records import AlreadyExists, CardStatus, PKICard
from lnt.interfaces import IPKI
from lnt.keyfiles import PlatformKeys
from lnt.storage.database import Cursor, Transactor

_COLUMNS = "pki_no, user_id, public_key, key_version, status"


def pki_card(row: tuple[Any, ...]) -> PKICard:
    pki_no, user_id, public_key, key_version, status = row
    return PKICard(int(pki_no), bytes.fromhex(user_id), bytes(public_key), int(key_version),
                   CardStatus(status))


def card_numbered(cur: Cursor, pki_no: int) -> PKICard | None:
    """The PKI card with this number, whatever its status (in the caller's transaction)."""
    row = cur.execute(f"SELECT {_COLUMNS} FROM pki_cards WHERE pki_no = ?",
                      (pki_no,)).fetchone()
    return None if row is None else pki_card(row)


def active_card_of_user(cur: Cursor, user_id: bytes) -> PKICard | None:
    """The active PKI card bound to this user ID, if any (in the caller's transaction)."""
    row = cur.execute(f"SELECT {_COLUMNS} FROM pki_cards WHERE user_id = ? AND status = ?"
                      " ORDER BY pki_no LIMIT 1", (user_id.hex(), CardStatus.ACTIVE.value)
                      ).fetchone()
    return None if row is None else pki_card(row)


@implementer(IPKI)
class LedgerPKI:
    def __init__(self, db: Transactor, keys: PlatformKeys) -> None:
        self.db = db
        self._keys = keys

    def platform_public_key(self) -> bytes:
        return self._keys.public_key

    def platform_sign(self, data: bytes) -> bytes:
        return self._keys.sign(data)

    def lookup(self, pki_no: int) -> Deferred[PKICard | None]:
        return self.db.runInteraction("pki lookup", card_numbered, pki_no)

    def register(self, card: PKICard) -> Deferred[None]:
        public_from_raw(card.public_key)  # refuse a key that is not a curve point
        if not 0 <= card.pki_no < 0xFFFFFFFF:
            raise ValueError("PKI card number must be below 0xFFFFFFFF")

        def txn(cur: Cursor) -> None:
            if cur.execute("SELECT 1 FROM pki_cards WHERE pki_no = ?", (card.pki_no,)).fetchone():
                raise AlreadyExists(f"PKI card {card.pki_no} is registered already")
            cur.execute(
                f"INSERT INTO pki_cards ({_COLUMNS}, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (card.pki_no, card.user_id.hex(), card.public_key, card.key_version,
                 card.status.value, int(time.time() * 1000)),
            )

        return self.db.runInteraction("pki register", txn)

    def revoke(self, pki_no: int) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            cur.execute(
                "UPDATE pki_cards SET status = ?, revoked_ms = ? WHERE pki_no = ?",
                (CardStatus.REVOKED.value, int(time.time() * 1000), pki_no),
            )
            found = cur.rowcount > 0
            cur.execute("DELETE FROM sessions WHERE pki_no = ?", (pki_no,))
            return found

        return self.db.runInteraction("pki revoke", txn)

    def enable(self, pki_no: int) -> Deferred[bool]:
        def txn(cur: Cursor) -> bool:
            cur.execute("UPDATE pki_cards SET status = ?, revoked_ms = NULL WHERE pki_no = ?",
                        (CardStatus.ACTIVE.value, pki_no))
            return cur.rowcount > 0

        return self.db.runInteraction("pki enable", txn)

    def card_for_user(self, user_id: bytes) -> Deferred[PKICard | None]:
        return self.db.runInteraction("pki card_for_user", active_card_of_user, user_id)

    def cards(self) -> Deferred[list[PKICard]]:
        def txn(cur: Cursor) -> list[PKICard]:
            rows = cur.execute(f"SELECT {_COLUMNS} FROM pki_cards ORDER BY pki_no").fetchall()
            return [pki_card(r) for r in rows]

        return self.db.runInteraction("pki cards", txn)
