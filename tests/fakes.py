"""
In-memory providers of the backend interfaces, for protocol tests driven by a Clock (the real
ledger runs SQL in threads, which a Clock cannot drive). They keep the same promises as the
SQL ledger where the protocol tests depend on them; the SQL ledger itself is tested by
test_ledger_contract.py.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from lnt.backends.keys import PlatformKeys, key_from_scalar
from lnt.flows.dispatch import DDServerFactory, DispatchProtocol
from lnt.interfaces import IPKI, ILedger
from lnt.records import AlreadyExists, CardStatus, PKICard, Session
from lnt.wire import FrameDecoder, Response


@implementer(IPKI)
class MemoryPKI:
    def __init__(self, keys: PlatformKeys | None = None) -> None:
        self.keys = keys or PlatformKeys(key_from_scalar(0x5EED), bytes(32))
        self.by_no: dict[int, PKICard] = {}

    def platform_public_key(self) -> bytes:
        return self.keys.public_key

    def platform_sign(self, data: bytes) -> bytes:
        return self.keys.sign(data)

    def lookup(self, pki_no: int) -> Deferred[PKICard | None]:
        return succeed(self.by_no.get(pki_no))

    def register(self, card: PKICard) -> Deferred[None]:
        if card.pki_no in self.by_no:
            raise AlreadyExists(str(card.pki_no))
        self.by_no[card.pki_no] = card
        return succeed(None)

    def revoke(self, pki_no: int) -> Deferred[bool]:
        card = self.by_no.get(pki_no)
        if card is None:
            return succeed(False)
        self.by_no[pki_no] = replace(card, status=CardStatus.REVOKED)
        return succeed(True)

    def cards(self) -> Deferred[list[PKICard]]:
        return succeed(sorted(self.by_no.values(), key=lambda c: c.pki_no))


@implementer(ILedger)
class MemoryLedger:
    def __init__(self, pki: MemoryPKI) -> None:
        self.pki = pki
        self.serial = 0
        self.randoms: set[tuple[int, bytes]] = set()
        self.counters: dict[int, int] = {}
        self.sessions: dict[int, Session] = {}
        self.signins: list[tuple[int | None, str]] = []

    def health(self) -> Deferred[dict[str, object]]:
        return succeed({"engine": "memory", "schema_version": 0})

    def next_serial(self, pki_no: int, now_ms: int) -> Deferred[str]:
        self.serial += 1
        return succeed(str(self.serial).rjust(16, "0"))

    def note_card_random(self, pki_no: int, card_random: bytes, now_ms: int) -> Deferred[bool]:
        if (pki_no, card_random) in self.randoms:
            return succeed(False)
        self.randoms.add((pki_no, card_random))
        return succeed(True)

    def open_session(self, pki_no: int, user_id: bytes, serial: str, session_key: bytes,
                     counter: int, now_ms: int, ttl_ms: int) -> Deferred[Session | None]:
        card = self.pki.by_no.get(pki_no)
        if card is None or not card.active or counter <= self.counters.get(pki_no, 0):
            return succeed(None)
        self.counters[pki_no] = counter
        s = Session(pki_no, user_id, serial, session_key, now_ms, now_ms + ttl_ms)
        self.sessions[pki_no] = s
        return succeed(s)

    def session(self, pki_no: int, now_ms: int) -> Deferred[Session | None]:
        s = self.sessions.get(pki_no)
        return succeed(s if s is not None and s.live(now_ms) else None)

    def session_by_serial(self, serial: str, now_ms: int) -> Deferred[Session | None]:
        for s in self.sessions.values():
            if s.serial == serial and s.live(now_ms):
                return succeed(s)
        return succeed(None)

    def record_signin(self, pki_no: int | None, user_id: bytes, outcome: str,
                      now_ms: int) -> Deferred[None]:
        self.signins.append((pki_no, outcome))
        return succeed(None)

    def close(self) -> None:
        pass


class Conn:
    def __init__(self, factory: DDServerFactory) -> None:
        self.proto: DispatchProtocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.decoder = FrameDecoder(Response)

    def send(self, data: bytes) -> list[Response]:
        self.proto.dataReceived(data)
        return self.responses()

    def responses(self) -> list[Response]:
        out = list(self.decoder.feed(self.transport.value()))
        self.transport.clear()
        return out

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)
