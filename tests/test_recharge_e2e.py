"""
Recharge faults end to end: real daemon processes (killed with SIGKILL and restarted), the
terminal simulator's CLI over loopback, and after each fault `lnt-admin check` plus the virtual
card's balance against the ledger.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lnt.messages.purse import parse_value_block
from lnt.sim.virtualcards import CPUCard, M1Card, load_card
from tests.support import Daemon

pytestmark = pytest.mark.slow

CPU, M1 = "5100000000000001", "5100000000000002"


def tool(name: str, *args: str, data: Path, timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name(name)), "--data-dir", str(data),
                           *args], capture_output=True, text=True, timeout=timeout)


def balance(data: Path, card: str) -> int:
    c = load_card(data / "cards" / f"{card}.json")
    if isinstance(c, CPUCard):
        return c.balance
    assert isinstance(c, M1Card)
    value = parse_value_block(bytes.fromhex(c.blocks["8"]))
    assert value is not None
    return value


def check(data: Path) -> dict[str, int]:
    out = tool("lnt-admin", "check", data=data)
    assert out.returncode == 0, out.stdout + out.stderr
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\S+:\S+)\s+(-?\d+)$", out.stdout, re.M)}


def order_of(out: str) -> str:
    match = re.search(r"order (\d{20}) for", out)
    assert match, out
    return match.group(1)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data").start()
    yield d
    d.stop()


def test_recharge_cpu_and_m1(daemon: Daemon) -> None:
    data = daemon.data_dir
    out = tool("lnt-terminal", "recharge", "--amount", "500", data=data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "balance 1000 -> 1500" in out.stdout
    out = tool("lnt-terminal", "recharge", "--amount", "250", "--card", M1, data=data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "balance 500 -> 750" in out.stdout
    accounts = check(data)
    assert accounts["cards:float"] == -750
    day = time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600))
    csv_path = data.parent / "day.csv"
    rec = tool("lnt-admin", "reconcile", "--date", day, "--platform", "7", "--csv",
               str(csv_path), data=data)
    assert rec.returncode == 0 and "2 loads, 750 fen" in rec.stdout
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("platform,biz_serial_no,order_no") and rows[-1] == "total,,,,750,"
    assert tool("lnt-admin", "reconcile", "--date", "2026-11", data=data).returncode == 1


@pytest.mark.parametrize(("where", "card"), [("after-credit", CPU), ("before-credit", CPU),
                                              ("after-credit", M1)])
def test_daemon_killed_while_the_outcome_is_in_doubt(daemon: Daemon, where: str,
                                                     card: str) -> None:
    """The terminal drops the connection when MAC2 (the M1 write) arrives, before or after the
    card executes it; the daemon is SIGKILLed at that point and restarted; resume settles."""
    data = daemon.data_dir
    before = balance(data, card)
    out = tool("lnt-terminal", "recharge", "--amount", "300", "--card", card, "--interrupt",
               where, data=data)
    assert out.returncode == 4, out.stdout + out.stderr
    order = order_of(out.stdout)
    daemon.kill()
    daemon.start()
    check(data)  # a pending load is consistent books too
    resumed = tool("lnt-terminal", "resume", "--order", order, "--card", card, data=data)
    if where == "after-credit":
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert balance(data, card) == before + 300
        assert check(data)["cards:float"] == -300
    else:
        assert resumed.returncode == 1 and "A5 (reversal succeeded)" in resumed.stderr
        assert balance(data, card) == before
        accounts = check(data)
        assert accounts["orders:reversed"] == -300 and "cards:float" not in accounts
    # retrying DD11 with the used order: the same outcome again, no money moves
    again = tool("lnt-terminal", "resume", "--order", order, "--card", card, data=data)
    assert again.returncode == resumed.returncode
    if where == "after-credit":
        # the card on the reader is checked (DD12/DD13), then the record again
        assert "DD22 <- end 00 (success)" in again.stdout and "DD20" not in again.stdout
    else:
        assert "DD12: A5 (reversal succeeded)" in again.stderr
    assert balance(data, card) == before + (300 if where == "after-credit" else 0)
    check(data)


def second_terminal(data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Another terminal (its own PKI card and data directory), the same virtual cards."""
    other = tmp_path / "t2"
    other.mkdir()
    # the same card directory: a card saves by renaming a new file over the old one
    os.symlink(data / "cards", other / "cards")
    reg = tool("lnt-admin", "terminal", "register", "--pki", "4711", "--user-id",
               "TERMINAL-0004711", "--generate", str(other / "key.json"), data=data)
    assert reg.returncode == 0, reg.stderr
    (other / "listening.json").write_text((data / "listening.json").read_text())
    return other, ["--key-file", str(other / "key.json")]


