"""
Where the platform's outbound requests (merchant notifications) may go: public addresses only,
unless the operator allows named networks (C{--notify-allow 127.0.0.0/8} for the demo and the
tests). Loopback, private, link-local (cloud metadata at 169.254.169.254), shared, multicast,
reserved and unspecified addresses are refused: a merchant's notify_url must not turn the
daemon into a tool for reaching what only the daemon's host can reach. Pure: the resolving and
connecting is the notifier's (lnt/jobs/fence.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Fenced(ValueError):
    """The URL or address is not one the platform sends to; the message says why."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """C{"127.0.0.0/8, 10.1.0.0/16"} (or C{"none"}, or empty) as networks."""
    out = []
    for part in text.replace(",", " ").split():
        if part.lower() == "none":
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise Fenced(f"{part!r} is not a network (e.g. 127.0.0.0/8)") from None
    return tuple(out)


def address_allowed(address: str | Address, allow: Iterable[Network] = ()) -> bool:
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    if any(ip in net for net in allow if net.version == ip.version):
        return True
    return ip.is_global and not ip.is_multicast


def check_address(host: str, address: str, allow: Iterable[Network] = ()) -> None:
    if not address_allowed(address, allow):
        raise Fenced(f"notify_url host {host} is {address}, not a public address")


def url_host(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; L{Fenced} for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Fenced("notify_url is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Fenced("notify_url must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise Fenced("notify_url must not carry a user name or password")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def literal_address(host: str) -> Address | None:
    """The host as an IP address when it is one (C{[::1]} without brackets), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
