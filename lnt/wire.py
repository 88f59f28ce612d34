"""
The DD frame: the one message format of the terminal <-> platform TCP protocol.

A request (terminal -> platform, odd headers DD01, DD03, ...) is::

    header 2 | version 1 | length 2 | user ID 16 | step 1 | PKI 4 | info length 1 | info N | CRC 4

and a response (platform -> terminal, even headers) is the same with the step byte replaced by
a flow indicator (0x00 continue, 0xFF end) and a return code (an L{InfoCode}). Integers are
big-endian. C{length} counts user ID through info; the CRC-32 (zlib's polynomial) covers the
same bytes. See docs/protocol.rst and SPEC-NOTES section 1.

Decoding is incremental (L{FrameDecoder}) because TCP delivers frames split at any byte and
several at once; it never holds more than one maximum-size frame. Errors fall in two kinds that a
server treats differently: a L{FramingError} means the byte stream cannot be trusted at all (close
without answering), a L{ChecksumError} means a well-framed frame was damaged (answer A2, close).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, Generic, TypeVar

VERSION: Final = 0x01
NO_PKI: Final = 0xFFFFFFFF
USER_ID_SIZE: Final = 16
MAX_INFO: Final = 255
PREFIX_SIZE: Final = 5  # header 2 + version 1 + length 2
CRC_SIZE: Final = 4
HEADER_BYTE: Final = 0xDD

_PREFIX = struct.Struct(">HBH")
_CRC = struct.Struct(">I")


class InfoCode(IntEnum):
    """
    The return codes of a response frame (the source document's section 4), plus success.
    """

    SUCCESS = 0x00
    OUT_OF_ORDER = 0xA0
    NO_PUBLIC_KEY = 0xA1
    BAD_CHECKSUM = 0xA2
    PURSE_TYPE_UNKNOWN = 0xA3
    REVERSAL_FAILED = 0xA4
    REVERSAL_DONE = 0xA5
    APPLICATION_TYPE_UNKNOWN = 0xA6
    ACCOUNT_EMPTY = 0xA7
    READER_ERROR = 0xAA
    NOT_SIGNED_IN = 0xBB
    READER_BAD_LENGTH = 0xCC
    SYSTEM_BUSY = 0xDD
    BACKEND_ERROR = 0xEE
    ORDER_NOT_FOUND = 0x96
    ORDER_AMOUNT_MISMATCH = 0x97
    ORDER_CARD_MISMATCH = 0x98
    ORDER_MISSING = 0x99

    @property
    def meaning(self) -> str:
        """A short English sentence for logs and the simulator's output."""
        return _MEANINGS[self]


_MEANINGS: Final[dict[InfoCode, str]] = {
    InfoCode.SUCCESS: "success",
    InfoCode.OUT_OF_ORDER: "stage out of order",
    InfoCode.NO_PUBLIC_KEY: "terminal's public key not found",
    InfoCode.BAD_CHECKSUM: "frame check code (CRC) wrong",
    InfoCode.PURSE_TYPE_UNKNOWN: "card's purse type undetermined",
    InfoCode.REVERSAL_FAILED: "reversal failed",
    InfoCode.REVERSAL_DONE: "reversal succeeded",
    InfoCode.APPLICATION_TYPE_UNKNOWN: "application type undetermined",
    InfoCode.ACCOUNT_EMPTY: "recharge account balance is zero",
    InfoCode.READER_ERROR: "card reader reported an error",
    InfoCode.NOT_SIGNED_IN: "terminal not signed in",
    InfoCode.READER_BAD_LENGTH: "card reader answer has a wrong length",
    InfoCode.SYSTEM_BUSY: "system busy",
    InfoCode.BACKEND_ERROR: "back-end system returned an error",
    InfoCode.ORDER_NOT_FOUND: "order does not exist",
    InfoCode.ORDER_AMOUNT_MISMATCH: "order amount does not match",
    InfoCode.ORDER_CARD_MISMATCH: "order card number does not match",
    InfoCode.ORDER_MISSING: "order does not exist",
}


def describe_code(code: int) -> str:
    """C{"A0 (stage out of order)"} for a known code, C{"0x3C (unknown code)"} otherwise."""
    try:
        return f"{code:02X} ({InfoCode(code).meaning})"
    except ValueError:
        return f"0x{code:02X} (unknown code)"


class FlowIndicator(IntEnum):
    """The first of the two status bytes of a response."""

    CONTINUE = 0x00
    END = 0xFF


class WireError(Exception):
    """Base of every error the codec raises: nothing else escapes a decoder."""


class FramingError(WireError):
    """
    The byte stream is not DD frames (wrong first byte, version or impossible length, or an info
    length that disagrees with the frame length). Nothing after it can be trusted: the connection
    is closed without an answer.
    """


class ChecksumError(WireError):
    """
    A well-framed frame whose CRC-32 does not match. The fields are from the damaged frame and
    serve only to address the A2 answer.
    """

    def __init__(self, header: int, user_id: bytes, pki: int) -> None:
        super().__init__(f"CRC mismatch in {header_name(header)} frame")
        self.header = header
        self.user_id = user_id
        self.pki = pki


def header_name(header: int) -> str:
    """C{0xDD01} -> C{"DD01"}."""
    return f"{header:04X}"


def _bcd_to_int(b: int) -> int | None:
    hi, lo = b >> 4, b & 0x0F
    if hi > 9 or lo > 9:
        return None
    return hi * 10 + lo


def response_header(request_header: int) -> int:
    """
    The header of the answer to a request header, as the DD numbering goes: the stage byte
    reads as two decimal digits (DD19 -> DD20, DD73 -> DD74). A stage byte that is not two
    decimal digits is simply incremented, wrapping within the byte.
    """
    stage = request_header & 0xFF
    number = _bcd_to_int(stage)
    if number is None or number == 99:
        nxt = (stage + 1) & 0xFF
    else:
        nxt = number + 1
        nxt = ((nxt // 10) << 4) | (nxt % 10)
    return (request_header & 0xFF00) | nxt


def _check_common(header: int, user_id: bytes, pki: int, info: bytes) -> None:
    if header >> 8 != HEADER_BYTE or not 0 <= header <= 0xFFFF:
        raise ValueError(f"header must be 0xDDxx, not 0x{header:X}")
    if len(user_id) != USER_ID_SIZE:
        raise ValueError(f"user ID must be {USER_ID_SIZE} bytes, not {len(user_id)}")
    if not 0 <= pki <= 0xFFFFFFFF:
        raise ValueError("PKI card number must fit in 4 bytes")
    if len(info) > MAX_INFO:
        raise ValueError(f"info is at most {MAX_INFO} bytes, not {len(info)}")


def _frame(header: int, body: bytes) -> bytes:
    return _PREFIX.pack(header, VERSION, len(body)) + body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True, slots=True)
class Request:
    """A terminal -> platform frame."""

    header: int
    user_id: bytes
    step: int
    pki: int
    info: bytes

    FIXED: ClassVar[int] = USER_ID_SIZE + 1 + 4 + 1

    def __post_init__(self) -> None:
        _check_common(self.header, self.user_id, self.pki, self.info)
        if not 0 <= self.step <= 0xFF:
            raise ValueError("step is one byte")

    def encode(self) -> bytes:
        body = (
            self.user_id
            + bytes((self.step,))
            + self.pki.to_bytes(4, "big")
            + bytes((len(self.info),))
            + self.info
        )
        return _frame(self.header, body)

    @classmethod
    def _parse(cls, header: int, body: bytes) -> Request:
        return cls(
            header=header,
            user_id=bytes(body[:16]),
            step=body[16],
            pki=int.from_bytes(body[17:21], "big"),
            info=bytes(body[22:]),
        )

    @staticmethod
    def _info_length(body: bytes) -> int:
        return body[21]


@dataclass(frozen=True, slots=True)
class Response:
    """A platform -> terminal frame."""

    header: int
    user_id: bytes
    flow: int
    code: int
    pki: int
    info: bytes

    FIXED: ClassVar[int] = USER_ID_SIZE + 2 + 4 + 1

    def __post_init__(self) -> None:
        _check_common(self.header, self.user_id, self.pki, self.info)
        if not (0 <= self.flow <= 0xFF and 0 <= self.code <= 0xFF):
            raise ValueError("flow indicator and return code are one byte each")

    @property
    def ends_flow(self) -> bool:
        return self.flow == FlowIndicator.END

    def encode(self) -> bytes:
        body = (
            self.user_id
            + bytes((self.flow, self.code))
            + self.pki.to_bytes(4, "big")
            + bytes((len(self.info),))
            + self.info
        )
        return _frame(self.header, body)

    @classmethod
    def _parse(cls, header: int, body: bytes) -> Response:
        return cls(
            header=header,
            user_id=bytes(body[:16]),
            flow=body[16],
            code=body[17],
            pki=int.from_bytes(body[18:22], "big"),
            info=bytes(body[23:]),
        )

    @staticmethod
    def _info_length(body: bytes) -> int:
        return body[22]


F = TypeVar("F", Request, Response)

#: The largest frame of either kind, prefix and CRC included.
MAX_FRAME_SIZE: Final = PREFIX_SIZE + Response.FIXED + MAX_INFO + CRC_SIZE


class FrameDecoder(Generic[F]):
    """
    Incremental decoder of one kind of frame (a server decodes L{Request}s, a terminal
    L{Response}s).

    L{feed} is a generator: frames are produced one at a time as the caller asks, so a caller
    that stops after an error or at the end of its flow leaves the rest unread. At most one
    partial frame is kept between calls. After a L{WireError} the decoder is spent and raises
    the same error again.
    """

    def __init__(self, kind: type[F]) -> None:
        self._kind: type[F] = kind
        self._min = kind.FIXED
        self._max = kind.FIXED + MAX_INFO
        self._buffer = b""
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete frame are held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[F]:
        if self._error is not None:
            raise self._error
        view = self._buffer + data if self._buffer else data
        self._buffer = b""
        offset = 0
        try:
            while True:
                frame, used = self._one(view, offset)
                if frame is None:
                    break
                offset += used
                yield frame
        except WireError as e:
            self._error = e
            raise
        finally:
            if self._error is None:
                # Keep only the incomplete tail: less than one maximum-size frame.
                self._buffer = bytes(view[offset:])

    def _one(self, data: bytes, offset: int) -> tuple[F | None, int]:
        available = len(data) - offset
        if available >= 1 and data[offset] != HEADER_BYTE:
            raise FramingError(f"frame does not start with 0xDD (got 0x{data[offset]:02X})")
        if available >= 3 and data[offset + 2] != VERSION:
            raise FramingError(f"unsupported frame version 0x{data[offset + 2]:02X}")
        if available < PREFIX_SIZE:
            return None, 0
        header, _version, length = _PREFIX.unpack_from(data, offset)
        if not self._min <= length <= self._max:
            raise FramingError(
                f"{header_name(header)}: length {length} outside {self._min}..{self._max}"
            )
        total = PREFIX_SIZE + length + CRC_SIZE
        if available < total:
            return None, 0
        body = data[offset + PREFIX_SIZE : offset + PREFIX_SIZE + length]
        (crc,) = _CRC.unpack_from(data, offset + PREFIX_SIZE + length)
        if zlib.crc32(body) != crc:
            raise ChecksumError(header, bytes(body[:USER_ID_SIZE]), self._pki_of(body))
        if self._kind._info_length(body) != length - self._min:
            raise FramingError(
                f"{header_name(header)}: info length {self._kind._info_length(body)} "
                f"disagrees with frame length {length}"
            )
        return self._kind._parse(header, body), total

    def _pki_of(self, body: bytes) -> int:
        # PKI is the 4 bytes before the info length byte, which ends the fixed part.
        start = self._min - 5
        return int.from_bytes(body[start : start + 4], "big")


def encode_bcd(digits: str, size: int) -> bytes:
    """C{"0123"} -> C{b"\\x01\\x23"}, left-padded with zero digits to C{size} bytes."""
    if not digits.isdigit() or not digits.isascii():
        raise ValueError("BCD holds decimal digits only")
    if len(digits) > size * 2:
        raise ValueError(f"{len(digits)} digits do not fit in {size} BCD bytes")
    return bytes.fromhex(digits.rjust(size * 2, "0"))


def decode_bcd(data: bytes) -> str:
    """The inverse of L{encode_bcd}; raises L{ValueError} on a nibble above 9."""
    text = data.hex()
    if not text.isdigit():
        raise ValueError("not BCD")
    return text
