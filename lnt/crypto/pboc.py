"""
PBOC (JR/T 0025) electronic purse load cryptography, as docs/protocol.rst ("CPU purse load")
defines it for this project: both the platform's core module and the simulator's virtual CPU
card compute with these functions.

 - card load key DLK = 3DES(MK, ID) || 3DES(MK, NOT ID), ID = the card's 8-byte application
   serial (its logical card number in BCD);
 - load session key SESLK = 3DES(DLK, random (4) || online serial (2) || 80 00);
 - MAC = ISO 9797-1 algorithm 1: pad with 80 00.., DES-CBC under SESLK from a zero IV, the
   leftmost 4 bytes of the last block;
 - MAC1 over old balance (4) || amount (4) || 02 || terminal ID (6);
 - MAC2 over amount (4) || 02 || terminal ID (6) || date (4) || time (3);
 - TAC over new balance (4) || online serial (2) || amount (4) || 02 || terminal ID (6) ||
   date (4) || time (3), keyed with the card's TAC key folded to 8 bytes (left XOR right).

Two-key 3DES whose halves are equal is single DES; pycryptodome refuses such keys, so
L{tdes} falls back to DES for them (the published session-key vector uses one).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from Crypto.Cipher import DES, DES3

TRANSACTION_TYPE_LOAD = 0x02


def tdes(key: bytes, block: bytes) -> bytes:
    """Two-key 3DES-ECB encryption of whole blocks (DES when both halves are equal)."""
    if len(key) != 16:
        raise ValueError("3DES key must be 16 bytes")
    return bytes(_ecb(key).encrypt(block))


@lru_cache(maxsize=64)
def _ecb(key: bytes) -> Any:
    """An ECB cipher per key, kept: making one costs more than using it (pycryptodome fixes
    the key's parity each time), and the issuer's master keys are used for every load."""
    if key[:8] == key[8:]:
        return DES.new(key[:8], DES.MODE_ECB)  # noqa: S304 - PBOC
    return DES3.new(key, DES3.MODE_ECB)


def diversify(master: bytes, card_id: bytes) -> bytes:
    """A card's 16-byte key from the issuer's master key and the card's 8-byte ID."""
    if len(card_id) != 8:
        raise ValueError("card ID must be 8 bytes")
    inverted = bytes(b ^ 0xFF for b in card_id)
    return tdes(master, card_id) + tdes(master, inverted)


def session_key(dlk: bytes, random: bytes, online_serial: int) -> bytes:
    return tdes(dlk, random + struct.pack(">H", online_serial) + b"\x80\x00")


def mac(key8: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 1, padding method 2, single DES, 4 bytes."""
    padded = data + b"\x80" + b"\x00" * (-(len(data) + 1) % 8)
    cipher = DES.new(key8, DES.MODE_CBC, iv=bytes(8))  # noqa: S304 - the card's algorithm
    return bytes(cipher.encrypt(padded)[-8:-4])


def mac1(seslk: bytes, old_balance: int, amount: int, terminal_id: bytes) -> bytes:
    return mac(seslk, struct.pack(">IIB", old_balance, amount, TRANSACTION_TYPE_LOAD) + terminal_id)


def mac2(seslk: bytes, amount: int, terminal_id: bytes, when: bytes) -> bytes:
    return mac(seslk, struct.pack(">IB", amount, TRANSACTION_TYPE_LOAD) + terminal_id + when)


def tac_key(dtk: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(dtk[:8], dtk[8:], strict=True))


def tac(dtk: bytes, new_balance: int, online_serial: int, amount: int, terminal_id: bytes,
        when: bytes) -> bytes:
    data = struct.pack(">IHIB", new_balance, online_serial, amount, TRANSACTION_TYPE_LOAD)
    return mac(tac_key(dtk), data + terminal_id + when)
