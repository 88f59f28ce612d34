"""
Both HTTP APIs in process: the real twisted.web resources over the real SQL stores (in-memory
SQLite, synchronous), driven with treq's StubTreq and a Clock; no daemon, no socket, no sleep.
The same APIs are driven over real sockets against a daemon in test_orderapi.py and
test_consignment.py.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from lnt.crypto import envelope
from lnt.crypto.consignsign import make_sign
from lnt.crypto.ec import sign
from lnt.domain.records import IssuedCard, PKICard, Platform
from lnt.jobs.processor import Processor
from lnt.keyfiles import CardKeyFile
from lnt.messages import cardscript
from lnt.sim.virtualcards import CPUCard
from lnt.storage.consignments import SQLConsignments
from lnt.storage.database import result_of
from lnt.storage.vouchers import VoucherIssuer
from lnt.web import consignapi, orderapi
from lnt.web.consignapi import ConsignmentAPI
from lnt.web.json import Root
from lnt.web.orderapi import OrderAPI
from tests.fakes import SyncBackends

USER = "TERMINAL-0000001"
SERIAL = "0000000000000042"
TIMEOUT = 10.0


class HangingLedger:
    """The real store, except that the calls named in C{hang} never answer (provides the
    store's interface by delegation)."""

    def __init__(self, ledger: Any, hang: set[str]) -> None:
        self._ledger = ledger
        self._hang = hang
        #: the store's methods called, in order (each is one transaction)
        self.called: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.called.append(name)
        if name in self._hang:
            return lambda *a, **kw: Deferred()
        return getattr(self._ledger, name)


class Site:
    def __init__(self, hang: set[str] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.b = SyncBackends()
        ledger = self.b.ledger
        result_of(ledger.add_platform(Platform(7, "test")))
        self.key = CardKeyFile.generate(70000472, 1, USER.encode(),
                                        self.b.pki.platform_public_key())
        result_of(self.b.pki.register(PKICard(70000472, USER.encode(), self.key.public_key, 1)))
        result_of(ledger.open_session(70000472, USER.encode(), SERIAL, b"k" * 16, 1,
                                      self.now_ms(), 3_600_000))
        self.card = CPUCard.issue("5100000000000001", bytes(16), bytes(16), 1000)
        result_of(ledger.register_card(IssuedCard("5100000000000001", self.card_kind(),
                                                  self.card.physical.hex()), 0))
        self.api_ledger = HangingLedger(ledger, hang or set())
        api_ledger: Any = self.api_ledger
        root = Root()
        orderapi.install(root, OrderAPI(api_ledger, self.clock, TIMEOUT, 300))
        self.store = SQLConsignments(self.b.db, self.b.keys.sealer())
        issuer = VoucherIssuer(self.b.db, self.b.keys.storage_key)
        processor = Processor(self.store, issuer, self.clock, lambda: None, TIMEOUT)
        store: Any = HangingLedger(self.store, hang or set())
        consignapi.install(root, ConsignmentAPI(store, api_ledger, processor, self.clock,
                                                TIMEOUT, 300))
        # StubTreq builds its methods at run time (treq's own stubs do not declare them)
        self.http: Any = StubTreq(root)

    @staticmethod
    def card_kind() -> Any:
        from lnt.domain.records import CardKind

        return CardKind.CPU

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def request(self, path: str, body: bytes, content_type: str) -> Deferred[Any]:
        d: Deferred[Any] = self.http.post(f"http://platform/{path}", data=body,
                                          headers={"content-type": content_type})
        return d

    def answer(self, d: Deferred[Any]) -> tuple[int, dict[str, Any]]:
        self.http.flush()
        response = result_of(d)
        body = self.http.content(response)
        self.http.flush()
        return int(response.code), json.loads(result_of(body))

    # -- the order API ------------------------------------------------------------------------

    def order_call(self, endpoint: str, clear: dict[str, Any], secret: dict[str, Any]
                   ) -> Deferred[Any]:
        ts = self.now_ms()
        message: dict[str, Any] = {"timestamp": ts, **clear}
        message["data"] = envelope.encrypt(ts, envelope.compact(secret).encode())
        if endpoint == "CreateAutoLoadOrder":
            signed = (f"{ts}{message['version']}{message['platformRaw']}"
                      f"{message['crt_version']}{message['data']}")
            message["Sign"] = sign(self.key.key, signed.encode()).hex()
        message["mac"] = envelope.mac(message)
        return self.request(endpoint, json.dumps(message, separators=(",", ":")).encode(),
                            "application/json")

    def opened(self, d: Deferred[Any]) -> dict[str, Any]:
        code, body = self.answer(d)
        assert code == 200, body
        pairs, secret = envelope.open_message(json.dumps(body, separators=(",", ":"),
                                                         ensure_ascii=False).encode())
        return {**dict(pairs), **secret}

    def login(self, biz: str, money: int) -> Deferred[Any]:
        return self.order_call("APPLLogin", {"version": "v2", "platformRaw": 7}, {
            "platform": 7, "userinfo": json.dumps({"userid": USER}), "type": 5,
            "biz_serial_no": biz, "money": money, "package_name": "t",
            "package_version_name": "1", "package_version_code": "1", "mobile_imei": "0",
            "mobile_vendor": "t", "mobile_model": "t", "ip": "127.0.0.1"})

    def create(self, biz: str, amount: int) -> Deferred[Any]:
        reqinfo = [a.encode() for a in cardscript.run(cardscript.IDENTIFY, self.card.apdu)]
        return self.order_call("CreateAutoLoadOrder", {
            "version": "v2", "platformRaw": 7, "crt_version": 1, "biz_serial_no": biz}, {
            "platform": 7, "userinfo": json.dumps({"userid": USER}), "chargeamt": amount,
            "chargetype": 0, "transtype": 1, "serial": SERIAL, "step": 0, "reqinfo": reqinfo})

    # -- the consignment API ------------------------------------------------------------------

    def merchant_call(self, endpoint: str, fields: dict[str, str], md5: str) -> Deferred[Any]:
        fields = {"customerId": "10001", "timestamp": str(int(self.clock.seconds())), **fields}
        fields["sign"] = make_sign(fields, md5)
        return self.request(endpoint, urllib.parse.urlencode(fields).encode(),
                            "application/x-www-form-urlencoded")


def test_order_api_login_and_order() -> None:
    site = Site()
    login = site.opened(site.login("B1", 500))
    assert (login["status"], login["serial"]) == (1, SERIAL)
    order = site.opened(site.create("B1", 500))
    assert order["status"] == 1 and len(order["order"]) == 20
    # each call is one ledger transaction: its checks and its write together
    assert site.api_ledger.called == ["register_admitted_payment", "create_admitted_order"]
    assert result_of(site.b.ledger.check()) == []


def test_order_api_refusal_keeps_the_payment_visible() -> None:
    site = Site()
    assert site.opened(site.login("B2", 99_500))["status"] == 1
    refused = site.opened(site.create("B2", 99_500))
    assert refused["status"] == 0 and "exceeds the card limit" in refused["errmsg"]
    [risk] = result_of(site.b.ledger.money_at_risk(site.now_ms()))
    assert (risk.what, risk.reference) == ("payment without order", "7:B2")


def test_order_api_answers_busy_when_the_ledger_hangs() -> None:
    site = Site(hang={"register_admitted_payment"})
    d = site.login("B3", 500)
    site.http.flush()
    site.clock.advance(TIMEOUT + 0.1)  # the ledger never answers: only the timeout can
    answer = site.opened(d)
    assert answer["status"] == 0 and "system busy" in answer["errmsg"]


def test_order_api_busy_ledger_is_no_refusal_of_the_payment() -> None:
    """An order the ledger did not answer for in time is "system busy" (repeat it), not a
    refusal: the payment stays awaiting its order, with no refusal noted on it."""
    site = Site(hang={"create_admitted_order"})
    assert site.opened(site.login("B4", 500))["status"] == 1
    d = site.create("B4", 500)
    site.http.flush()
    site.clock.advance(TIMEOUT + 0.1)
    answer = site.opened(d)
    assert answer["status"] == 0 and "system busy" in answer["errmsg"]
    assert "note_payment_refusal" not in site.api_ledger.called
    [risk] = result_of(site.b.ledger.money_at_risk(site.now_ms()))
    assert (risk.what, risk.reference, risk.note) == ("payment without order", "7:B4",
                                                       "no order made yet")


def test_order_api_http_errors() -> None:
    site = Site()
    code, body = site.answer(site.http.get("http://platform/APPLLogin"))
    assert code == 405 and "POST" in json.dumps(body)
    code, body = site.answer(site.request("NoSuchEndpoint", b"{}", "application/json"))
    assert code == 404
    answer = site.opened(site.request("APPLLogin", b"[1,", "application/json"))
    assert answer["status"] == 0


def test_consignment_api_balance_and_refused_top_up() -> None:
    site = Site()
    merchant = result_of(site.store.add_merchant("10001", {"P": 9500}, 0))
    code, body = site.answer(site.merchant_call("v2_queryBalance", {}, merchant.md5_key))
    assert code == 200 and body["data"]["balance"] == 0
    code, body = site.answer(site.merchant_call("v2_queryBuy", {
        "orderId": "T1", "amount": "100", "account": "5100000000000099"}, merchant.md5_key))
    assert body["code"] == -1 and "not issued" in body["msg"]
    code, body = site.answer(site.merchant_call("v2_queryBalance", {}, "wrong" * 6))
    assert body["code"] == -1


def test_consignment_api_answers_busy_when_the_store_hangs() -> None:
    site = Site(hang={"balance"})
    merchant = result_of(site.store.add_merchant("10001", {"P": 9500}, 0))
    d = site.merchant_call("v2_queryBalance", {}, merchant.md5_key)
    site.http.flush()
    site.clock.advance(TIMEOUT + 0.1)  # the store never answers: only the timeout can
    _, body = site.answer(d)
    assert body["code"] == -1 and "busy" in body["msg"]


def test_each_order_api_request_dataclass_names_exactly_its_endpoints_fields() -> None:
    from dataclasses import fields

    from lnt.web.orderapi import (
        ACCT_QUERY,
        APPL_LOGIN,
        CREATE_ORDER,
        AcctQueryRequest,
        ApplLoginRequest,
        CreateOrderRequest,
        _snake,
    )

    for spec, cls in ((APPL_LOGIN, ApplLoginRequest), (ACCT_QUERY, AcctQueryRequest),
                      (CREATE_ORDER, CreateOrderRequest)):
        assert {_snake(f.name) for f in spec} == {f.name for f in fields(cls)}, cls.__name__
        optional = {_snake(f.name) for f in spec if not f.required}
        assert optional == {f.name for f in fields(cls) if f.default is None}, cls.__name__


def test_health_live_and_ready() -> None:
    from lnt.web.health import Health

    class Broken:
        def health(self, now_ms: int) -> Deferred[dict[str, object]]:
            from twisted.internet import defer

            return defer.fail(sqlite3_error("attempt to write a readonly database"))

    def sqlite3_error(text: str) -> Exception:
        import sqlite3

        return sqlite3.OperationalError(text)

    site = Site()
    root = Root()
    good: Any = site.b.ledger
    bad: Any = Broken()
    root.putChild(b"health", Health(good, site.clock, TIMEOUT))
    root.putChild(b"broken", Health(bad, site.clock, TIMEOUT))
    http: Any = StubTreq(root)

    def get(path: str) -> tuple[int, dict[str, Any]]:
        d = http.get(f"http://platform/{path}")
        http.flush()
        response = result_of(d)
        body = http.content(response)
        http.flush()
        return int(response.code), json.loads(result_of(body))

    import lnt

    assert get("health/live") == (200, {"status": "live", "version": lnt.__version__})
    code, body = get("health/ready")
    assert code == 200 and body["ledger"]["writable"] is True and body["ledger"]["key"] == \
        "matches"
    assert get("health")[0] == 200
    code, body = get("broken/ready")
    assert code == 503 and body["ledger"] == {"ready": False,
                                             "reason": "attempt to write a readonly database"}
    assert get("broken/live")[0] == 200  # alive, not ready
    assert get("health/nope")[0] == 404
