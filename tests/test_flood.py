"""
Descriptor floods (issue 13, finding 2) against a real daemon with small limits: idle
connections to the terminal port and a slowloris on the HTTP port, both beyond their limits.
The daemon holds at most its limits (it stops accepting instead of accepting and holding),
the admin endpoint's /health/live answers throughout, slowloris requests are cut at their
deadline, and a terminal and an HTTP client that arrive after the flood are served.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import Daemon
from tests.test_recharge_e2e import tool

pytestmark = pytest.mark.slow

LIMIT = 40
FLOOD = 150


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_many(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        out.append(s)
    return out


def get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return int(r.status)


def test_floods_are_held_to_the_limits_and_whoever_comes_after_is_served(
        tmp_path: Path) -> None:
    d = Daemon(tmp_path / "data", [
        "--max-connections", str(LIMIT), "--http-max-connections", str(LIMIT),
        "--http-request-timeout", "2", "--idle-timeout", "30",
        "--admin", "tcp:0:interface=127.0.0.1"]).start()
    flood: list[socket.socket] = []
    try:
        pid = d.proc.pid  # type: ignore[union-attr]
        baseline = open_fds(pid)
        admin = f"http://127.0.0.1:{d.listening['admin']['port']}/health/live"
        flood += connect_many(d.flows_port, FLOOD)
        slow = connect_many(d.http_port, FLOOD)
        flood += slow
        time.sleep(0.5)
        for s in slow:  # a request begun and never finished
            try:
                s.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
        time.sleep(0.5)
        held = open_fds(pid) - baseline
        # the accept loop may take a burst beyond the limit before it pauses; never the flood
        assert held <= 2 * LIMIT + 2 * 16, held
        assert get(admin, timeout=2) == 200  # the operator's liveness, during the flood
        log = d.log()
        assert "flows: 40 connections open, the limit: not accepting" in log
        assert "http: 40 connections open, the limit: not accepting" in log

        # the slowloris requests are cut at their deadline, dripping or not
        for s in slow:
            try:
                s.send(b"X")
            except OSError:
                pass
        time.sleep(2.5)
        assert "did not arrive whole within 2 s" in d.log()
        # and what queued behind them in the backlog is served: a plain HTTP client
        assert get(d.http_url + "/health/live", timeout=10) == 200
    finally:
        for s in flood:
            s.close()
    try:
        # the flood is over: a terminal that arrives now signs in
        out = tool("lnt-terminal", "signin", data=d.data_dir, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert get(d.http_url + "/health/live") == 200
        time.sleep(0.5)
        assert open_fds(d.proc.pid) <= baseline + 4  # type: ignore[union-attr]
        assert "below the limit again" in d.log()
    finally:
        d.stop()
