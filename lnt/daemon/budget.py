"""
The descriptor budget: each listener holds at most its limit of connections, and at the limit
it stops accepting (its listening ports pause; new connections wait in the kernel's backlog)
instead of accepting and holding them. A flood of idle connections or a slowloris then costs
the daemon a bounded number of descriptors, the other listeners (the admin endpoint with its
C{/health/live}) keep working, and whoever arrives after the flood is served as soon as one of
the flood's connections closes (the idle timeout and the HTTP request deadline close them).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from lnt import metrics
from lnt.logmask import Logger

log = Logger()


class ConnectionBudget(WrappingFactory):
    """C{wrapped} with at most C{limit} connections open; L{add_port} names the ports to pause."""

    protocol = ProtocolWrapper
    noisy = False  # the listener says it listens; "Starting factory <...>" adds nothing

    def __init__(self, wrapped: Any, limit: int, name: str) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.name = name
        self.ports: list[IListeningPort] = []
        self.paused = False
        #: how often accepting was paused, and connections closed at once beyond the limit
        self.pauses = 0
        self.refused = 0
        metrics.OPEN_CONNECTIONS.labels(name).set_function(lambda: len(self.protocols))

    def buildProtocol(self, addr: Any) -> ProtocolWrapper | None:  # type: ignore[override]
        if len(self.protocols) >= self.limit:
            # accepted in the same burst as the connection that reached the limit (the accept
            # loop takes up to a hundred at once): closed at once rather than held
            self.refused += 1
            return None
        return super().buildProtocol(addr)

    def add_port(self, port: IListeningPort) -> None:
        self.ports.append(port)
        if self.paused:
            port.stopReading()  # type: ignore[attr-defined]

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        if len(self.protocols) >= self.limit and not self.paused:
            self.paused = True
            self.pauses += 1
            for port in self.ports:
                port.stopReading()  # type: ignore[attr-defined]
            log.warn("{name}: {n} connections open, the limit: not accepting new ones until "
                     "one closes", name=self.name, n=len(self.protocols))

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        if self.paused and len(self.protocols) < self.limit:
            self.paused = False
            for port in self.ports:
                port.startReading()  # type: ignore[attr-defined]
            log.info("{name}: below the limit again ({n} open): accepting", name=self.name,
                     n=len(self.protocols))
