"""
Hostile input to both HTTP APIs, in process (issue 13, finding 1): the inputs that reached
unhandled exceptions, then hypothesis feeding arbitrary JSON and form bodies, valid envelopes
and signatures around arbitrary field values included. Every answer must be a refusal with a
message (status 0 / code -1, or a 4xx), never "internal error", never a critical log event.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from lnt.crypto import envelope
from lnt.crypto.consignsign import make_sign
from lnt.storage.database import result_of
from tests.test_web_inprocess import USER, Site

ORDER_ENDPOINTS = ("APPLLogin", "AcctQueryLNT", "CreateAutoLoadOrder")
FORM_ENDPOINTS = ("v2_tocard", "v2_blindSearch", "v2_queryBalance", "v2_queryBuy",
                  "v2_queryBizOrder")
INTERNAL = ("internal error", "may be repeated")


class HostileSite(Site):
    def __init__(self) -> None:
        super().__init__()
        self.merchant = result_of(self.store.add_merchant("10001", {"LNT100": 9500}, 0))


@pytest.fixture(scope="module")
def site() -> HostileSite:
    return HostileSite()


@pytest.fixture(autouse=True)
def no_critical() -> Iterator[list[dict[str, Any]]]:
    """Fails the test when anything is logged at critical (or a failure with a traceback)."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.critical,) or "log_failure" in event:
            seen.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)
    assert not seen, [e.get("log_format") for e in seen]


def answer(site: Site, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
    code, parsed = site.answer(site.request(path, body, content_type))
    return code, parsed


def assert_refused(code: int, body: Any, *, form: bool = False) -> str:
    text = json.dumps(body, ensure_ascii=False)
    assert not any(s in text for s in INTERNAL), text
    if 400 <= code < 500:
        return text
    assert code == 200, (code, text)
    if form:
        assert body["code"] == -1 and body["msg"], text
        return str(body["msg"])
    if "data" in body:  # an answer in its envelope: open it for the errmsg
        pairs, secret = envelope.open_message(json.dumps(body, separators=(",", ":"),
                                                         ensure_ascii=False).encode())
        body = {**dict(pairs), **secret}
    assert body.get("status") == 0 and body.get("errmsg"), text
    return str(body["errmsg"])


# -- the findings, one by one -----------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[" * 60000,
    b'{"a":' * 12000 + b"1" + b"}" * 12000,
    b'{"\\ud800":1,"mac":"00000000"}',
    b'{"timestamp":' + b"1" + b"0" * 400 + b',"mac":"00000000"}',
])
def test_the_reported_order_api_inputs(site: Site, body: bytes) -> None:
    for endpoint in ORDER_ENDPOINTS:
        assert_refused(*answer(site, endpoint, body, "application/json"))


def _sealed_call(site: Site, endpoint: str, clear: dict[str, Any], secret: dict[str, Any]
                 ) -> tuple[int, Any]:
    ts = site.now_ms()
    message: dict[str, Any] = {"timestamp": ts, "version": "v2", **clear}
    message["data"] = envelope.encrypt(ts, json.dumps(secret).encode())
    message["mac"] = envelope.mac(message)
    return answer(site, endpoint, json.dumps(message).encode(), "application/json")


@pytest.mark.parametrize(("clear", "secret", "why"), [
    ({"platformRaw": 10**20}, {"platform": 10**20}, "platformRaw must be between"),
    ({"platformRaw": 2**63}, {"platform": 2**63}, "platformRaw must be between"),
    ({"platformRaw": 7}, {"platform": 7, "userinfo": '{"userid":"\\ud800"}'}, "not valid"),
    ({"platformRaw": 7}, {"platform": 7, "money": 10**19}, "between"),
])
def test_the_reported_enveloped_inputs(site: Site, clear: dict[str, Any],
                                       secret: dict[str, Any], why: str) -> None:
    base = {"userinfo": json.dumps({"userid": USER}), "type": 5, "biz_serial_no": "H1",
            "money": 1, "package_name": "t", "package_version_name": "1",
            "package_version_code": "1", "mobile_imei": "0", "mobile_vendor": "t",
            "mobile_model": "t", "ip": "127.0.0.1"}
    message = assert_refused(*_sealed_call(site, "APPLLogin", clear, {**base, **secret}))
    assert why in message or "is missing" not in message, message


