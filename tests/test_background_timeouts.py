"""
Every background call has a timeout (issue 13, finding 4): a ledger that stops answering makes
the notifier, the consignment sweep and the money gauges log a warning and count it
(lnt_backend_timeouts), and try again at their next turn; none hangs, none logs a traceback.
Clock-driven, no sleeps.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from lnt import metrics
from lnt.jobs.moneygauges import MoneyGauges
from lnt.jobs.notifier import Notifier
from lnt.jobs.processor import Processor


class Hanging:
    """A store or ledger whose every call never answers; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            self.calls.append(name)
            return Deferred()

        return call


def timeouts(what: str) -> float:
    value = metrics.REGISTRY.get_sample_value("lnt_backend_timeouts_total", {"what": what})
    return value or 0.0


class Captured:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.observer = cast(ILogObserver, self.events.append)

    def __enter__(self) -> Captured:
        globalLogPublisher.addObserver(self.observer)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.observer)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]


def test_the_notifier_warns_and_goes_on_when_the_outbox_hangs() -> None:
    clock, store = Clock(), Hanging()
    notifier = Notifier(store, clock, 5.0, [1.0], poll=1.0, store_timeout=2.0)  # type: ignore[arg-type]
    before = timeouts("notifier: due")
    with Captured() as log:
        notifier.startService()
        clock.advance(0)
        assert store.calls == ["due"]
        clock.advance(2.0)  # the outbox never answers: the timeout does
        assert timeouts("notifier: due") == before + 1
        assert any("outbox due" in w and "trying again in 1 s" in w for w in log.warnings())
        clock.advance(1.0)  # the next turn comes
        assert store.calls == ["due", "due"]
        assert not log.failures()
    notifier.stopService()


def test_the_sweep_warns_and_goes_on_when_the_store_hangs() -> None:
    clock, store = Clock(), Hanging()
    processor = Processor(store, Hanging(), clock, lambda: None, 3.0)  # type: ignore[arg-type]
    before = timeouts("sweep")
    with Captured() as log:
        processor.start()
        assert store.calls == ["processing"]
        clock.advance(3.0)
        assert timeouts("sweep") == before + 1
        assert any("consignment sweep" in w and "did not answer" in w for w in log.warnings())
        assert not log.failures()
    processor.stop()


def test_the_money_gauges_are_stale_not_hung() -> None:
    clock, ledger = Clock(), Hanging()
    gauges = MoneyGauges(ledger, Hanging(), clock, timeout=4.0, interval=15.0)  # type: ignore[arg-type]
    metrics.MONEY_REFRESHED.set(0)
    before = timeouts("money gauges")
    with Captured() as log:
        d = Deferred.fromCoroutine(gauges.refresh())
        clock.advance(4.0)
        assert d.called and timeouts("money gauges") == before + 1
        assert any("money gauges are stale" in w for w in log.warnings())
        assert metrics.REGISTRY.get_sample_value(
            "lnt_money_gauges_refreshed_timestamp_seconds") == 0
        assert not log.failures()
