"""
The recharge and open/close-card reader messages (DD11-DD22, DD73/DD74): their layouts, shared
by the platform's flows and the simulator's reader. docs/protocol.rst ("Recharge") is the
normative text; every size here is the field terminal's (SPEC-NOTES section 5).

Reader commands are protected with L{lnt.crypto.securemsg}; the sizes below are of the plaintext
that travels inside (the stage's info size less the secure-messaging overhead).
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from enum import IntEnum

from lnt.wire import decode_bcd, encode_bcd

# -- stage headers and info sizes -----------------------------------------------------------

DD11, DD12, DD13, DD14, DD15 = 0xDD11, 0xDD12, 0xDD13, 0xDD14, 0xDD15
DD16, DD17, DD18, DD19, DD20, DD21, DD22 = 0xDD16, 0xDD17, 0xDD18, 0xDD19, 0xDD20, 0xDD21, 0xDD22
DD73, DD74 = 0xDD73, 0xDD74

SIZE = {
    DD11: 15, DD12: 29, DD13: 82, DD14: 85, DD15: 74, DD16: 93, DD17: 106,
    DD18: 61, DD19: 82, DD20: 128, DD21: 74, DD22: 30, DD73: 176, DD74: 152,
}
#: the M1 load stage pair uses R_M1_LOAD's sizes
SIZE_M1_DD18 = 128
SIZE_M1_DD19 = 34

APPLICATION_MERCHANT_LOAD = 0x00


class Ins(IntEnum):
    """Reader instructions (CLA BB) of the protected commands."""

    QRY_PHYSICS_INFO = 0x20  # DD12
    SET_READCARDINFO = 0x22  # DD14
    CPU_LOAD_INIT = 0x30  # DD16, CPU: relays INITIALIZE FOR LOAD
    CPU_LOAD = 0x32  # DD18, CPU: relays CREDIT FOR LOAD
    M1_READ = 0x40  # DD16, M1: reads the purse value blocks
    M1_LOAD = 0x42  # DD18, M1: writes them (compare and swap)
    M1_CPU_QRY = 0x50  # DD20: reads the purse back
    DEPOSIT_PROCESS = 0x62  # DD74


class PurseType(IntEnum):
    M1 = 0x01
    CPU = 0x02


class ReaderStatus(IntEnum):
    """The reader's own status byte inside its answers (the field terminal's codes and ours)."""

    OK = 0x00
    NO_CARD = 0x80
    BLACKLISTED = 0x94
    PURSE_OVER_LIMIT = 0x96
    INTERRUPTED = 0xB0
    WRONG_KEY = 0xC1
    VALUE_CHANGED = 0xC2
    EXPIRED = 0xC3
    CARD_ERROR = 0xC4


class DepositOp(IntEnum):
    OPEN = 0x01
    CLOSE = 0x02


class LayoutError(ValueError):
    """A plaintext does not parse; the text says which field."""


def _bcd_time(text: str) -> bytes:
    return bytes.fromhex(text)


# -- DD13: the card record ------------------------------------------------------------------

@dataclass(frozen=True)
class CardInfo:
    """
    DD13's plaintext (68): card record (42) | reader status (1) | reserved (2) | reader time
    (7, BCD YYYYMMDDhhmmss) | terminal ID (6) | reserved (10). The card record is the field
    terminal's: balance (4) | physical number (8) | logical number (8, BCD) | card type (2) |
    last recharge date (4, BCD) | purse type (1) | area code (1) | area card type (2) | its expiry
    (4, BCD) | deposit flag (1) | deposit (4) | operator code (2) | member flag (1).
    """

    balance: int
    physical: bytes
    logical_no: str
    card_type: int
    last_recharge: str
    purse_type: int
    deposit_flag: int
    status: int
    reader_time: str
    terminal_id: bytes

    _FMT = ">I8s8sH4sBBH4sBIHB"

    def encode(self) -> bytes:
        record = struct.pack(self._FMT, self.balance, self.physical,
                             encode_bcd(self.logical_no, 8), self.card_type,
                             bytes.fromhex(self.last_recharge), self.purse_type, 0x20, 0,
                             bytes.fromhex("20361231"), self.deposit_flag, 0, 0, 0)
        return (record + bytes((self.status,)) + bytes(2) + _bcd_time(self.reader_time)
                + self.terminal_id + bytes(10))

    @classmethod
    def decode(cls, data: bytes) -> CardInfo:
        if len(data) < 68:
            raise LayoutError("card info is shorter than 68 bytes")
        (balance, physical, logical, card_type, last, purse, _area, _atype, _exp, deposit,
         _deposit_amount, _operator, _member) = struct.unpack(cls._FMT, data[:42])
        try:
            logical_no = decode_bcd(logical)
            reader_time = decode_bcd(data[45:52])
        except ValueError:
            raise LayoutError("card info has a field that is not BCD") from None
        return cls(balance, physical, logical_no, card_type, last.hex(), purse, deposit,
                   data[42], reader_time, data[52:58])


# -- DD14 / DD15: the transaction context ----------------------------------------------------

@dataclass(frozen=True)
class LoadContext:
    """
    DD14's plaintext (68): order number (10, BCD) | amount (4) | purse type (1) | logical
    number (8, BCD) | physical number (8) | load time (7, BCD) | key index (1) | terminal ID (6)
    | reserved (23). DD15 answers: order number (10) | logical (8) | physical (8) | status (1).
    """

    order_no: str
    amount: int
    purse_type: int
    logical_no: str
    physical: bytes
    load_time: str
    key_index: int
    terminal_id: bytes

    def encode(self) -> bytes:
        return (encode_bcd(self.order_no, 10) + struct.pack(">IB", self.amount, self.purse_type)
                + encode_bcd(self.logical_no, 8) + self.physical + _bcd_time(self.load_time)
                + bytes((self.key_index,)) + self.terminal_id)

    @classmethod
    def decode(cls, data: bytes) -> LoadContext:
        try:
            return cls(decode_bcd(data[:10]), struct.unpack(">I", data[10:14])[0], data[14],
                       decode_bcd(data[15:23]), data[23:31], decode_bcd(data[31:38]), data[38],
                       data[39:45])
        except (ValueError, struct.error):
            raise LayoutError("load context does not parse") from None

    def echo(self, status: int) -> bytes:
        return (encode_bcd(self.order_no, 10) + encode_bcd(self.logical_no, 8) + self.physical
                + bytes((status,)))


# -- APDU relays (CPU) -----------------------------------------------------------------------

def apdu_list(apdus: list[bytes]) -> bytes:
    """count (1) | [len (1) | APDU]..."""
    return bytes((len(apdus),)) + b"".join(bytes((len(a),)) + a for a in apdus)


def parse_apdu_list(data: bytes) -> list[bytes]:
    if not data:
        raise LayoutError("empty APDU list")
    out, pos = [], 1
    for _ in range(data[0]):
        if pos >= len(data):
            raise LayoutError("APDU list is truncated")
        n = data[pos]
        if pos + 1 + n > len(data):
            raise LayoutError("APDU list is truncated")
        out.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return out


def initialize_for_load(key_index: int, amount: int, terminal_id: bytes) -> bytes:
    return bytes.fromhex("805000020B") + struct.pack(">BI", key_index, amount) + terminal_id \
        + b"\x10"


def credit_for_load(load_time: str, mac2: bytes) -> bytes:
    """CREDIT FOR LOAD: date (4) and time (3) of the load, MAC2."""
    return bytes.fromhex("805200000B") + bytes.fromhex(load_time) + mac2 + b"\x04"


def get_transaction_proof(online_serial: int) -> bytes:
    """The card's proof (TAC) of the load with this online serial, if it was its last one."""
    return bytes.fromhex("805A000202") + struct.pack(">H", online_serial)


