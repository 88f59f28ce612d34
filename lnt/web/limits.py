"""
The HTTP site's limits: bodies above the limit are refused with 413 before they are read (by
Content-Length, or as chunked data arrives), so an oversized post costs nothing; a request must
arrive whole within its deadline (L{DeadlineChannel}).
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _parseContentType, parse_qs
from twisted.web.server import Request

from lnt.logmask import Logger

log = Logger()

#: a Content-Type whose media type is plain ``type/subtype`` (RFC 9110 tokens) with parameters
#: after it, or nothing: anything else (quoting, comments, lists) goes to twisted.web's parser
_PLAIN_CONTENT_TYPE = re.compile(rb"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+)"
                                 rb"[ \t]*(?:;[^\"()\x00-\x08\x0a-\x1f\x7f]*)?")
_FORM = b"application/x-www-form-urlencoded"
_MULTIPART = b"multipart/form-data"


class LimitedRequest(Request):
    max_body: ClassVar[int] = 64 * 1024
    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    _form_body = False

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        As twisted.web's, but the Content-Type is read here: twisted.web parses every POST's
        Content-Type with the C{email} package (about 0.1 ms a request, a tenth of an order-API
        call) to tell form bodies from others, and raises (a traceback, the connection dropped)
        on some values. A plain Content-Type is read with one regular expression: JSON bodies
        skip the parsing, a form body's arguments are parsed in L{process} as twisted.web
        would; a value that is not plain and cannot name a form is not parsed at all (nothing
        else gives arguments); multipart bodies and the rest take twisted.web's path, and a
        value its parser refuses is a 400.
        """
        if self._refused:
            return
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if command == b"POST" and ctype and self.content is not None and self.content.tell():
            value = ctype[0]
            plain = _PLAIN_CONTENT_TYPE.fullmatch(value)
            if plain is not None:
                media = plain.group(1).lower()
                if media != _MULTIPART:
                    self._parsePOSTFormSubmission = False
                    self._form_body = media == _FORM
            elif b"form" not in value.lower():
                self._parsePOSTFormSubmission = False
            else:
                try:
                    _parseContentType(value)
                except ValueError:
                    log.info("http: refused a Content-Type that cannot be parsed")
                    self._close_with(400, "Bad Request", "the Content-Type cannot be parsed")
                    return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._form_body and self.content is not None:
            self.args.update(parse_qs(self.content.read(), 1))
            self.content.seek(0, 0)
        super().process()

    def _refuse(self) -> None:
        if self._refused:
            return
        log.warn("http: refused a body over {limit} bytes", limit=self.max_body)
        self._close_with(413, "Payload Too Large",
                         f"request body larger than {self.max_body} bytes")

    def _close_with(self, code: int, reason: str, message: str) -> None:
        """Answer C{code} with a JSON body that says why, and close the connection."""
        self._refused = True
        body = json.dumps({"error": message}).encode()
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:  # pragma: no cover - a request always has its channel here
            return
        transport.write(
            f"HTTP/1.1 {code} {reason}\r\n".encode()
            + b"Content-Type: application/json; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n" + body
        )
        transport.loseConnection()


def limited_request(max_body: int) -> type[LimitedRequest]:
    """A request class with its own limit (the site's C{requestFactory})."""
    return type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})


class DeadlineChannel(HTTPChannel):
    """
    An HTTP connection whose requests must arrive whole, headers and body, within
    C{request_timeout} seconds of their first byte: Site's own timeout restarts with every byte,
    so a client sending one byte a second (slowloris) would hold the descriptor for ever. The
    idle time between keep-alive requests stays Site's C{timeout}.
    """

    request_timeout: ClassVar[float] = 30.0
    _deadline: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and data:
            self._deadline = self.callLater(self.request_timeout, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        log.info("http: a request did not arrive whole within {timeout:g} s: closed",
                 timeout=self.request_timeout)
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.abortConnection()  # type: ignore[attr-defined]


def deadline_channel(request_timeout: float) -> type[DeadlineChannel]:
    """A channel class with its own deadline (the site's C{protocol})."""
    return type("DeadlineChannel", (DeadlineChannel,), {"request_timeout": request_timeout})
