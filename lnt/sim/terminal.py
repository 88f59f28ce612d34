"""
The terminal client: a Twisted client protocol that runs one flow per connection, as a field
terminal does.

The terminal does not interpret the platform's commands (section 3.1 of the source document):
it hands each response's info, with 0x40 in front, to its reader and sends the reader's answer
as the next stage. L{run_flow} is that loop; it ends when a response carries flow indicator
0xFF. Every wait has a timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from lnt.wire import (
    NO_PKI,
    FrameDecoder,
    InfoCode,
    Request,
    Response,
    WireError,
    describe_code,
    header_name,
    response_header,
)


class TerminalError(Exception):
    """The exchange broke down (timeout, connection lost, garbage from the platform)."""


class FlowRefused(Exception):
    """The platform ended the flow with an info code other than success."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{header_name(response.header)}: {describe_code(response.code)}")
        self.response = response
        self.code = response.code


class TerminalProtocol(Protocol):
    """Sends requests, hands back responses one at a time."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._decoder = FrameDecoder(Response)
        self._queue: list[Response] = []
        self._waiting: Deferred[Response] | None = None
        self._lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        try:
            self._queue.extend(self._decoder.feed(data))
        except WireError as e:
            self._fail(TerminalError(f"platform sent a bad frame: {e}"))
            return
        self._deliver()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason
        self._fail(TerminalError("connection closed by the platform"))

    def _fail(self, error: Exception) -> None:
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.errback(error)
        if self.transport is not None:
            self.transport.loseConnection()

    def _deliver(self) -> None:
        if self._waiting is not None and self._queue:
            d, self._waiting = self._waiting, None
            d.callback(self._queue.pop(0))

    def exchange(self, request: Request) -> Deferred[Response]:
        """Send C{request}; fire with the next response (or fail after the timeout)."""
        if self._lost is not None and not self._queue:
            return defer.fail(TerminalError("connection closed by the platform"))
        assert self.transport is not None
        self.transport.write(request.encode())
        d: Deferred[Response] = Deferred()
        self._waiting = d
        self._deliver()
        d.addTimeout(self.timeout, self.clock)

        def timed_out(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                if self.transport is not None:
                    self.transport.loseConnection()
                raise TerminalError(f"no answer to {header_name(request.header)} "
                                    f"within {self.timeout}s")
            return f

        return d.addErrback(timed_out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


@dataclass
class Exchange:
    request: Request
    response: Response


@dataclass
class FlowResult:
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def last(self) -> Response:
        return self.exchanges[-1].response

    @property
    def pki(self) -> int:
        return self.last.pki


Reporter = Callable[[Request, Response], None]


async def run_flow(
    conn: TerminalProtocol,
    first: Request,
    reader: Callable[[bytes], bytes],
    report: Reporter | None = None,
) -> FlowResult:
    """
    Send C{first}, then feed each continue-response's info (0x40-prefixed) to C{reader} and
    send its answer as the next stage, until the platform ends the flow. Raises L{FlowRefused}
    when it ends with a code other than success.
    """
    result = FlowResult()
    request = first
    pki = first.pki
    while True:
        response = await conn.exchange(request)
        result.exchanges.append(Exchange(request, response))
        if report is not None:
            report(request, response)
        if response.ends_flow:
            conn.close()
            if response.code != InfoCode.SUCCESS:
                raise FlowRefused(response)
            return result
        if response.code != InfoCode.SUCCESS:
            raise FlowRefused(response)
        if response.pki != NO_PKI:
            pki = response.pki
        answer = reader(bytes((0x40,)) + response.info)
        request = Request(response_header(response.header), first.user_id, 0x01, pki, answer)


async def connect(
    reactor: IReactorTCP, host: str, port: int, clock: IReactorTime, timeout: float
) -> TerminalProtocol:
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=int(max(1, timeout)))
    proto = TerminalProtocol(clock, timeout)
    await connectProtocol(endpoint, proto)
    return proto
