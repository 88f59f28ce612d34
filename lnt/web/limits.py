"""
The HTTP site's request class: bodies above the limit are refused with 413 before they are
read (by Content-Length, or as chunked data arrives), so an oversized post costs nothing.
"""

from __future__ import annotations

import json
from typing import ClassVar

from twisted.web.server import Request

from lnt.logmask import Logger

log = Logger()


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

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        body = json.dumps({"error": f"request body larger than {self.max_body} bytes"}).encode()
        log.warn("http: refused a body over {limit} bytes", limit=self.max_body)
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:  # pragma: no cover - a request always has its channel here
            return
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n" + body
        )
        transport.loseConnection()


def limited_request(max_body: int) -> type[LimitedRequest]:
    """A request class with its own limit (the site's C{requestFactory})."""
    return type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})
