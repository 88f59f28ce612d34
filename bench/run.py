"""
Benchmarks (`make bench`): figures for the README and docs, never assertions in the test suite.

 1. the DD frame codec: frames decoded per second;
 2. against a real daemon on loopback (SQLite ledger, synchronous=FULL), with the load generator
    (`lnt-terminal bench`, its own process): sign-ins and recharges (APPLLogin and
    CreateAutoLoadOrder over HTTP, then DD11-DD22) at several concurrencies, with p50/p95/p99,
    the daemon's and the generator's CPU per session;
 3. the ceiling in the same run: bare Twisted with the recharge's six round trips and frame
    sizes (bench/ceiling.py), and the ratio recharge sessions/s / ceiling sessions/s.

Every loop is bounded in count; the daemon runs in a temporary directory on ports the OS
chooses, and is stopped at the end. Usage: python -m bench.run [--sessions N]
[--concurrency C ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from bench import ceiling
from lnt.wire import FrameDecoder, Request
from tests.support import Daemon

TOOLS = Path(sys.executable).parent


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


def loadgen(daemon: Daemon, work: Path, flow: str, sessions: int, concurrency: int
            ) -> tuple[float, str]:
    """(sessions/s, the generator's report) of one run of `lnt-terminal bench`."""
    out = subprocess.run([str(TOOLS / "lnt-terminal"), "--data-dir", str(work), "bench",
                          "--provision", str(daemon.data_dir), "--flow", flow, "--sessions",
                          str(sessions), "--concurrency", str(concurrency)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"lnt-terminal bench failed:\n{out.stdout}\n{out.stderr}")
    match = re.match(r"([\d.]+) sessions/s", out.stdout)
    assert match, out.stdout
    return float(match.group(1)), out.stdout


def summary(report: str) -> str:
    """The lines of a generator report worth a benchmark's page: totals, flows, CPU."""
    keep = [line for line in report.splitlines()
            if "sessions/s" in line or "flow " in line or "CPU" in line]
    return "\n".join("    " + line.strip() for line in keep)


async def bench(reactor: Any, args: argparse.Namespace) -> None:
    print(codec())
    with tempfile.TemporaryDirectory(prefix="lnt-bench-") as tmp:
        daemon = Daemon(Path(tmp) / "daemon").start()
        server = subprocess.Popen([sys.executable, "-m", "bench.ceiling", "serve"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            work = Path(tmp) / "generator"
            for concurrency in args.concurrency:
                rate, report = loadgen(daemon, work, "signin", args.sessions, concurrency)
                print(f"sign-in, {concurrency} terminals:\n{summary(report)}")
                rate, report = loadgen(daemon, work, "recharge", args.sessions, concurrency)
                print(f"recharge, {concurrency} terminals:\n{summary(report)}")
                top, p50 = await ceiling.measure(reactor, port, args.sessions, concurrency)
                print(f"ceiling (bare Twisted, six round trips), {concurrency} at once: "
                      f"{top:.1f} sessions/s, p50 {p50:.1f} ms; recharge / ceiling = "
                      f"{rate / top:.3f}")
            check = subprocess.run([str(TOOLS / "lnt-admin"), "--data-dir",
                                    str(daemon.data_dir), "check"],
                                   capture_output=True, text=True, timeout=120)
            print("ledger check after the run:", check.stdout.strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait(10)
            daemon.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=400, help="sessions per run [400]")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                   help="concurrent terminals, one run each [1 16]")
    args = p.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(bench(reactor, args)))


if __name__ == "__main__":
    main()
