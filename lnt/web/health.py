"""
Health for load balancers and operators. C{GET /health/live}: the process runs and its reactor
answers. C{GET /health/ready} (and C{/health}): the ledger takes a write that commits and the
platform key opens its sealed data; 503 with the reason otherwise (a read-only or full disk, an
unreachable database, a wrong key file).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

import lnt
from lnt.interfaces import ILedger, bounded
from lnt.logmask import Logger
from lnt.web.json import finish_json, write_json

log = Logger()


class Health(Resource):
    isLeaf = True

    def __init__(self, ledger: ILedger, clock: IReactorTime, timeout: float) -> None:
        super().__init__()
        self._ledger = ledger
        self._clock = clock
        self._timeout = timeout

    def render_GET(self, request: Request) -> int | bytes:
        path = [p for p in request.postpath or [] if p]
        if path == [b"live"]:
            return write_json(request, {"status": "live", "version": lnt.__version__})
        if path not in ([], [b"ready"]):
            return write_json(request, {"error": "no such resource: /health/"
                                        + b"/".join(path).decode(errors="replace")}, 404)
        now_ms = int(self._clock.seconds() * 1000)
        d = bounded(self._ledger.health(now_ms), self._timeout, self._clock, "health")

        def ok(ledger: dict[str, object]) -> None:
            body = {"status": "ok", "version": lnt.__version__,
                    "ledger": {"reachable": True, **ledger}}
            finish_json(request, body)

        def failed(f: Failure) -> None:
            message = f.getErrorMessage().strip()
            reason = message.splitlines()[0] if message else str(f.type)
            log.warn("health: not ready: {error}", error=reason)
            body = {"status": "unavailable", "version": lnt.__version__,
                    "ledger": {"ready": False, "reason": reason}}
            finish_json(request, body, 503)

        d.addCallbacks(ok, failed)
        return NOT_DONE_YET
