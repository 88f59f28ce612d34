"""
Two daemons sharing one PostgreSQL ledger (and the same key files): what a terminal does at one
is good at the other, and racing them for one order moves the money once. Without a reachable
PostgreSQL these skip with a message, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lnt.sim.virtualcards import CPUCard, load_card
from tests.support import Daemon
from tests.test_ledger_contract import _drop, _postgres

pytestmark = pytest.mark.slow

CPU = "5100000000000001"


@pytest.fixture
def dsn() -> Iterator[str]:
    schema = f"lnt_daemons_{uuid.uuid4().hex[:10]}"
    url = _postgres(schema)
    try:
        yield url
    finally:
        _drop(schema)


def tool(name: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name(name)), "--data-dir", str(data),
                           *args], capture_output=True, text=True, timeout=90)


def balance(data: Path) -> int:
    card = load_card(data / "cards" / f"{CPU}.json")
    assert isinstance(card, CPUCard)
    return card.balance


def test_two_daemons_one_postgres_ledger(tmp_path: Path, dsn: str) -> None:
    a = Daemon(tmp_path / "a", ["--ledger", dsn]).start()
    b = Daemon(tmp_path / "b", ["--ledger", dsn, "--no-demo",
                                "--key-file", str(a.data_dir / "platform-key.json"),
                                "--core-key-file", str(a.data_dir / "core-keys.json")]).start()
    try:
        data = a.data_dir
        at_a = ["--flows", f"127.0.0.1:{a.flows_port}", "--http", a.http_url]
        at_b = ["--flows", f"127.0.0.1:{b.flows_port}", "--http", b.http_url]
        assert tool("lnt-terminal", data, *at_a, "signin").returncode == 0
        start = balance(data)

        # signed in at A; ordered and loaded through B
        out = tool("lnt-terminal", data, *at_b, "recharge", "--amount", "300")
        assert out.returncode == 0, out.stdout + out.stderr
        assert balance(data) == start + 300

        # in doubt at A, settled at B
        out = tool("lnt-terminal", data, *at_a, "recharge", "--amount", "200", "--interrupt",
                   "after-credit")
        assert out.returncode == 4, out.stdout + out.stderr
        order = json.loads((data / "terminal-orders.json").read_text())
        last = sorted(order)[-1]
        resumed = tool("lnt-terminal", data, *at_b, "resume", "--order", last)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert balance(data) == start + 500

        # two terminals race for one order, one at each daemon
        out = tool("lnt-terminal", data, *at_a, "order", "--amount", "400")
        race = out.stdout.split("order ")[-1].split()[0]
        other = tmp_path / "t2"
        other.mkdir()
        os.symlink(data / "cards", other / "cards")
        reg = tool("lnt-admin", data, "--ledger", dsn, "terminal", "register", "--pki", "4712",
                   "--user-id", "TERMINAL-0004712", "--generate", str(other / "key.json"))
        assert reg.returncode == 0, reg.stderr
        terminal = str(Path(sys.executable).with_name("lnt-terminal"))
        procs = [subprocess.Popen([terminal, "--data-dir", str(d), *extra, "resume", "--order",
                                   race, "--amount", "400", "--card", CPU],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for d, extra in ((data, at_a),
                                  (other, [*at_b, "--key-file", str(other / "key.json")]))]
        outcomes = [p.communicate(timeout=90) for p in procs]
        assert 0 in [p.returncode for p in procs], outcomes
        assert balance(data) == start + 900  # the raced order loaded once

        check = tool("lnt-admin", data, "--ledger", dsn, "check")
        assert check.returncode == 0, check.stdout
        assert re.search(r"^cards:float\s+-900$", check.stdout, re.M), check.stdout
        assert "Traceback" not in a.log() + b.log()
    finally:
        b.stop()
        a.stop()


def test_daemon_refuses_an_unreachable_postgres(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d", ["--ledger", "postgresql://nobody:sekret@127.0.0.1:1/none"])
    with pytest.raises(RuntimeError, match="daemon exited"):
        d.start()
    log = d.log()
    assert "lnt-recharge: cannot start: ledger: connection failed: connection to server" in log
    assert "Traceback" not in log and "sekret" not in log
