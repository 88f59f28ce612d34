"""
The fence around the notifier's outbound requests (L{lnt.domain.netfence} says where they may
go): a notify_url's host is resolved and every address checked when the merchant submits it,
and again when the notifier connects, which then connects to the very address it checked (a
name that resolves to a public address at submission and to 127.0.0.1 a minute later, DNS
rebinding, is refused at connect time). Redirects are not followed (the notifier says so to
treq), so a public endpoint cannot bounce the request inwards either.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from lnt.domain.netfence import Fenced, Network, check_address, literal_address, url_host


class NotifyFence:
    def __init__(self, reactor: Any, allow: tuple[Network, ...], timeout: float) -> None:
        self.reactor = reactor
        self.allow = allow
        self.timeout = timeout

    def resolve(self, host: str, port: int) -> Deferred[list[str]]:
        """Every address of C{host} (one, when it is an address already)."""
        literal = literal_address(host)
        if literal is not None:
            return succeed([str(literal)])
        d: Deferred[list[str]] = Deferred()
        found: list[str] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                found.append(str(address.host))

            def resolutionComplete(self) -> None:
                if not d.called:
                    d.callback(found)

        self.reactor.nameResolver.resolveHostName(Receiver(), host, port)
        return d.addTimeout(self.timeout, self.reactor)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The host's addresses, all of them allowed; L{Fenced} otherwise."""
        try:
            found = await self.resolve(host, port)
        except Exception:
            raise Fenced(f"notify_url host {host} did not resolve in time") from None
        if not found:
            raise Fenced(f"notify_url host {host} does not resolve")
        for address in found:
            check_address(host, address, self.allow)
        return found

    def check(self, url: str) -> Deferred[None]:
        """At submission: the URL's host resolves to allowed addresses only."""

        async def run() -> None:
            host, port = url_host(url)
            await self.addresses(host, port)

        return Deferred.fromCoroutine(run())

    def endpoints(self) -> FencedEndpoints:
        return FencedEndpoints(self)


@implementer(IAgentEndpointFactory)
class FencedEndpoints:
    """For C{Agent.usingEndpointFactory}: every connection goes to a checked address."""

    def __init__(self, fence: NotifyFence) -> None:
        self.fence = fence

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return _FencedEndpoint(self.fence, uri)


@implementer(IStreamClientEndpoint)
class _FencedEndpoint:
    def __init__(self, fence: NotifyFence, uri: URI) -> None:
        self.fence = fence
        self.uri = uri

    def connect(self, factory: Any) -> Deferred[Any]:
        async def run() -> Any:
            host = self.uri.host.decode("idna") if isinstance(self.uri.host, bytes) \
                else str(self.uri.host)
            host = host.strip("[]")
            address = (await self.fence.addresses(host, self.uri.port))[0]
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint: Any = kind(self.fence.reactor, address, self.uri.port,
                                 timeout=self.fence.timeout)
            if self.uri.scheme == b"https":
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
            return await endpoint.connect(factory)

        return Deferred.fromCoroutine(run())
