"""
HTTP calls per second: a minimal keep-alive HTTP/1.1 client on raw Twisted protocols (no
treq/Agent, whose own CPU would be what is measured), C{concurrency} connections each sending
the same request again as soon as the answer is in. ``make bench`` points it at the daemon's
order API and consignment API and at a bare twisted.web resource (bench/ceiling.py) in the same
run.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol


def post(path: str, body: bytes, content_type: str) -> bytes:
    """The bytes of one keep-alive POST to 127.0.0.1."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class KeepAlive(protocol.Protocol):
    """Sends the request, reads one answer (by Content-Length), sends it again."""

    def __init__(self, request: bytes, left: list[int], done: defer.Deferred[None],
                 statuses: dict[int, int]) -> None:
        self.request = request
        self.left = left
        self.done = done
        self.statuses = statuses
        self.buffer = b""

    def connectionMade(self) -> None:
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if self.left[0] <= 0:
            self.transport.loseConnection()
            if not self.done.called:
                self.done.callback(None)
            return
        self.left[0] -= 1
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            fields = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            body_start = head_end + 4
            if fields.get("transfer-encoding", "").lower() == "chunked":
                # twisted.web streams a body it was not given at once in chunks; the last is
                # empty (no trailers here)
                end = self.buffer.find(b"0\r\n\r\n", body_start)
                if end < 0:
                    return
                body_end = end + 5
            else:
                body_end = body_start + int(fields.get("content-length", "0"))
                if len(self.buffer) < body_end:
                    return
            status = int(head[0].split()[1])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.buffer = self.buffer[body_end:]
            self._next()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


async def hammer(reactor: Any, port: int, request: bytes, total: int, concurrency: int
                 ) -> tuple[float, dict[int, int]]:
    """(calls/s, {HTTP status: count}) of C{total} calls over C{concurrency} connections."""
    left = [total]
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    waits = []
    for _ in range(concurrency):
        done: defer.Deferred[None] = defer.Deferred()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                              KeepAlive(request, left, done, statuses))
        waits.append(done)
    await defer.gatherResults(waits)
    return sum(statuses.values()) / (time.perf_counter() - start), statuses
