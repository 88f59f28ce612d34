"""
Sign-in (DD01-DD08): the platform's flow against the simulator's reader, in memory (every
failure path, on a Clock), and end to end against real daemon processes with the CLIs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from lnt.crypto.ec import generate, public_raw, sign
from lnt.domain.records import PKICard, Session
from lnt.flows.base import FlowProtocol
from lnt.flows.context import FlowContext, FlowSettings
from lnt.flows.dispatch import DDServerFactory, FlowPlugin, FlowRegistry
from lnt.keyfiles import CardKeyFile
from lnt.messages.login import Login2Answer, login3_signed, transcript
from lnt.messages.statuswords import SW_OK
from lnt.sim.reader import Reader
from lnt.storage.database import result_of
from lnt.wire import InfoCode, Request, Response, response_header
from tests.fakes import Conn, SyncBackends, drive
from tests.support import USER, Daemon, request

PKI = 70000472


class SessionProbe(FlowProtocol):
    """A one-stage test flow that needs a session: what later flows do first."""

    name = "probe"

    async def run(self, first: Request) -> None:
        session = await self.require_session(first)
        self.finish(first, info=session.serial.encode())


SIGNIN = FlowPlugin("sign-in", 0xDD01, "lnt.flows.signin.SignInFlow")
PROBE = FlowPlugin("probe", 0xDD95, "tests.test_signin.SessionProbe")

Tamper = Callable[[int, bytes], bytes]


class Platform:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backends = SyncBackends()
        self.pki = self.backends.pki
        self.ledger = self.backends.ledger
        ctx = FlowContext(self.ledger, self.pki, self.backends.core, self.clock,
                          FlowSettings(idle_timeout=30, session_ttl=3600))
        self.factory = DDServerFactory(FlowRegistry([SIGNIN, PROBE]), ctx, 10)

    def card(self, pki_no: int = PKI, version: int = 1, user: bytes = USER,
             register: bool = True) -> CardKeyFile:
        key = CardKeyFile.generate(pki_no, version, user, self.pki.platform_public_key())
        if register:
            self.pki.register(PKICard(pki_no, user, key.public_key, version))
        return key

    def signin(self, reader: Reader, user: bytes = USER, tamper: Tamper | None = None,
               stop_after: int | None = None) -> list[Response]:
        """Run the terminal loop; C{tamper(header, answer)} may change what is sent."""
        self.last_conn = conn = Conn(self.factory)
        responses = drive(conn, request(0xDD01, user=user), reader.execute, user,
                          stop=None if stop_after is None else lambda r: r.header == stop_after,
                          tamper=tamper)
        if responses[-1].ends_flow and responses[-1].code == InfoCode.SUCCESS:
            reader.confirm_session()
        return responses

    def session(self, pki: int = PKI) -> Session | None:
        return result_of(self.ledger.session(pki, int(self.clock.seconds() * 1000)))

    def last_signin(self) -> tuple[Any, ...]:
        return self.backends.query("SELECT pki_no, outcome FROM signins ORDER BY id DESC"
                                   " LIMIT 1")[0]

    def probe(self, pki: int = PKI, user: bytes = USER) -> Response:
        [r] = Conn(self.factory).send(request(0xDD95, user=user, pki=pki, step=0))
        return r


def outcome(responses: list[Response]) -> tuple[int, int]:
    return responses[-1].header, responses[-1].code


@pytest.fixture
def platform() -> Platform:
    return Platform()


def test_successful_signin(platform: Platform) -> None:
    reader = Reader(platform.card())
    rs = platform.signin(reader)
    assert [r.header for r in rs] == [0xDD02, 0xDD04, 0xDD06, 0xDD08]
    assert [len(r.info) for r in rs] == [5, 5, 141, 0]
    assert rs[1].pki == PKI  # DD04 gives the PKI number the terminal keeps
    assert outcome(rs) == (0xDD08, InfoCode.SUCCESS) and rs[-1].ends_flow
    session = platform.session()
    assert session is not None and reader.session is not None
    assert reader.session.serial == session.serial
    assert reader.session.session_key == session.session_key  # both sides hold the same key
    assert platform.last_signin() == (PKI, "ok")
    assert platform.last_conn.closed


def test_terminal_sent_sizes_match_field_terminals(platform: Platform) -> None:
    sizes: dict[int, int] = {}

    def record(header: int, answer: bytes) -> bytes:
        sizes[header] = len(answer)
        return answer

    platform.signin(Reader(platform.card()), tamper=record)
    assert sizes == {0xDD03: 14, 0xDD05: 138, 0xDD07: 184}


@pytest.mark.parametrize("case", ["unknown", "revoked", "user", "version", "key"])
def test_identity_refusals_answer_a1(platform: Platform, case: str) -> None:
    user = USER
    if case == "unknown":
        card = platform.card(register=False)
    elif case == "revoked":
        card = platform.card()
        platform.pki.revoke(PKI)
    elif case == "user":
        card = platform.card()
        user = b"someone-else-001"
    elif case == "version":
        platform.card()
        card = replace(platform.card(pki_no=1, register=False), pki_no=PKI, key_version=2)
    else:  # the reader holds another key than the one registered
        platform.card()
        card = replace(platform.card(pki_no=2, register=False), pki_no=PKI)
    audited = len(platform.backends.query("SELECT id FROM signins"))
    rs = platform.signin(Reader(card), user=user)
    expected_stage = 0xDD06 if case == "key" else 0xDD04
    assert outcome(rs) == (expected_stage, InfoCode.NO_PUBLIC_KEY)
    assert platform.session() is None
    if case == "unknown":  # counted, not stored: anyone can send these
        assert len(platform.backends.query("SELECT id FROM signins")) == audited
        return
    reason = platform.last_signin()[1]
    assert {"revoked": "revoked", "user": "not bound",
            "version": "key version 2, registered 1",
            "key": "signature of R_AC_LOGIN_1"}[case] in reason


def test_unknown_cards_do_not_grow_the_ledger(platform: Platform) -> None:
    from twisted.logger import ILogObserver, globalLogPublisher
    from zope.interface import provider

    from lnt.flows.signin import UNKNOWN_SUMMARY_EVERY

    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if "refusals of unknown PKI cards" in str(event.get("log_format")):
            lines.append(str(event.get("n")))

    from lnt import metrics

    counted = metrics.REGISTRY.get_sample_value("lnt_signin_refusals_unknown_card_total") or 0
    platform.clock.advance(UNKNOWN_SUMMARY_EVERY)  # whatever other tests counted is summed up
    globalLogPublisher.addObserver(observe)
    try:
        for pki_no in range(100, 108):
            card = platform.card(pki_no=pki_no, register=False)
            assert outcome(platform.signin(Reader(card)))[1] == InfoCode.NO_PUBLIC_KEY
    finally:
        globalLogPublisher.removeObserver(observe)
    assert platform.backends.query("SELECT id FROM signins") == []
    assert len(lines) == 1  # one summary line in the minute, not one line per refusal
    assert metrics.REGISTRY.get_sample_value(
        "lnt_signin_refusals_unknown_card_total") == counted + 8


def test_replayed_dd05_is_refused(platform: Platform) -> None:
    reader = Reader(platform.card())
    captured: dict[int, bytes] = {}

    def capture(header: int, answer: bytes) -> bytes:
        captured[header] = answer
        return answer

    assert outcome(platform.signin(reader, tamper=capture))[1] == InfoCode.SUCCESS
    old = captured[0xDD05]
    rs = platform.signin(reader, tamper=lambda h, a: old if h == 0xDD05 else a)
    assert outcome(rs) == (0xDD06, InfoCode.NO_PUBLIC_KEY)
    assert "replayed" in platform.last_signin()[1]


def test_replayed_dd07_is_refused(platform: Platform) -> None:
    reader = Reader(platform.card())
    captured: dict[int, bytes] = {}
    platform.signin(reader, tamper=lambda h, a: captured.setdefault(h, a))
    rs = platform.signin(reader, tamper=lambda h, a: captured[0xDD07] if h == 0xDD07 else a)
    assert outcome(rs) == (0xDD08, InfoCode.NO_PUBLIC_KEY)


def test_man_in_the_middle_swapping_the_platform_key_fails(platform: Platform) -> None:

    mallory = public_raw(generate())

    conn = Conn(platform.factory)
    reader = Reader(platform.card())
    rs = conn.send(request(0xDD01))
    rs = conn.send(request(0xDD03, reader.execute(b"\x40" + rs[-1].info)))
    rs = conn.send(request(0xDD05, reader.execute(b"\x40" + rs[-1].info), pki=PKI))
    dd06 = rs[-1].info[:-64] + mallory  # the attacker replaces EP with its own key
    answer = reader.execute(b"\x40" + dd06)
    assert answer[-2:] == bytes.fromhex("6982")  # the card refuses: sig2 does not cover it
    [r] = conn.send(request(0xDD07, answer, pki=PKI))
    assert (r.header, r.code) == (0xDD08, InfoCode.READER_ERROR)
    assert platform.session() is None


def test_failed_key_confirmation(platform: Platform) -> None:
    card = platform.card()

    class BadConfirm(Reader):
        """Signs correctly but derives another session key."""

        def _login2_cmd(self, apdu: bytes) -> bytes:
            assert self._login1 is not None
            rc, eph = self._login1
            good = Login2Answer.decode(super()._login2_cmd(apdu))
            wrong = replace(good, confirm=bytes(16))
            t = transcript(PKI, USER, 1, rc, public_raw(eph), good.serial, apdu[-64:])
            sig = sign(card.key, login3_signed(t, wrong.block, wrong.counter))
            return replace(wrong, signature=sig).encode()

    rs = platform.signin(BadConfirm(card))
    assert outcome(rs) == (0xDD08, InfoCode.NO_PUBLIC_KEY)
    assert platform.last_signin()[1] == "key confirmation failed"


def test_cloned_card_counter(platform: Platform) -> None:
    card = platform.card()
    original = Reader(card)
    assert outcome(platform.signin(original))[1] == InfoCode.SUCCESS
    clone = Reader(card)  # same key, its own counter starting again at zero
    rs = platform.signin(clone)
    assert outcome(rs) == (0xDD08, InfoCode.NO_PUBLIC_KEY)
    assert "counter 1 not above" in platform.last_signin()[1]


@pytest.mark.parametrize(("header", "answer", "code"), [
    (0xDD03, bytes(12) + bytes.fromhex("6a82"), InfoCode.READER_ERROR),
    (0xDD03, bytes(13), InfoCode.READER_BAD_LENGTH),
    (0xDD05, b"\xff" * 138, InfoCode.READER_ERROR),
    (0xDD05, bytes(136) + SW_OK, InfoCode.NO_PUBLIC_KEY),
    (0xDD07, bytes(10), InfoCode.READER_BAD_LENGTH),
    (0xDD07, b"\x5a" * 182 + SW_OK, InfoCode.NO_PUBLIC_KEY),
])
def test_reader_garbage_and_wrong_lengths(platform: Platform, header: int, answer: bytes,
                                          code: InfoCode) -> None:
    rs = platform.signin(Reader(platform.card()),
                         tamper=lambda h, a: answer if h == header else a)
    assert outcome(rs) == (response_header(header), code)
    assert platform.session() is None


def test_terminal_that_stops_answering_times_out(platform: Platform) -> None:
    rs = platform.signin(Reader(platform.card()), stop_after=0xDD04)
    conn = platform.last_conn
    assert rs[-1].header == 0xDD04 and not conn.closed
    platform.clock.advance(31)
    assert conn.closed and conn.responses() == []
    assert platform.session() is None


@pytest.mark.parametrize("order", ["first-finishes-first", "second-finishes-first"])
def test_two_concurrent_signins_of_one_card(platform: Platform, order: str) -> None:
    card = platform.card()
    reader_a, reader_b = Reader(card), Reader(card)
    a, b = Conn(platform.factory), Conn(platform.factory)

    def advance(conn: Conn, reader: Reader, until: int) -> Response:
        r = conn.send(request(0xDD01))[-1]
        pki = 0xFFFFFFFF
        while r.header != until and not r.ends_flow:
            pki = r.pki
            r = conn.send(request(response_header(r.header), reader.execute(b"\x40" + r.info),
                                  pki=pki))[-1]
        return r

    ra = advance(a, reader_a, 0xDD06)
    rb = advance(b, reader_b, 0xDD06)
    # the card's counter: the reader that answers LOGIN_2 later holds the higher counter
    if order == "first-finishes-first":
        ans_a = reader_a.execute(b"\x40" + ra.info)
        reader_b.counter = reader_a.counter
        ans_b = reader_b.execute(b"\x40" + rb.info)
        [fa] = a.send(request(0xDD07, ans_a, pki=PKI))
        [fb] = b.send(request(0xDD07, ans_b, pki=PKI))
        assert (fa.code, fb.code) == (InfoCode.SUCCESS, InfoCode.SUCCESS)
        live = platform.session()
        assert live is not None and live.serial == "0000000000000002"  # the newer replaces
    else:
        ans_a = reader_a.execute(b"\x40" + ra.info)
        reader_b.counter = reader_a.counter
        ans_b = reader_b.execute(b"\x40" + rb.info)
        [fb] = b.send(request(0xDD07, ans_b, pki=PKI))
        [fa] = a.send(request(0xDD07, ans_a, pki=PKI))
        assert (fb.code, fa.code) == (InfoCode.SUCCESS, InfoCode.NO_PUBLIC_KEY)
        live = platform.session()
        assert live is not None and live.serial == "0000000000000002"


def test_later_flows_need_a_live_session(platform: Platform) -> None:
    assert platform.probe().code == InfoCode.NOT_SIGNED_IN  # never signed in
    platform.signin(Reader(platform.card()))
    r = platform.probe()
    assert (r.code, r.info) == (InfoCode.SUCCESS, b"0000000000000001")
    assert platform.probe(user=b"someone-else-001").code == InfoCode.NOT_SIGNED_IN
    platform.clock.advance(3601)  # session TTL is 3600 s here
    assert platform.probe().code == InfoCode.NOT_SIGNED_IN


# -- end to end: real daemon, lnt-terminal, lnt-admin ----------------------------------------

def cli(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name(tool)), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_signin_end_to_end_and_session_survives_restart(daemon_factory) -> None:
    d = daemon_factory()
    out = cli("lnt-terminal", "--data-dir", str(d.data_dir), "signin")
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("DD02 <- continue 00 (success) pki 4294967295 info   5: bb10000000",
                 "DD04 <- continue 00 (success) pki 70000472", "DD08 <- end 00 (success)",
                 "signed in: PKI card 70000472, handshake serial 0000000000000001"):
        assert line in out.stdout
    listed = cli("lnt-admin", "--data-dir", str(d.data_dir), "terminal", "list").stdout
    assert "0000000000000001 live until" in listed
    d.stop()
    d.start()
    listed = cli("lnt-admin", "--data-dir", str(d.data_dir), "terminal", "list").stdout
    assert "0000000000000001 live until" in listed
    # a second sign-in replaces the session
    assert cli("lnt-terminal", "--data-dir", str(d.data_dir), "signin").returncode == 0
    listed = cli("lnt-admin", "--data-dir", str(d.data_dir), "terminal", "list").stdout
    assert "0000000000000002 live until" in listed


@pytest.mark.slow
def test_signin_refused_end_to_end(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    data = str(d.data_dir)
    # a terminal registered by the operator, then revoked
    key = tmp_path / "t2.json"
    reg = cli("lnt-admin", "--data-dir", data, "terminal", "register", "--pki", "4242",
              "--user-id", "TERMINAL-0000042", "--generate", str(key))
    assert reg.returncode == 0, reg.stderr
    ok = cli("lnt-terminal", "--data-dir", str(tmp_path), "--flows",
             f"127.0.0.1:{d.flows_port}", "--key-file", str(key), "signin")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert cli("lnt-admin", "--data-dir", data, "terminal", "revoke", "4242").returncode == 0
    refused = cli("lnt-terminal", "--data-dir", str(tmp_path), "--flows",
                  f"127.0.0.1:{d.flows_port}", "--key-file", str(key), "signin")
    assert refused.returncode == 1
    assert "DD04: A1 (terminal's public key not found)" in refused.stderr
    assert "revoked" in d.log()
    # nothing secret in the daemon's log
    assert "PRIVATE KEY" not in d.log()
    # duplicate registration and unknown revoke are refused with a message
    other = CardKeyFile.generate(4242, 1, b"TERMINAL-0000042", bytes(64)).public_key.hex()
    again = cli("lnt-admin", "--data-dir", data, "terminal", "register", "--pki", "4242",
                "--user-id", "TERMINAL-0000042", "--public-key", other)
    assert again.returncode == 1 and "registered already" in again.stderr
    assert "no PKI card 999" in cli("lnt-admin", "--data-dir", data, "terminal", "revoke",
                                    "999").stderr


@pytest.mark.slow
def test_terminal_cli_network_errors(tmp_path: Path, daemon: Daemon) -> None:
    data = daemon.data_dir
    out = cli("lnt-terminal", "--data-dir", str(data), "--flows", "127.0.0.1:1", "signin")
    assert out.returncode == 3 and "refused" in out.stderr.lower()
    out = cli("lnt-terminal", "--data-dir", str(tmp_path / "empty"), "signin")
    assert out.returncode == 2 and "no terminal" in out.stderr


def test_admin_platform_key(tmp_path: Path) -> None:
    data = str(tmp_path / "adm")
    created = cli("lnt-admin", "--data-dir", data, "key", "create")
    assert created.returncode == 0 and "platform public key: " in created.stdout
    public = created.stdout.split("platform public key: ")[1].strip()
    assert len(bytes.fromhex(public)) == 64
    shown = cli("lnt-admin", "--data-dir", data, "key", "show")
    assert shown.stdout.strip() == f"platform public key: {public}"
    assert "PRIVATE" not in shown.stdout + created.stdout
    again = cli("lnt-admin", "--data-dir", data, "key", "create")
    assert again.returncode == 1 and "never overwritten" in again.stderr
    (tmp_path / "adm" / "platform-key.json").chmod(0o644)
    loose = cli("lnt-admin", "--data-dir", data, "key", "show")
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
    missing = cli("lnt-admin", "--data-dir", str(tmp_path / "none"), "key", "show")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
