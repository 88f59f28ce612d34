"""
L{ICoreModule} over a key file: the card issuer's master keys (load, TAC, M1) in
C{<data-dir>/core-keys.json} (L{lnt.keyfiles.CoreKeys}; mode 0600, created on first start when
missing).

The computation is L{lnt.crypto.pboc}'s; keys never leave this object except M1 sector keys, which
the recharge flow wraps at once in the terminal session's protection.
"""

from __future__ import annotations

import hmac

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from lnt.crypto import pboc
from lnt.domain.records import CPULoad, MACError
from lnt.interfaces import ICoreModule
from lnt.keyfiles import CoreKeys

#: the load key version the shipped key file holds
KEY_VERSION = 1

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