GET_BALANCE = bytes.fromhex("805C000204")
SELECT_PURSE = bytes.fromhex("00A4000002ADF1")


@dataclass(frozen=True)
class InitAnswer:
    old_balance: int
    online_serial: int
    key_version: int
    algorithm: int
    random: bytes
    mac1: bytes

    @classmethod
    def decode(cls, response: bytes) -> InitAnswer:
        if len(response) != 18 or response[-2:] != b"\x90\x00":
            raise LayoutError(f"INITIALIZE FOR LOAD answered {response[-2:].hex()}")
        old, serial, kver, alg = struct.unpack(">IHBB", response[:8])
        return cls(old, serial, kver, alg, response[8:12], response[12:16])


# -- M1 ------------------------------------------------------------------------------------

M1_PURSE_SECTOR = 2
M1_PURSE_BLOCK = 8
M1_BACKUP_BLOCK = 9
#: the purse sector's third data block: the record of the last load, written before the value
M1_RECORD_BLOCK = 10


def m1_read(sector: int, key: bytes, block: int, backup: int, record: int) -> bytes:
    """DD16 (M1) and DD20 (M1): sector (1) | key A (6) | block (1) | backup block (1) |
    load record block (1)."""
    return bytes((sector,)) + key + bytes((block, backup, record))


