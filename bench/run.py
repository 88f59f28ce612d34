"""
Benchmarks (`make bench`): figures for the README, never assertions in the test suite.

 1. the DD frame codec: frames decoded per second;
 2. sign-in (DD01-DD08) end to end against a real daemon on loopback;
 3. recharge end to end (APPLLogin + CreateAutoLoadOrder over HTTP, then DD11-DD22), with one
    terminal and with several terminals at once (each its own PKI card and CPU card).

Every loop is bounded in count; the daemon runs in a temporary directory on ports the OS
chooses, and is stopped at the end. Usage: python -m bench.run [--signins N] [--recharges N]
[--terminals K]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from lnt.keyfiles import CardKeyFile, CoreKeys
from lnt.sim.cli import Terminal
from lnt.sim.virtualcards import CPUCard, save_new
from lnt.wire import FrameDecoder, Request
from tests.support import Daemon


def codec(n: int = 100_000) -> str:
    frame = Request(0xDD05, b"terminal-0000001", 1, 70000472, bytes(138)).encode()
    stream = frame * 1000
    decoder = FrameDecoder(Request)
    start = time.perf_counter()
    count = 0
    while count < n:
        count += sum(1 for _ in decoder.feed(stream))
    elapsed = time.perf_counter() - start
    return f"codec: {count / elapsed:,.0f} frames/s decoded ({len(frame)}-byte DD05 frames)"


def figures(name: str, seconds: list[float], wall: float) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (f"{name}: {len(ms)} in {wall:.2f} s = {len(ms) / wall:.1f}/s; latency p50 "
            f"{statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms")


def make_terminals(daemon: Daemon, base: Path, k: int) -> list[Terminal]:
    """k terminals, each with its own PKI card and its own virtual CPU card."""
    core = CoreKeys.load(daemon.data_dir / "core-keys.json")
    admin = str(Path(sys.executable).with_name("lnt-admin"))
    terminals = []
    for i in range(k):
        data = base / f"t{i}"
        data.mkdir()
        user = f"BENCH-TERMINAL{i:02d}"
        subprocess.run([admin, "--data-dir", str(daemon.data_dir), "terminal", "register",
                        "--pki", str(80000000 + i), "--user-id", user, "--generate",
                        str(data / "key.json")], check=True, capture_output=True, timeout=60)
        logical = f"52000000000000{i:02d}"
        card = CPUCard.issue(logical, core.master_load_key, core.master_tac_key)
        save_new(card, data / "cards")
        subprocess.run([admin, "--data-dir", str(daemon.data_dir), "card", "register", "--kind",
                        "cpu", "--logical", logical, "--physical", card.uid], check=True,
                       capture_output=True, timeout=60)
        terminals.append(Terminal(data, "127.0.0.1", daemon.flows_port, daemon.http_url, 15.0,
                                  user.encode(), CardKeyFile.load(data / "key.json"), 7, logical,
                                  out=io.StringIO()))
    return terminals


async def timed(coro: Any) -> float:
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


async def bench(reactor: Any, args: argparse.Namespace) -> None:
    print(codec())
    with tempfile.TemporaryDirectory(prefix="lnt-bench-") as tmp:
        daemon = Daemon(Path(tmp) / "daemon").start()
        try:
            terminals = make_terminals(daemon, Path(tmp), args.terminals)
            one = terminals[0]

            start = time.perf_counter()
            lat = [await timed(one.signin(reactor)) for _ in range(args.signins)]
            print(figures("sign-in, one terminal", lat, time.perf_counter() - start))

            start = time.perf_counter()
            lat = [await timed(one.recharge(reactor, 1, f"BENCH1-{i}"))
                   for i in range(args.recharges)]
            print(figures("recharge (order + load), one terminal", lat,
                          time.perf_counter() - start))

            async def run(t: Terminal, n: int, tag: str) -> list[float]:
                return [await timed(t.recharge(reactor, 1, f"{tag}-{i}")) for i in range(n)]

            per = max(1, args.recharges // len(terminals))
            start = time.perf_counter()
            results = await defer.gatherResults([
                defer.Deferred.fromCoroutine(run(t, per, f"BENCHK{j}"))
                for j, t in enumerate(terminals)])
            wall = time.perf_counter() - start
            print(figures(f"recharge, {len(terminals)} terminals at once",
                          [x for r in results for x in r], wall))
            check = subprocess.run([str(Path(sys.executable).with_name("lnt-admin")),
                                    "--data-dir", str(daemon.data_dir), "check"],
                                   capture_output=True, text=True, timeout=120)
            print("ledger check after the run:", check.stdout.strip().splitlines()[-1])
        finally:
            daemon.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signins", type=int, default=100)
    p.add_argument("--recharges", type=int, default=100)
    p.add_argument("--terminals", type=int, default=4)
    args = p.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(bench(reactor, args)))


if __name__ == "__main__":
    main()
