"""
The load generator (lnt-terminal bench) against a real daemon: it provisions its own terminals
and cards, runs a bounded number of sessions, and reports what the issue asks for.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Daemon

pytestmark = pytest.mark.slow


def terminal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("lnt-terminal")), *args],
                          capture_output=True, text=True, timeout=120)


def test_bench_runs_mixed_sessions_and_reports_them(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "data").start()
    try:
        out = terminal("--data-dir", str(tmp_path / "gen"), "bench", "--provision",
                       str(d.data_dir), "--sessions", "12", "--concurrency", "3",
                       "--flow", "mixed")
        assert out.returncode == 0, out.stdout + out.stderr
        first = out.stdout.splitlines()[0]
        assert re.fullmatch(r"\d+\.\d sessions/s, 0 errors \(12 sessions in \d+\.\d+ s\)", first)
        for line in ("flow recharge: n 6,", "flow signin: n 6,", "stage recharge order API:",
                     "stage recharge DD21:", "stage signin DD07:", "daemon CPU:",
                     "generator CPU:"):
            assert line in out.stdout, out.stdout
        assert re.search(r"p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms", out.stdout)
        check = subprocess.run([str(Path(sys.executable).with_name("lnt-admin")),
                                "--data-dir", str(d.data_dir), "check"],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "cards:float" in check.stdout
        again = terminal("--data-dir", str(tmp_path / "gen"), "bench", "--provision",
                         str(d.data_dir), "--sessions", "2", "--concurrency", "3")
        assert again.returncode == 0, again.stderr  # provisioning is idempotent
    finally:
        d.stop()


def test_bench_says_what_it_needs(tmp_path: Path) -> None:
    out = terminal("--data-dir", str(tmp_path), "bench", "--sessions", "1", "--concurrency",
                   "1")
    assert out.returncode == 2 and "--provision" in out.stderr
    out = terminal("--data-dir", str(tmp_path), "bench", "--sessions", "1", "--concurrency",
                   "1", "--provision", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "no running daemon" in out.stderr
    out = terminal("--data-dir", str(tmp_path), "bench", "--sessions", "0", "--concurrency",
                   "1", "--provision", str(tmp_path))
    assert out.returncode == 2
    # a daemon's directory with a listening.json, and an --http that is no ASCII URL
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "listening.json").write_text(
        '{"flows": {"host": "127.0.0.1", "port": 9}, "http": {"port": 9}}')
    for bad in ("127.0.0.1:9", "http://exämple.test:9"):
        out = terminal("--data-dir", str(tmp_path), "--http", bad, "bench", "--sessions", "1",
                       "--concurrency", "1", "--provision", str(tmp_path / "d"))
        assert out.returncode == 2 and "--http is a URL" in out.stderr, out.stderr