def test_m1_lost_before_the_write_is_undecided_within_the_window(tmp_path: Path) -> None:
    """An M1 write that may still be executed by the reader that got it is not ruled out early
    by another terminal; the terminal that got it rules it out at once (the reversal after the
    window is tested on a Clock in test_recharge.py)."""
    d = Daemon(tmp_path / "data", ["--flow-deadline", "2"]).start()
    try:
        data = d.data_dir
        out = tool("lnt-terminal", "recharge", "--amount", "100", "--card", M1, "--interrupt",
                   "before-credit", data=data)
        order = order_of(out.stdout)
        other, key = second_terminal(data, tmp_path)
        early = tool("lnt-terminal", *key, "resume", "--order", order, "--amount", "100",
                     "--card", M1, data=other)
        assert early.returncode == 1 and "A4 (reversal failed)" in early.stderr
        assert balance(data, M1) == 500
        check(data)
        own = tool("lnt-terminal", "resume", "--order", order, "--card", M1, data=data)
        assert own.returncode == 1 and "A5 (reversal succeeded)" in own.stderr
        assert balance(data, M1) == 500
        assert "orders:reversed" in check(data)
    finally:
        d.stop()


def test_two_terminals_race_for_one_order(daemon: Daemon, tmp_path: Path) -> None:
    data = daemon.data_dir
    out = tool("lnt-terminal", "order", "--amount", "400", data=data)
    assert out.returncode == 0, out.stdout + out.stderr
    order = order_of(out.stdout)
    other, _ = second_terminal(data, tmp_path)
    before = balance(data, CPU)
    terminal = str(Path(sys.executable).with_name("lnt-terminal"))
    procs = [subprocess.Popen([terminal, "--data-dir", str(d), *extra, "resume", "--order",
                               order, "--amount", "400", "--card", CPU],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d, extra in ((data, []), (other, ["--key-file", str(other / "key.json")]))]
    results = [p.communicate(timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, results
    assert balance(data, CPU) == before + 400  # loaded exactly once
    accounts = check(data)
    assert accounts["cards:float"] == -400


def test_open_close_card(daemon: Daemon) -> None:
    data = daemon.data_dir
    out = tool("lnt-terminal", "card", "close", data=data)
    assert out.returncode == 0 and "closed: deposit flag 02" in out.stdout, out.stderr
    refused = tool("lnt-terminal", "recharge", "--amount", "100", data=data)
    # refused when the order is made, before any load: the payment is listed, not parked
    assert refused.returncode == 1 and "the card is closed" in refused.stderr
    assert "payment without order" in tool("lnt-admin", "check", data=data).stdout
    assert tool("lnt-terminal", "card", "open", data=data).returncode == 0
    assert tool("lnt-terminal", "recharge", "--amount", "100", data=data).returncode == 0
    assert "card-deposit: close recorded" in daemon.log()
    check(data)


def test_logs_hold_no_card_numbers_or_keys(daemon: Daemon) -> None:
    data = daemon.data_dir
    assert tool("lnt-terminal", "recharge", "--amount", "100", data=data).returncode == 0
    log = daemon.log()
    assert CPU not in log and "Traceback" not in log
    core = json.loads((data / "core-keys.json").read_text())
    assert all(v not in log for k, v in core.items() if k != "format")
