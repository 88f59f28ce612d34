"""
C{lnt-terminal}: the terminal simulator's command line.

    lnt-terminal --data-dir DIR [--flows HOST:PORT] [--http URL] [--timeout S] COMMAND

    signin      run the sign-in flow (DD01-DD08) and keep the session in the reader

The terminal's identity (user ID, PKI card key file) comes from C{DIR/demo.json} unless
C{--user-id}/C{--key-file} are given; its reader keeps its state in C{DIR/reader-state.json}.
Without C{--flows}, the address the daemon recorded in C{DIR/listening.json} is used, else
127.0.0.1:9000.

Each stage is printed as it happens: header, flow indicator and code with its meaning, info
length and hex. Exit status: 0 success; 1 the platform refused (its info code is printed);
2 usage or configuration error; 3 network error or timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError

from lnt.backends.keys import CardKeyFile, KeyFileError
from lnt.sim.reader import Reader
from lnt.sim.terminal import FlowRefused, FlowResult, TerminalError, connect, run_flow
from lnt.wire import NO_PKI, Request, Response, describe_code, header_name

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NETWORK = 0, 1, 2, 3


class UsageError(Exception):
    pass


@dataclass
class Terminal:
    data_dir: Path
    host: str
    port: int
    http: str
    timeout: float
    user_id: bytes
    card: CardKeyFile
    out: Any = sys.stdout

    @property
    def reader(self) -> Reader:
        return Reader(self.card, self.data_dir / "reader-state.json")

    def report(self, request: Request, response: Response) -> None:
        print(f"{header_name(request.header)} -> info {len(request.info):3d}: "
              f"{request.info.hex()}", file=self.out)
        flow = "end" if response.ends_flow else "continue"
        print(f"{header_name(response.header)} <- {flow} {describe_code(response.code)} "
              f"pki {response.pki} info {len(response.info):3d}: {response.info.hex()}",
              file=self.out)

    async def signin(self, reactor: Any) -> FlowResult:
        reader = self.reader
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
    if args.flows:
        host, _, port = args.flows.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError("--flows is HOST:PORT")
    else:
        host, port = "127.0.0.1", "9000"
        listening = data_dir / "listening.json"
        if listening.exists():
            flows = json.loads(listening.read_text()).get("flows") or {}
            if "port" in flows:
                host, port = flows.get("host", host), str(flows["port"])
    http = args.http or "http://127.0.0.1:8080"
    return Terminal(data_dir, host, int(port), http, args.timeout, user_id, card)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lnt-terminal", description="Lingnan Tong terminal simulator",
                                epilog="exit status: 0 ok, 1 refused, 2 usage, 3 network")
    p.add_argument("--data-dir", type=Path, default=Path("lnt-data"),
                   help="terminal data directory (demo.json, reader state) [lnt-data]")
    p.add_argument("--flows", help="platform's flow address HOST:PORT")
    p.add_argument("--http", help="platform's HTTP API base URL")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per answer [15]")
    p.add_argument("--key-file", help="PKI card key file (default: from demo.json)")
    p.add_argument("--user-id", help="terminal user ID, 16 characters (default: the card's)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("signin", help="sign in (DD01-DD08)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
            outcome.append(EXIT_OK)
        except FlowRefused as e:
            print(f"refused: {e}", file=sys.stderr)
            outcome.append(EXIT_REFUSED)
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
