"""
The listening side of the DD protocol: read a connection's first frame, choose the flow by its
header, hand the connection over.

A connection carries exactly one flow. L{DispatchProtocol} is the transport's protocol for the
whole connection; once the first frame is complete it builds the flow's protocol, connects it to
the same transport and feeds it every byte read so far, then forwards the rest. (Forwarding
rather than swapping C{transport.protocol} works the same over TCP, TLS and adopted systemd
sockets.)

Answers the dispatcher gives itself, always with the response header of the frame it got and
flow indicator 0xFF, then closes:
 - a first frame whose header starts no known flow: A0;
 - a first frame with a wrong CRC: A2;
 - a connection over the connection limit: DD (system busy);
 - a framing error or no complete frame within the idle timeout: closed without an answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lnt.flows.context import IFlow
from lnt.logmask import Logger
from lnt.wire import (
    MAX_FRAME_SIZE,
    NO_PKI,
    ChecksumError,
    FlowIndicator,
    FrameDecoder,
    FramingError,
    InfoCode,
    Request,
    Response,
    header_name,
    response_header,
)

if TYPE_CHECKING:
    from lnt.flows.context import FlowContext

log = Logger()


class FlowConflict(Exception):
    """Two flow plugins claim the same first header."""


class FlowUnavailable(Exception):
    """A flow plugin names a protocol class that cannot be imported (a typo, a missing module)."""


@implementer(IPlugin, IFlow)
@dataclass(frozen=True)
class FlowPlugin:
    """
    The usual way to provide L{IFlow} from a plugin module: name the protocol class by its
    dotted path, so that plugin discovery imports nothing heavy.

        signin = FlowPlugin("sign-in", 0xDD01, "lnt.flows.signin.SignInFlow", "...")
    """

    name: str
    first_header: int
    protocol: str
    description: str = ""

    def resolve(self) -> type:
        """The protocol class; L{FlowUnavailable} when its dotted path names none."""
        module, _, attr = self.protocol.rpartition(".")
        try:
            cls = getattr(import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise FlowUnavailable(f"flow {self.name!r}: cannot load {self.protocol}: {e}"
                                  ) from None
        if not isinstance(cls, type):
            raise FlowUnavailable(f"flow {self.name!r}: {self.protocol} is not a class")
        return cls

    def buildProtocol(self, context: FlowContext) -> IProtocol:
        return cast(IProtocol, self.resolve()(context))


class FlowRegistry:
    """The flows this daemon serves, by the header of their first stage."""

    def __init__(self, flows: Iterable[IFlow]) -> None:
        self._by_header: dict[int, IFlow] = {}
        for flow in flows:
            verifyObject(IFlow, flow)
            # a plugin that names its protocol by path is resolved now: a typo stops the
            # daemon at start, not at the first connection of that flow
            resolve = getattr(flow, "resolve", None)
            if callable(resolve):
                resolve()
            other = self._by_header.get(flow.first_header)
            if other is not None:
                raise FlowConflict(
                    f"flows {other.name!r} and {flow.name!r} both start with "
                    f"{header_name(flow.first_header)}"
                )
            self._by_header[flow.first_header] = flow

    @classmethod
    def discover(cls) -> FlowRegistry:
        """Every L{IFlow} plugin on the plugin path (C{twisted/plugins} of each sys.path entry)."""
        import twisted.plugins

        return cls(getPlugins(IFlow, twisted.plugins))

    def get(self, header: int) -> IFlow | None:
        return self._by_header.get(header)

    def flows(self) -> list[IFlow]:
        return sorted(self._by_header.values(), key=lambda f: f.first_header)


class DispatchProtocol(Protocol):
    """Reads the first frame of a connection and hands the connection to its flow."""

    factory: DDServerFactory

    def __init__(self, busy: bool) -> None:
        self._busy = busy
        self._decoder = FrameDecoder(Request)
        self._received = bytearray()
        self._flow: IProtocol | None = None
        self._idle: IDelayedCall | None = None
        self._closed = False

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self._idle = self.factory.context.clock.callLater(
            self.factory.context.settings.idle_timeout, self._idle_timeout
        )

    def dataReceived(self, data: bytes) -> None:
        if self._flow is not None:
            self._flow.dataReceived(data)
            return
        if self._closed:
            return
        # Everything before the first frame's end: at most one frame plus what arrived with it
        # in this chunk (handed on to the flow unread).
        self._received += data
        try:
            first = next(iter(self._decoder.feed(data)), None)
        except ChecksumError as e:
            self._answer(e.header, e.user_id, InfoCode.BAD_CHECKSUM, "bad CRC in first frame")
            return
        except FramingError as e:
            log.warn("dispatch: framing error in first frame, closing: {error}", error=str(e))
            self._end()
            return
        if first is None:
            if len(self._received) > MAX_FRAME_SIZE:  # pragma: no cover - decoder bounds it
                self._end()
            return
        self._cancel_idle()
        if self._busy:
            self._answer(first.header, first.user_id, InfoCode.SYSTEM_BUSY, "connection limit")
            return
        flow = self.factory.registry.get(first.header)
        if flow is None:
            self._answer(
                first.header,
                first.user_id,
                InfoCode.OUT_OF_ORDER,
                f"{header_name(first.header)} starts no flow",
            )
            return
        proto = flow.buildProtocol(self.factory.context)
        self._flow = proto
        received, self._received = bytes(self._received), bytearray()
        assert self.transport is not None
        proto.makeConnection(self.transport)
        proto.dataReceived(received)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._cancel_idle()
        self.factory.connections.discard(self)
        if self._flow is not None:
            self._flow.connectionLost(reason)
        self.factory.connection_ended()

    def _answer(self, header: int, user_id: bytes, code: InfoCode, why: str) -> None:
        log.info(
            "dispatch: answering {code:02X} ({meaning}) to {stage}: {why}",
            code=int(code),
            meaning=code.meaning,
            stage=header_name(header),
            why=why,
        )
        assert self.transport is not None
        self.transport.write(
            Response(
                header=response_header(header),
                user_id=user_id,
                flow=FlowIndicator.END,
                code=code,
                pki=NO_PKI,
                info=b"",
            ).encode()
        )
        self._end()

    def _idle_timeout(self) -> None:
        log.info("dispatch: no first frame within the idle timeout, closing")
        self._idle = None
        self._end()

    def _end(self) -> None:
        self._closed = True
        self._cancel_idle()
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def describe(self) -> str:
        """The flow on this connection as the log names it: its name, PKI card and stage."""
        flow = self._flow
        if flow is None:
            return "a connection before its first frame"
        name = getattr(flow, "name", type(flow).__name__)
        current = getattr(flow, "_current", None)
        stage = header_name(current.header) if current is not None else "-"
        pki = getattr(flow, "pki", NO_PKI)
        card = "an unidentified PKI card" if pki == NO_PKI else f"PKI {pki}"
        return f"{name} of {card} (last frame {stage})"

    def abort(self) -> None:
        """End the connection now (shutdown grace period over)."""
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:  # pragma: no cover - every stream transport we use has abortConnection
                transport.loseConnection()


class DDServerFactory(Factory):
    """Builds a L{DispatchProtocol} per connection; enforces the connection limit."""

    def __init__(self, registry: FlowRegistry, context: FlowContext, max_connections: int) -> None:
        self.registry = registry
        self.context = context
        self.max_connections = max_connections
        self.connections: set[DispatchProtocol] = set()
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> DispatchProtocol:  # type: ignore[override]
        busy = len(self.connections) >= self.max_connections
        if busy:
            log.warn(
                "dispatch: {n} connections open (limit {limit}), answering DD",
                n=len(self.connections),
                limit=self.max_connections,
            )
        proto = DispatchProtocol(busy)
        proto.factory = self
        return proto

    def connection_ended(self) -> None:
        if not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drain(self, grace: float) -> Deferred[None]:
        """
        Fires when every open connection has ended; connections still open after C{grace}
        seconds are aborted. Used at shutdown, after the listener stopped accepting.
        """
        if not self.connections:
            return defer.succeed(None)
        log.info(
            "waiting up to {grace}s for {n} running flows", grace=grace, n=len(self.connections)
        )
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        clock = self.context.clock

        def give_up() -> None:
            for proto in list(self.connections):
                # an aborted recharge may leave a load in doubt: name it (warning)
                log.warn("shutdown: aborting {what} after {grace}s of grace",
                         what=proto.describe(), grace=grace)
                proto.abort()

        call = clock.callLater(grace, give_up)

        def done(result: None) -> None:
            if call.active():
                call.cancel()

        d.addCallback(done)
        return d
