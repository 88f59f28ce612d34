"""
The site's request class reads a plain Content-Type itself (lnt/web/limits.py): JSON bodies
skip twisted.web's C{email}-based parsing, form bodies still give their arguments exactly as
twisted.web gives them, and anything that is not plain still takes twisted.web's path. The
expected arguments come from twisted.web's own parsing (a plain C{Site}), not from ours.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.web import http, resource, server

from lnt.web.limits import limited_request


class Echo(resource.Resource):
    """Answers with the request's arguments and the body it can still read."""

    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes:
        assert request.content is not None
        args = {k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                for k, vs in (request.args or {}).items()}
        return json.dumps({"args": args, "body": request.content.read().decode("latin-1")}
                          ).encode()


def post(site: server.Site, ctype: bytes | None, body: bytes, target: bytes = b"/x") -> Any:
    """The arguments and body the resource saw, or the status line when it was not 200."""
    channel = site.buildProtocol(None)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    head = b"POST " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    channel.dataReceived(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    status, _, rest = transport.value().partition(b"\r\n")
    if b" 200 " not in status:
        return status.decode()
    return json.loads(rest.split(b"\r\n\r\n", 1)[1])


def ours() -> server.Site:
    return server.Site(Echo(), requestFactory=limited_request(64 * 1024))


def twisteds() -> server.Site:
    return server.Site(Echo())


def test_a_json_body_is_not_parsed_by_the_email_package(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def refuse(line: bytes) -> bytes:
        raise AssertionError("twisted.web parsed the Content-Type")

    monkeypatch.setattr(http, "_parseContentType", refuse)
    got = post(ours(), b"application/json; charset=utf-8", b'{"a=1&b": 2}')
    assert got == {"args": {}, "body": '{"a=1&b": 2}'}


CTYPES = [
    b"application/x-www-form-urlencoded",
    b"APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8",
    b"application/x-www-form-urlencoded;charset=gbk",
    b" application/x-www-form-urlencoded ",
    b"application/json",
    b"text/plain; charset=utf-8",
    b'application/x-www-form-urlencoded; charset="utf-8"',  # quoted: twisted.web's path
    b"application/x-www-form-urlencoded, application/json",  # a list: twisted.web's path
    b"(comment) application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=zz",
    b"",
    b"nonsense",
]


@pytest.mark.parametrize("ctype", CTYPES)
def test_arguments_and_body_as_twisted_web_gives_them(ctype: bytes) -> None:
    body = b"a=1&b=%E4%B8%AD&a=2&empty=&flag"
    assert post(ours(), ctype, body, b"/x?q=9") == post(twisteds(), ctype, body, b"/x?q=9")


def test_a_content_type_twisted_web_cannot_parse_is_a_400() -> None:
    with pytest.raises(ValueError):
        post(twisteds(), b"\x0bform/x", b"a=1")
    assert post(ours(), b"\x0bform/x", b"a=1") == "HTTP/1.1 400 Bad Request"


def test_no_content_type() -> None:
    body = b"a=1"
    assert post(ours(), None, body) == post(twisteds(), None, body) == {"args": {}, "body": "a=1"}


@settings(max_examples=200, deadline=None)
@given(ctype=st.tuples(st.binary(max_size=10),
                      st.sampled_from([b"", b"application/x-www-form-urlencoded",
                                       b"multipart/form-data", b"application/json", b"form"]),
                      st.binary(max_size=20)).map(b"".join)
       .filter(lambda b: b"\r" not in b and b"\n" not in b),
       fields=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4))
def test_any_content_type(ctype: bytes, fields: dict[str, str]) -> None:
    body = urllib.parse.urlencode(fields).encode()
    try:
        expected = post(twisteds(), ctype, body)
    except ValueError:
        # twisted.web's parser raises (a traceback in the daemon): ours answers, a 400 when the
        # value might name a form, else the body as it came, no arguments taken from it
        got = post(ours(), ctype, body)
        assert got in ("HTTP/1.1 400 Bad Request", {"args": {}, "body": body.decode()})
        return
    assert post(ours(), ctype, body) == expected
