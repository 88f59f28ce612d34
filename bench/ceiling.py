"""
The ceiling: what bare Twisted does on this machine with the recharge flow's shape, six
request/response round trips per connection with DD frames of the recharge's sizes, and nothing
else (no SQL, no crypto, no flow logic). ``make bench`` runs it in the same run as the daemon
and prints the ratio; a recharge can never be faster than this.

    python -m bench.ceiling serve      # servers on OS-chosen loopback ports (prints them)

``serve`` also runs a bare twisted.web resource (the HTTP ceiling): it reads a POST body and
answers 190 bytes of JSON, as the order API's answers are long, with nothing in between.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.web import resource, server

from lnt.wire import FlowIndicator, FrameDecoder, InfoCode, Request, Response, response_header

#: (request header, request info size, response info size) of the recharge's six round trips
SHAPE = ((0xDD11, 15, 29), (0xDD13, 82, 85), (0xDD15, 74, 93), (0xDD17, 106, 61),
         (0xDD19, 82, 128), (0xDD21, 74, 30))
RESPONSE_SIZE = {header: size for header, _, size in SHAPE}
USER = b"CEILING-TERMINAL"


class Echo(protocol.Protocol):
    """Answers every DD frame with a frame of the recharge's response size."""

    def connectionMade(self) -> None:
        self.decoder = FrameDecoder(Request)

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            last = frame.header == SHAPE[-1][0]
            assert self.transport is not None
            self.transport.write(Response(
                response_header(frame.header), frame.user_id,
                FlowIndicator.END if last else FlowIndicator.CONTINUE, InfoCode.SUCCESS,
                frame.pki, bytes(RESPONSE_SIZE[frame.header])).encode())
            if last:
                self.transport.loseConnection()


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.decoder = FrameDecoder(Response)
        self.waiting: defer.Deferred[Response] | None = None

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            waiting, self.waiting = self.waiting, None
            assert waiting is not None
            waiting.callback(frame)

    def exchange(self, request: Request) -> defer.Deferred[Response]:
        self.waiting = defer.Deferred()
        assert self.transport is not None
        self.transport.write(request.encode())
        return self.waiting


async def session(reactor: Any, port: int) -> float:
    start = time.perf_counter()
    client = Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    for i, (header, size, _) in enumerate(SHAPE):
        await client.exchange(Request(header, USER, 0 if i == 0 else 1, 70000472, bytes(size)))
    assert client.transport is not None
    client.transport.loseConnection()
    return time.perf_counter() - start


async def measure(reactor: Any, port: int, sessions: int, concurrency: int
                  ) -> tuple[float, float]:
    """(sessions/s, p50 ms) of C{sessions} sessions, C{concurrency} at once."""
    left = iter(range(sessions))
    latencies: list[float] = []

    async def worker() -> None:
        for _ in left:
            latencies.append(await session(reactor, port))

    start = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker())
                               for _ in range(concurrency)])
    wall = time.perf_counter() - start
    return len(latencies) / wall, statistics.median(latencies) * 1000


class Bare(resource.Resource):
    isLeaf = True
    ANSWER = b'{"status":1,"errmsg":"","data":"' + b"0" * 160 + b'"}'

    def render_POST(self, request: Any) -> bytes:
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return self.ANSWER


def serve() -> None:
    """Print the DD echo server's port and the bare web server's port, one line."""
    from twisted.internet import reactor

    dd = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Echo))
    web = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        server.Site(Bare()))

    def listening(ports: list[Any]) -> None:
        print(" ".join(str(p.getHost().port) for p in ports), flush=True)

    defer.gatherResults([dd, web]).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        print(__doc__)
        task.react(lambda r: defer.succeed(None))
