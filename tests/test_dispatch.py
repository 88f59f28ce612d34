"""
Flow dispatch and the flow base class, in memory: StringTransport and Clock, no sockets.
The same contract is checked over real TCP against a daemon process in test_daemon.py.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from lnt.flows.context import FlowContext, FlowSettings
from lnt.flows.dispatch import (
    DDServerFactory,
    FlowConflict,
    FlowPlugin,
    FlowRegistry,
    FlowUnavailable,
)
from lnt.wire import NO_PKI, FlowIndicator, InfoCode
from tests.fakes import Conn, SyncBackends
from tests.support import request

SIGNIN = FlowPlugin("sign-in", 0xDD01, "lnt.flows.signin.SignInFlow")
SETTINGS = FlowSettings(idle_timeout=30, flow_deadline=120, backend_timeout=10)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(clock: Clock) -> DDServerFactory:
    b = SyncBackends()
    ctx = FlowContext(ledger=b.ledger, pki=b.pki, core=b.core, clock=clock, settings=SETTINGS)
    return DDServerFactory(FlowRegistry([SIGNIN]), ctx, max_connections=2)


def test_dd01_answered_with_r_init(factory: DDServerFactory) -> None:
    c = Conn(factory)
    [r] = c.send(request(0xDD01))
    assert (r.header, r.flow, r.code, r.pki, r.info) == (0xDD02, 0x00, 0x00, NO_PKI,
                                                         bytes.fromhex("BB10000000"))
    assert not c.closed


def test_first_frame_split_byte_by_byte(factory: DDServerFactory) -> None:
    c = Conn(factory)
    frame = request(0xDD01)
    for b in frame[:-1]:
        assert c.send(bytes((b,))) == []
    [r] = c.send(frame[-1:])
    assert r.header == 0xDD02


def test_bad_crc_first_frame(factory: DDServerFactory) -> None:
    c = Conn(factory)
    frame = bytearray(request(0xDD01))
    frame[-2] ^= 0xFF
    [r] = c.send(bytes(frame))
    assert (r.header, r.flow, r.code) == (0xDD02, FlowIndicator.END, InfoCode.BAD_CHECKSUM)
    assert c.closed


@pytest.mark.parametrize(("header", "answer"), [(0xDD03, 0xDD04), (0xDD13, 0xDD14),
                                                (0xDD75, 0xDD76), (0xDD11, 0xDD12)])
def test_unknown_first_stage(factory: DDServerFactory, header: int, answer: int) -> None:
    c = Conn(factory)
    [r] = c.send(request(header, step=0))
    assert (r.header, r.flow, r.code) == (answer, 0xFF, InfoCode.OUT_OF_ORDER)
    assert c.closed


def test_wrong_stage_within_flow(factory: DDServerFactory) -> None:
    c = Conn(factory)
    c.send(request(0xDD01))
    [r] = c.send(request(0xDD05, bytes(138), pki=1))
    assert (r.header, r.flow, r.code) == (0xDD06, 0xFF, InfoCode.OUT_OF_ORDER)
    assert c.closed


def test_wrong_step_byte(factory: DDServerFactory) -> None:
    c = Conn(factory)
    [r] = c.send(request(0xDD01, step=1))
    assert (r.header, r.code) == (0xDD02, InfoCode.OUT_OF_ORDER)
    c = Conn(factory)
    c.send(request(0xDD01))
    [r] = c.send(request(0xDD03, bytes(14), step=0))
    assert (r.header, r.code) == (0xDD04, InfoCode.OUT_OF_ORDER)


def test_user_id_must_not_change(factory: DDServerFactory) -> None:
    c = Conn(factory)
    c.send(request(0xDD01))
    [r] = c.send(request(0xDD03, bytes(14), user=b"another-terminal"))
    assert r.code == InfoCode.OUT_OF_ORDER and c.closed


def test_bad_crc_mid_flow(factory: DDServerFactory) -> None:
    c = Conn(factory)
    c.send(request(0xDD01))
    frame = bytearray(request(0xDD03, bytes(14)))
    frame[-1] ^= 1
    [r] = c.send(bytes(frame))
    assert (r.header, r.flow, r.code) == (0xDD04, 0xFF, InfoCode.BAD_CHECKSUM)
    assert c.closed


def test_framing_error_closes_without_answer(factory: DDServerFactory) -> None:
    c = Conn(factory)
    assert c.send(b"GET / HTTP/1.1\r\n") == []
    assert c.closed
    c = Conn(factory)
    c.send(request(0xDD01))
    assert c.send(b"\xdd\x03\x07") == []
    assert c.closed


def test_idle_timeout_before_first_frame(factory: DDServerFactory, clock: Clock) -> None:
    c = Conn(factory)
    c.send(request(0xDD01)[:10])
    clock.advance(29.9)
    assert not c.closed
    clock.advance(0.2)
    assert c.closed and c.responses() == []


def test_idle_timeout_within_flow(factory: DDServerFactory, clock: Clock) -> None:
    c = Conn(factory)
    c.send(request(0xDD01))
    clock.advance(29)
    assert not c.closed
    clock.advance(2)
    assert c.closed


def test_flow_deadline(clock: Clock) -> None:
    b = SyncBackends()
    ctx = FlowContext(ledger=b.ledger, pki=b.pki, core=b.core, clock=clock,
                      settings=FlowSettings(idle_timeout=100, flow_deadline=50))
    c = Conn(DDServerFactory(FlowRegistry([SIGNIN]), ctx, 5))
    c.send(request(0xDD01))
    clock.advance(49)
    assert not c.closed
    clock.advance(2)
    assert c.closed


def test_connection_limit_answers_busy(factory: DDServerFactory) -> None:
    a, b = Conn(factory), Conn(factory)
    c = Conn(factory)
    [r] = c.send(request(0xDD01))
    assert (r.header, r.flow, r.code) == (0xDD02, 0xFF, InfoCode.SYSTEM_BUSY)
    assert c.closed
    c.proto.connectionLost()
    assert len(factory.connections) == 2  # the limit still holds
    a.proto.connectionLost()
    d = Conn(factory)
    [r] = d.send(request(0xDD01))
    assert r.code == InfoCode.SUCCESS
    del b


def test_drain_waits_then_aborts(factory: DDServerFactory, clock: Clock) -> None:
    c = Conn(factory)
    c.send(request(0xDD01))
    done: list[None] = []
    factory.drain(10).addCallback(done.append)
    clock.advance(5)
    assert done == []
    c.proto.connectionLost()
    assert done == [None]
    c2 = Conn(factory)
    c2.send(request(0xDD01))
    factory.drain(10).addCallback(done.append)
    clock.advance(11)
    assert c2.transport.disconnecting or getattr(c2.transport, "disconnected", False)


def test_registry_refuses_two_flows_for_one_header() -> None:
    other = FlowPlugin("other", 0xDD01, "lnt.flows.signin.SignInFlow")
    with pytest.raises(FlowConflict, match="sign-in"):
        FlowRegistry([SIGNIN, other])


@pytest.mark.parametrize("path", ["lnt.flows.signin.SignInFlo", "no.such.module.Flow", "x",
                                  "lnt.flows.signin.SW_OK"])
def test_a_flow_plugin_naming_no_protocol_class_fails_when_the_registry_is_built(
        path: str) -> None:
    with pytest.raises(FlowUnavailable, match="flow 'typo': "):
        FlowRegistry([FlowPlugin("typo", 0xDD91, path)])


def test_builtin_flows_are_discovered_as_plugins() -> None:
    names = {f.name: f.first_header for f in FlowRegistry.discover().flows()}
    assert names["sign-in"] == 0xDD01


# -- every branch of FlowProtocol, with the flows of tests/flowsamples.py ----------------------

def sample_factory(clock: Clock, flow: str, header: int = 0xDD91) -> DDServerFactory:
    b = SyncBackends()
    ctx = FlowContext(ledger=b.ledger, pki=b.pki, core=b.core, clock=clock, settings=SETTINGS)
    return DDServerFactory(FlowRegistry([FlowPlugin(flow, header, f"tests.flowsamples.{flow}")]),
                           ctx, max_connections=2)


def test_a_backend_call_that_never_answers_ends_the_flow_with_dd(clock: Clock) -> None:
    conn = Conn(sample_factory(clock, "SlowBackendFlow"))
    assert conn.send(request(0xDD91, step=0)) == []
    clock.advance(9.9)
    assert conn.responses() == [] and not conn.closed
    clock.advance(0.2)  # the backend timeout (10 s)
    [r] = conn.responses()
    assert (r.header, r.flow, r.code) == (0xDD92, FlowIndicator.END, InfoCode.SYSTEM_BUSY)
    assert conn.closed


def test_a_frame_while_the_stage_is_in_work_is_out_of_order(clock: Clock) -> None:
    conn = Conn(sample_factory(clock, "BusyStageFlow"))
    [first] = conn.send(request(0xDD91, step=0))
    assert (first.header, first.flow) == (0xDD92, FlowIndicator.CONTINUE)
    assert conn.send(request(0xDD93)) == []  # stage DD93 now in work (a slow backend call)
    [r] = conn.send(request(0xDD95))
    assert (r.header, r.code) == (0xDD96, InfoCode.OUT_OF_ORDER) and conn.closed


def test_an_unexpected_error_is_answered_ee_and_logged(clock: Clock) -> None:
    from twisted.logger import ILogObserver, globalLogPublisher
    from zope.interface import provider

    events: list[dict[str, object]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, object]) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        conn = Conn(sample_factory(clock, "CrashingFlow"))
        [r] = conn.send(request(0xDD91, step=0))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert (r.header, r.code) == (0xDD92, InfoCode.BACKEND_ERROR) and conn.closed
    assert any("unexpected error" in str(e.get("log_format")) and "log_failure" in e
               for e in events)


def test_a_run_that_returns_without_an_answer_is_answered_ee(clock: Clock) -> None:
    conn = Conn(sample_factory(clock, "SilentFlow"))
    [r] = conn.send(request(0xDD91, step=0))
    assert (r.header, r.code) == (0xDD92, InfoCode.BACKEND_ERROR) and conn.closed


def test_a_run_that_never_finishes_is_ended_by_the_flow_deadline(clock: Clock) -> None:
    conn = Conn(sample_factory(clock, "EndlessFlow"))
    assert conn.send(request(0xDD91, step=0)) == []
    clock.advance(119)
    assert not conn.closed
    clock.advance(2)  # flow deadline 120 s
    assert conn.closed and conn.responses() == []
