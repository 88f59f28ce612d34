"""
The sign-in scheme: the reader messages R_INIT, R_AC_LOGIN_1 and R_AC_LOGIN_2 and the
cryptography of the mutual authentication between a terminal's PKI card and the platform.

Both sides use this module: the platform's sign-in flow (L{lnt.flows.signin}) and the
simulator's reader (L{lnt.sim.reader}). docs/protocol.rst ("Sign-in") is the normative text;
tests/test_signin_scheme.py holds its test vectors.

In short (SIGMA-style, all keys P-256, signatures ECDSA/SHA-256, 64 bytes r || s):

 1. DD02 -> reader: R_INIT. The reader answers its PKI number, firmware and key version.
 2. DD04 -> reader: R_AC_LOGIN_1. The card draws Rc (8 random bytes) and an ephemeral key
    pair (ec, EC) and answers Rc, sig1 = Sign_card(L1 | pki | user | kver | Rc | EC), EC.
 3. DD06 -> reader: R_AC_LOGIN_2 with the platform's fresh handshake serial S (8 bytes BCD),
    sig2 = Sign_platform(L2 | T) and its ephemeral public key EP, where the transcript
    T = pki | user | kver | Rc | EC | S | EP.
 4. The card checks sig2 (so the platform is authentic and the exchange fresh: sig2 covers Rc
    and EC), derives the keys from ECDH(ec, EP) and answers a confirmation block, its sign-in
    counter, sig3 = Sign_card(L3 | T | block | counter) and its static public key.
 5. The platform checks sig3 (the card is authentic and the exchange fresh: sig3 covers S and
    EP), the confirmation MAC (the card holds the same session key) and that the counter went
    up (a cloned card shows up), then records the session and answers DD08 success.

Distinct labels L1/L2/L3 stop reflection; both ephemeral keys under both signatures stop a man
in the middle; fresh randoms on both sides stop replay (and the platform also refuses a card
random it has seen before).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lnt.crypto.ec import PrivateKey, ecdh, public_raw

#: the reader's status words for what goes wrong inside it

CLA = 0xBB
INS_INIT = 0x10
INS_LOGIN_1 = 0xC8
INS_LOGIN_2 = 0xC9

#: DD02's info, literally as the source document gives it
R_INIT = bytes((CLA, INS_INIT, 0, 0, 0))
#: DD04's info
R_AC_LOGIN_1 = bytes((CLA, INS_LOGIN_1, 0, 0, 0))
R_AC_LOGIN_2_HEADER = bytes((CLA, INS_LOGIN_2, 0, 0, 136))

LABEL_1 = b"LNT-SIGNIN-1"
LABEL_2 = b"LNT-SIGNIN-2"
LABEL_3 = b"LNT-SIGNIN-3"
LABEL_KEYS = b"LNT-SIGNIN-KEYS"
LABEL_CONFIRM = b"LNT-SIGNIN-CONFIRM"

SESSION_KEY_SIZE = 16

# Sizes of each stage's info (SPEC-NOTES section 5).
SIZE_DD03 = 14
SIZE_DD05 = 138
SIZE_DD06 = 141
SIZE_DD07 = 184


class SchemeError(ValueError):
    """A message does not parse or does not verify; the text says which check failed."""


@dataclass(frozen=True)
class InitAnswer:
    """R_INIT's answer (DD03): pki (4) | firmware (6) | key version (2) | SW (2)."""

    pki_no: int
    firmware: bytes
    key_version: int
    sw: bytes

    def encode(self) -> bytes:
        return struct.pack(">I6sH", self.pki_no, self.firmware, self.key_version) + self.sw

    @classmethod
    def decode(cls, info: bytes) -> InitAnswer:
        if len(info) != SIZE_DD03:
            raise SchemeError(f"R_INIT answer is {len(info)} bytes, not {SIZE_DD03}")
        pki_no, firmware, key_version = struct.unpack(">I6sH", info[:12])
        return cls(pki_no, firmware, key_version, info[12:])


@dataclass(frozen=True)
class Login1Answer:
    """R_AC_LOGIN_1's answer (DD05): Rc (8) | sig1 (64) | EC (64) | SW (2)."""

    card_random: bytes
    signature: bytes
    ephemeral: bytes
    sw: bytes

    def encode(self) -> bytes:
        return self.card_random + self.signature + self.ephemeral + self.sw

    @classmethod
    def decode(cls, info: bytes) -> Login1Answer:
        if len(info) != SIZE_DD05:
            raise SchemeError(f"R_AC_LOGIN_1 answer is {len(info)} bytes, not {SIZE_DD05}")
        return cls(info[:8], info[8:72], info[72:136], info[136:])


