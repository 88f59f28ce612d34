"""
sd_notify(3) in a few lines: tell systemd (Type=notify) when the daemon is ready and when it
is stopping. Does nothing when not started by systemd (no C{NOTIFY_SOCKET}).
"""

from __future__ import annotations

import os
import socket


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send C{state} (e.g. C{"READY=1"}); C{True} if there was a socket to send it to."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
            s.sendall(state.encode())
        except OSError:
            return False
    return True
