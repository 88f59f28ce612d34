"""
Sealing secrets at rest (session keys, consignment card data): AES-256-GCM bound to a label
naming the row, so that a copy of the database alone gives nothing away and a sealed value
cannot be moved to another row.
"""

from __future__ import annotations

from Crypto.Cipher import AES
from Crypto.Random import get_random_bytes


class Sealer:
    """
    AES-256-GCM with a 32-byte key: C{seal} gives nonce (12) || ciphertext || tag (16), bound
    to an associated label so that a sealed value cannot be moved to another row.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("storage key must be 32 bytes")
        self._key = key

    def seal(self, plaintext: bytes, label: bytes) -> bytes:
        nonce = get_random_bytes(12)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(label)
        ct, tag = cipher.encrypt_and_digest(plaintext)
        return nonce + ct + tag

    def open(self, sealed: bytes, label: bytes) -> bytes:
        if len(sealed) < 28:
            raise ValueError("sealed value too short")
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=sealed[:12])
        cipher.update(label)
        return bytes(cipher.decrypt_and_verify(sealed[12:-16], sealed[-16:]))
