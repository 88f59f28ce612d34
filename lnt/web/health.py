"""C{GET /health}: is the daemon up and can it reach its ledger (for load balancers and ops)."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

import lnt
from lnt.interfaces import ILedger, bounded
from lnt.web.json import finish_json

log = Logger()


class Health(Resource):
    isLeaf = True

    def __init__(self, ledger: ILedger, clock: IReactorTime, timeout: float) -> None:
        super().__init__()
        self._ledger = ledger
        self._clock = clock
        self._timeout = timeout

    def render_GET(self, request: Request) -> int:
        d = bounded(self._ledger.health(), self._timeout, self._clock, "health")

        def ok(ledger: dict[str, object]) -> None:
            body = {"status": "ok", "version": lnt.__version__,
                    "ledger": {"reachable": True, **ledger}}
            finish_json(request, body)

        def failed(f: Failure) -> None:
            log.warn("health: ledger unreachable: {error}", error=f.getErrorMessage())
            body = {"status": "unavailable", "version": lnt.__version__,
                    "ledger": {"reachable": False}}
            finish_json(request, body, 503)

        d.addCallbacks(ok, failed)
        return NOT_DONE_YET
