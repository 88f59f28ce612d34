"""
SQLite's group commit (L{GroupCommitWriter}): interactions queued together share one commit,
each caller is told only once its work is committed (seen from another connection), and one
interaction that fails is rolled back alone.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python.failure import Failure

from lnt.storage.database import DSN, Cursor, Database, GroupCommitWriter


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "g.db"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    conn.commit()
    conn.close()
    return p


def committed(path: Path, k: int) -> str | None:
    """What another connection sees: only what is committed."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        row = conn.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def insert(cur: Cursor, k: int, v: str) -> int:
    cur.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))
    return k


def insert_then_fail(cur: Cursor, k: int) -> None:
    cur.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, "never"))
    raise ValueError("refused after writing")


@pytest_twisted.ensureDeferred
async def test_many_interactions_share_commits_and_each_is_told_after_its_commit(
        path: Path) -> None:
    db = Database(DSN.parse(f"sqlite://{path}"))
    writer = db._writer
    assert isinstance(writer, GroupCommitWriter)
    db.start()
    seen_at_callback: dict[int, str | None] = {}

    def told(k: int) -> int:
        seen_at_callback[k] = committed(path, k)  # durable before the caller hears of it
        return k

    try:
        asked = [db.runInteraction("insert", insert, k, f"v{k}").addCallback(told)
                 for k in range(200)]
        # handed to the writer at the end of this turn of the reactor, all at once
        assert writer._queue.empty()
        results = await defer.gatherResults(asked)
        assert results == list(range(200))
        assert seen_at_callback == {k: f"v{k}" for k in range(200)}
        assert writer.interactions == 200
        # one turn's 200 interactions: two commits of at most MAX_BATCH (128 + 72)
        assert GroupCommitWriter.MAX_BATCH == 128 and writer.commits == 2
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_interaction_is_rolled_back_alone(path: Path) -> None:
    db = Database(DSN.parse(f"sqlite://{path}"))
    db.start()
    try:
        ds: list[defer.Deferred[object]] = [
            db.runInteraction("a", insert, 1, "a"),
            db.runInteraction("bad", insert_then_fail, 2),
            db.runInteraction("dup", insert, 1, "again"),  # a constraint violation
            db.runInteraction("c", insert, 3, "c")]
        results = await defer.DeferredList(ds, consumeErrors=True)
        assert [ok for ok, _ in results] == [True, False, False, True]
        failures = [f for ok, f in results if not ok]
        assert isinstance(failures[0], Failure) and failures[0].check(ValueError)
        assert isinstance(failures[1], Failure) and failures[1].check(sqlite3.IntegrityError)
        assert [committed(path, k) for k in (1, 2, 3)] == ["a", None, "c"]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_close_finishes_what_is_queued(path: Path) -> None:
    db = Database(DSN.parse(f"sqlite://{path}"))
    db.start()
    ds = [db.runInteraction("insert", insert, k, "x") for k in range(50)]
    db.close()
    assert all(committed(path, k) == "x" for k in range(50))
    assert await defer.gatherResults(ds) == list(range(50))
    refused = db.runInteraction("late", insert, 99, "x")
    with pytest.raises(RuntimeError, match="not started"):
        await refused


def test_a_transaction_that_always_loses_its_race_ends_busy_not_broken(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lnt.interfaces import BackendBusy, BackendTimeout
    from lnt.storage import database
    from lnt.storage.database import MAX_ATTEMPTS, SyncDatabase, result_of

    monkeypatch.setattr(database, "backoff", lambda attempt: 0.0)
    db = SyncDatabase(DSN.parse(f"sqlite://{path}"))
    calls: list[int] = []

    def always_locked(cur: Cursor) -> None:
        calls.append(1)
        cur.execute("INSERT INTO t (k, v) VALUES (?, ?)", (len(calls), "never"))
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(BackendBusy, match="lost 10 races") as e:
        result_of(db.runInteraction("always", always_locked))
    # callers that answer "system busy" for a timeout answer it for this too
    assert isinstance(e.value, BackendTimeout)
    assert len(calls) == MAX_ATTEMPTS == 10
    assert committed(path, 1) is None  # every attempt rolled back
    db.close()


def test_backoff_is_random_and_bounded() -> None:
    from lnt.storage.database import backoff

    waits = [backoff(a) for a in range(1, 11) for _ in range(50)]
    assert all(0 <= w <= 0.32 for w in waits)
    assert len(set(waits)) > 400


@pytest_twisted.ensureDeferred
async def test_a_ledger_that_cannot_be_written_is_unavailable_not_broken(path: Path) -> None:
    """What SQLite says of a read-only or full file system reaches callers as
    BackendUnavailable (answered busy); the writer goes on with the next batch."""
    from lnt.interfaces import BackendUnavailable

    db = Database(DSN.parse(f"sqlite://{path}"))
    db.start()

    def readonly(cur: Cursor) -> None:
        cur.execute("PRAGMA query_only=ON")
        try:
            cur.execute("INSERT INTO t (k, v) VALUES (7, 'x')")
        finally:
            cur.execute("PRAGMA query_only=OFF")

    def full(cur: Cursor) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    try:
        for func in (readonly, full):
            with pytest.raises(BackendUnavailable, match="the ledger is unavailable"):
                await db.runInteraction(func.__name__, func)
        assert committed(path, 7) is None
        assert await db.runInteraction("insert", insert, 8, "eight") == 8
    finally:
        db.close()


def test_one_caller_in_a_bad_state_does_not_keep_the_batch_from_the_others() -> None:
    """A committed batch is told in one call on the reactor thread; a Deferred fired already
    (a bug elsewhere) is logged and the callers after it still hear of their commit."""
    from typing import cast

    from twisted.logger import ILogObserver, globalLogPublisher

    from lnt.storage.database import _fire, _Queued

    seen: list[object] = []
    done = [defer.Deferred[object]() for _ in range(3)]
    done[0].callback("early")
    errors: list[object] = []
    done[2].addErrback(errors.append)
    for d in done[1:2]:
        d.addCallback(seen.append)
    events: list[dict[str, object]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        _fire([_Queued(f"q{i}", insert, (), {}, d) for i, d in enumerate(done)],
              [(True, "a"), (True, "b"), (False, Failure(ValueError("c")))])
    finally:
        globalLogPublisher.removeObserver(observer)
    assert seen == ["b"]
    assert len(errors) == 1 and isinstance(errors[0], Failure) and errors[0].check(ValueError)
    assert [e.get("desc") for e in events if e.get("log_failure")] == ["q0"]
