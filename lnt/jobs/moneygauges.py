"""
The money gauges of C{/metrics} (loads in doubt, payments awaiting their load, the outbox) and
the console's loads per second, read from the ledger every C{interval} seconds by a timer: a
scrape never waits on the ledger, and a ledger that stops answering shows as a stale
C{lnt_money_gauges_refreshed_timestamp_seconds} (and a warning), not as a hung scrape.
"""

from __future__ import annotations

from collections import deque

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from lnt import metrics
from lnt.interfaces import BackendTimeout, IConsignments, ILedger, bounded
from lnt.logmask import Logger

log = Logger()


def settled_loads() -> float:
    """Recharges that ended with 00 since the start (the counter the rate is taken from)."""
    total = 0.0
    for family in metrics.FLOWS.collect():
        for sample in family.samples:
            if (sample.name.endswith("_total") and sample.labels["flow"] == "recharge"
                    and sample.labels["code"] == "00"):
                total += sample.value
    return total


class MoneyGauges(TimerService):
    def __init__(self, ledger: ILedger, consignments: IConsignments, clock: IReactorTime,
                 timeout: float, interval: float = 15.0) -> None:
        super().__init__(interval, lambda: Deferred.fromCoroutine(self.refresh()))
        self.clock = clock  # TimerService's LoopingCall runs on this clock
        self._clock = clock
        self.ledger = ledger
        self.consignments = consignments
        self.timeout = timeout
        #: (when, settled loads so far), a minute's worth, for the rate
        self._samples: deque[tuple[float, float]] = deque(maxlen=8)

    def load_rate(self) -> float:
        """Recharges settled per second over the last minute or so."""
        self._sample()
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _sample(self) -> None:
        now = self._clock.seconds()
        while self._samples and now - self._samples[0][0] > 60:
            self._samples.popleft()
        if not self._samples or now - self._samples[-1][0] >= 1:
            self._samples.append((now, settled_loads()))

    async def refresh(self) -> None:
        self._sample()
        now = self._clock.seconds()
        now_ms = int(now * 1000)
        try:
            risks = await bounded(self.ledger.money_at_risk(now_ms), self.timeout, self._clock,
                                  "money at risk")
            outbox = await bounded(self.consignments.outbox(now_ms), self.timeout, self._clock,
                                   "outbox")
        except BackendTimeout as e:
            metrics.BACKEND_TIMEOUTS.labels("money gauges").inc()
            log.warn("metrics: the money gauges are stale: {error}", error=str(e))
            return
        except Exception:
            log.failure("metrics: the money gauges could not be read")
            return
        doubt = [r for r in risks if r.what == "load in doubt"]
        waiting = [r for r in risks if r.what != "load in doubt"]
        metrics.LOADS_IN_DOUBT.set(len(doubt))
        metrics.LOADS_IN_DOUBT_FEN.set(sum(r.amount for r in doubt))
        metrics.PAYMENTS_AWAITING.set(len(waiting))
        metrics.PAYMENTS_AWAITING_FEN.set(sum(r.amount for r in waiting))
        metrics.OLDEST_AT_RISK.set(max(((now_ms - r.since_ms) / 1000 for r in risks),
                                       default=0))
        metrics.OUTBOX_PENDING.set(outbox["pending"])
        metrics.OUTBOX_OLDEST.set(outbox["oldest_ms"] / 1000)
        metrics.OUTBOX_FAILED.set(outbox["failed"])
        metrics.MONEY_REFRESHED.set(now)