def m1_blocks_answer(status: int, block: bytes, backup: bytes, record: bytes) -> bytes:
    """DD17 (M1) and DD21 (M1): status (1) | block (16) | backup (16) | load record (16)."""
    return bytes((status,)) + block + backup + record


@dataclass(frozen=True)
class LoadRecord:
    """
    An M1 purse's load record (block 10): order number (10, BCD) | purse value after the load
    (4, signed big-endian) | check (2, CRC-16/XMODEM over the first 14 bytes). The reader writes
    it before the value blocks, so a read-back can name the load it sees: the value alone
    cannot tell two loads of one amount apart (docs/protocol.rst, "M1 load record").
    """

    order_no: str
    value: int

    def encode(self) -> bytes:
        body = encode_bcd(self.order_no, 10) + struct.pack(">i", self.value)
        return body + struct.pack(">H", binascii.crc_hqx(body, 0))

    @classmethod
    def decode(cls, block: bytes) -> LoadRecord | None:
        """The record in a block, or C{None} when the block is blank, damaged or no record."""
        if len(block) != 16 or block == bytes(16):
            return None
        if struct.unpack(">H", block[14:16])[0] != binascii.crc_hqx(block[:14], 0):
            return None
        try:
            order_no = decode_bcd(block[:10])
        except ValueError:
            return None
        return cls(order_no, struct.unpack(">i", block[10:14])[0])


@dataclass(frozen=True)
class M1Load:
    """
    DD18 (M1) plaintext: sector (1) | key A (6) | block (1) | backup (1) | expected value (4,
    signed) | new value block (16) | expires (7, BCD reader time) | order number (10, BCD) |
    record block (1) | load record (16). The reader writes only while the purse still holds the
    expected value, the command has not expired and the record block does not name this order
    already: a retried or late write can never add the amount twice. It writes the load record
    first, then the value block, then its backup.
    """

    sector: int
    key: bytes
    block: int
    backup: int
    expected: int
    new_block: bytes
    expires: str
    order_no: str
    record_block: int
    record: bytes

    def encode(self) -> bytes:
        return (bytes((self.sector,)) + self.key + bytes((self.block, self.backup))
                + struct.pack(">i", self.expected) + self.new_block + _bcd_time(self.expires)
                + encode_bcd(self.order_no, 10) + bytes((self.record_block,)) + self.record)

    @classmethod
    def decode(cls, data: bytes) -> M1Load:
        try:
            if len(data) < 63:
                raise ValueError("short")
            return cls(data[0], data[1:7], data[7], data[8], struct.unpack(">i", data[9:13])[0],
                       data[13:29], decode_bcd(data[29:36]), decode_bcd(data[36:46]), data[46],
                       data[47:63])
        except (ValueError, struct.error, IndexError):
            raise LayoutError("M1 load does not parse") from None


