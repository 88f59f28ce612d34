"""
Helpers for the tests: frames, a blocking DD client, and real daemon processes on loopback.

A L{Daemon} is C{python -m twisted -n lnt-recharge} in a subprocess, on ports the OS chooses
(C{tcp:0}); it reports them in C{<data-dir>/listening.json}, which L{Daemon.start} waits for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnt.wire import NO_PKI, FrameDecoder, Request, Response

ROOT = Path(__file__).resolve().parent.parent
#: twistd of the interpreter running the tests
TWISTD = [str(Path(sys.executable).with_name("twistd"))]
USER = b"terminal-0000001"
START_TIMEOUT = 60.0


def request(header: int, info: bytes = b"", *, user: bytes = USER, step: int | None = None,
            pki: int = NO_PKI) -> bytes:
    if step is None:
        step = 0 if header in (0xDD01, 0xDD11, 0xDD73) else 1
    return Request(header, user, step, pki, info).encode()


def read_responses(sock: socket.socket, timeout: float = 10.0) -> tuple[list[Response], bool]:
    """Every response until the peer closes (or C{timeout}); (responses, closed by peer)."""
    sock.settimeout(timeout)
    decoder = FrameDecoder(Response)
    out: list[Response] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return out, False
        if not data:
            return out, True
        out.extend(decoder.feed(data))
    return out, False


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[list[Response], bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_responses(sock, timeout)


def one_response(sock: socket.socket, timeout: float = 10.0) -> Response:
    sock.settimeout(timeout)
    decoder = FrameDecoder(Response)
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed before a response")
        frames = list(decoder.feed(data))
        if frames:
            return frames[0]


@dataclass
class Daemon:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    listening: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    def start(self, wait: bool = True) -> Daemon:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "listening.json").unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = [
            *TWISTD, "--nodaemon", "--pidfile=",
            "--logfile=-", "lnt-recharge",
            "--data-dir", str(self.data_dir),
            "--flows", "tcp:0:interface=127.0.0.1",
            "--http", "tcp:0:interface=127.0.0.1",
            # the tests' merchants listen on loopback (a test of the fence gives "none" later)
            "--notify-allow", "127.0.0.0/8",
            *self.args,
        ]
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(self.data_dir.parent))
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        path = self.data_dir / "listening.json"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if path.exists():
                try:
                    self.listening = json.loads(path.read_text())
                    return
                except ValueError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready in {START_TIMEOUT}s:\n{self.log()}")

    @property
    def flows_port(self) -> int:
        return int(self.listening["flows"]["port"])

    @property
    def http_port(self) -> int:
        return int(self.listening["http"]["port"])

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
