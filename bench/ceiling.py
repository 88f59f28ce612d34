"""
The ceiling: what bare Twisted does on this machine with the recharge's shape and nothing else
(no SQL, no crypto, no flow logic). ``make bench`` runs it in the same run as the daemon and
prints the ratios; a recharge can never be faster than this. Two shapes:

* DD only (L{session}): the six DD round trips of DD11-DD22 on a new connection, frames of the
  recharge's sizes: the ceiling the issue first named;
* the whole recharge (L{whole_session}): first the order API's two calls, POSTs of
  APPLLogin's and CreateAutoLoadOrder's sizes over a kept-open connection with the load
  generator's own HTTP client (twisted.web's Agent, L{lnt.sim.orderclient.post_json}), answered
  by a bare twisted.web resource with answers of their sizes, then the six DD round trips:
  the same eight round trips as a recharge session of the load generator.

    python -m bench.ceiling serve      # servers on OS-chosen loopback ports (prints them)

``serve``'s bare twisted.web resource is also the HTTP ceiling of ``make bench``: it reads a
POST body and answers JSON with nothing in between, on a site told not to parse POST bodies as
forms (twisted.web's own C{parsePOSTFormSubmission=False}, which spares it the C{email}-based
Content-Type parsing): stock twisted.web at its leanest, so that the ceiling is no lower than
bare Twisted allows.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.web import resource, server

from lnt.sim.orderclient import post_json, shared_agent
from lnt.wire import FlowIndicator, FrameDecoder, InfoCode, Request, Response, response_header

#: (request header, request info size, response info size) of the recharge's six round trips
SHAPE = ((0xDD11, 15, 29), (0xDD13, 82, 85), (0xDD15, 74, 93), (0xDD17, 106, 61),
         (0xDD19, 82, 128), (0xDD21, 74, 30))
RESPONSE_SIZE = {header: size for header, _, size in SHAPE}
#: (path, request body size, answer size) of the order API's two calls before DD11
HTTP_SHAPE = ((b"APPLLogin", 693, 557), (b"CreateAutoLoadOrder", 821, 189))
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


async def whole_session(reactor: Any, port: int, web_url: bytes, agent: Any) -> float:
    start = time.perf_counter()
    for path, size, answer in HTTP_SHAPE:
        code, body = await post_json(agent, web_url + path, bytes(size))
        assert code == 200 and len(body) == answer, (code, len(body))
    return time.perf_counter() - start + await session(reactor, port)


async def measure(reactor: Any, port: int, sessions: int, concurrency: int,
                  web_port: int | None = None) -> tuple[float, float]:
    """(sessions/s, p50 ms) of C{sessions} sessions, C{concurrency} at once: DD only, or the
    whole recharge's shape when C{web_port} is given."""
    left = iter(range(sessions))
    latencies: list[float] = []
    agent = None if web_port is None else shared_agent(reactor, concurrency)
    web_url = f"http://127.0.0.1:{web_port}/".encode()

    async def worker() -> None:
        for _ in left:
            latencies.append(await (session(reactor, port) if agent is None else
                                    whole_session(reactor, port, web_url, agent)))

    start = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker())
                               for _ in range(concurrency)])
    wall = time.perf_counter() - start
    if agent is not None:  # no connection left open for the next measurement
        await agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
    return len(latencies) / wall, statistics.median(latencies) * 1000


def _answer(size: int) -> bytes:
    head = b'{"status":1,"errmsg":"","data":"'
    return head + b"0" * (size - len(head) - 2) + b'"}'


class Bare(resource.Resource):
    isLeaf = True
    #: 190 bytes of JSON, as the order API's answers are long; the two calls of a recharge
    #: answered with their own sizes
    ANSWER = _answer(190)
    ANSWERS = {b"/" + path: _answer(size) for path, _, size in HTTP_SHAPE}

    def render_POST(self, request: Any) -> bytes:
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return self.ANSWERS.get(request.path, self.ANSWER)


def serve() -> None:
    """Print the DD echo server's port and the bare web server's port, one line."""
    from twisted.internet import reactor

    dd = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Echo))
    web = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        server.Site(Bare(), parsePOSTFormSubmission=False))

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
