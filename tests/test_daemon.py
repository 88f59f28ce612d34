"""
The daemon as operators and terminals meet it: real `twistd lnt-recharge` processes on
loopback ports chosen by the OS, driven over real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from lnt.storage.migrations import LATEST
from lnt.wire import NO_PKI, FlowIndicator, InfoCode
from tests.support import (
    ROOT,
    TWISTD,
    USER,
    Daemon,
    exchange,
    one_response,
    read_responses,
    request,
)

pytestmark = pytest.mark.slow


def http_get(url: str, timeout: float = 10, context: ssl.SSLContext | None = None
             ) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# -- the wire contract over TCP -------------------------------------------------------------

def test_wire_contract_over_tcp(daemon: Daemon) -> None:
    port = daemon.flows_port
    # DD01 -> DD02 continue, success, PKI FFFFFFFF, BB10000000, valid CRC (the decoder checks)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request(0xDD01))
        r = one_response(s)
        assert (r.header, r.flow, r.code, r.pki, r.info, r.user_id) == (
            0xDD02, FlowIndicator.CONTINUE, InfoCode.SUCCESS, NO_PKI,
            bytes.fromhex("BB10000000"), USER)

    # wrong CRC -> that stage's response header, END, A2, closed
    bad = bytearray(request(0xDD01))
    bad[-1] ^= 0x55
    [r], closed = exchange(port, bytes(bad))
    assert (r.header, r.flow, r.code) == (0xDD02, 0xFF, 0xA2) and closed

    # first frame that starts no flow -> stage + 1, END, A0, closed
    for header, answer in [(0xDD03, 0xDD04), (0xDD13, 0xDD14), (0xDD75, 0xDD76)]:
        [r], closed = exchange(port, request(header, step=0))
        assert (r.header, r.flow, r.code) == (answer, 0xFF, 0xA0) and closed

    # wrong stage inside a flow -> A0, closed
    responses, closed = exchange(port, request(0xDD01) + request(0xDD07, bytes(184)))
    assert [(r.header, r.flow, r.code) for r in responses] == [(0xDD02, 0, 0), (0xDD08, 0xFF, 0xA0)]
    assert closed

    # framing error -> closed without an answer
    responses, closed = exchange(port, b"\x16\x03\x01\x00\xa5" + bytes(40))
    assert responses == [] and closed


def test_idle_timeout_closes(daemon_factory) -> None:
    d = daemon_factory("--idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", d.flows_port), timeout=10) as s:
        s.sendall(request(0xDD01)[:7])
        start = time.monotonic()
        responses, closed = read_responses(s, timeout=10)
        assert closed and responses == []
        assert 0.8 < time.monotonic() - start < 5


def test_connection_limit_pauses_accepting(daemon_factory) -> None:
    d = daemon_factory("--max-connections", "1")
    first = socket.create_connection(("127.0.0.1", d.flows_port), timeout=10)
    first.sendall(request(0xDD01))
    assert one_response(first).code == InfoCode.SUCCESS
    # at the limit the port is paused: the next connection waits in the backlog, unserved
    with socket.create_connection(("127.0.0.1", d.flows_port), timeout=10) as second:
        second.sendall(request(0xDD01))
        second.settimeout(1.0)
        with pytest.raises(TimeoutError):
            second.recv(1)
        first.close()  # one closes: the waiting one is accepted and served
        second.settimeout(10)
        assert one_response(second).code == InfoCode.SUCCESS
    assert "flows: 1 connections open, the limit: not accepting" in d.log()
    assert "flows: below the limit again" in d.log()


def test_health(daemon: Daemon) -> None:
    status, body = http_get(daemon.http_url + "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["ledger"] == {"reachable": True, "engine": "sqlite", "schema_version": LATEST,
                              "writable": True, "key": "matches"}
    assert http_get(daemon.http_url + "/health/ready")[0] == 200
    assert http_get(daemon.http_url + "/health/live")[1]["status"] == "live"
    status, body = http_get(daemon.http_url + "/nope")
    assert status == 404 and body == {"error": "no such resource: /nope"}


# -- start, stop, configuration -----------------------------------------------------------

def test_first_start_creates_data_dir_and_sigterm_stops_cleanly(daemon: Daemon) -> None:
    data = daemon.data_dir
    assert (data / "ledger.db").exists()
    assert (data / "platform-key.json").stat().st_mode & 0o777 == 0o600
    assert (data / "demo.json").exists()
    # a flow in progress when SIGTERM comes: the daemon waits for it (grace) then stops
    s = socket.create_connection(("127.0.0.1", daemon.flows_port), timeout=10)
    s.sendall(request(0xDD01))
    one_response(s)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    # the listener closes at once: connections are refused while the flow still runs
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", daemon.flows_port), timeout=2).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the listener did not close"
    assert daemon.proc.poll() is None  # still waiting for the flow
    # an impatient second SIGTERM changes nothing and says so (no ReactorNotRunning)
    daemon.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "SIGTERM again: already stopping" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert daemon.proc.poll() is None
    s.close()  # the flow ends; the daemon can finish
    # twistd re-raises the signal that stopped it: systemd counts that as a clean stop
    assert daemon.proc.wait(20) == -signal.SIGTERM
    log = daemon.log()
    assert "stopping: closing listeners" in log and "stopped" in log
    assert "Traceback" not in log
    assert not (data / "listening.json").exists()


def test_shutdown_grace_aborts_stuck_flows(daemon_factory) -> None:
    d = daemon_factory("--shutdown-grace", "1", "--idle-timeout", "60")
    s = socket.create_connection(("127.0.0.1", d.flows_port), timeout=10)
    s.sendall(request(0xDD01))
    one_response(s)
    start = time.monotonic()
    assert d.stop() == -signal.SIGTERM
    assert time.monotonic() - start < 10
    assert "waiting up to 1.0s for 1 running flows" in d.log()
    # the log names the flow it aborted, as a warning
    aborted = "aborting sign-in of an unidentified PKI card (last frame DD01)"
    assert any("#warn" in line and aborted in line for line in d.log().splitlines()), \
        d.log()[-1500:]
    s.close()


def test_restart_keeps_ledger_and_keys(daemon_factory) -> None:
    d = daemon_factory()
    key = (d.data_dir / "platform-key.json").read_text()
    d.stop()
    d.start()
    assert (d.data_dir / "platform-key.json").read_text() == key
    assert http_get(d.http_url + "/health")[0] == 200


def test_config_file_and_command_line_precedence(tmp_path: Path, daemon_factory) -> None:
    ini = tmp_path / "lnt.ini"
    ini.write_text(textwrap.dedent("""\
        [lnt-recharge]
        idle-timeout = 1
        http = tcp:1:interface=127.0.0.1
        demo = no
        """))
    d = daemon_factory("--config", str(ini), "--http", "tcp:0:interface=127.0.0.1")
    assert d.http_port != 1  # the command line won
    assert not (d.data_dir / "demo.json").exists()  # the file's demo = no held
    with socket.create_connection(("127.0.0.1", d.flows_port), timeout=10) as s:
        responses, closed = read_responses(s, timeout=10)  # idle-timeout 1 from the file
        assert closed and responses == []


@pytest.mark.parametrize(("content", "message"), [
    ("[lnt-recharge]\nidle-timout = 3\n", "unknown setting 'idle-timout'"),
    ("[other]\nx = 1\n", "unknown section [other]"),
    ("[lnt-recharge]\nmax-connections = many\n", "max-connections: 'many' is not a valid int"),
])
def test_bad_config_is_refused_with_a_message(tmp_path: Path, content: str, message: str) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text(content)
    out = subprocess.run([*TWISTD, "-n", "lnt-recharge", "--data-dir",
                          str(tmp_path / "d"), "--config", str(ini)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([*TWISTD, "-n", "--pidfile=", "lnt-recharge",
                              "--data-dir", str(tmp_path / "d"),
                              "--flows", f"tcp:{port}:interface=127.0.0.1",
                              "--http", "tcp:0:interface=127.0.0.1"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"cannot start: cannot listen for flows on tcp:{port}" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_help_explains_options() -> None:
    out = subprocess.run([*TWISTD, "lnt-recharge", "--help"],
                         capture_output=True, text=True, timeout=60)
    for option in ("--flows", "--http", "--data-dir", "--ledger", "--config", "--idle-timeout",
                   "--flow-deadline", "--max-connections", "--no-demo"):
        assert option in out.stdout


def test_journal_logger_has_no_timestamps(daemon_factory, tmp_path: Path) -> None:
    data = tmp_path / "j"
    argv = [*TWISTD, "--nodaemon", "--pidfile=",
            "--logger", "lnt.daemon.logs.journal_observer", "lnt-recharge", "--data-dir", str(data),
            "--flows", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (data / "listening.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    lines = [line for line in out.splitlines() if line]
    assert any(line.startswith("<6>[lnt.daemon.service] ") and "ready" in line for line in lines)
    assert not any(line[:4].isdigit() for line in lines)  # no ISO timestamps


# -- TLS and systemd socket activation -------------------------------------------------------

def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_tls_endpoints(tmp_path: Path, daemon_factory) -> None:
    key, cert = _self_signed(tmp_path)
    tls = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    d = daemon_factory("--flows", tls, "--http", tls)
    ctx = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", d.flows_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(request(0xDD01))
        r = one_response(s)
        assert (r.header, r.code, r.info) == (0xDD02, 0, bytes.fromhex("BB10000000"))
    status, body = http_get(f"https://localhost:{d.http_port}/health", context=ctx)
    assert status == 200 and body["status"] == "ok"


def test_systemd_socket_activation_with_named_descriptors(tmp_path: Path) -> None:
    flows, http = socket.socket(), socket.socket()
    for s in (flows, http):
        s.bind(("127.0.0.1", 0))
        s.listen()
    data = tmp_path / "sd"
    # What systemd does: the sockets at fds 3 and 4, LISTEN_* naming them, the same pid.
    script = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
              "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', "
              "LISTEN_FDNAMES='flows:http'); "
              "os.execv(sys.argv[4], [sys.argv[4], '-n', '--pidfile=', 'lnt-recharge', "
              "'--data-dir', sys.argv[3], "
              "'--flows', 'systemd:domain=INET:name=flows', "
              "'--http', 'systemd:domain=INET:name=http'])")
    proc = subprocess.Popen([sys.executable, "-c", script, str(flows.fileno()),
                             str(http.fileno()), str(data), TWISTD[0]],
                            pass_fds=(flows.fileno(), http.fileno()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (data / "listening.json").exists():
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [r], _ = exchange(flows.getsockname()[1], request(0xDD03, step=0))
        assert r.code == InfoCode.OUT_OF_ORDER
        status, _ = http_get(f"http://127.0.0.1:{http.getsockname()[1]}/health")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        flows.close()
        http.close()


# -- a third-party flow plugin ----------------------------------------------------------------

def readme_flow_example() -> str:
    """The complete flow example of README.rst's "Writing a flow", verbatim."""
    text = (ROOT / "README.rst").read_text()
    section = text[text.index("Writing a flow\n=============="):]
    marker = ".. code-block:: python\n\n"
    block = section[section.index(marker) + len(marker):]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def test_third_party_flow_plugin_from_plugin_path(tmp_path: Path, daemon_factory) -> None:
    extra = tmp_path / "extra"
    (extra / "twisted" / "plugins").mkdir(parents=True)
    (extra / "twisted" / "plugins" / "echo_flow.py").write_text(readme_flow_example())
    pythonpath = os.pathsep.join([str(extra), os.environ.get("PYTHONPATH", "")])
    d = daemon_factory(env={"PYTHONPATH": pythonpath})
    assert "flow echo starts with DD91" in d.log()
    # not signed in: BB
    [r], closed = exchange(d.flows_port, request(0xDD91, b"abc", step=0))
    assert (r.header, r.flow, r.code) == (0xDD92, 0xFF, InfoCode.NOT_SIGNED_IN) and closed
    # signed in with the simulator: the echo
    out = subprocess.run([str(Path(sys.executable).with_name("lnt-terminal")), "--data-dir",
                          str(d.data_dir), "signin"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    demo = json.loads((d.data_dir / "demo.json").read_text())["terminal"]
    user = demo["user_id"].encode()
    [r], closed = exchange(d.flows_port, request(0xDD91, b"abc", step=0, user=user,
                                                 pki=demo["pki_no"]))
    assert (r.header, r.flow, r.code, r.info) == (0xDD92, 0xFF, 0, b"cba") and closed
    [r], _ = exchange(d.flows_port, request(0xDD91, b"", step=0, user=user, pki=demo["pki_no"]))
    assert r.code == InfoCode.READER_BAD_LENGTH
    # the built-in flows are still there
    [r], _ = exchange(d.flows_port, request(0xDD01))
    assert r.header == 0xDD02 and r.code == 0


def test_conflicting_flow_plugin_stops_start(tmp_path: Path, daemon_factory) -> None:
    extra = tmp_path / "extra"
    (extra / "twisted" / "plugins").mkdir(parents=True)
    (extra / "twisted" / "plugins" / "clash.py").write_text(
        "from lnt.flows.dispatch import FlowPlugin\n"
        "clash = FlowPlugin('clash', 0xDD01, 'lnt.flows.signin.SignInFlow')\n")
    d = Daemon(tmp_path / "c", [], {"PYTHONPATH": str(extra)})
    with pytest.raises(RuntimeError, match="both start with DD01"):
        d.start()


def test_a_flow_plugin_with_a_typo_stops_start(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    (extra / "twisted" / "plugins").mkdir(parents=True)
    (extra / "twisted" / "plugins" / "typo.py").write_text(
        "from lnt.flows.dispatch import FlowPlugin\n"
        "typo = FlowPlugin('typo', 0xDD91, 'lnt.flows.signin.SignInFlo')\n")
    d = Daemon(tmp_path / "t", [], {"PYTHONPATH": str(extra)})
    with pytest.raises(RuntimeError, match="cannot start: flow 'typo': cannot load"):
        d.start()
    assert "Traceback" not in d.log()


def test_example_config_is_valid() -> None:
    from lnt.daemon.config import read_ini, resolve

    settings = resolve({}, read_ini(ROOT / "etc" / "lnt.ini"))
    assert settings.flows == "systemd:domain=INET:name=flows"
    assert settings.demo is False


@pytest.mark.parametrize("endpoint", ["bogus:1", "tcp:abc"])
def test_an_unparseable_endpoint_stops_start_with_one_line(tmp_path: Path,
                                                           endpoint: str) -> None:
    d = Daemon(tmp_path / "e", ["--flows", endpoint])
    with pytest.raises(RuntimeError, match=r"cannot start: --flows .* is no endpoint"):
        d.start()
    assert "Traceback" not in d.log()


def test_a_wrong_key_file_on_an_existing_ledger_stops_start(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "k").start()
    first.stop()
    wrong = tmp_path / "wrong" / "path.json"
    d = Daemon(tmp_path / "k", ["--key-file", str(wrong)])
    with pytest.raises(RuntimeError, match="already holds data sealed with a platform key"):
        d.start()
    assert not wrong.exists() and not wrong.parent.exists()
    assert "Traceback" not in d.log()


def test_a_second_daemon_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "shared").start()
    try:
        second = Daemon(tmp_path / "shared")
        with pytest.raises(RuntimeError, match=r"another lnt-recharge \(pid \d+\) runs on"):
            second.start()
        assert "Traceback" not in second.log()
        assert not (first.data_dir / "listening.json").exists()  # the second wrote none
        assert exchange(first.flows_port, request(0xDD01))[0][0].header == 0xDD02
    finally:
        first.stop()
