"""
Benchmarks (`make bench`): figures for the README and docs, never assertions in the test suite.

 1. the DD frame codec: frames decoded per second;
 2. against a real daemon on loopback (SQLite ledger, synchronous=FULL), with the load generator
    (`lnt-terminal bench`, its own process): sign-ins and recharges (APPLLogin and
    CreateAutoLoadOrder over HTTP, then DD11-DD22) at several concurrencies, with p50/p95/p99,
    the daemon's and the generator's CPU per session;
 3. the ceiling in the same run (bench/ceiling.py), bare Twisted with the recharge's shape and
    sizes: its six DD round trips alone, and the whole recharge (the order API's two calls
    first, with the generator's HTTP client, then the six DD round trips); the ratios
    recharge sessions/s / ceiling sessions/s to each;
 4. HTTP calls per second: the order API (AcctQueryLNT, a whole enveloped call with its ledger
    reads) and the consignment API (/v2_tocard repeated: signature, lookup, the stored answer)
    against a bare twisted.web resource;
 5. scale: 10,000 idle terminal connections held open, the daemon's RSS per connection, and
    recharges served meanwhile;
 6. the same sign-ins and recharges on PostgreSQL (127.0.0.1:5432, database test, a schema of
    its own that is dropped afterwards), when it is reachable;
 7. a plot of throughput and p99 against concurrency (with the `bench` extra's matplotlib).

It first measures how long this machine's disk takes to sync a small write (what a commit
waits for), since that changes from day to day; --fsync-delay-us N makes every sync of the
daemons under test N microseconds slower (bench/slowsync.c, preloaded), to compare runs on the
same disk (the one issue 11 was measured on synced in about 2,700 us).

Every loop is bounded in count; the daemons run in a temporary directory on ports the OS
chooses, and are stopped at the end. Usage: python -m bench.run [--sessions N]
[--concurrency C ...] [--idle N] [--plot PNG] [--no-pin] [--fsync-delay-us N] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bench import ceiling, httpload
from lnt.crypto import envelope
from lnt.crypto.consignsign import encrypt_field, make_sign
from lnt.wire import FrameDecoder, Request
from tests.support import Daemon

TOOLS = Path(sys.executable).parent
#: the demo's order-API platform, which the load generator's terminals use
DEMO_PLATFORM = 7
POSTGRES = os.environ.get("LNT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Run:
    ledger: str
    flow: str
    concurrency: int
    rate: float
    p99_ms: float
    daemon_cpu_ms: float | None
    report: str


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


def loadgen(daemon: Daemon, work: Path, ledger: str, flow: str, sessions: int,
            concurrency: int, dsn: str | None = None) -> Run:
    """One run of `lnt-terminal bench` against C{daemon}."""
    out = subprocess.run([str(TOOLS / "lnt-terminal"), "--data-dir", str(work), "bench",
                          "--provision", str(daemon.data_dir), "--flow", flow, "--sessions",
                          str(sessions), "--concurrency", str(concurrency),
                          *(["--ledger", dsn] if dsn else [])],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"lnt-terminal bench failed:\n{out.stdout}\n{out.stderr}")
    rate = re.match(r"([\d.]+) sessions/s", out.stdout)
    p99 = re.search(rf"flow {flow}: .* p99 ([\d.]+) ms", out.stdout)
    cpu = re.search(r"daemon CPU: ([\d.]+) ms", out.stdout)
    assert rate and p99, out.stdout
    return Run(ledger, flow, concurrency, float(rate.group(1)), float(p99.group(1)),
               float(cpu.group(1)) if cpu else None, out.stdout)


def summary(report: str) -> str:
    """The lines of a generator report worth a benchmark's page: totals, flows, CPU."""
    keep = [line for line in report.splitlines()
            if "sessions/s" in line or "flow " in line or "CPU" in line]
    return "\n".join("    " + line.strip() for line in keep)


