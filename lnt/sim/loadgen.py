"""
The load generator (C{lnt-terminal bench}): C concurrent virtual terminals, each with its own PKI
card and its own virtual CPU card, run N sessions in all against a running daemon (sign-ins,
recharges, or both in turn), bounded in count and in time. It prints one summary line,
C{<X> sessions/s, <E> errors}, then p50/p95/p99 per flow and per stage, the daemon's CPU
milliseconds per session (from /proc, when the daemon runs on this machine and its data
directory is given) and the generator's own CPU, so that one can tell whether the generator was
the bottleneck.

Provisioning: with C{--provision DATA-DIR} (the daemon's data directory on this machine) it
registers its terminals and cards with C{lnt-admin} and issues the cards with the issuer's key
file found there; otherwise it says what to run.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer

from lnt.keyfiles import CardKeyFile, CoreKeys
from lnt.messages import cardissue
from lnt.wire import Request, Response, header_name

#: PKI card numbers and logical card numbers of the generator's terminals and cards
FIRST_PKI = 90000000
CARD_PREFIX = "5390"


@dataclass
class Stats:
    """Latencies (seconds) by flow and by stage, and the errors seen."""

    flows: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stages: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return "-"

    def at(q: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * q))]

    return (f"n {len(ms)}, p50 {statistics.median(ms):.1f} ms, p95 {at(0.95):.1f} ms, "
            f"p99 {at(0.99):.1f} ms")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a local process, from /proc (None when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def provision(daemon_data: Path, work: Path, count: int, ledger: str | None = None
              ) -> list[tuple[Path, str]]:
    """
    C{count} terminals (PKI card key files) and CPU cards, registered with the daemon's ledger
    through lnt-admin (C{ledger}: the daemon's DSN when it is not the data directory's SQLite
    file); (terminal directory, card logical number) each. Idempotent by number.
    """
    admin = [str(Path(sys.executable).with_name("lnt-admin")), "--data-dir", str(daemon_data),
             *(["--ledger", ledger] if ledger else [])]
    core = CoreKeys.load(daemon_data / "core-keys.json")
    out = []
    for i in range(count):
        data = work / f"terminal-{i:04d}"
        (data / "cards").mkdir(parents=True, exist_ok=True)
        key = data / "key.json"
        if not key.exists():
            subprocess.run([*admin, "terminal", "register",  # noqa: S603 - our own tool and arguments
                            "--pki", str(FIRST_PKI + i), "--user-id", f"LOADGEN-TERM{i:04d}",
                            "--generate", str(key)], check=True, capture_output=True,
                           timeout=60)
        logical = f"{CARD_PREFIX}{i:012d}"
        path = cardissue.card_path(data / "cards", logical)
        if not path.exists():
            card = cardissue.cpu_card(logical, core.master_load_key, core.master_tac_key)
            cardissue.write_card(data / "cards", card)
            subprocess.run([*admin, "card", "register", "--kind",  # noqa: S603 - our own tool and arguments
                            "cpu", "--logical", logical, "--physical",
                            cardissue.physical_number(card).hex()], check=True,
                           capture_output=True, timeout=60)
        out.append((data, logical))
    return out


class StageTimer:
    """The reporter of L{lnt.sim.terminal.run_flow}: the time of each stage's round trip."""

    def __init__(self, stats: Stats, flow: str) -> None:
        self.stats = stats
        self.flow = flow
        self.last = time.perf_counter()

    def __call__(self, request: Request, response: Response) -> None:
        now = time.perf_counter()
        self.stats.stages[f"{self.flow} {header_name(request.header)}"].append(now - self.last)
        self.last = now


async def run(reactor: Any, terminals: list[Any], sessions: int, flow: str, duration: float,
              stats: Stats) -> float:
    """Run C{sessions} sessions over the terminals, at most C{duration} seconds; the wall time."""
    budget = iter(range(sessions))
    deadline = time.monotonic() + duration
    started = time.perf_counter()

    async def worker(term: Any, index: int) -> None:
        for n in budget:
            if time.monotonic() > deadline:
                return
            kind = flow if flow != "mixed" else ("signin" if n % 2 else "recharge")
            timer = StageTimer(stats, kind)
            term.report = timer
            t0 = time.perf_counter()
            try:
                if kind == "signin":
                    await term.signin(reactor)
                else:
                    order_no = await term.order(reactor, 1, f"LG{index}-{n}-{time.time_ns()}")
                    # the order API's two calls (APPLLogin, CreateAutoLoadOrder), then DD11-22
                    timer.last = now = time.perf_counter()
                    stats.stages["recharge order API"].append(now - t0)
                    await term.load(reactor, order_no, 1)
            except Exception as e:  # every failure is counted and the run goes on
                stats.errors[f"{kind}: {type(e).__name__}: {str(e)[:60]}"] += 1
                continue
            stats.flows[kind].append(time.perf_counter() - t0)

    try:
        await defer.gatherResults([defer.Deferred.fromCoroutine(worker(t, i))
                                   for i, t in enumerate(terminals)])
        return time.perf_counter() - started
    finally:
        for term in terminals:
            term.persist()


def report(stats: Stats, wall: float, daemon_cpu: float | None, own_cpu: float,
           out: Callable[[str], None]) -> None:
    done = sum(len(v) for v in stats.flows.values())
    errors = sum(stats.errors.values())
    out(f"{done / wall:.1f} sessions/s, {errors} errors ({done} sessions in {wall:.2f} s)")
    for name in sorted(stats.flows):
        out(f"  flow {name}: {percentiles(stats.flows[name])}")
    for name in sorted(stats.stages):
        out(f"  stage {name}: {percentiles(stats.stages[name])}")
    if daemon_cpu is not None and done:
        out(f"  daemon CPU: {daemon_cpu * 1000 / done:.2f} ms per session "
            f"({daemon_cpu / wall * 100:.0f} % of one core)")
    if done:
        out(f"  generator CPU: {own_cpu * 1000 / done:.2f} ms per session "
            f"({own_cpu / wall * 100:.0f} % of one core)")
    for what, n in sorted(stats.errors.items()):
        out(f"  error x{n}: {what}")


def terminals_for(provisioned: list[tuple[Path, str]], host: str, port: int, http: str,
                  timeout: float, platform: int) -> list[Any]:
    from twisted.internet import reactor

    from lnt.sim.cli import Terminal
    from lnt.sim.orderclient import shared_agent

    # one connection per terminal kept open to the order API, as an app's backend would:
    # a pool of Twisted's default two per host would open and close one per call
    agent = shared_agent(reactor, len(provisioned))
    out = []
    for data, logical in provisioned:
        key = CardKeyFile.load(data / "key.json")
        out.append(Terminal(data, host, port, http, timeout, key.user_id, key, platform,
                            logical, out=_Discard(), volatile=True, agent=agent))
    return out


class _Discard(io.StringIO):
    """The terminals' stage printing, dropped: a long run would otherwise keep all of it."""

    def write(self, text: str) -> int:
        return len(text)
