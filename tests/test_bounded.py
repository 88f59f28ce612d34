"""
L{lnt.interfaces.bounded}, the timeout on every backend call, driven by a Clock: an answer in
time passes and leaves no timer behind; silence becomes L{BackendTimeout} at the deadline,
not before; the caller's own cancellation and a backend's own failure pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from lnt.interfaces import BackendTimeout, bounded


def outcome(d: defer.Deferred[Any]) -> Any:
    """The result or failure C{d} has now (consumed), or None if it has none yet."""
    got: list[Any] = []
    d.addBoth(got.append)
    return got[0] if got else None


def test_an_answer_in_time_passes_and_leaves_no_timer() -> None:
    clock = task.Clock()
    d: defer.Deferred[int] = defer.Deferred()
    out = bounded(d, 5.0, clock, "lookup")
    clock.advance(4.9)
    d.callback(7)
    assert outcome(out) == 7
    assert clock.getDelayedCalls() == []
    clock.advance(10)  # nothing left to fire


def test_an_answer_that_came_before_is_passed_at_once() -> None:
    clock = task.Clock()
    assert outcome(bounded(defer.succeed(3), 5.0, clock, "lookup")) == 3
    assert clock.getDelayedCalls() == []


def test_silence_is_a_timeout_at_the_deadline() -> None:
    clock = task.Clock()
    cancelled: list[object] = []
    d: defer.Deferred[int] = defer.Deferred(cancelled.append)
    out = bounded(d, 5.0, clock, "lookup")
    clock.advance(4.999)
    assert not out.called and not cancelled
    clock.advance(0.001)
    failure = outcome(out)
    assert isinstance(failure, Failure) and failure.check(BackendTimeout)
    assert str(failure.value) == "backend call 'lookup' did not answer within 5 s"
    assert len(cancelled) == 1  # the backend was told to stop


def test_the_callers_own_cancel_and_a_backend_failure_pass_through() -> None:
    clock = task.Clock()
    d: defer.Deferred[int] = defer.Deferred()
    out = bounded(d, 5.0, clock, "lookup")
    out.cancel()
    failure = outcome(out)
    assert isinstance(failure, Failure) and failure.check(defer.CancelledError)
    assert not failure.check(BackendTimeout)
    assert clock.getDelayedCalls() == []

    d2: defer.Deferred[int] = defer.Deferred()
    out2 = bounded(d2, 5.0, clock, "lookup")
    d2.errback(ValueError("refused"))
    failure = outcome(out2)
    assert isinstance(failure, Failure) and failure.check(ValueError)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("seconds", [0.5, 30.0])
def test_the_message_names_the_call_and_the_time(seconds: float) -> None:
    clock = task.Clock()
    out: defer.Deferred[int] = bounded(defer.Deferred(), seconds, clock, "secure_session")
    clock.advance(seconds)
    failure = outcome(out)
    expected = f"backend call 'secure_session' did not answer within {seconds:g} s"
    assert str(failure.value) == expected
