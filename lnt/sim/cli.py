"""
C{lnt-terminal}: the terminal simulator's command line.

    lnt-terminal --data-dir DIR [--flows HOST:PORT] [--http URL] [--timeout S] COMMAND

    signin      run the sign-in flow (DD01-DD08) and keep the session in the reader
    order --amount FEN [--card LOGICAL_NO] [--biz-serial-no ID]
                create a recharge order through the HTTP order API (APPLLogin, the card
                read with its toreader script, CreateAutoLoadOrder); signs in first if needed
    account [--card LOGICAL_NO]
                the card's orders (AcctQueryLNT)
    recharge --amount FEN [--card LOGICAL_NO] [--interrupt before-credit|after-credit]
                sign in if needed, create an order, load it onto the card (DD11-DD22), print
                the record and the balance before and after; --interrupt drops the connection
                when the load command arrives, before or after the card executes it
    resume --order NO [--amount FEN] [--card LOGICAL_NO]
                settle an interrupted load: DD11 again for the same order
    card open|close [--card LOGICAL_NO]
                change the card's deposit flag online (DD73/DD74)
    bench --sessions N --concurrency C [--flow recharge|signin|mixed] [--duration S]
          [--provision DAEMON-DATA-DIR]
                the load generator (lnt.sim.loadgen): C terminals of its own, N sessions in all

The terminal's identity (user ID, PKI card key file) comes from C{DIR/demo.json} unless
C{--user-id}/C{--key-file} are given; its reader keeps its state in C{DIR/reader-state.json}.
The card on the reader is C{--card} (a virtual card in C{DIR/cards/}), by default the first
card of demo.json. Without C{--flows}/C{--http}, the addresses the daemon recorded in
C{DIR/listening.json} are used; without them either, the command is refused (exit 2).

Each stage is printed as it happens: header, flow indicator and code with its meaning, info
length and hex. Exit status: 0 success; 1 the platform refused (its info code is printed);
2 usage or configuration error; 3 network error or timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError

import lnt
from lnt.keyfiles import CardKeyFile, KeyFileError
from lnt.messages.cardscript import IDENTIFY
from lnt.messages.purse import DepositOp, Ins, parse_record, parse_value_block
from lnt.sim.orderclient import APIBroken, APIRefused, OrderClient
from lnt.sim.reader import Reader
from lnt.sim.terminal import FlowRefused, FlowResult, TerminalError, connect, run_flow
from lnt.sim.virtualcards import Card, CPUCard, M1Card, load_card
from lnt.wire import NO_PKI, InfoCode, Request, Response, describe_code, encode_bcd, header_name

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NETWORK, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


#: what a code that names no cause may mean: the protocol's table has no codes for these
#: causes, so the platform's log holds the reason (docs/protocol.rst, "Info codes")
REFUSAL_HINTS: dict[int, str] = {
    InfoCode.NO_PUBLIC_KEY: "this daemon does not accept the terminal's PKI card: unknown to it "
                            "(another daemon?), revoked, bound to another user ID, or another "
                            "key version; the daemon's log says which",
    InfoCode.BACKEND_ERROR: "the platform refused: e.g. the card is closed, the load would pass "
                            "the card's limit, or a MAC does not verify; the daemon's log says "
                            "which",
    InfoCode.SYSTEM_BUSY: "the platform is busy or resolved an earlier load first: send again",
    InfoCode.REVERSAL_FAILED: "an earlier load of this card is still in doubt: an operator "
                              "resolves it (lnt-admin loads --in-doubt)",
}


class Interrupted(Exception):
    """The terminal dropped the connection on purpose (--interrupt)."""


class UsageError(Exception):
    pass


def base_url(http: str) -> str:
    """The order API's base URL from --http (or the daemon's record), without a final slash;
    L{UsageError} unless it is an ASCII http(s) URL (the client sends it as bytes)."""
    if not http.startswith(("http://", "https://")) or not http.isascii():
        raise UsageError("--http is a URL: http://HOST:PORT (ASCII; an IDN host in its "
                         "xn-- form)")
    return http.rstrip("/")


class RecordMismatch(Exception):
    """The platform's DD22 record names another order or card: not a load of this card."""


