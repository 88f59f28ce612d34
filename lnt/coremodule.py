"""
L{ICoreModule} over a key file: the card issuer's master keys (load, TAC, M1) in
C{<data-dir>/core-keys.json} (mode 0600, created on first start when missing).

The computation is L{lnt.crypto.pboc}'s; keys never leave this object except M1 sector keys, which
the recharge flow wraps at once in the terminal session's protection.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from Crypto.Random import get_random_bytes
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.crypto import pboc
from lnt.domain.records import CPULoad, MACError
from lnt.interfaces import ICoreModule
from lnt.keyfiles import KeyFileError, read_key_file, write_key_file

CORE_KEY_FORMAT = "lnt-core-keys/1"
#: the load key version the shipped key file holds
KEY_VERSION = 1


@dataclass(frozen=True)
class CoreKeys:
    master_load_key: bytes
    master_tac_key: bytes
    m1_master_key: bytes

    @classmethod
    def load(cls, path: Path) -> CoreKeys:
        content = read_key_file(path, CORE_KEY_FORMAT)
        try:
            keys = cls(*(bytes.fromhex(content[k]) for k in
                         ("master_load_key", "master_tac_key", "m1_master_key")))
        except (KeyError, ValueError):
            raise KeyFileError(f"key file {path} is damaged") from None
        if any(len(k) != 16 for k in (keys.master_load_key, keys.master_tac_key,
                                      keys.m1_master_key)):
            raise KeyFileError(f"key file {path} is damaged")
        return keys

    @classmethod
    def load_or_create(cls, path: Path) -> CoreKeys:
        if path.exists():
            return cls.load(path)
        keys = cls(get_random_bytes(16), get_random_bytes(16), get_random_bytes(16))
        write_key_file(path, {"format": CORE_KEY_FORMAT,
                          "master_load_key": keys.master_load_key.hex(),
                          "master_tac_key": keys.master_tac_key.hex(),
                          "m1_master_key": keys.m1_master_key.hex()})
        return keys

    def m1_sector_key(self, physical_no: bytes, sector: int) -> bytes:
        """An M1 sector key: 3DES(M1 master, physical number with its last byte XOR sector)."""
        block = physical_no[:7] + bytes((physical_no[7] ^ sector,))
        return pboc.tdes(self.m1_master_key, block)[:6]


@implementer(ICoreModule)
class FileCoreModule:
    def __init__(self, keys: CoreKeys) -> None:
        self._keys = keys

    def _session_key(self, load: CPULoad) -> bytes:
        if load.key_version != KEY_VERSION:
            raise MACError(f"card load key version {load.key_version} is not held")
        dlk = pboc.diversify(self._keys.master_load_key, load.card_serial)
        return pboc.session_key(dlk, load.random, load.online_serial)

    def authorize_cpu_load(self, load: CPULoad) -> Deferred[bytes]:
        try:
            seslk = self._session_key(load)
            expected = pboc.mac1(seslk, load.old_balance, load.amount, load.terminal_id)
            if not hmac.compare_digest(expected, load.mac1):
                raise MACError("MAC1 does not verify")
            return defer.succeed(pboc.mac2(seslk, load.amount, load.terminal_id, load.when))
        except MACError:
            return defer.fail()

    def verify_cpu_tac(self, load: CPULoad, new_balance: int, tac: bytes) -> Deferred[bool]:
        dtk = pboc.diversify(self._keys.master_tac_key, load.card_serial)
        expected = pboc.tac(dtk, new_balance, load.online_serial, load.amount, load.terminal_id,
                            load.when)
        return defer.succeed(hmac.compare_digest(expected, tac))

    def m1_sector_keys(self, physical_no: bytes, sectors: list[int]) -> Deferred[dict[int, bytes]]:
        return defer.succeed({s: self._keys.m1_sector_key(physical_no, s) for s in sectors})
