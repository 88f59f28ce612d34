"""
Secure messaging between the platform and the terminal's reader during a recharge: every
reader command and answer of DD12-DD21 (and DD73/DD74) is encrypted and authenticated with keys
derived from the sign-in session key, so the card data, the M1 sector keys and the load
messages are neither readable nor changeable on the way (docs/protocol.rst, "Secure messaging").

    command (platform -> reader), exactly the stage's info size S:
        CLA BB | INS | 00 | 00 | Lc = S - 5 | seq (4) | ciphertext (S - 17) | mac (8)
    answer (reader -> platform), exactly the stage's info size S:
        seq (4) | ciphertext (S - 14) | mac (8) | SW (2)

 - keys: HKDF-SHA256(session key, salt "", info "LNT-SM-ENC" / "LNT-SM-MAC"), 16 bytes each;
 - cipher: AES-128-CTR, nonce = direction ("C" or "A") | seq (4) | 00 00 00, counter 8 bytes;
 - mac: HMAC-SHA256(mac key, direction | header (commands) | seq | ciphertext | SW (answers)),
   first 8 bytes;
 - seq: a counter per session, allocated by the platform (the ledger), never reused; the reader
   refuses a command whose seq is not above the last it executed (replay), and an answer carries
   the seq of the command it answers.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CLA = 0xBB
HEADER_SIZE = 5
SEQ_SIZE = 4
MAC_SIZE = 8
SW_SIZE = 2
COMMAND_OVERHEAD = HEADER_SIZE + SEQ_SIZE + MAC_SIZE
ANSWER_OVERHEAD = SEQ_SIZE + MAC_SIZE + SW_SIZE


class SMError(ValueError):
    """A protected message does not open: wrong size, wrong seq, or a MAC that fails."""


@dataclass(frozen=True)
class SMKeys:
    enc: bytes = field(repr=False)
    mac: bytes = field(repr=False)
    #: AES under C{enc}, one block at a time (ECB), kept for the keys' life: CTR's key stream
    #: is made from it (building a CTR cipher context per message cost twice the message)
    _blocks: CipherContext = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        aes = Cipher(algorithms.AES(self.enc), modes.ECB())  # noqa: S305 - CTR's block function
        object.__setattr__(self, "_blocks", aes.encryptor())

    @classmethod
    def from_session(cls, session_key: bytes) -> SMKeys:
        return _derive(session_key)

    def _crypt(self, direction: bytes, seq: int, data: bytes) -> bytes:
        """AES-128-CTR: the nonce and a counter block starting at zero make the 16-byte initial
        counter block, incremented as one 128-bit big-endian number (as OpenSSL's CTR does;
        tests/test_securemsg_ctr.py holds the two equal)."""
        n = len(data)
        if not n:
            return b""
        first = int.from_bytes(direction + seq.to_bytes(4, "big") + bytes(11), "big")
        counters = b"".join((first + i).to_bytes(16, "big") for i in range((n + 15) // 16))
        stream = self._blocks.update(counters)[:n]
        return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self.mac, b"".join(parts), sha256).digest()[:MAC_SIZE]

    # -- commands ---------------------------------------------------------------------------

    def seal_command(self, ins: int, seq: int, plaintext: bytes, size: int) -> bytes:
        """A command of exactly C{size} bytes; C{plaintext} is zero-padded to fit."""
        room = size - COMMAND_OVERHEAD
        if len(plaintext) > room:
            raise ValueError(f"plaintext of {len(plaintext)} bytes does not fit {size}")
        header = bytes((CLA, ins, 0, 0, size - HEADER_SIZE))
        ct = self._crypt(b"C", seq, plaintext.ljust(room, b"\x00"))
        body = seq.to_bytes(4, "big") + ct
        return header + body + self._mac(b"C", header, body)

    def open_command(self, command: bytes) -> tuple[int, int, bytes]:
        """(INS, seq, plaintext) of a sealed command; L{SMError} if it does not verify."""
        if len(command) < COMMAND_OVERHEAD or command[0] != CLA:
            raise SMError("not a protected command")
        if command[4] != len(command) - HEADER_SIZE:
            raise SMError("Lc does not match the command's length")
        header, body, mac = command[:5], command[5:-MAC_SIZE], command[-MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(b"C", header, body)):
            raise SMError("command MAC does not verify")
        seq = int.from_bytes(body[:4], "big")
        return header[1], seq, self._crypt(b"C", seq, body[4:])

    # -- answers ----------------------------------------------------------------------------

    def seal_answer(self, seq: int, plaintext: bytes, sw: bytes, size: int,
                    direction: bytes = b"A") -> bytes:
        """An answer to command C{seq}; direction "I" for what the reader sends on its own
        initiative (DD73), numbered with its own counter."""
        room = size - ANSWER_OVERHEAD
        if len(plaintext) > room:
            raise ValueError(f"plaintext of {len(plaintext)} bytes does not fit {size}")
        body = seq.to_bytes(4, "big") + self._crypt(direction, seq,
                                                     plaintext.ljust(room, b"\x00"))
        return body + self._mac(direction, body, sw) + sw

    def open_answer(self, answer: bytes, seq: int | None,
                    direction: bytes = b"A") -> tuple[int, bytes, bytes]:
        """
        (seq, plaintext, SW) of an answer; with C{seq} given it must answer that command.
        L{SMError} if it does not verify.
        """
        if len(answer) < ANSWER_OVERHEAD:
            raise SMError("answer too short")
        body, mac, sw = answer[:-10], answer[-10:-2], answer[-2:]
        if not hmac.compare_digest(mac, self._mac(direction, body, sw)):
            raise SMError("answer MAC does not verify")
        got = int.from_bytes(body[:4], "big")
        if seq is not None and got != seq:
            raise SMError("answer is for another command")
        return got, self._crypt(direction, got, body[4:]), sw


@lru_cache(maxsize=4096)
def _derive(session_key: bytes) -> SMKeys:
    """The keys of one session key, derived once: a session's flows (and the reader, for each
    command) ask again and again. OpenSSL's HKDF (the C{cryptography} package) costs a tenth of
    pycryptodome's; the cache holds a few thousand live sessions' keys."""

    def hkdf(info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 16, b"", info).derive(session_key)

    return SMKeys(hkdf(b"LNT-SM-ENC"), hkdf(b"LNT-SM-MAC"))


def refusal(size: int, sw: bytes) -> bytes:
    """A reader's unprotected refusal (it could not open the command): zeros and the SW."""
    return bytes(size - SW_SIZE) + sw
