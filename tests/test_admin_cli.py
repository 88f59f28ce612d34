"""
lnt-admin as an operator meets it: nothing is created by a typo (only `init` creates a data
directory, key file or ledger), and ordinary mistakes get one line and the documented exit
status (1 refused, 2 usage or configuration), never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("lnt-admin")), *args],
                          capture_output=True, text=True, timeout=60)


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_mistyped_data_dir_or_ledger_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    out = admin("--data-dir", str(missing), "check")
    assert out.returncode == 1 and "no ledger at" in one_line(out)
    assert not missing.exists()
    out = admin("--data-dir", str(tmp_path), "--ledger", f"sqlite://{tmp_path}/nope/x.db",
                "check")
    assert out.returncode == 1 and "run `lnt-admin init`" in one_line(out)
    assert not (tmp_path / "nope").exists() and list(tmp_path.iterdir()) == []


def test_init_creates_once_and_then_everything_works(tmp_path: Path) -> None:
    data = tmp_path / "d"
    out = admin("--data-dir", str(data), "init")
    assert out.returncode == 0 and "created data directory" in out.stdout
    assert (data / "platform-key.json").exists() and (data / "ledger.db").exists()
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    again = admin("--data-dir", str(data), "init")
    assert again.returncode == 0 and "nothing to create" in again.stdout
    assert admin("--data-dir", str(data), "check").returncode == 0
    # a key file that is not there is refused, not created
    other = admin("--data-dir", str(data), "--key-file", str(tmp_path / "k.json"), "check")
    assert other.returncode == 1 and "does not exist" in one_line(other)
    assert not (tmp_path / "k.json").exists()


def test_ordinary_mistakes_get_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert admin("--data-dir", str(data), "init").returncode == 0
    out = admin("--data-dir", str(data), "--ledger", "mysql://x", "check")
    assert out.returncode == 2 and "ledger DSN" in one_line(out)
    out = admin("--data-dir", str(data), "--ledger", "postgresql://nobody@127.0.0.1:5999/x",
                "check")
    assert out.returncode == 1 and "the ledger cannot be used" in one_line(out)
    out = admin("--data-dir", str(data), "reconcile", "--date", "20261125", "--csv",
                str(tmp_path / "no" / "dir" / "x.csv"))
    assert out.returncode == 1 and "No such file or directory" in one_line(out)


def terminal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("lnt-terminal")), *args],
                          capture_output=True, text=True, timeout=60)


def test_lnt_terminal_never_guesses_a_daemon_and_checks_its_arguments(tmp_path: Path) -> None:
    from tests.support import Daemon

    d = Daemon(tmp_path / "data").start()
    d.stop()  # its listening.json is gone with it
    out = terminal("--data-dir", str(d.data_dir), "account")
    assert out.returncode == 2 and "no running daemon recorded" in one_line(out)
    out = terminal("--data-dir", str(d.data_dir), "--flows", "127.0.0.1:9", "--http",
                   "127.0.0.1:8080", "account")
    assert out.returncode == 2 and "--http is a URL" in one_line(out)
    out = terminal("--data-dir", str(d.data_dir), "--flows", "127.0.0.1:9", "--http",
                   "http://exämple.test:8080", "account")
    assert out.returncode == 2 and "xn--" in one_line(out)
    out = terminal("--data-dir", str(d.data_dir), "--flows", "127.0.0.1:9", "--http",
                   "http://127.0.0.1:9", "resume", "--order", "abc")
    assert out.returncode == 2 and "20-digit order number" in one_line(out)


@pytest.mark.parametrize("tool", [["lnt-admin"], ["lnt-terminal"], ["twistd", "lnt-recharge"]])
def test_every_cli_tells_its_version(tool: list[str]) -> None:
    import lnt

    out = subprocess.run([str(Path(sys.executable).with_name(tool[0])), *tool[1:], "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith(lnt.__version__), out


def test_operators_see_orders_loads_in_doubt_and_one_order_whole(tmp_path: Path) -> None:
    import json

    from tests.support import Daemon

    d = Daemon(tmp_path / "data").start()
    try:
        data = str(d.data_dir)
        assert terminal("--data-dir", data, "recharge", "--amount", "100").returncode == 0
        cut = terminal("--data-dir", data, "recharge", "--amount", "30", "--card",
                       "5100000000000002", "--interrupt", "before-credit")
        assert cut.returncode == 4
        rows = json.loads(admin("--data-dir", data, "orders", "--json").stdout)
        assert [(r["state"], r["amount"]) for r in rows] == [("pending", 30), ("loaded", 100)]
        assert all("****" in r["card"] for r in rows)  # masked
        assert [r["amount"] for r in json.loads(admin(
            "--data-dir", data, "orders", "--card", "5100000000000001", "--json").stdout)] == [100]
        doubt = json.loads(admin("--data-dir", data, "loads", "--in-doubt", "--json").stdout)
        assert [(r["order"], r["load"]["state"]) for r in doubt] == [(rows[0]["order"],
                                                                     "pending")]
        shown = json.loads(admin("--data-dir", data, "order", "show", rows[1]["order"],
                                 "--json").stdout)
        assert [e["kind"] for e in shown["entries"]] == ["load", "payment"]
        assert shown["load"]["new_balance"] == 1100
        text = admin("--data-dir", data, "orders").stdout
        assert rows[0]["order"] in text and "2 orders" in text
        bad = admin("--data-dir", data, "orders", "--state", "lost")
        assert bad.returncode == 1 and "--state is one of" in one_line(bad)
        missing = admin("--data-dir", data, "order", "show", "2" * 20)
        assert missing.returncode == 1 and "no order" in one_line(missing)
    finally:
        d.stop()


def test_platforms_and_a_revoked_terminal_enabled_again(tmp_path: Path) -> None:
    from tests.support import Daemon

    d = Daemon(tmp_path / "data", ["--no-demo"]).start()
    try:
        data = str(d.data_dir)
        assert admin("--data-dir", data, "platform", "list").stdout.split() == [
            "0", "active", "consignment", "merchants"]
        assert admin("--data-dir", data, "platform", "add", "8", "bike share").returncode == 0
        again = admin("--data-dir", data, "platform", "add", "8", "twice")
        assert again.returncode == 1 and "exists already" in one_line(again)
        assert admin("--data-dir", data, "platform", "add", "0", "x").returncode == 1
        assert admin("--data-dir", data, "platform", "disable", "8").returncode == 0
        assert "8  disabled  bike share" in admin("--data-dir", data, "platform", "list").stdout
        assert admin("--data-dir", data, "platform", "enable", "8").returncode == 0
        assert admin("--data-dir", data, "platform", "disable", "9").returncode == 1
        # a terminal revoked by mistake signs in again once enabled
        key = tmp_path / "t.json"
        assert admin("--data-dir", data, "terminal", "register", "--pki", "4711", "--user-id",
                     "TERMINAL-0004711", "--generate", str(key)).returncode == 0
        flows = f"127.0.0.1:{d.flows_port}"

        def signin() -> int:
            return signin_out().returncode

        def signin_out() -> subprocess.CompletedProcess[str]:
            return terminal("--data-dir", str(tmp_path), "--flows", flows, "--key-file",
                            str(key), "signin")

        assert signin() == 0
        assert admin("--data-dir", data, "terminal", "revoke", "4711").returncode == 0
        refused = signin_out()
        # the A1 names no cause; the terminal says what it may be and where to look
        assert refused.returncode == 1 and "A1" in refused.stderr
        assert "revoked" in refused.stderr and "the daemon's log says which" in refused.stderr
        assert "PKI card is revoked" in d.log()
        assert admin("--data-dir", data, "terminal", "enable", "4711").returncode == 0
        assert signin() == 0
        assert admin("--data-dir", data, "terminal", "enable", "1").returncode == 1
    finally:
        d.stop()