@dataclass(frozen=True)
class Login2Command:
    """R_AC_LOGIN_2 (DD06): BB C9 00 00 88 | serial (8, BCD) | sig2 (64) | EP (64)."""

    serial: bytes
    signature: bytes
    ephemeral: bytes

    def encode(self) -> bytes:
        return R_AC_LOGIN_2_HEADER + self.serial + self.signature + self.ephemeral

    @classmethod
    def decode(cls, info: bytes) -> Login2Command:
        if len(info) != SIZE_DD06:
            raise SchemeError(f"R_AC_LOGIN_2 is {len(info)} bytes, not {SIZE_DD06}")
        if info[:5] != R_AC_LOGIN_2_HEADER:
            raise SchemeError("R_AC_LOGIN_2 header wrong")
        return cls(info[5:13], info[13:77], info[77:141])


@dataclass(frozen=True)
class Login2Answer:
    """
    R_AC_LOGIN_2's answer (DD07): block (46) | counter (8) | sig3 (64) | card public key (64) |
    SW (2), where block = pki (4) | user ID (16) | serial (8) | key version (2) | confirm (16).
    """

    pki_no: int
    user_id: bytes
    serial: bytes
    key_version: int
    confirm: bytes
    counter: int
    signature: bytes
    public_key: bytes
    sw: bytes

    @property
    def block(self) -> bytes:
        return (
            struct.pack(">I", self.pki_no)
            + self.user_id
            + self.serial
            + struct.pack(">H", self.key_version)
            + self.confirm
        )

    def encode(self) -> bytes:
        return (
            self.block
            + struct.pack(">Q", self.counter)
            + self.signature
            + self.public_key
            + self.sw
        )

    @classmethod
    def decode(cls, info: bytes) -> Login2Answer:
        if len(info) != SIZE_DD07:
            raise SchemeError(f"R_AC_LOGIN_2 answer is {len(info)} bytes, not {SIZE_DD07}")
        (pki_no,) = struct.unpack(">I", info[:4])
        (key_version,) = struct.unpack(">H", info[28:30])
        (counter,) = struct.unpack(">Q", info[46:54])
        return cls(
            pki_no=pki_no,
            user_id=info[4:20],
            serial=info[20:28],
            key_version=key_version,
            confirm=info[30:46],
            counter=counter,
            signature=info[54:118],
            public_key=info[118:182],
            sw=info[182:184],
        )


def failed_answer(size: int, sw: bytes) -> bytes:
    """A reader's refusal padded to the stage's fixed size (terminals use fixed buffers)."""
    return bytes(size - 2) + sw


def identity(pki_no: int, user_id: bytes, key_version: int) -> bytes:
    return struct.pack(">I", pki_no) + user_id + struct.pack(">H", key_version)


def login1_signed(pki_no: int, user_id: bytes, key_version: int, rc: bytes, ec: bytes) -> bytes:
    """What sig1 signs."""
    return LABEL_1 + identity(pki_no, user_id, key_version) + rc + ec


def transcript(
    pki_no: int, user_id: bytes, key_version: int, rc: bytes, ec: bytes, serial: bytes, ep: bytes
) -> bytes:
    """T = pki | user | kver | Rc | EC | S | EP."""
    return identity(pki_no, user_id, key_version) + rc + ec + serial + ep


def login3_signed(t: bytes, block: bytes, counter: int) -> bytes:
    """What sig3 signs."""
    return LABEL_3 + t + block + struct.pack(">Q", counter)


def shared_secret(private: PrivateKey, peer_public: bytes) -> bytes:
    """The ECDH shared secret: the x coordinate of private * peer, 32 bytes."""
    try:
        return ecdh(private, peer_public)
    except ValueError:
        raise SchemeError("ephemeral public key is not a point on P-256") from None


@dataclass(frozen=True)
class SessionKeys:
    session_key: bytes = field(repr=False)
    confirm_key: bytes = field(repr=False)

    def confirm(self, t: bytes, counter: int) -> bytes:
        """The 16-byte key confirmation the card returns in its block."""
        mac = hmac.new(self.confirm_key, LABEL_CONFIRM + t + struct.pack(">Q", counter), sha256)
        return mac.digest()[:16]


def derive_keys(z: bytes, rc: bytes, serial: bytes, t: bytes) -> SessionKeys:
    """
    HKDF-SHA256(Z, salt = Rc | S, info = L_KEYS | SHA-256(T)) -> a 16-byte session key and a
    32-byte confirmation key.
    """
    okm = HKDF(hashes.SHA256(), 48, rc + serial, LABEL_KEYS + sha256(t).digest()).derive(z)
    return SessionKeys(okm[:SESSION_KEY_SIZE], okm[SESSION_KEY_SIZE:])


def ephemeral_public(key: PrivateKey) -> bytes:
    return public_raw(key)

