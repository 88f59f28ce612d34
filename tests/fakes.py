"""
Backends and connections for protocol tests driven by a Clock: the real SQL ledger on an
in-memory SQLite database through L{SyncDatabase} (every Deferred has fired when returned, so
no thread and no reactor is involved), and an in-memory connection to the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from lnt.coremodule import FileCoreModule
from lnt.crypto.ec import key_from_scalar
from lnt.flows.dispatch import DDServerFactory, DispatchProtocol
from lnt.keyfiles import CoreKeys, PlatformKeys
from lnt.storage.database import DSN, SyncDatabase
from lnt.storage.ledger import SQLLedger
from lnt.storage.migrations import migrate
from lnt.storage.pkicards import LedgerPKI
from lnt.wire import FrameDecoder, Response, response_header
from tests.support import request


class SyncBackends:
    """The real SQL ledger and PKI store on an in-memory SQLite database, synchronously."""

    def __init__(self) -> None:
        dsn = DSN.parse("sqlite://:memory:")
        self.db = SyncDatabase(dsn)
        migrate(dsn, conn=self.db.connection)
        self.keys = PlatformKeys(key_from_scalar(0x5EED), bytes(32))
        self.ledger = SQLLedger(self.db, self.keys.sealer())
        self.pki = LedgerPKI(self.db, self.keys)
        self.core_keys = CoreKeys(bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))
        self.core = FileCoreModule(self.core_keys)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        cur = self.db.connection.cursor()
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]


def drive(conn: Conn, first: bytes, execute: Callable[[bytes], bytes], user: bytes,
          stop: Callable[[Response], bool] | None = None,
          tamper: Callable[[int, bytes], bytes] | None = None) -> list[Response]:
    """
    The terminal's loop over an in-memory connection: send C{first}, then hand each
    continue-response's info (0x40-prefixed) to C{execute} and send its answer as the next
    stage, until the flow ends (or C{stop} says so). C{tamper(header, answer)} may change what
    is sent.
    """
    responses = conn.send(first)
    pki = 0xFFFFFFFF
    while responses and not responses[-1].ends_flow:
        r = responses[-1]
        if stop is not None and stop(r):
            return responses
        pki = r.pki if r.pki != 0xFFFFFFFF else pki
        header = response_header(r.header)
        answer = execute(b"\x40" + r.info)
        if tamper is not None:
            answer = tamper(header, answer)
        responses += conn.send(request(header, answer, user=user, pki=pki))
    return responses


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
