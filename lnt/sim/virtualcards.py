"""
Virtual Lingnan Tong cards: a PBOC CPU purse card and an M1 (MIFARE Classic) card, with real
keys, balances, counters and limits, each persisted as a JSON file (C{<data-dir>/cards/}) so that
consecutive simulator runs see each other's effects.

The CPU card answers APDUs (docs/protocol.rst, "Virtual CPU card"). The M1 card has sectors,
keys and value blocks; the reader talks to it through L{M1Card.authenticate}, L{M1Card.read} and
L{M1Card.write}, and a wrong key is refused as a real card refuses it. Both answer the PC/SC
pseudo-APDUs a contactless reader offers (C{FF CA} GET DATA, C{FF B0} READ BINARY of the
public issuer block).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from Crypto.Random import get_random_bytes

from lnt.crypto import pboc
from lnt.domain.records import CPU_BALANCE_LIMIT
from lnt.jsonfile import write_json_atomically
from lnt.messages import cardissue
from lnt.messages.statuswords import (
    SW_CONDITIONS,
    SW_FILE_NOT_FOUND,
    SW_KEY_INDEX,
    SW_MAC,
    SW_NO_RECORD,
    SW_OK,
    SW_SECURITY,
    SW_UNKNOWN_CLA,
    SW_UNKNOWN_INS,
    SW_WRONG_LENGTH,
    SW_WRONG_P1P2,
)
from lnt.wire import encode_bcd

ISSUER_ID = b"LNT\x00\x00\x00\x00\x01"

PURSE_SECTOR = cardissue.M1_PURSE_SECTOR
PURSE_BLOCK = PURSE_SECTOR * 4  # block 8, backup in block 9
ISSUER_BLOCK = cardissue.M1_ISSUER_BLOCK  # sector 1, readable without authentication


def _save(path: Path, content: dict[str, Any]) -> None:
    write_json_atomically(path, content, 0o600)


@dataclass
class CPUCard:
    logical_no: str
    uid: str
    dlk: str
    dtk: str
    balance: int = 0
    online_serial: int = 0
    key_index: int = 1
    key_version: int = 1
    algorithm: int = 0
    deposit_flag: int = 1
    #: the online serial and TAC of the card's last load, for GET TRANSACTION PROOF
    last_load_serial: int | None = None
    last_tac: str | None = None
    path: Path | None = field(default=None, repr=False, compare=False)
    _selected: str = field(default="MF", repr=False, compare=False)
    _pending: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    kind = "cpu"

    @property
    def card_id(self) -> bytes:
        """The application serial the load key is diversified with: the logical number."""
        return encode_bcd(self.logical_no, 8)

    @property
    def physical(self) -> bytes:
        return bytes.fromhex(self.uid).rjust(8, b"\x00")

    @classmethod
    def issue(cls, logical_no: str, master_load_key: bytes, master_tac_key: bytes,
              balance: int = 0) -> CPUCard:
        content = cardissue.cpu_card(logical_no, master_load_key, master_tac_key, balance)
        del content["kind"]
        return cls(**content)

    def save(self) -> None:
        if self.path is not None:
            content = {k: v for k, v in asdict(self).items()
                       if k not in ("path", "_selected", "_pending")}
            _save(self.path, {"kind": self.kind, **content})

    def set_deposit(self, flag: int) -> None:
        self.deposit_flag = flag
        self.save()

    def ef15(self) -> bytes:
        """Public application data: issuer (8) | logical number (8 BCD) | type (2) | issued (4) |
        expires (4) | deposit flag (1) | reserved (3)."""
        return (ISSUER_ID + self.card_id + b"\x00\x01" + bytes.fromhex("20260101")
                + bytes.fromhex("20361231") + bytes((self.deposit_flag,)) + bytes(3))

    # -- APDUs ------------------------------------------------------------------------------

    def apdu(self, command: bytes) -> bytes:
        if len(command) < 4:
            return SW_WRONG_LENGTH
        cla, ins, p1, p2 = command[:4]
        body = command[5 : 5 + command[4]] if len(command) > 4 else b""
        if (cla, ins) != (0x80, 0x52):
            # Any command but CREDIT FOR LOAD ends a pending INITIALIZE FOR LOAD, as on a
            # PBOC card: after a read-back, a late MAC2 can no longer load anything.
            self._pending = None
        if (cla, ins) == (0xFF, 0xCA):
            return bytes.fromhex(self.uid) + SW_OK
        if (cla, ins) == (0x00, 0xA4):
            return self._select(body)
        if (cla, ins) == (0x00, 0xB0):
            return self._read_binary(p1, p2, command[4] if len(command) > 4 else 0)
        if (cla, ins) == (0x80, 0x5C):
            if self._selected != "ADF1":
                return SW_CONDITIONS
            return struct.pack(">I", self.balance) + SW_OK
        if (cla, ins) == (0x00, 0x84):
            return get_random_bytes(command[4] if len(command) > 4 else 8) + SW_OK
        if (cla, ins) == (0x80, 0x50):
            return self._initialize_for_load(p1, p2, body)
        if (cla, ins) == (0x80, 0x52):
            return self._credit_for_load(body)
        if (cla, ins) == (0x80, 0x5A):
            return self._transaction_proof(body)
        return SW_UNKNOWN_INS if cla in (0x00, 0x80) else SW_UNKNOWN_CLA

    def _select(self, fid: bytes) -> bytes:
        names = {bytes.fromhex("DDF1"): "DDF1", bytes.fromhex("ADF1"): "ADF1"}
        if fid not in names:
            return SW_FILE_NOT_FOUND
        self._selected = names[fid]
        self._pending = None
        return SW_OK

    def _read_binary(self, p1: int, offset: int, length: int) -> bytes:
        if p1 != 0x95:  # SFI 0x15 only
            return SW_FILE_NOT_FOUND
        data = self.ef15()
        if self._selected not in ("DDF1", "ADF1") or offset + length > len(data):
            return SW_WRONG_P1P2
        return data[offset : offset + length] + SW_OK

    def _initialize_for_load(self, p1: int, p2: int, body: bytes) -> bytes:
        if (p1, p2) != (0x00, 0x02) or len(body) != 11:
            return SW_WRONG_LENGTH
        if self._selected != "ADF1":
            return SW_CONDITIONS
        key_index = body[0]
        (amount,) = struct.unpack(">I", body[1:5])
        terminal = body[5:11]
        if key_index != self.key_index:
            return SW_KEY_INDEX
        if amount == 0 or self.balance + amount > CPU_BALANCE_LIMIT:
            return SW_CONDITIONS
        random = get_random_bytes(4)
        seslk = pboc.session_key(bytes.fromhex(self.dlk), random, self.online_serial)
        m1 = pboc.mac1(seslk, self.balance, amount, terminal)
        self._pending = {"amount": amount, "terminal": terminal, "seslk": seslk,
                         "serial": self.online_serial}
        return (struct.pack(">IHBB", self.balance, self.online_serial, self.key_version,
                            self.algorithm) + random + m1 + SW_OK)

    def _credit_for_load(self, body: bytes) -> bytes:
        pending, self._pending = self._pending, None
        if pending is None:
            return SW_CONDITIONS
        if len(body) != 11:
            return SW_WRONG_LENGTH
        when, given = body[:7], body[7:11]
        expected = pboc.mac2(pending["seslk"], pending["amount"], pending["terminal"], when)
        if given != expected:
            return SW_MAC
        self.balance += pending["amount"]
        self.online_serial += 1
        t = pboc.tac(bytes.fromhex(self.dtk), self.balance, pending["serial"], pending["amount"],
                     pending["terminal"], when)
        self.last_load_serial, self.last_tac = pending["serial"], t.hex()
        self.save()
        return t + SW_OK

    def _transaction_proof(self, body: bytes) -> bytes:
        """GET TRANSACTION PROOF (80 5A 00 02 02 serial): the TAC of the last load if it had
        this online serial; else the card's current online serial and 6A83 (no such record)."""
        if len(body) != 2:
            return SW_WRONG_LENGTH
        (serial,) = struct.unpack(">H", body)
        if self.last_load_serial == serial and self.last_tac is not None:
            return bytes.fromhex(self.last_tac) + SW_OK
        return struct.pack(">H", self.online_serial) + SW_NO_RECORD