@dataclass
class Terminal:
    data_dir: Path
    host: str
    port: int
    http: str
    timeout: float
    user_id: bytes
    card: CardKeyFile
    platform: int
    transit_card: str | None
    out: Any = sys.stdout
    #: keep the reader's state, the card and the orders in memory only (the load generator:
    #: its terminals live as long as its process, and fsyncing them would make it the
    #: bottleneck it must not be)
    volatile: bool = False
    #: the order API's HTTP agent, shared by the load generator's terminals (None: the
    #: client's own)
    agent: Any = None

    def __post_init__(self) -> None:
        card = self.present(self.transit_card)
        self._card_path = None if card is None else card.path
        if self.volatile and card is not None:
            card.path = None
        self.reader = Reader(self.card, self.data_dir / "reader-state.json", card,
                             volatile=self.volatile)
        self._orders: dict[str, int] = {}

    def persist(self) -> None:
        """Write a volatile terminal's card and reader state to its files (at the end of a
        load generator's run: the next run goes on from there, as the real card would)."""
        card = self.reader.presented
        if card is not None and self._card_path is not None:
            card.path = self._card_path
            card.save()
        self.reader.save()

    def present(self, logical_no: str | None) -> Card | None:
        """Put a virtual card on the reader's antenna."""
        if logical_no is None:
            return None
        path = self.data_dir / "cards" / f"{logical_no}.json"
        if not path.exists():
            raise UsageError(f"no virtual card {logical_no} in {path.parent}")
        return load_card(path)

    def client(self) -> OrderClient:
        if not self.http:
            raise UsageError(f"no HTTP address of the daemon: give --http URL, or run it with "
                             f"{self.data_dir} as its data directory")
        return OrderClient(self.http, self.platform, self.reader,
                           self.user_id.decode("ascii"), self.timeout, agent=self.agent)

    async def session_serial(self, reactor: Any, fresh: bool = False) -> str:
        if fresh or self.reader.session is None:
            await self.signin(reactor)
        assert self.reader.session is not None
        return self.reader.session.serial

    async def order(self, reactor: Any, amount: int, biz_serial_no: str) -> str:
        if self.reader.presented is None:
            raise UsageError("no card on the reader: give --card")
        client = self.client()
        await self.session_serial(reactor)
        try:
            login = await client.appl_login(biz_serial_no, amount)
        except APIRefused as e:
            if "not signed in" not in str(e):
                raise
            await self.session_serial(reactor, fresh=True)
            login = await client.appl_login(biz_serial_no, amount)
        print(f"APPLLogin: payment {biz_serial_no} of {amount} fen registered; PKI "
              f"{login['pki']}, serial {login['serial']}, key check {login['key']}",
              file=self.out)
        reqinfo = client.read_card(login["toreader"])
        print(f"card read: {len(reqinfo)} answers to {len(login['toreader'])} toreader "
              "commands", file=self.out)
        answer = await client.create_order(biz_serial_no, amount, login["serial"], reqinfo)
        card = self.reader.presented
        print(f"order {answer['order']} for {card.kind} card {card.logical_no}: {amount} fen",
              file=self.out)
        self.remember(str(answer["order"]), amount)
        return str(answer["order"])

    # -- recharge ---------------------------------------------------------------------------

    def balance(self) -> int | None:
        card = self.reader.presented
        if isinstance(card, CPUCard):
            return card.balance
        if isinstance(card, M1Card):
            return parse_value_block(bytes.fromhex(card.blocks.get("8", "00" * 16)))
        return None

    def _orders_path(self) -> Path:
        return self.data_dir / "terminal-orders.json"

    def remember(self, order_no: str, amount: int) -> None:
        if self.volatile:
            self._orders[order_no] = amount
            return
        path = self._orders_path()
        known = json.loads(path.read_text()) if path.exists() else {}
        known[order_no] = amount
        path.write_text(json.dumps(known, indent=1))

    def remembered(self, order_no: str) -> int | None:
        if self.volatile:
            return self._orders.get(order_no)
        path = self._orders_path()
        known = json.loads(path.read_text()) if path.exists() else {}
        value = known.get(order_no)
        return None if value is None else int(value)

    def _reader_for(self, interrupt: str | None) -> Any:
        if interrupt is None:
            return self.reader.execute
        loading = {bytes((0xBB, Ins.CPU_LOAD)), bytes((0xBB, Ins.M1_LOAD))}

        def execute(command: bytes) -> bytes:
            if command[1:3] in loading:
                if interrupt == "after-credit":
                    self.reader.execute(command)
                raise Interrupted(f"connection dropped {interrupt.replace('-', ' ')}")
            return self.reader.execute(command)

        return execute

    async def load(self, reactor: Any, order_no: str, amount: int,
                   interrupt: str | None = None) -> tuple[str, str, str, int, int]:
        if self.reader.presented is None:
            raise UsageError("no card on the reader: give --card")
        if self.reader.session is None:
            await self.signin(reactor)
        before = self.balance()
        info = bytes((0x00,)) + struct.pack(">I", amount) + encode_bcd(order_no, 10)
        signed_in = False
        for attempt in range(1, 4):
            conn = await connect(reactor, self.host, self.port, reactor, self.timeout)
            first = Request(0xDD11, self.user_id, 0x00, self.card.pki_no, info)
            try:
                result = await run_flow(conn, first, self._reader_for(interrupt), self.report)
                break
            except Interrupted:
                conn.close()
                raise
            except FlowRefused as e:
                if e.code == InfoCode.NOT_SIGNED_IN and not signed_in:
                    signed_in = True
                    await self.signin(reactor)
                elif e.code == InfoCode.SYSTEM_BUSY and attempt < 3:
                    # e.g. an earlier load of this card was read back and resolved first
                    print("platform busy: sending DD11 again", file=self.out)
                else:
                    raise
        rec = parse_record(result.last.info)
        card = self.reader.presented
        if (rec[0], rec[2]) != (order_no, card.logical_no):
            raise RecordMismatch(f"the platform's record is for order {rec[0]}, not for this "
                                 f"order on the card on the reader")
        print(f"loaded order {rec[0]}: {rec[3]} fen onto {card.kind} card {rec[2]}, balance "
              f"{before} -> {self.balance()} (record: balance after {rec[4]})", file=self.out)
        return rec

    async def recharge(self, reactor: Any, amount: int, biz: str,
                       interrupt: str | None = None) -> tuple[str, str, str, int, int]:
        order_no = await self.order(reactor, amount, biz)
        return await self.load(reactor, order_no, amount, interrupt)

    async def deposit(self, reactor: Any, op: str) -> None:
        if self.reader.presented is None:
            raise UsageError("no card on the reader: give --card")
        if self.reader.session is None:
            await self.signin(reactor)
        code = DepositOp.OPEN if op == "open" else DepositOp.CLOSE
        conn = await connect(reactor, self.host, self.port, reactor, self.timeout)
        first = Request(0xDD73, self.user_id, 0x00, self.card.pki_no,
                        self.reader.deposit_init(code))
        result = await run_flow(conn, first, self.reader.execute, self.report)
        self.reader.execute(b"\x40" + result.last.info)  # R_DEPOSIT_PROCESS
        card = self.reader.presented
        print(f"card {card.logical_no} {'opened' if code == DepositOp.OPEN else 'closed'}: "
              f"deposit flag {card.deposit_flag:02X}", file=self.out)

    async def account(self, reactor: Any) -> list[dict[str, Any]]:
        if self.reader.presented is None:
            raise UsageError("no card on the reader: give --card")
        client = self.client()
        serial = await self.session_serial(reactor)
        login_script = [step.encode() for step in IDENTIFY]
        reqinfo = client.read_card(login_script)
        try:
            answer = await client.acct_query(serial, reqinfo)
        except APIRefused as e:
            if "sign in" not in str(e):
                raise
            serial = await self.session_serial(reactor, fresh=True)
            answer = await client.acct_query(serial, reqinfo)
        records = answer.get("acctresult") or []
        card = self.reader.presented
        print(f"card {card.logical_no} ({card.kind}): account status {answer['acctstatus']}, "
              f"{answer['chargerecordnum']} orders", file=self.out)
        for r in records:
            print(f"  {r['orderseq']}  {r['ordertime']}  {r['amount']:>7} fen  step {r['step']}",
                  file=self.out)
        return list(records)

    def report(self, request: Request, response: Response) -> None:
        print(f"{header_name(request.header)} -> info {len(request.info):3d}: "
              f"{request.info.hex()}", file=self.out)
        flow = "end" if response.ends_flow else "continue"
        print(f"{header_name(response.header)} <- {flow} {describe_code(response.code)} "
              f"pki {response.pki} info {len(response.info):3d}: {response.info.hex()}",
              file=self.out)

    async def signin(self, reactor: Any) -> FlowResult:
        reader = self.reader
        reader.session = None
        conn = await connect(reactor, self.host, self.port, reactor, self.timeout)
        first = Request(0xDD01, self.user_id, 0x00, NO_PKI, b"")
        result = await run_flow(conn, first, reader.execute, self.report)
        reader.confirm_session()
        assert reader.session is not None
        print(f"signed in: PKI card {result.pki}, handshake serial {reader.session.serial}",
              file=self.out)
        return result


