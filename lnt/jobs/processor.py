"""
The consignment processor: verifies and redeems the cards merchants consign (/v2_tocard), each
order at most once, also after a crash (docs/design.rst, "Consignment"): at start it finishes
what a crash interrupted, then sweeps every 30 s for what a timeout left behind.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from lnt import metrics
from lnt.interfaces import BackendTimeout, IConsignments, IIssuer, bounded
from lnt.logmask import Logger

log = Logger()


class Processor:
    """Verifies and redeems consigned cards; each order at most once, also after a crash."""

    def __init__(self, store: IConsignments, issuer: IIssuer, clock: IReactorTime,
                 wake: Callable[[], None], timeout: float, concurrency: int = 4,
                 sweep_every: float = 30.0) -> None:
        self.store = store
        self.issuer = issuer
        self.clock = clock
        self.wake = wake
        self.timeout = timeout
        self.sweep_every = sweep_every
        self._running: dict[str, Deferred[None]] = {}
        # a big batch is worked off a few cards at a time, never all at once
        self._limit = DeferredSemaphore(concurrency)
        self._sweeper = TimerService(sweep_every, self._sweep_logged)
        self._sweeper.clock = clock

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def process(self, system_order_id: str) -> Deferred[None]:
        running = self._running.get(system_order_id)
        if running is not None:
            return running
        d: Deferred[None] = self._limit.run(
            lambda: Deferred.fromCoroutine(self._process(system_order_id)))
        self._running[system_order_id] = d

        def done(result: object) -> None:
            self._running.pop(system_order_id, None)
            if isinstance(result, Failure) and result.check(BackendTimeout):
                # a timeout, not a bug: a warning and a metric, no traceback
                metrics.BACKEND_TIMEOUTS.labels("processor").inc()
                log.warn("consignment {order}: {error}; retried at the next sweep (every "
                         "{every:.0f} s)", order=system_order_id, error=str(result.value),
                         every=self.sweep_every)
            elif isinstance(result, Failure):
                log.failure("consignment {order}: processing failed; retried at the next sweep"
                            " (every {every:.0f} s)", result, order=system_order_id,
                            every=self.sweep_every)

        d.addBoth(done)
        return d

    async def _process(self, system_order_id: str) -> None:
        found = await bounded(self.store.card_of(system_order_id), self.timeout, self.clock,
                              "card of")
        if found is None:
            return  # already finished
        order, number, password = found
        redemption = await bounded(self.issuer.redeem(
            number, password, order.product_code, order.amount, system_order_id,
            self.now_ms()), self.timeout, self.clock, "redeem")
        face = redemption.face_value if redemption.ok else None
        message = "success" if redemption.ok else redemption.reason
        done = await bounded(self.store.complete(system_order_id, face, message,
                                                 self.now_ms()),
                             self.timeout, self.clock, "complete")
        log.info("consignment {order} of merchant {merchant} ({card}): {state}, {message}",
                 order=system_order_id, merchant=done.customer_id, card=order.card_masked,
                 state=done.state.value, message=message)
        self.wake()

    def sweep(self) -> Deferred[None]:
        """
        Process every order still processing: at start what a crash interrupted, then every
        C{sweep_every} seconds whatever a timeout left behind (a call that timed out may have
        committed all the same).
        """

        async def run() -> None:
            pending = await bounded(self.store.processing(), self.timeout, self.clock,
                                    "processing")
            await defer.DeferredList([self.process(s) for s in pending], consumeErrors=True)

        return Deferred.fromCoroutine(run())

    def start(self) -> None:
        """Sweep now (what a crash interrupted), then every C{sweep_every} seconds."""
        self._sweeper.startService()

    def _sweep_logged(self) -> Deferred[None]:
        def failed(f: Failure) -> None:
            if f.check(BackendTimeout):
                metrics.BACKEND_TIMEOUTS.labels("sweep").inc()
                log.warn("consignment sweep: {error}; next in {every:.0f} s",
                         error=str(f.value), every=self.sweep_every)
            else:
                log.failure("consignment sweep failed; next in {every:.0f} s", f,
                            every=self.sweep_every)

        return self.sweep().addErrback(failed)

    def stop(self) -> Deferred[None]:
        """Stop sweeping; fires when the orders in work are done (each bounded by timeouts)."""
        stopped = self._sweeper.stopService() if self._sweeper.running else None
        running = list(self._running.values())
        if isinstance(stopped, Deferred):
            running.append(stopped)
        return defer.DeferredList(running, consumeErrors=True).addCallback(lambda _: None)
