"""
JSON answers and the site root: every answer of ours, errors included, is a JSON body that says
what happened; no traceback ever reaches a client.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request


def write_json(request: Request, body: Any, code: int = 200) -> bytes:
    """Set status and content type; return the encoded body for C{render_*} to return."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def finish_json(request: Request, body: Any, code: int = 200) -> None:
    """Answer a request that is being rendered asynchronously, unless the client has gone."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.write(write_json(request, body, code))
    request.finish()


def refuse_other_methods(request: Request, name: str) -> bytes | None:
    """The 405 answer for an API path called with another method than POST, else None."""
    if request.method == b"POST":
        return None
    request.setHeader(b"allow", b"POST")
    return write_json(request, {"error": f"/{name} takes POST"}, 405)


class JSONError(Resource):
    """An HTTP-level error (not an API call): a status code and a JSON body that explains it."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request: Request) -> bytes:
        return write_json(request, {"error": self.message}, self.code)


class Root(Resource):
    """The site root: named children only; anything else is a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        name = path.decode("utf-8", "replace")
        return JSONError(404, f"no such resource: /{name}")

    def render(self, request: Request) -> bytes:
        return write_json(request, {"service": "lnt-recharge",
                                    "resources": sorted(k.decode() for k in self.children)})
