"""
The simulator's order-API client says what went wrong on the wire (lnt-terminal's exit 3):
no answer within its timeout (Clock-driven), nobody listening, an HTTP error; and a shared
agent keeps its connections open across calls (the load generator's terminals).
"""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.web import resource, server

from lnt.sim.orderclient import MAX_ANSWER, APIBroken, OrderClient, shared_agent


class NoAnswer:
    """An agent whose requests are never answered (and notice being cancelled)."""

    def __init__(self) -> None:
        self.cancelled = 0

    def request(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        return defer.Deferred(cancel)


def client(url: str, **kwargs: Any) -> OrderClient:
    return OrderClient(url, 7, cast(Any, None), "LOADGEN-TERM0000", **kwargs)


def test_no_answer_within_the_timeout_is_a_network_error() -> None:
    clock = task.Clock()
    agent = NoAnswer()
    c = client("http://127.0.0.1:1", timeout=2.0, clock=clock, agent=agent)
    d = defer.Deferred.fromCoroutine(c.appl_login("B1", 1))
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.2)
    failure = cast(Any, None)

    def caught(f: Any) -> None:
        nonlocal failure
        failure = f

    d.addErrback(caught)
    assert failure is not None and failure.check(APIBroken)
    assert str(failure.value) == "/APPLLogin: no answer within 2 s"
    assert agent.cancelled == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_nobody_listening_is_a_network_error() -> None:
    c = client(f"http://127.0.0.1:{free_port()}", timeout=5.0)
    with pytest.raises(APIBroken, match=r"^/APPLLogin: ConnectionRefusedError"):
        await c.appl_login("B1", 1)


class Broken(resource.Resource):
    isLeaf = True
    paths: list[bytes] = []

    def render_POST(self, request: server.Request) -> bytes:
        self.paths.append(request.path)
        request.setResponseCode(500)
        return b"it broke"


@pytest_twisted.ensureDeferred
async def test_an_http_error_is_reported_and_a_shared_agent_reuses_its_connection() -> None:
    from twisted.internet import reactor

    site = server.Site(Broken())
    connections: list[Any] = []
    build = site.buildProtocol

    def counting(addr: Any) -> Any:
        connections.append(addr)
        return build(addr)

    site.buildProtocol = counting  # type: ignore[method-assign]
    port = cast(Any, reactor).listenTCP(0, site, interface="127.0.0.1")
    agent = shared_agent(reactor, 4)
    try:
        c = client(f"http://127.0.0.1:{port.getHost().port}", agent=agent)
        for _ in range(3):
            with pytest.raises(APIBroken, match=r"^/APPLLogin: HTTP 500: it broke$"):
                await c.appl_login("B1", 1)
        assert Broken.paths == [b"/APPLLogin"] * 3
        assert len(connections) == 1
    finally:
        await cast(Any, agent)._pool.closeCachedConnections()
        await port.stopListening()


def test_shared_agent_pool_size() -> None:
    agent = cast(Any, shared_agent(MemoryReactorClock(), 16))
    assert agent._pool.persistent and agent._pool.maxPersistentPerHost == 16


class Endless(resource.Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes:
        return b"x" * (MAX_ANSWER + 1)


@pytest_twisted.ensureDeferred
async def test_an_answer_beyond_the_limit_is_refused() -> None:
    from twisted.internet import reactor

    port = cast(Any, reactor).listenTCP(0, server.Site(Endless()), interface="127.0.0.1")
    try:
        c = client(f"http://127.0.0.1:{port.getHost().port}")
        with pytest.raises(APIBroken, match=r"answer longer than 1048576 bytes"):
            await c.appl_login("B1", 1)
    finally:
        await port.stopListening()