def flows(daemon: Daemon, work: Path, ledger: str, args: argparse.Namespace, runs: list[Run],
          ceilings: dict[int, tuple[float, float]], dsn: str | None = None) -> None:
    for concurrency in args.concurrency:
        for flow in ("signin", "recharge"):
            run = loadgen(daemon, work, ledger, flow, args.sessions, concurrency, dsn)
            runs.append(run)
            print(f"{ledger}: {flow}, {concurrency} terminals:\n{summary(run.report)}")
            if flow == "recharge" and concurrency in ceilings:
                dd, whole = ceilings[concurrency]
                print(f"    recharge / ceiling = {run.rate / dd:.3f} (DD only), "
                      f"{run.rate / whole:.3f} (the whole recharge)")


#: (the CPU of the servers under test, the CPUs of their clients), when pinning
LAYOUT: tuple[set[int], set[int]] | None = None


def plan_cpus(pin: bool) -> None:
    """
    Put the servers under test (the daemon, the ceiling's server) on one CPU and their clients
    (this process and the load generator it starts, which inherit its affinity) on the others,
    as if the terminals were other machines. The daemon's Python is held to one core by the GIL
    anyway; with its reactor and ledger writer threads on one core the GIL changes hands
    without crossing cores, and no client runs there: recharges +12 % at 64 terminals
    (docs/performance.rst, "Where the daemon runs").
    """
    global LAYOUT
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        print("CPUs: not pinned (daemon and generator share every CPU)")
        return
    LAYOUT = ({cpus[-1]}, set(cpus[:-1]))
    os.sched_setaffinity(0, LAYOUT[1])
    print(f"CPUs: servers under test on CPU {cpus[-1]}, clients (generator, ceiling client) on "
          f"{', '.join(map(str, cpus[:-1]))}")


def pin_server(pid: int) -> None:
    """Every thread of process C{pid} onto the servers' CPU (threads it starts later inherit)."""
    if LAYOUT is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), LAYOUT[0])


# -- the disk ----------------------------------------------------------------------------------


def disk_sync(directory: Path, writes: int = 200) -> str:
    """How long a sync of a 4 KiB append takes in C{directory} (p50, p99): what each commit of
    the daemon's SQLite ledger (synchronous=FULL) waits for at least."""
    path = directory / "sync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(writes):
            os.write(fd, bytes(4096))
            start = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return (f"disk: fdatasync of a 4 KiB append {statistics.median(times):.2f} ms (p50), "
            f"{times[len(times) * 99 // 100]:.2f} ms (p99), in {directory}")


#: the environment of every daemon under test (the slower disk's preload, when asked for)
DAEMON_ENV: dict[str, str] = {}


