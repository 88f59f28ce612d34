"""
The terminal's client of the order API: builds enveloped requests, runs the platform's
C{toreader} script on the card in the reader, signs C{CreateAutoLoadOrder} with the PKI card's
key, and opens the answers. Uses treq, as any Twisted HTTP client would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.internet.interfaces import IReactorTime

from lnt.crypto import envelope
from lnt.crypto.ec import sign
from lnt.messages import cardscript
from lnt.sim.reader import Reader

VERSION = "v2"


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

    def _timestamp(self) -> int:
        return int((self.clock.seconds() if self.clock else time.time()) * 1000)

    def _common(self, timestamp: int) -> dict[str, Any]:
        return {"timestamp": timestamp, "version": VERSION, "platformRaw": self.platform}

    async def call(self, endpoint: str, message: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        headers: dict[bytes | str, bytes | str] = {"content-type": "application/json"}
        response = await treq.post(f"{self.base_url}/{endpoint}", data=body, headers=headers,
                                   timeout=self.timeout)
        raw = await treq.content(response)
        if response.code != 200:
            text = raw[:200].decode(errors="replace")
            raise APIBroken(f"/{endpoint}: HTTP {response.code}: {text}")
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