def value_block(value: int, address: int) -> bytes:
    """A MIFARE value block: value, its inverse, value (4 bytes LE each), address and inverses."""
    v = struct.pack("<i", value)
    inv = bytes(b ^ 0xFF for b in v)
    a = address & 0xFF
    return v + inv + v + bytes((a, a ^ 0xFF, a, a ^ 0xFF))


def parse_value_block(block: bytes) -> int | None:
    """The value of a well-formed value block, else C{None} (damaged)."""
    if len(block) != 16:
        return None
    v, inv, v2 = block[:4], block[4:8], block[8:12]
    a = block[12:16]
    if v != v2 or bytes(b ^ 0xFF for b in v) != inv:
        return None
    if a[0] != a[2] or a[1] != a[3] or a[0] ^ 0xFF != a[1]:
        return None
    return int(struct.unpack("<i", v)[0])


# -- DD22: the record -------------------------------------------------------------------------

def record(order_no: str, pki_no: int, logical_no: str, amount: int, balance: int) -> bytes:
    """record ID (10, BCD: the order number) | PKI (4, BCD) | logical (8, BCD) | amount (4) |
    balance after (4)."""
    return (encode_bcd(order_no, 10) + encode_bcd(str(pki_no), 4) + encode_bcd(logical_no, 8)
            + struct.pack(">II", amount, balance))


def parse_record(data: bytes) -> tuple[str, str, str, int, int]:
    amount, balance = struct.unpack(">II", data[22:30])
    return decode_bcd(data[:10]), decode_bcd(data[10:14]), decode_bcd(data[14:22]), amount, \
        balance


# -- DD73 / DD74: open or close a card ---------------------------------------------------------

@dataclass(frozen=True)
class DepositInit:
    """
    DD73's plaintext (R_DEPOSIT_INIT answer, 162): operation (1) | logical (8, BCD) | physical
    (8) | deposit flag now (1) | purse type (1) | reader time (7, BCD) | status (1).
    Sealed by the reader on its own initiative (direction "I", its deposit counter as seq).
    """

    op: int
    logical_no: str
    physical: bytes
    flag: int
    purse_type: int
    reader_time: str
    status: int

    def encode(self) -> bytes:
        return (bytes((self.op,)) + encode_bcd(self.logical_no, 8) + self.physical
                + bytes((self.flag, self.purse_type)) + _bcd_time(self.reader_time)
                + bytes((self.status,)))

    @classmethod
    def decode(cls, data: bytes) -> DepositInit:
        try:
            return cls(data[0], decode_bcd(data[1:9]), data[9:17], data[17], data[18],
                       decode_bcd(data[19:26]), data[26])
        except (ValueError, IndexError):
            raise LayoutError("deposit init does not parse") from None


@dataclass(frozen=True)
class DepositProcess:
    """DD74's plaintext: operation (1) | logical (8, BCD) | physical (8) | new flag (1) |
    record ID (10, BCD)."""

    op: int
    logical_no: str
    physical: bytes
    flag: int
    record_id: str

    def encode(self) -> bytes:
        return (bytes((self.op,)) + encode_bcd(self.logical_no, 8) + self.physical
                + bytes((self.flag,)) + encode_bcd(self.record_id, 10))

    @classmethod
    def decode(cls, data: bytes) -> DepositProcess:
        try:
            return cls(data[0], decode_bcd(data[1:9]), data[9:17], data[17],
                       decode_bcd(data[18:28]))
        except (ValueError, IndexError):
            raise LayoutError("deposit process does not parse") from None
