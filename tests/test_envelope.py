"""The order API envelope against the source document's worked example (SPEC-NOTES 3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lnt.crypto import envelope
from lnt.crypto.envelope import EnvelopeError
from lnt.domain.inputs import SECONDS_MAX, SECONDS_MIN

TS = 1428042275
PLAINTEXT = b'{"platform":1, "userinfo": "{\\"openid\\":\\"1234567890\\"}", "type":1}'
DATA = ("C99486C1AA1897DE48650DC10C2BECB796D3F43CA80F884DE22023F22E0C3593"
        "98EA8F3C3A8D3965024F8FFEF9F4E4F17AACBFEF799F113279B4BEDEA9B3541D"
        "1A0E156475F7E2DC")
RESPONSE_TS = 1433296168984
RESPONSE_DATA = (
    "1452106a861ae1c0ba56f4865b13aa9b0002fcbc4a093bb9ba3930be69f72290aa5564acea2278c37c02e67de7"
    "48999ff2c2068a6fe666fa143ec3309471496a259411a60393298d7335a4f2c08f3ff4eaefcf88de4bf7482e3f"
    "13083638d77b8d34afef2b97a7892919631aab015c13e2bdfd5158399ffe050d5c84111d7f8b5fa46d09d08aea"
    "e99c1d10f3876b773c1f9a47bfd351154627bd6a7623d22641fa9da8342518fe378788a383e1acab6bb45d2737"
    "6797f7ce810140b840c73a5702f2874ad1710bc076c246baf071faaf0cd76d09518819e")


def test_request_vector_byte_for_byte() -> None:
    assert len(PLAINTEXT) == 67
    assert envelope.envelope_key(TS).hex().upper() == "9F16FC5C138F102A3DD434ECFF8100DE"
    data = envelope.encrypt(TS, PLAINTEXT)
    assert data == DATA and len(data) == 144
    assert envelope.mac([("timestamp", TS), ("data", data)]) == "D99C278A"
    assert envelope.decrypt(TS, DATA) == PLAINTEXT


def test_response_example_decrypts() -> None:
    # the document's ciphertext lost a character in conversion: decrypt its whole blocks
    whole = RESPONSE_DATA[: len(RESPONSE_DATA) // 16 * 16]
    head = envelope.decrypt(RESPONSE_TS, whole)
    assert head.startswith(b'{"pki":"70000472","serial":"0000000000003309","key":"00000000",'
                           b'"toreader":["010700a4000002ddf190000200",')
    assert envelope.envelope_key(RESPONSE_TS).hex().upper() == "1936F51A02CA81125C8DC254FC6F1CC5"


def test_open_message_round_trip() -> None:
    message = envelope.seal({"timestamp": TS, "version": "v2"}, {"platform": 7, "x": "中文"})
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    pairs, secret = envelope.open_message(body)
    assert [k for k, _ in pairs] == ["timestamp", "version", "data", "mac"]
    assert secret == {"platform": 7, "x": "中文"}
    # a client that escapes non-ASCII computes the mac over what it sends: accepted too
    escaped = dict(message)
    escaped["mac"] = envelope.mac(list(escaped.items()), ascii_only=True)
    envelope.open_message(json.dumps(escaped, separators=(",", ":")).encode())


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
def test_clear_text_field_mac_in_either_escaping(note: str) -> None:
    """A clear field with any text: the mac is accepted over the text as sent, whether the
    client sent non-ASCII as it is or escaped (each body carries the mac of its own form), and
    a mac of neither form is refused."""
    clear = {"timestamp": TS, "version": "v2", "note": note}
    for ascii_only in (False, True):
        message = {**clear, "mac": envelope.mac(clear, ascii_only=ascii_only)}
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=ascii_only).encode()
        pairs, _ = envelope.open_message(body)
        assert dict(pairs)["note"] == note
    wrong = envelope.mac({**clear, "note": note + "x"})
    body = json.dumps({**clear, "mac": wrong}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    with pytest.raises(EnvelopeError, match="mac does not match"):
        envelope.open_message(body)


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "body is not a JSON object"),
    (b"[1, 2]", "body is not a JSON object"),
    (b'{"timestamp": 1, "timestamp": 2, "mac": "x"}', "field 'timestamp' appears twice"),
    (b'{"timestamp": 1}', "mac is missing"),
    (b'{"timestamp": 1, "mac": "00000000"}', "mac does not match"),
    (b"[" * 60000, "the body nests deeper than 16 levels"),
    (b'{"a":' * 12000 + b"1" + b"}" * 12000, "the body nests deeper than 16 levels"),
    (b'{"\\ud800": 1, "mac": "00000000"}', "a field name in the body is not valid text"),
    (b'{"x": ["\\udfff"], "mac": "00000000"}', "the body.x\\[0\\] is not valid text"),
])
def test_open_message_errors(body: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        envelope.open_message(body)


def _sealed(fields: dict[str, object]) -> bytes:
    fields = dict(fields)
    fields["mac"] = envelope.mac(fields)
    return json.dumps(fields, separators=(",", ":")).encode()


@pytest.mark.parametrize(("fields", "message"), [
    ({"timestamp": "1"}, "timestamp is missing or not an integer"),
    ({"timestamp": 1, "data": 5}, "timestamp is not a time between 2000 and 2100"),
    ({"timestamp": 10**400, "data": 5}, "timestamp is not a time between 2000 and 2100"),
    ({"timestamp": -TS}, "timestamp is not a time between 2000 and 2100"),
    ({"timestamp": TS, "data": 5}, "data is not a string"),
    ({"timestamp": TS, "data": "zz"}, "data is not hex"),
    ({"timestamp": TS, "data": "0011"}, "whole number of 3DES blocks"),
    ({"timestamp": TS, "data": envelope.encrypt(TS, b"[" * 40 + b"]" * 40)},
     "data nests deeper than 16 levels"),
    ({"timestamp": TS, "data": envelope.encrypt(TS, b'{"userid": "\\ud800"}')},
     "data.userid is not valid text"),
    ({"timestamp": TS + 1, "data": DATA}, "data does not decrypt to JSON"),
    ({"timestamp": TS, "data": envelope.encrypt(TS, b"[1]")}, "not decrypt to a JSON object"),
])
def test_data_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        envelope.open_message(_sealed(fields))


@given(st.one_of(st.integers(SECONDS_MIN, SECONDS_MAX),
                 st.integers(SECONDS_MIN * 1000, SECONDS_MAX * 1000)),
       st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20)),
                       max_size=5))
def test_property_seal_open(timestamp: int, secret: dict[str, object]) -> None:
    try:
        message = envelope.seal({"timestamp": timestamp}, secret)
    except EnvelopeError:
        return  # a degenerate key (MD5 halves equal): refused, never silently weak
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    _, opened = envelope.open_message(body)
    assert opened == secret
