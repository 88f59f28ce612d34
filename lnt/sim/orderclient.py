"""
The terminal's client of the order API: builds enveloped requests, runs the platform's
C{toreader} script on the card in the reader, signs C{CreateAutoLoadOrder} with the PKI card's
key, and opens the answers. Uses twisted.web's L{Agent}: one per client, or one shared by many
clients with a pool of persistent connections (the load generator's terminals, as an app's
backend keeps its connections to the platform open; a URL parsed once, no per-call agent).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from lnt.crypto import envelope
from lnt.crypto.ec import sign
from lnt.messages import cardscript
from lnt.sim.reader import Reader

VERSION = "v2"
_JSON = Headers({b"content-type": [b"application/json"]})
#: an answer longer than this is not the platform's
MAX_ANSWER = 1024 * 1024


class AnswerTooLong(Exception):
    pass


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory (twisted.web's FileBodyProducer would schedule a
    cooperative task for it)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Collect(protocol.Protocol):
    """Collects a response body up to L{MAX_ANSWER} bytes; cancelling stops the transfer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda d: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER:
            if not self.done.called:
                self.done.errback(AnswerTooLong(f"answer longer than {MAX_ANSWER} bytes"))
            self._stop()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


async def post_json(agent: IAgent, url: bytes, body: bytes) -> tuple[int, bytes]:
    """POST a JSON body; the status code and the answer (at most L{MAX_ANSWER} bytes)."""
    response = await agent.request(b"POST", url, _JSON, BytesBody(body))
    collect = _Collect()
    response.deliverBody(collect)
    return response.code, await collect.done


def shared_agent(reactor: Any, connections: int) -> IAgent:
    """An agent whose pool keeps up to C{connections} connections open per host: for many
    clients that call the same platform at once."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = connections
    return Agent(reactor, pool=pool)


class APIRefused(Exception):
    """The platform answered status 0; the message is its errmsg."""


class APIBroken(Exception):
    """Not an API answer: HTTP error, not JSON, bad mac."""


@dataclass
class OrderClient:
    base_url: str
    platform: int
    reader: Reader
    user_id: str
    timeout: float = 15.0
    clock: IReactorTime | None = None
    #: (request, answer) of every call, for printing
    log: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: the HTTP agent (L{shared_agent}); by default one of this client's own, no connection
    #: kept open after a call
    agent: IAgent | None = None

    def _timestamp(self) -> int:
        return int((self.clock.seconds() if self.clock else time.time()) * 1000)

    def _common(self, timestamp: int) -> dict[str, Any]:
        return {"timestamp": timestamp, "version": VERSION, "platformRaw": self.platform}

    async def call(self, endpoint: str, message: dict[str, Any]) -> dict[str, Any]:
        from twisted.internet import reactor

        if self.agent is None:
            self.agent = Agent(reactor)
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        url = f"{self.base_url}/{endpoint}".encode("ascii")
        posted = defer.Deferred.fromCoroutine(post_json(self.agent, url, body))
        try:
            code, raw = await posted.addTimeout(self.timeout, self.clock or reactor)
        except defer.TimeoutError:
            raise APIBroken(f"/{endpoint}: no answer within {self.timeout:g} s") from None
        except (error.ConnectError, ResponseFailed, ConnectionError, AnswerTooLong) as e:
            raise APIBroken(f"/{endpoint}: {type(e).__name__}: {e}") from None
        if code != 200:
            text = raw[:200].decode(errors="replace")
            raise APIBroken(f"/{endpoint}: HTTP {code}: {text}")
        try:
            pairs, secret = envelope.open_message(raw)
        except envelope.EnvelopeError as e:
            raise APIBroken(f"/{endpoint}: answer does not open: {e}") from None
        answer = {**dict(pairs), **secret}
        answer.pop("data", None)
        self.log.append((endpoint, message, answer))
        if answer.get("status") != 1:
            raise APIRefused(str(answer.get("errmsg")))
        return answer

    def _userinfo(self) -> str:
        return json.dumps({"userid": self.user_id}, separators=(",", ":"))

    async def appl_login(self, biz_serial_no: str, money: int) -> dict[str, Any]:
        ts = self._timestamp()
        secret = {
            "platform": self.platform, "userinfo": self._userinfo(), "type": 5,
            "biz_serial_no": biz_serial_no, "money": money,
            "package_name": "lnt.sim", "package_version_name": "1.0",
            "package_version_code": "1", "mobile_imei": "000000000000000",
            "mobile_vendor": "lnt", "mobile_model": "simulator", "ip": "127.0.0.1",
        }
        return await self.call("APPLLogin", envelope.seal(self._common(ts), secret))

    def read_card(self, toreader: list[str]) -> list[str]:
        steps = [cardscript.Step.decode(s) for s in toreader]
        return [a.encode() for a in cardscript.run(steps, self.reader.transmit)]

    async def create_order(self, biz_serial_no: str, amount: int, serial: str,
                           reqinfo: list[str]) -> dict[str, Any]:
        ts = self._timestamp()
        card = self.reader.card
        clear = {**self._common(ts), "crt_version": card.key_version,
                 "biz_serial_no": biz_serial_no}
        secret = {"platform": self.platform, "userinfo": self._userinfo(),
                  "pki": f"{card.pki_no:08d}", "chargeamt": amount, "chargetype": 0,
                  "transtype": 1, "serial": serial, "step": 0, "reqinfo": reqinfo}
        data = envelope.encrypt(ts, envelope.compact(secret).encode())
        signed = f"{ts}{VERSION}{self.platform}{card.key_version}{data}".encode()
        message = {**clear, "data": data, "Sign": sign(card.key, signed).hex()}
        message["mac"] = envelope.mac(message)
        return await self.call("CreateAutoLoadOrder", message)

    async def acct_query(self, serial: str, reqinfo: list[str], qrycondition: str = "cardnum",
                         **filters: str) -> dict[str, Any]:
        ts = self._timestamp()
        secret: dict[str, Any] = {"platform": self.platform, "userinfo": self._userinfo(),
                                  "pki": f"{self.reader.card.pki_no:08d}", "serial": serial,
                                  "step": 0, "reqinfo": reqinfo, "qrycondition": qrycondition}
        secret.update(filters)
        return await self.call("AcctQueryLNT", envelope.seal(self._common(ts), secret))