def load_terminal(args: argparse.Namespace) -> Terminal:
    data_dir: Path = args.data_dir
    demo_path = data_dir / "demo.json"
    demo = json.loads(demo_path.read_text()) if demo_path.exists() else {}
    term = demo.get("terminal", {})
    key_file = args.key_file or (data_dir / term["key_file"] if "key_file" in term else None)
    if key_file is None:
        raise UsageError(f"no terminal: give --key-file, or run the daemon with demo data in "
                         f"{data_dir}")
    try:
        card = CardKeyFile.load(Path(key_file))
    except KeyFileError as e:
        raise UsageError(str(e)) from None
    user_id = args.user_id.encode("ascii") if args.user_id else card.user_id
    if len(user_id) != 16:
        raise UsageError("user ID must be 16 ASCII characters")
    # the daemon's addresses: given, or as the daemon running on this data directory recorded
    # them; never a guess (another daemon may answer on a default port)
    listening_path = data_dir / "listening.json"
    try:
        recorded = json.loads(listening_path.read_text()) if listening_path.exists() else {}
    except ValueError:
        recorded = {}
    missing = (f"no running daemon recorded in {listening_path}: start it with this data "
               "directory, or give --flows HOST:PORT and --http URL")
    if args.flows:
        host, _, port = args.flows.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError("--flows is HOST:PORT")
    else:
        flows = recorded.get("flows") or {}
        if "port" not in flows:
            raise UsageError(missing)
        host, port = flows.get("host", "127.0.0.1"), str(flows["port"])
    http = args.http or ""
    address = recorded.get("http") or {}
    if not http and "port" in address:
        http = f"http://{address.get('host', '127.0.0.1')}:{address['port']}"
    http = base_url(http) if http else ""  # empty: refused when a command needs the HTTP API
    platform = args.platform or int(demo.get("platform", {}).get("platform_no", 7))
    transit = getattr(args, "card", None)
    if transit is None and demo.get("cards"):
        transit = demo["cards"][0]["logical_no"]
    return Terminal(data_dir, host, int(port), http, args.timeout, user_id, card, platform,
                    transit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lnt-terminal", description="Lingnan Tong terminal simulator",
                                epilog="exit status: 0 ok, 1 refused, 2 usage, 3 network, "
                                       "4 interrupted on purpose")
    p.add_argument("--version", action="version", version=f"lnt-terminal {lnt.__version__}")
    p.add_argument("--data-dir", type=Path, default=Path("lnt-data"),
                   help="terminal data directory (demo.json, reader state) [lnt-data]")
    p.add_argument("--flows", help="platform's flow address HOST:PORT")
    p.add_argument("--http", help="platform's HTTP API base URL")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per answer [15]")
    p.add_argument("--key-file", help="PKI card key file (default: from demo.json)")
    p.add_argument("--user-id", help="terminal user ID, 16 characters (default: the card's)")
    sub = p.add_subparsers(dest="command", required=True)
    p.add_argument("--platform", type=int, help="order API platform number [demo.json's, 7]")
    sub.add_parser("signin", help="sign in (DD01-DD08)")
    order = sub.add_parser("order", help="create a recharge order (HTTP order API)")
    order.add_argument("--amount", type=int, required=True, help="fen")
    order.add_argument("--card", help="logical number of the virtual card on the reader")
    order.add_argument("--biz-serial-no", help="third-party serial [generated]")
    account = sub.add_parser("account", help="the card's orders (AcctQueryLNT)")
    account.add_argument("--card", help="logical number of the virtual card on the reader")
    recharge = sub.add_parser("recharge", help="order and load it onto the card (DD11-DD22)")
    recharge.add_argument("--amount", type=int, required=True, help="fen")
    recharge.add_argument("--card", help="logical number of the virtual card on the reader")
    recharge.add_argument("--biz-serial-no", help="third-party serial [generated]")
    recharge.add_argument("--interrupt", choices=["before-credit", "after-credit"],
                          help="drop the connection when the load command arrives (testing)")
    resume = sub.add_parser("resume", help="settle an interrupted load of an order")
    resume.add_argument("--order", required=True, help="the 20-digit order number")
    resume.add_argument("--amount", type=int, help="fen [remembered from recharge]")
    resume.add_argument("--card", help="logical number of the virtual card on the reader")
    bench = sub.add_parser("bench", help="load generator: C terminals, N sessions in all")
    bench.add_argument("--sessions", type=int, required=True, help="sessions in all")
    bench.add_argument("--concurrency", type=int, required=True, help="terminals at once")
    bench.add_argument("--flow", choices=["recharge", "signin", "mixed"], default="recharge")
    bench.add_argument("--duration", type=float, default=300.0, help="at most, seconds [300]")
    bench.add_argument("--provision", type=Path, metavar="DAEMON-DATA-DIR",
                       help="register the generator's terminals and cards with lnt-admin in the "
                            "daemon's data directory (on this machine)")
    bench.add_argument("--ledger", metavar="DSN",
                       help="the daemon's ledger, for lnt-admin, when it is not the data "
                            "directory's SQLite file (a postgresql:// DSN)")
    card = sub.add_parser("card", help="open or close the card online (DD73/DD74)")
    card.add_argument("operation", choices=["open", "close"])
    card.add_argument("--card", help="logical number of the virtual card on the reader")
    return p