def slow_disk(tmp: Path, delay_us: int) -> None:
    """Build bench/slowsync.c and preload it into the daemons under test: every fsync and
    fdatasync of theirs takes C{delay_us} longer (after the real call, which still syncs)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("--fsync-delay-us needs a C compiler (cc or gcc) to build "
                         "bench/slowsync.c")
    library = tmp / "slowsync.so"
    build = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library),
                            str(Path(__file__).with_name("slowsync.c")), "-ldl"],
                           capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        raise SystemExit(f"building bench/slowsync.c failed:\n{build.stderr}")
    DAEMON_ENV.update(LD_PRELOAD=str(library), LNT_BENCH_FSYNC_DELAY_US=str(delay_us))
    print(f"disk: every fsync/fdatasync of the daemons under test {delay_us} us slower "
          "(bench/slowsync.c; PostgreSQL's own syncs, in its server, are not slowed)")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- HTTP --------------------------------------------------------------------------------------


async def order_api_request(reactor: Any, daemon: Daemon, work: Path) -> bytes:
    """A valid AcctQueryLNT call (one order's record) of the load generator's first terminal
    (C{work}: its directory), as bytes on the wire."""
    from lnt.sim import loadgen as gen

    provisioned = gen.provision(daemon.data_dir, work, 1)
    term = gen.terminals_for(provisioned, "127.0.0.1", daemon.flows_port, daemon.http_url,
                             15.0, DEMO_PLATFORM)[0]
    serial = await term.session_serial(reactor)
    client = term.client()
    # a whole recharge (no payment is left without its load), keeping the card's reading
    biz = f"BENCH-{uuid.uuid4().hex[:12]}"
    login = await client.appl_login(biz, 1)
    reqinfo = client.read_card(login["toreader"])
    order = await client.create_order(biz, 1, serial, reqinfo)
    await term.load(reactor, str(order["order"]), 1)
    captured: list[bytes] = []

    async def capture(endpoint: str, message: dict[str, Any]) -> dict[str, Any]:
        captured.append(json.dumps(message, separators=(",", ":"),
                                   ensure_ascii=False).encode())
        return {}

    client.call = capture
    # the query of one order (the terminal's card has all the benchmark's orders by now)
    await client.acct_query(serial, reqinfo, "cardnum,orderid", orderid=str(order["order"]))
    term.persist()
    return httpload.post("/AcctQueryLNT", captured[0], "application/json")


def tocard_request(daemon: Daemon) -> bytes:
    """A /v2_tocard of the demo merchant, made once; repeating it answers the stored order."""
    import urllib.request

    demo = json.loads((daemon.data_dir / "demo.json").read_text())
    merchant, voucher = demo["merchant"], demo["vouchers"][0]
    fields = {"customerId": merchant["customerId"], "timestamp": str(int(time.time())),
              "orderId": f"BENCH{uuid.uuid4().hex[:10]}", "batchno": "B1",
              "productCode": voucher["productCode"],
              "cardNumber": encrypt_field(voucher["cardNumber"], merchant["aes_key"]),
              "cardPassword": encrypt_field(voucher["cardPassword"], merchant["aes_key"]),
              "amount": str(voucher["faceValue"]), "notify_url": "", "custom": "bench"}
    fields["sign"] = make_sign(fields, merchant["md5_key"])
    body = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(f"{daemon.http_url}/v2_tocard", data=body, timeout=15) as r:
        answer = json.loads(r.read())
    if answer.get("code") != 1:
        raise RuntimeError(f"/v2_tocard refused: {answer}")
    return httpload.post("/v2_tocard", body, "application/x-www-form-urlencoded")


async def http(reactor: Any, daemon: Daemon, work: Path, web_port: int, calls: int,
               concurrency: int) -> None:
    order = await order_api_request(reactor, daemon, work)
    tocard = tocard_request(daemon)
    bare_body = envelope.seal({"timestamp": int(time.time() * 1000), "version": "v2"},
                              {"x": "y"})
    bare = httpload.post("/bare", json.dumps(bare_body).encode(), "application/json")
    top, statuses = await httpload.hammer(reactor, web_port, bare, calls, concurrency)
    print(f"HTTP, {concurrency} keep-alive connections, {calls} calls in all:")
    print(f"    bare twisted.web resource: {top:,.0f} calls/s {statuses}")
    for name, request in (("order API AcctQueryLNT", order), ("/v2_tocard (repeated)", tocard)):
        rate, statuses = await httpload.hammer(reactor, daemon.http_port, request, calls,
                                               concurrency)
        print(f"    {name}: {rate:,.0f} calls/s {statuses}; / bare = {rate / top:.3f}")


# -- idle connections --------------------------------------------------------------------------


async def idle(reactor: Any, tmp: Path, args: argparse.Namespace) -> None:
    # a listen backlog above Twisted's 50 (an endpoint option): connections arriving in bursts
    # of 200 would otherwise wait for SYN retransmits
    daemon = Daemon(tmp / "idle", ["--max-connections", str(args.idle + 1000),
                                   "--idle-timeout", "900", "--flows",
                                   "tcp:0:interface=127.0.0.1:backlog=1024"],
                    env=DAEMON_ENV).start()
    pin_server(daemon.proc.pid)  # type: ignore[union-attr]
    conns: list[protocol.Protocol] = []
    try:
        loadgen(daemon, tmp / "idle-gen", "sqlite", "signin", 20, 4)  # warm up
        before = rss_kib(daemon.proc.pid)  # type: ignore[union-attr]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.flows_port)
        start = time.perf_counter()
        for first in range(0, args.idle, 200):
            batch = [connectProtocol(endpoint, protocol.Protocol())
                     for _ in range(first, min(first + 200, args.idle))]
            conns.extend(await defer.gatherResults(batch))
        opened = time.perf_counter() - start
        await task.deferLater(reactor, 1.0, lambda: None)
        after = rss_kib(daemon.proc.pid)  # type: ignore[union-attr]
        print(f"idle connections: {len(conns):,} open in {opened:.1f} s; daemon RSS "
              f"{before / 1024:.1f} -> {after / 1024:.1f} MiB, "
              f"{(after - before) * 1024 / len(conns):,.0f} bytes per connection")
        run = await defer.Deferred.fromCoroutine(_in_thread(
            reactor, loadgen, daemon, tmp / "idle-gen", "sqlite", "recharge", args.sessions, 16))
        alive = sum(1 for c in conns if c.transport is not None and c.connected)
        print(f"    meanwhile, 16 terminals recharging:\n{summary(run.report)}\n"
              f"    idle connections still open after the run: {alive:,}")
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.abortConnection()  # type: ignore[attr-defined]
        daemon.stop()


async def _in_thread(reactor: Any, f: Any, *args: Any) -> Any:
    """Run a blocking call (the generator's subprocess) while the reactor keeps the idle
    connections (their reads are what the daemon would otherwise see as dead peers)."""
    from twisted.internet import threads

    return await threads.deferToThread(f, *args)


# -- PostgreSQL --------------------------------------------------------------------------------


def postgres_schema() -> tuple[str, str] | None:
    """(dsn, schema) of a fresh schema, or None when PostgreSQL is not reachable."""
    try:
        import psycopg

        conn = psycopg.connect(POSTGRES, connect_timeout=3, autocommit=True)
    except Exception as e:
        print(f"PostgreSQL at {POSTGRES} not reachable: skipped ({e})")
        return None
    schema = f"lnt_bench_{uuid.uuid4().hex[:10]}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{sep}options={urllib.parse.quote(f'-csearch_path={schema}')}", schema


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, connect_timeout=3, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- plot --------------------------------------------------------------------------------------


def plot(runs: list[Run], ceilings: dict[int, tuple[float, float]], path: Path) -> None:
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ledger in sorted({r.ledger for r in runs}):
        for flow, style in (("recharge", "o-"), ("signin", "s--")):
            mine = sorted((r for r in runs if (r.ledger, r.flow) == (ledger, flow)),
                          key=lambda r: r.concurrency)
            if not mine:
                continue
            xs = [r.concurrency for r in mine]
            left.plot(xs, [r.rate for r in mine], style, label=f"{flow}, {ledger}")
            right.plot(xs, [r.p99_ms for r in mine], style, label=f"{flow}, {ledger}")
    xs = sorted(ceilings)
    for i, name in ((0, "ceiling, DD only"), (1, "ceiling, whole recharge")):
        left.plot(xs, [ceilings[x][i] for x in xs], ":", color="grey" if i else "black",
                  label=name)
    for ax, title in ((left, "sessions/s"), (right, "p99 per session, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent terminals")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    left.set_yscale("log")
    fig.suptitle("lnt-recharge on 2 cores: the daemon on one, the generator on the other"
                 if LAYOUT else "lnt-recharge on 2 cores, daemon and generator sharing them")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


# -- the whole run -----------------------------------------------------------------------------


async def bench(reactor: Any, args: argparse.Namespace) -> None:
    plan_cpus(args.pin)
    print(codec())
    runs: list[Run] = []
    ceilings: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lnt-bench-") as name:
        tmp = Path(name)
        print(disk_sync(tmp))
        if args.fsync_delay_us:
            slow_disk(tmp, args.fsync_delay_us)
        server = subprocess.Popen([sys.executable, "-m", "bench.ceiling", "serve"],
                                  stdout=subprocess.PIPE, text=True)
        pin_server(server.pid)
        try:
            assert server.stdout is not None
            dd_port, web_port = (int(p) for p in server.stdout.readline().split())
            for concurrency in args.concurrency:
                dd, p50 = await ceiling.measure(reactor, dd_port, args.sessions, concurrency)
                print(f"ceiling (bare Twisted), {concurrency} at once: DD only (six round "
                      f"trips) {dd:.1f} sessions/s, p50 {p50:.1f} ms")
                whole, p50 = await ceiling.measure(reactor, dd_port, args.sessions,
                                                   concurrency, web_port)
                print(f"ceiling (bare Twisted), {concurrency} at once: the whole recharge (two "
                      f"HTTP calls, six DD round trips) {whole:.1f} sessions/s, p50 {p50:.1f} ms")
                ceilings[concurrency] = (dd, whole)
            daemon = Daemon(tmp / "daemon", env=DAEMON_ENV).start()
            pin_server(daemon.proc.pid)  # type: ignore[union-attr]
            try:
                flows(daemon, tmp / "generator", "sqlite", args, runs, ceilings)
                await http(reactor, daemon, tmp / "generator" / "loadgen", web_port, args.calls, 16)
                check = subprocess.run([str(TOOLS / "lnt-admin"), "--data-dir",
                                        str(daemon.data_dir), "check"],
                                       capture_output=True, text=True, timeout=120)
                print("ledger check after the run:", check.stdout.strip().splitlines()[-1])
            finally:
                daemon.stop()
        finally:
            server.terminate()
            server.wait(10)
        if args.idle:
            await idle(reactor, tmp, args)
        pg = postgres_schema() if args.postgres else None
        if pg is not None:
            dsn, schema = pg
            daemon = Daemon(tmp / "pg", ["--ledger", dsn], env=DAEMON_ENV).start()
            pin_server(daemon.proc.pid)  # type: ignore[union-attr]
            try:
                flows(daemon, tmp / "pg-generator", "postgres", args, runs, ceilings, dsn)
            finally:
                daemon.stop()
                drop_schema(schema)
    if args.plot:
        plot(runs, ceilings, Path(args.plot))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=1000, help="sessions per run [1000]")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 12, 16, 64],
                   help="concurrent terminals, one run each [1 8 12 16 64]")
    p.add_argument("--calls", type=int, default=5000, help="HTTP calls per endpoint [5000]")
    p.add_argument("--idle", type=int, default=10_000,
                   help="idle terminal connections to hold open (0: skip) [10000]")
    p.add_argument("--plot", default="bench-throughput.png",
                   help="where to write the plot ('' for none) [bench-throughput.png]")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the daemon and the generator share every CPU (default: the "
                        "servers under test on one CPU, their clients on the others)")
    p.add_argument("--fsync-delay-us", type=int, default=0, metavar="N",
                   help="make every fsync/fdatasync of the daemons under test N microseconds "
                        "slower, to compare runs on the same disk (2700: the disk issue 11 "
                        "was measured on) [0]")
    p.add_argument("--no-postgres", dest="postgres", action="store_false",
                   help="skip the PostgreSQL runs")
    args = p.parse_args()
    if not 0 <= args.fsync_delay_us <= 1_000_000:
        p.error("--fsync-delay-us: from 0 to 1000000")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(bench(reactor, args)))


if __name__ == "__main__":
    main()
