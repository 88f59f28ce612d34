"""
L{IIssuer} for the platform's own prepaid vouchers: what merchants consign.

A voucher is a card number (16 digits) and a password (12 digits), a face value in fen and a
product code. Neither the number nor the password is stored: the number as an HMAC under the
platform's storage key (so it can be looked up) and masked for display, the password as a
salted PBKDF2 hash. A voucher is redeemed at most once; redeeming it again under the same
reference (a consignment order being processed again after a crash) returns the same result,
under any other reference it is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from lnt.domain.masking import mask_card
from lnt.domain.records import Redemption, VoucherState
from lnt.interfaces import IIssuer
from lnt.storage.database import Cursor, Transactor
from lnt.storage.journal import ACCOUNT_VOUCHERS_OUTSTANDING, ACCOUNT_VOUCHERS_SOLD, post

PBKDF2_ROUNDS = 100_000


def _password_hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS)


@dataclass(frozen=True)
class IssuedVoucher:
    card_number: str
    password: str
    face_value: int
    product_code: str


@implementer(IIssuer)
class VoucherIssuer:
    def __init__(self, db: Transactor, storage_key: bytes,
                 hasher: Callable[[str, bytes], Deferred[bytes]] | None = None) -> None:
        self.db = db
        self._key = storage_key
        self._hash = hasher or (lambda password, salt: deferToThread(_password_hash, password,
                                                                     salt))

    def _card_id(self, card_number: str) -> str:
        return hmac.new(self._key, b"voucher:" + card_number.encode(), hashlib.sha256).hexdigest()

    def issue(self, product_code: str, face_value: int, count: int, now_ms: int
              ) -> Deferred[list[IssuedVoucher]]:
        """Issue C{count} vouchers (sold: the journal records them as outstanding)."""
        if face_value <= 0 or not 0 < count <= 10_000:
            raise ValueError("face value must be positive and count 1..10000")
        made = [IssuedVoucher("9" + "".join(secrets.choice("0123456789") for _ in range(15)),
                              "".join(secrets.choice("0123456789") for _ in range(12)),
                              face_value, product_code) for _ in range(count)]
        rows = []
        for v in made:
            salt = secrets.token_bytes(16)
            rows.append((self._card_id(v.card_number), mask_card(v.card_number), salt,
                         _password_hash(v.password, salt), face_value, product_code,
                         VoucherState.ISSUED.value, now_ms))

        def txn(cur: Cursor) -> list[IssuedVoucher]:
            cur.executemany("INSERT INTO vouchers (card_id, masked, salt, password_hash,"
                            " face_value, product_code, state, created_ms) VALUES"
                            " (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            total = face_value * count
            post(cur, "voucher-issue", f"{product_code}:{now_ms}:{rows[0][0][:12]}", now_ms,
                 [(ACCOUNT_VOUCHERS_SOLD, total), (ACCOUNT_VOUCHERS_OUTSTANDING, -total)])
            return made

        return self.db.runInteraction("issue vouchers", txn)

    def redeem(self, card_number: str, password: str, product_code: str, face_value: int,
               reference: str, now_ms: int) -> Deferred[Redemption]:
        return Deferred.fromCoroutine(self._redeem(card_number, password, product_code,
                                                   face_value, reference, now_ms))

    async def _redeem(self, card_number: str, password: str, product_code: str,
                      face_value: int, reference: str, now_ms: int) -> Redemption:
        card_id = self._card_id(card_number)

        def read(cur: Cursor) -> tuple[Any, ...] | None:
            return cur.execute("SELECT salt, password_hash FROM vouchers WHERE card_id = ?",
                               (card_id,)).fetchone()

        row = await self.db.runInteraction("voucher salt", read)
        if row is None:
            return Redemption(False, None, "unknown card number")
        # the slow hash runs in a worker thread, outside any database transaction
        given = await self._hash(password, bytes(row[0]))
        if not hmac.compare_digest(given, bytes(row[1])):
            return Redemption(False, None, "wrong card password")

        def txn(cur: Cursor) -> Redemption:
            row = cur.execute("SELECT face_value, product_code, state, redeemed_ref FROM"
                              " vouchers WHERE card_id = ?", (card_id,)).fetchone()
            if row is None:  # pragma: no cover - vouchers are never deleted
                return Redemption(False, None, "unknown card number")
            value, product, state, ref = row
            if VoucherState(state) is VoucherState.REDEEMED:
                if ref == reference:
                    return Redemption(True, int(value), "redeemed")
                return Redemption(False, None, "card already redeemed")
            if product != product_code:
                return Redemption(False, None, f"card is not of product {product_code}")
            if int(value) != face_value:
                return Redemption(False, None, f"face value is not {face_value}")
            cur.execute("UPDATE vouchers SET state = ?, redeemed_ref = ?, redeemed_ms = ?"
                        " WHERE card_id = ? AND state = ?",
                        (VoucherState.REDEEMED.value, reference, now_ms, card_id,
                         VoucherState.ISSUED.value))
            return Redemption(True, int(value), "redeemed")

        return await self.db.runInteraction("redeem voucher", txn)