def test_account_query_dates_out_of_range(site: Site) -> None:
    message = assert_refused(*_sealed_call(site, "AcctQueryLNT", {"platformRaw": 7}, {
        "platform": 7, "userinfo": json.dumps({"userid": USER}), "serial": "0000000000000042",
        "step": 0, "reqinfo": [], "qrycondition": "time", "starttime": "20260101",
        "endtime": "99991231"}))
    assert "endtime must be between" in message or "reqinfo" in message or "card" in message


def _form(site: HostileSite, endpoint: str, fields: dict[str, str], signed: bool = True
          ) -> tuple[int, Any]:
    fields = {"customerId": "10001", **fields}
    if signed:
        fields["sign"] = make_sign(fields, site.merchant.md5_key)
    return answer(site, endpoint, urllib.parse.urlencode(fields).encode(),
                  "application/x-www-form-urlencoded")


def test_the_reported_consignment_inputs(site: HostileSite) -> None:
    for endpoint in FORM_ENDPOINTS:
        message = assert_refused(*_form(site, endpoint, {"timestamp": "9" * 400, "orderId": "X",
                                                         "amount": "1", "account": "1"},
                                        signed=False), form=True)
        assert "timestamp" in message or "missing" in message, message
    now = str(int(site.clock.seconds()))
    message = assert_refused(*_form(site, "v2_tocard", {
        "timestamp": now, "orderId": "BIG1", "batchno": "B", "productCode": "LNT100",
        "cardNumber": "00", "cardPassword": "00", "amount": "99999999999999999999"}), form=True)
    assert "amount must be at most" in message


# -- arbitrary input --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
field_names = st.sampled_from([
    "timestamp", "version", "platformRaw", "platform", "userinfo", "type", "biz_serial_no",
    "money", "serial", "step", "reqinfo", "qrycondition", "starttime", "endtime", "orderid",
    "crt_version", "chargeamt", "chargetype", "transtype", "pki", "Sign", "data", "mac"])
HYPOTHESIS = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


@HYPOTHESIS
@given(endpoint=st.sampled_from(ORDER_ENDPOINTS), body=st.binary(max_size=300))
def test_any_bytes_to_the_order_api(site: Site, endpoint: str, body: bytes) -> None:
    assert_refused(*answer(site, endpoint, body, "application/json"))


@HYPOTHESIS
@given(endpoint=st.sampled_from(ORDER_ENDPOINTS),
       clear=st.dictionaries(field_names, json_values, max_size=6),
       secret=st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=8))
def test_any_fields_in_a_valid_envelope(site: Site, endpoint: str, clear: dict[str, Any],
                                        secret: dict[str, Any]) -> None:
    clear.pop("timestamp", None)
    clear.pop("mac", None)
    clear.pop("data", None)
    try:
        json.dumps(secret).encode()
    except (UnicodeEncodeError, ValueError):
        return  # hypothesis made text the envelope cannot carry at all
    assert_refused(*_sealed_call(site, endpoint, clear, secret))


@HYPOTHESIS
@given(endpoint=st.sampled_from(FORM_ENDPOINTS),
       fields=st.dictionaries(st.sampled_from(["timestamp", "orderId", "batchno", "productCode",
                                               "cardNumber", "cardPassword", "amount",
                                               "notify_url", "custom", "account", "decimal",
                                               "quantity"]) | st.text(max_size=6),
                              st.text(max_size=40) | st.integers().map(str), max_size=10),
       signed=st.booleans())
def test_any_form_to_the_consignment_api(site: HostileSite, endpoint: str, fields: dict[str, str],
                                         signed: bool) -> None:
    fields.pop("customerId", None)
    fields.pop("sign", None)
    try:
        code, body = _form(site, endpoint, fields, signed)
    except UnicodeEncodeError:
        return
    text = json.dumps(body, ensure_ascii=False)
    assert not any(s in text for s in INTERNAL), text
    assert code == 200 or 400 <= code < 500
    assert body.get("code") in (1, -1), text
