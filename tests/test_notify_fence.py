"""
Outbound requests are fenced (issue 13, finding 3): notify_urls resolve to public addresses
only, unless the operator allows networks; checked at submission and again at connect time
(DNS rebinding); and a daemon without --notify-allow refuses loopback, private and link-local
notify_urls at submission.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.client import URI

from lnt.domain.netfence import (
    Fenced,
    address_allowed,
    check_address,
    parse_networks,
    url_host,
)
from lnt.jobs.fence import NotifyFence
from lnt.storage.database import result_of


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1",
    "::", "ff02::1"])
def test_inner_addresses_are_refused(address: str) -> None:
    assert not address_allowed(address)
    with pytest.raises(Fenced, match="not a public address"):
        check_address("merchant.example", address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_allowed(address)


def test_allowed_networks() -> None:
    allow = parse_networks("127.0.0.0/8, 10.1.0.0/16")
    assert address_allowed("127.0.0.1", allow) and address_allowed("10.1.9.9", allow)
    assert address_allowed("::ffff:127.0.0.1", allow)
    assert not address_allowed("10.2.0.1", allow) and not address_allowed("::1", allow)
    assert parse_networks("none") == () and parse_networks("") == ()
    with pytest.raises(Fenced, match="not a network"):
        parse_networks("127.0.0.0/8 localhost")


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://x.example/", "http:// or https://"), ("http:///nohost", "http:// or https://"),
    ("http://user:pw@x.example/", "user name or password"), ("http://x.example:99999/", "URL")])
def test_urls_that_are_refused_before_resolving(url: str, why: str) -> None:
    with pytest.raises(Fenced, match=why):
        url_host(url)


class FakeResolver:
    """Answers each resolution with the next address of its script (rebinding)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    def resolveHostName(self, receiver: Any, host: str, port: int = 0) -> Any:
        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", self.answers.pop(0), port))
        receiver.resolutionComplete()
        return None


class FakeReactor(Clock):
    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.nameResolver = FakeResolver(answers)
        self.connected: list[tuple[str, int]] = []

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> Any:
        self.connected.append((host, port))
        return None


def test_dns_rebinding_is_caught_at_connect_time() -> None:
    reactor = FakeReactor(["93.184.216.34", "127.0.0.1"])
    fence = NotifyFence(reactor, (), 5.0)
    # at submission the name is public
    assert result_of(fence.check("http://merchant.example/notify")) is None
    # at connect time it answers loopback: no connection is made
    endpoint = fence.endpoints().endpointForURI(URI.fromBytes(
        b"http://merchant.example/notify"))
    d: Deferred[Any] = endpoint.connect(Factory.forProtocol(Protocol))
    with pytest.raises(Fenced, match=r"127\.0\.0\.1, not a public address"):
        result_of(d)
    assert reactor.connected == []


def test_a_checked_name_connects_to_the_address_it_checked() -> None:
    reactor = FakeReactor(["93.184.216.34"])
    fence = NotifyFence(reactor, (), 5.0)
    endpoint = fence.endpoints().endpointForURI(URI.fromBytes(b"http://merchant.example:8080/"))
    endpoint.connect(Factory.forProtocol(Protocol))
    assert reactor.connected == [("93.184.216.34", 8080)]


def test_a_daemon_without_notify_allow_refuses_inner_notify_urls(tmp_path: Any) -> None:
    from tests.support import Daemon
    from tests.test_consignment import Merchant

    d = Daemon(tmp_path / "data", ["--notify-allow", "none"]).start()
    try:
        shop = Merchant(d)
        v = shop.vouchers[0]
        for url, why in (("http://127.0.0.1:9/n", "127.0.0.1, not a public address"),
                         ("http://localhost:9/n", "not a public address"),
                         ("http://169.254.169.254/latest/meta-data", "not a public address"),
                         ("http://[::1]:9/n", "::1, not a public address"),
                         ("http://10.0.0.1/n", "10.0.0.1, not a public address")):
            answer = shop.tocard(f"F{len(url)}", v["cardNumber"], v["cardPassword"],
                                 int(v["faceValue"]), url)
            assert answer["code"] == -1 and why in answer["msg"], (url, answer)
        # nothing was taken: the voucher is still unredeemed and usable
        ok = shop.tocard("FOK", v["cardNumber"], v["cardPassword"], int(v["faceValue"]))
        assert ok["code"] == 1, ok
    finally:
        d.stop()