@dataclass
class M1Card:
    logical_no: str
    uid: str
    #: sector -> key A (hex, 6 bytes); purse sectors have diversified keys
    keys: dict[str, str]
    blocks: dict[str, str]
    deposit_flag: int = 1
    path: Path | None = field(default=None, repr=False, compare=False)
    _authenticated: int | None = field(default=None, repr=False, compare=False)

    kind = "m1"

    @property
    def physical(self) -> bytes:
        return bytes.fromhex(self.uid).rjust(8, b"\x00")

    @classmethod
    def issue(cls, logical_no: str, uid_bytes: bytes, sector_keys: dict[int, bytes],
              balance: int = 0) -> M1Card:
        content = cardissue.m1_card(logical_no, uid_bytes, sector_keys, balance)
        del content["kind"]
        return cls(**content)

    def save(self) -> None:
        if self.path is not None:
            content = {k: v for k, v in asdict(self).items() if k not in ("path", "_authenticated")}
            _save(self.path, {"kind": self.kind, **content})

    def apdu(self, command: bytes) -> bytes:
        """The PC/SC pseudo-APDUs for the public part; anything ISO 7816 is refused (not CPU)."""
        if command[:2] == b"\xff\xca":
            return bytes.fromhex(self.uid) + SW_OK
        if command[:2] == b"\xff\xb0" and len(command) >= 5:
            block = command[3]
            if block // 4 != ISSUER_BLOCK // 4:
                return SW_SECURITY
            return bytes.fromhex(self.blocks.get(str(block), "00" * 16)) + SW_OK
        return SW_UNKNOWN_INS  # an M1 card speaks no ISO 7816 APDUs

    def set_deposit(self, flag: int) -> None:
        self.deposit_flag = flag
        self.save()

    def authenticate(self, sector: int, key: bytes) -> bool:
        ok = self.keys.get(str(sector)) == key.hex()
        self._authenticated = sector if ok else None
        return ok

    def read(self, block: int) -> bytes | None:
        if self._authenticated != block // 4:
            return None
        return bytes.fromhex(self.blocks.get(str(block), "00" * 16))

    def write(self, block: int, data: bytes) -> bool:
        if self._authenticated != block // 4 or len(data) != 16:
            return False
        self.blocks[str(block)] = data.hex()
        self.save()
        return True


Card = CPUCard | M1Card


def load_card(path: Path) -> Card:
    content = cardissue.read_card(path)
    kind = content.pop("kind")
    card: Card = CPUCard(**content) if kind == "cpu" else M1Card(**content)
    card.path = path
    return card


def save_new(card: Card, cards_dir: Path) -> Path:
    cards_dir.mkdir(parents=True, exist_ok=True)
    card.path = cards_dir / f"{card.logical_no}.json"
    card.save()
    return card.path
