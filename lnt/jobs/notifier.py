"""
The notifier: delivers the outbox's notifications to merchants' C{notify_url}s.

A notification is posted as a form; it is delivered only when the body answered is C{success}.
At most C{per_host} deliveries run against one host at once: a notification whose host is busy
is postponed a moment (no attempt is counted), so one merchant's slow endpoint holds up only
its own notifications.
Otherwise it is tried again after each interval of the schedule (default 10 s, then 20 s: "2
more times, the interval growing by 10 s"); every attempt is recorded. The outbox is in the
ledger, so pending notifications survive a restart and go out after it; deliveries run
concurrently (at most C{concurrency} at once), each bounded by C{timeout}, so one merchant's slow
endpoint cannot hold up another's. The API never waits for any of this.

Every call to the outbox is bounded too (C{store_timeout}): a ledger that does not answer makes
the notifier log a warning, count it (C{lnt_backend_timeouts}) and try again at its next turn,
never hang silently.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import treq
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from lnt import metrics
from lnt.domain.records import Notification
from lnt.interfaces import BackendTimeout, IConsignments, bounded
from lnt.jobs.fence import NotifyFence
from lnt.logmask import Logger

T = TypeVar("T")

log = Logger()


def http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)

MAX_BODY = 1024


class Notifier(Service):
    def __init__(self, store: IConsignments, clock: IReactorTime, timeout: float,
                 retry_intervals: list[float], poll: float = 1.0, concurrency: int = 20,
                 per_host: int = 2, reactor: Any = None, store_timeout: float = 10.0,
                 fence: NotifyFence | None = None) -> None:
        self.store = store
        #: where requests may go (None: anywhere; the daemon always gives one)
        self.fence = fence
        self._agent: Any = None
        self.store_timeout = store_timeout
        self.clock = clock
        self.timeout = timeout
        self.retry_intervals = retry_intervals
        self.poll = poll
        self.reactor = reactor
        self._limit = DeferredSemaphore(concurrency)
        self.concurrency = concurrency
        self.per_host = per_host
        self._busy: dict[str, int] = {}
        self._call: IDelayedCall | None = None
        self._ticking = False
        self._inflight: set[Deferred[None]] = set()

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        # deliveries under way finish (each is bounded by the timeout)
        return defer.DeferredList(list(self._inflight)).addCallback(lambda _: None)

    def wake(self) -> None:
        """Look at the outbox now (a notification was just written)."""
        if self.running:
            self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self.clock.seconds() + delay:
                return
            self._call.cancel()
        self._call = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        if self._ticking:
            return
        self._ticking = True
        d = Deferred.fromCoroutine(self._claim())

        def done(result: object) -> None:
            self._ticking = False
            if isinstance(result, Failure):
                if result.check(BackendTimeout):
                    log.warn("notifier: {error}; trying again in {poll:g} s",
                             error=str(result.value), poll=self.poll)
                else:
                    log.failure("notifier: the outbox could not be read", result)
            if self.running:
                self._schedule(self.poll)

        d.addBoth(done)

    async def _claim(self) -> None:
        # claim only what can start now: a claimed notification is delivered (or given up)
        # well within its lease, so no other tick or daemon takes it meanwhile
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return
        due = await self._bounded(self.store.due(self.now_ms(), free,
                                                 int((self.timeout + 5) * 1000)), "due")
        for notification in due:
            host = urlsplit(notification.url).netloc
            if self._busy.get(host, 0) >= self.per_host:
                await self._bounded(self.store.postpone(
                    notification.id, self.now_ms() + int(self.poll * 1000)), "postpone")
                continue
            self._busy[host] = self._busy.get(host, 0) + 1
            d: Deferred[None] = self._limit.run(self._deliver, notification)
            self._inflight.add(d)

            def forget(result: object, d: Deferred[None] = d, host: str = host) -> None:
                self._inflight.discard(d)
                self._busy[host] -= 1

            d.addBoth(forget)

    def _agent_(self) -> Any:
        if self._agent is None and self.fence is not None:
            from twisted.web.client import Agent, HTTPConnectionPool

            self._agent = Agent.usingEndpointFactory(
                self.fence.reactor, self.fence.endpoints(),
                pool=HTTPConnectionPool(self.fence.reactor, persistent=False))
        return self._agent

    def _bounded(self, d: Deferred[T], what: str) -> Deferred[T]:
        def count(f: Failure) -> Failure:
            if f.check(BackendTimeout):
                metrics.BACKEND_TIMEOUTS.labels(f"notifier: {what}").inc()
            return f

        return bounded(d, self.store_timeout, self.clock, f"outbox {what}").addErrback(count)

    async def _post(self, n: Notification) -> tuple[int, bytes]:
        headers: dict[bytes | str, bytes | str] = {
            "content-type": "application/x-www-form-urlencoded"}
        # redirects are not followed: a merchant's endpoint answers, or the attempt failed
        response = await treq.post(n.url, data=n.body.encode(), reactor=self.reactor,
                                   headers=headers, allow_redirects=False, agent=self._agent_())
        body = bytearray()

        def collect(data: bytes) -> None:
            room = MAX_BODY - len(body)
            if room > 0:
                body.extend(data[:room])  # the rest is read and dropped

        await treq.collect(response, collect)
        return response.code, bytes(body)

    async def _deliver(self, n: Notification) -> None:
        outcome, delivered = "not an http(s) URL", False
        if http_url(n.url):
            # one bound for the whole attempt: connecting, the headers and the body
            attempt = Deferred.fromCoroutine(self._post(n))
            attempt.addTimeout(self.timeout, self.clock)
            try:
                code, body = await attempt
                text = body.decode("utf-8", "replace").strip()
                delivered = code == 200 and text == "success"
                outcome = f"HTTP {code}: {text[:60]!r}"
            except defer.TimeoutError:
                outcome = f"timeout after {self.timeout:g} s"
            except Exception as e:  # every failure of an attempt is recorded, none escapes
                outcome = f"{type(e).__name__}: {str(e)[:120]}"
        try:
            await self._bounded(self.store.attempted(n.id, outcome, delivered,
                                                     self.retry_intervals, self.now_ms()),
                                "attempted")
        except BackendTimeout as e:
            # the attempt's record may still land; if not, the lease runs out and the
            # notification is tried again (a merchant may get a repeat, never nothing)
            log.warn("notifier: {reference} attempt {n}: {outcome}, but {error}",
                     reference=n.reference, n=n.attempts + 1, outcome=outcome, error=str(e))
            return
        given_up = not delivered and n.attempts + 1 > len(self.retry_intervals)
        metrics.NOTIFICATIONS.labels("delivered" if delivered else "given_up" if given_up
                                     else "failed").inc()
        # a notification given up is money news a merchant never got: an operator must see it
        emit = log.warn if given_up else log.info
        emit("notifier: {reference} attempt {n}: {outcome}{done}", reference=n.reference,
             n=n.attempts + 1, outcome=outcome,
             done=" (delivered)" if delivered else " (given up: no attempt follows)"
             if given_up else "")
