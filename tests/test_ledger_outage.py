"""
Database outages (issue 13): the ledger goes away under a running daemon and comes back.

PostgreSQL is reached through a TCP proxy the test can cut (every connection reset, new ones
refused) and restore, the way a server restart or a network failure looks to the daemon. While
it is cut, recharges and order-API calls are refused within a bounded time (DD / status 0 with
an errmsg), /health/ready says 503; once restored, the daemon reconnects by itself and
recharges go through; across it all the virtual cards hold exactly what the books say.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lnt.sim.virtualcards import CPUCard, load_card
from tests.support import Daemon
from tests.test_ledger_contract import _drop, _postgres
from tests.test_recharge_e2e import tool

pytestmark = pytest.mark.slow

CPU = "5100000000000001"


class CuttableProxy:
    """127.0.0.1:PORT -> 127.0.0.1:5432, with cut() and restore()."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = True
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for a, b in self.pairs:
                for s in (a, b):
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                        s.close()
                    except OSError:
                        pass
            self.pairs.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[Daemon, CuttableProxy]]:
    schema = f"lnt_outage_{uuid.uuid4().hex[:10]}"
    url = _postgres(schema)
    proxy = CuttableProxy(("127.0.0.1", 5432))
    via_proxy = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert via_proxy != url, url
    d = Daemon(tmp_path / "data", ["--ledger", via_proxy, "--backend-timeout", "3"]).start()
    try:
        yield d, proxy
    finally:
        d.stop()
        proxy.close()
        _drop(schema)


def card_balance(data: Path) -> int:
    card = load_card(data / "cards" / f"{CPU}.json")
    assert isinstance(card, CPUCard)
    return card.balance


def ready(d: Daemon) -> int:
    try:
        with urllib.request.urlopen(d.http_url + "/health/ready", timeout=15) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def ready_again(d: Daemon, timeout: float = 30) -> None:
    """The daemon is ready again by itself (no restart), within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while ready(d) != 200:
        assert time.monotonic() < deadline, d.log()[-3000:]
        time.sleep(0.5)


def card_agrees_with_the_books(d: Daemon, ledger: str, first: int) -> None:
    """The card holds exactly what the books say it was given (no load left in doubt), and
    the books agree with themselves: across the outage, nothing acknowledged was lost."""
    orders = json.loads(tool("lnt-admin", "--ledger", ledger, "orders", "--card", CPU,
                             "--json", data=d.data_dir).stdout)
    in_doubt = [o for o in orders if o["state"] == "pending"]
    assert not in_doubt, in_doubt
    loaded = sum(o["amount"] for o in orders if o["state"] == "loaded")
    assert card_balance(d.data_dir) == first + loaded
    check = tool("lnt-admin", "--ledger", ledger, "check", data=d.data_dir)
    assert check.returncode == 0, check.stdout


def recharge(d: Daemon, amount: int) -> tuple[int, str, float]:
    start = time.monotonic()
    out = tool("lnt-terminal", "recharge", "--amount", str(amount), "--card", CPU,
               data=d.data_dir, timeout=90)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - start


def test_postgres_cut_and_restored_under_a_running_daemon(
        outage: tuple[Daemon, CuttableProxy]) -> None:
    d, proxy = outage
    first = card_balance(d.data_dir)
    code, out, _ = recharge(d, 100)
    assert code == 0 and "loaded order" in out, out

    proxy.cut()
    code, out, took = recharge(d, 50)
    assert code != 0, out
    assert "Traceback" not in out and took < 60, (took, out)
    assert ("system busy" in out or "DD" in out or "unavailable" in out), out
    assert ready(d) == 503
    log = d.log()
    assert "ledger is unavailable" in log or "did not answer" in log, log[-3000:]

    proxy.restore()
    ready_again(d)
    code, out, _ = recharge(d, 30)
    assert code == 0 and "loaded order" in out, out

    card_agrees_with_the_books(d, _dsn_of(d), first)
    critical = [line for line in d.log().splitlines() if "#critical" in line]
    assert not critical, critical


def _dsn_of(d: Daemon) -> str:
    i = d.args.index("--ledger")
    return str(d.args[i + 1])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the ledger (root only: mount); skipped with a message elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a small disk here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_sqlite_on_a_full_disk_refuses_cleanly_and_recovers(tmp_path: Path,
                                                           small_disk: Path) -> None:
    ledger = f"sqlite://{small_disk / 'ledger.db'}"
    d = Daemon(tmp_path / "data", ["--ledger", ledger, "--backend-timeout", "3"]).start()
    try:
        first = card_balance(d.data_dir)
        code, out, _ = recharge(d, 100)
        assert code == 0 and "loaded order" in out, out

        filler = fill(small_disk)
        code, out, took = recharge(d, 50)
        assert code != 0 and "Traceback" not in out and took < 60, out
        assert "system busy" in out or "DD" in out, out
        assert ready(d) == 503
        assert "the database is unavailable" in d.log()

        filler.unlink()  # the disk has room again: no restart needed
        ready_again(d)
        code, out, _ = recharge(d, 30)
        assert code == 0 and "loaded order" in out, out

        card_agrees_with_the_books(d, ledger, first)
        assert "Unhandled" not in d.log() and "#critical" not in d.log()
    finally:
        d.stop()