def bench(args: argparse.Namespace) -> int:
    """C{lnt-terminal bench}: provision (or explain), run, print the figures."""
    from lnt.sim import loadgen

    if not 0 < args.concurrency <= 1000 or not 0 < args.sessions <= 1_000_000:
        print("lnt-terminal: --concurrency must be 1..1000 and --sessions 1..1000000",
              file=sys.stderr)
        return EXIT_USAGE
    if args.provision is None:
        print("lnt-terminal: bench needs terminals and cards of its own: run it on the daemon's "
              "machine with --provision DAEMON-DATA-DIR (it registers them with lnt-admin)",
              file=sys.stderr)
        return EXIT_USAGE
    listening_path = args.provision / "listening.json"
    if not listening_path.exists():
        print(f"lnt-terminal: no running daemon in {args.provision} (no listening.json)",
              file=sys.stderr)
        return EXIT_USAGE
    listening = json.loads(listening_path.read_text())
    host = listening["flows"].get("host", "127.0.0.1")
    port = int(listening["flows"]["port"])
    http = args.http or f"http://{listening['http'].get('host', '127.0.0.1')}:" \
        f"{listening['http']['port']}"
    try:
        http = base_url(http)
    except UsageError as e:
        print(f"lnt-terminal: {e}", file=sys.stderr)
        return EXIT_USAGE
    provisioned = loadgen.provision(args.provision, args.data_dir / "loadgen",
                                    args.concurrency, args.ledger)
    terminals = loadgen.terminals_for(provisioned, host, port, http, args.timeout,
                                      args.platform or 7)
    stats = loadgen.Stats()
    pid = int(listening.get("pid", 0))

    async def go(reactor: Any) -> None:
        daemon_before = loadgen.cpu_seconds(pid) if pid else None
        own_before = time.process_time()
        wall = await loadgen.run(reactor, terminals, args.sessions, args.flow, args.duration,
                                 stats)
        daemon_after = loadgen.cpu_seconds(pid) if pid else None
        daemon_cpu = None if daemon_before is None or daemon_after is None else \
            daemon_after - daemon_before
        loadgen.report(stats, wall, daemon_cpu, time.process_time() - own_before, print)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    except SystemExit:
        pass
    return EXIT_OK if not stats.errors else EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return bench(args)
    try:
        terminal = load_terminal(args)
    except UsageError as e:
        print(f"lnt-terminal: {e}", file=sys.stderr)
        return EXIT_USAGE
    outcome: list[int] = []

    async def run(reactor: Any) -> None:
        try:
            if args.command == "signin":
                await terminal.signin(reactor)
            elif args.command == "order":
                biz = args.biz_serial_no or f"SIM{int(time.time() * 1000)}{os.getpid() % 1000:03d}"
                await terminal.order(reactor, args.amount, biz)
            elif args.command == "account":
                await terminal.account(reactor)
            elif args.command == "recharge":
                biz = args.biz_serial_no or f"SIM{int(time.time() * 1000)}{os.getpid() % 1000:03d}"
                await terminal.recharge(reactor, args.amount, biz, args.interrupt)
            elif args.command == "resume":
                if not (len(args.order) == 20 and args.order.isdigit()):
                    raise UsageError("--order is the 20-digit order number")
                amount = args.amount or terminal.remembered(args.order)
                if amount is None:
                    raise UsageError(f"amount of order {args.order} unknown: give --amount")
                await terminal.load(reactor, args.order, amount)
            elif args.command == "card":
                await terminal.deposit(reactor, args.operation)
            outcome.append(EXIT_OK)
        except Interrupted as e:
            print(f"lnt-terminal: {e}", file=sys.stderr)
            outcome.append(EXIT_INTERRUPTED)
        except (FlowRefused, APIRefused, RecordMismatch) as e:
            print(f"refused: {e}", file=sys.stderr)
            hint = REFUSAL_HINTS.get(e.code) if isinstance(e, FlowRefused) else None
            if hint:
                print(f"  ({hint})", file=sys.stderr)
            outcome.append(EXIT_REFUSED)
        except UsageError as e:
            print(f"lnt-terminal: {e}", file=sys.stderr)
            outcome.append(EXIT_USAGE)
        except APIBroken as e:
            print(f"lnt-terminal: {e}", file=sys.stderr)
            outcome.append(EXIT_NETWORK)
        except (TerminalError, ConnectError, ConnectionError, OSError) as e:
            print(f"lnt-terminal: {e}", file=sys.stderr)
            outcome.append(EXIT_NETWORK)
        except Exception as e:
            print(f"lnt-terminal: {type(e).__name__}: {e}", file=sys.stderr)
            outcome.append(EXIT_NETWORK)

    def start(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(run(reactor))

    try:
        task.react(start)
    except SystemExit:
        pass
    return outcome[0] if outcome else EXIT_NETWORK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
