"""
Sealing secrets at rest (session keys, consignment card data): AES-256-GCM bound to a label
naming the row, so that a copy of the database alone gives nothing away and a sealed value
cannot be moved to another row.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Sealer:
    """
    AES-256-GCM with a 32-byte key: C{seal} gives nonce (12) || ciphertext || tag (16), bound
    to an associated label so that a sealed value cannot be moved to another row.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("storage key must be 32 bytes")
        # OpenSSL's GCM (the cryptography package): a session row is opened on every flow and
        # order-API call, and pycryptodome's took 100 us of the reactor's time each
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, label: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, label)

    def open(self, sealed: bytes, label: bytes) -> bytes:
        """The plaintext; C{ValueError} when the value is not one we sealed under C{label}."""
        if len(sealed) < 28:
            raise ValueError("sealed value too short")
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], label)
        except InvalidTag:
            raise ValueError("MAC check failed") from None
