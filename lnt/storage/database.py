"""
One database layer over SQLite (the embedded default) and PostgreSQL (several daemons sharing
one database), shaped after Synapse's storage: an L{Engine} per database hides the differences
(parameter style, column types, which errors are worth a retry, per-connection setup), and
L{Database.runInteraction} runs one transaction in a thread of the pool, so that the reactor
never waits on SQL.

Every state change is one call of C{runInteraction}: the function it runs sees a L{Cursor} inside
a transaction that is committed when it returns and rolled back when it raises. A transaction that
lost a race (SQLite "database is locked", PostgreSQL serialization failure or deadlock) is rolled
back and run again, a few times, from the start: interaction functions must therefore only touch
the database, never the outside world.
"""

from __future__ import annotations

import queue
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure

from lnt import metrics
from lnt.interfaces import BackendBusy, BackendUnavailable
from lnt.logmask import Logger

log = Logger()

P = ParamSpec("P")
R = TypeVar("R")

#: How often a transaction that lost a race is run again before the caller is told "busy".
#: PostgreSQL's SERIALIZABLE on small tables takes relation-wide read locks, so concurrent
#: recharges conflict more often than their rows would suggest: ten attempts with a random,
#: growing backoff carried 64 concurrent terminals without one exhausted in the benchmark.
MAX_ATTEMPTS = 10


@lru_cache(maxsize=512)
def _ledger_seconds(desc: str) -> Any:
    """The histogram's child for one transaction name, looked up once."""
    return metrics.LEDGER_SECONDS.labels(desc)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def unavailable(desc: str, error: BaseException) -> BackendUnavailable:
    """The caller's exception for an outage (what its client is told: no detail); the detail
    goes to the log, as a warning: an operator must see the ledger failing."""
    log.warn("ledger: {desc} failed, the database is unavailable: {error}", desc=desc,
             error=_first_line(error))
    return BackendUnavailable("the ledger is unavailable")


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt C{attempt + 1}: random (so that the transactions that
    collided do not collide again in step) and growing, at most about 0.3 s."""
    return random.uniform(0, 0.005 * 2 ** min(attempt, 6))


class DatabaseConfigError(Exception):
    """The ledger DSN names no database this daemon can use."""


class DBConnection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


class Engine:
    """
    What differs between the databases, one subclass per database (after Synapse's
    C{BaseDatabaseEngine}): parameter style, column types, which errors are worth a retry,
    opening and setting up connections. Every SQL string goes through L{sql}.
    """

    name: str
    #: replacements for the C{{name}} placeholders of schema SQL
    types: dict[str, str]

    def sql(self, text: str) -> str:
        """Our SQL uses C{?} parameters (SQLite's style)."""
        return text

    def schema(self, text: str) -> str:
        return text.format(**self.types)

    def begin(self, cursor: Any) -> None:
        """Whatever a transaction needs at its start (it is open already)."""

    def is_transient(self, error: BaseException) -> bool:
        """The transaction lost a race and may be run again."""
        raise NotImplementedError

    def is_unavailable(self, error: BaseException) -> bool:
        """The database cannot be reached or written: an outage, not a bug of ours."""
        raise NotImplementedError

    def add_check(self, table: str, column: str, values: Sequence[str]) -> list[str]:
        """Statements that make C{column} of an existing table accept only C{values}."""
        raise NotImplementedError

    def connect(self, target: str) -> DBConnection:
        """A plain synchronous connection, set up (migrations at start, the admin CLI)."""
        raise NotImplementedError

    def pool(self, target: str) -> adbapi.ConnectionPool:
        """A pool of connections for the daemon (SQLite has its L{GroupCommitWriter} instead)."""
        raise NotImplementedError

    def describe(self, target: str) -> str:
        """The DSN without a password, for logs."""
        raise NotImplementedError


class SqliteEngine(Engine):
    name = "sqlite"
    types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER", "bytes": "BLOB"}

    def begin(self, cursor: Any) -> None:
        # Take the write lock now, not at the first write: two processes (the daemon and
        # lnt-admin) that both read then write would otherwise deadlock one another.
        cursor.execute("BEGIN IMMEDIATE")

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)

    #: what SQLite says when the file cannot take a write (read-only, full, failing disk)
    UNAVAILABLE = ("readonly", "disk is full", "disk i/o error", "unable to open",
                   "database or disk is full")

    def is_unavailable(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and any(
            s in str(error).lower() for s in self.UNAVAILABLE)

    def add_check(self, table: str, column: str, values: Sequence[str]) -> list[str]:
        # SQLite cannot add a CHECK to an existing table: triggers refuse the same rows
        allowed = ", ".join(f"'{v}'" for v in values)
        return [f"CREATE TRIGGER {table}_{column}_{when.lower()} BEFORE {when} ON {table}"
                f" WHEN NEW.{column} NOT IN ({allowed}) BEGIN SELECT RAISE(ABORT,"
                f" 'CHECK constraint failed: {table}.{column}'); END"
                for when in ("INSERT", "UPDATE")]

    @staticmethod
    def setup(conn: Any) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we tell anyone about it.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")

    def connect(self, target: str) -> DBConnection:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(target, isolation_level=None, timeout=10)
        self.setup(conn)
        return conn

    def describe(self, target: str) -> str:
        return f"sqlite://{target}"


class PostgresEngine(Engine):
    """PostgreSQL through psycopg 3 (the C{postgres} extra), transactions C{SERIALIZABLE}."""

    name = "postgres"
    types = {"serial": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT", "bytes": "BYTEA"}
    #: serialization failure, deadlock, and a unique violation: under SERIALIZABLE it means a
    #: concurrent transaction inserted the same key first (two daemons taking one merchant's
    #: orderId at once); run again, the transaction finds that row and answers with it
    TRANSIENT = frozenset({"40001", "40P01", "23505"})

    def sql(self, text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def is_transient(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) in self.TRANSIENT

    def is_unavailable(self, error: BaseException) -> bool:
        # connection errors (class 08, or none at all: the socket went away), the server
        # shutting down or starting (57P0x), too many connections (53300), read-only (25006);
        # and adbapi's own ConnectionLost after a broken connection was dropped from the pool
        if type(error).__name__ == "ConnectionLost":
            return True
        if not type(error).__module__.startswith("psycopg"):
            return False
        state = getattr(error, "sqlstate", None)
        if state is None:
            return type(error).__name__ in ("OperationalError", "InterfaceError")
        return state.startswith(("08", "57P")) or state in ("53300", "25006")

    def add_check(self, table: str, column: str, values: Sequence[str]) -> list[str]:
        allowed = ", ".join(f"'{v}'" for v in values)
        return [f"ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_check"
                f" CHECK ({column} IN ({allowed}))"]

    @staticmethod
    def driver() -> Any:
        try:
            import psycopg
        except ImportError:
            raise DatabaseConfigError(
                "a postgresql:// ledger needs psycopg 3: install lnt-recharge[postgres]"
            ) from None
        return psycopg

    @staticmethod
    def setup(conn: Any) -> None:
        psycopg = PostgresEngine.driver()
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 15000")
            cur.execute("SET lock_timeout = 10000")
        conn.commit()

    def connect(self, target: str) -> DBConnection:
        conn = self.driver().connect(target, connect_timeout=10)
        self.setup(conn)
        return conn  # type: ignore[no-any-return]

    def pool(self, target: str) -> adbapi.ConnectionPool:
        self.driver()
        return adbapi.ConnectionPool("psycopg", target, connect_timeout=10, cp_min=1, cp_max=8,
                                     cp_openfun=self.setup, cp_reconnect=True)

    def describe(self, target: str) -> str:
        parts = urlsplit(target)
        host = parts.hostname or "local socket"
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{parts.username or ''}@{host}{port}{parts.path}"


SQLITE = SqliteEngine()
POSTGRES = PostgresEngine()


class Cursor:
    """A DB-API cursor that speaks our parameter style on every engine."""

    def __init__(self, engine: Engine, raw: Any) -> None:
        self.engine = engine
        self._raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self._raw.execute(self.engine.sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # one statement per row: psycopg's executemany runs a pipeline, which reports a
        # transaction's serialization failure a second time on stderr when it is torn down
        text = self.engine.sql(sql)
        for row in rows:
            self._raw.execute(text, tuple(row))

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._raw.fetchone()
        return None if row is None else tuple(_plain(v) for v in row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(_plain(v) for v in row) for row in self._raw.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)


def by_name(columns: str, row: Sequence[Any]) -> dict[str, Any]:
    """A row selected with the column list C{columns} (C{"a, b, c"}), as C{{name: value}}:
    every record is read by its column names, never by position."""
    names = [c.strip() for c in columns.split(",")]
    if len(names) != len(row):
        raise ValueError(f"{len(row)} values for {len(names)} columns")
    return dict(zip(names, row, strict=True))


def _plain(value: Any) -> Any:
    # BYTEA may come back as a memoryview; the rest of the code wants bytes on both engines.
    return bytes(value) if isinstance(value, memoryview) else value


@dataclass(frozen=True)
class DSN:
    """A parsed ledger DSN: C{sqlite:///path}, a bare path, or C{postgresql://...}."""

    engine: Engine
    target: str

    @classmethod
    def parse(cls, dsn: str) -> DSN:
        if dsn.startswith(("postgresql://", "postgres://")):
            return cls(POSTGRES, dsn)
        if dsn.startswith("sqlite://"):
            # sqlite:///abs/path.db (three slashes: an absolute path) or sqlite://rel/path.db
            path = dsn[len("sqlite://") :]
            if not path:
                raise DatabaseConfigError("sqlite DSN names no file: use sqlite:///path/ledger.db")
            return cls(SQLITE, path)
        if re.match(r"^[a-z][a-z0-9+.-]*://", dsn):
            raise DatabaseConfigError(
                "ledger DSN must be sqlite:///PATH, a file path, or postgresql://..."
            )
        return cls(SQLITE, dsn)

    def describe(self) -> str:
        """The DSN without a password, for logs."""
        return self.engine.describe(self.target)

    def connect(self) -> DBConnection:
        """A plain synchronous connection (migrations at start, the admin CLI)."""
        return self.engine.connect(self.target)

    def pool(self) -> adbapi.ConnectionPool:
        return self.engine.pool(self.target)


def run_transaction(
    engine: Engine,
    conn: DBConnection,
    desc: str,
    func: Callable[Concatenate[Cursor, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """
    Run C{func} in one transaction on C{conn}, retrying when it lost a race. Synchronous: the
    pool calls it in a thread, the admin CLI and migrations call it directly.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        raw = conn.cursor()
        try:
            engine.begin(raw)
            result = func(Cursor(engine, raw), *args, **kwargs)
            conn.commit()
            return result
        except Exception as e:
            try:
                conn.rollback()
            except Exception as lost:
                # the connection itself is gone (the pool drops it and opens a new one)
                if engine.is_unavailable(lost) or engine.is_unavailable(e):
                    raise unavailable(desc, e) from e
                raise
            if engine.is_transient(e):
                if attempt < MAX_ATTEMPTS:
                    log.debug("transaction {desc} lost a race ({attempt}), retrying",
                              desc=desc, attempt=attempt)
                    time.sleep(backoff(attempt))
                    continue
                raise BackendBusy(f"the ledger is busy ({desc} lost {attempt} races with "
                                  "concurrent transactions): repeat") from e
            if engine.is_unavailable(e):
                raise unavailable(desc, e) from e
            raise
        finally:
            raw.close()
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Queued:
    desc: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: Deferred[Any]


_STOP = object()


def _fire(batch: list[_Queued], outcomes: list[tuple[bool, Any]]) -> None:
    """Tell a committed batch's callers (on the reactor thread), in the order they queued."""
    for item, (ok, value) in zip(batch, outcomes, strict=True):
        try:
            if ok:
                item.done.callback(value)
            else:
                item.done.errback(value)
        except Exception:  # one caller's Deferred in a bad state must not silence the others
            log.failure("group commit: telling the caller of {desc} failed", desc=item.desc)


class GroupCommitWriter:
    """
    SQLite's group commit. One writer thread takes the interactions queued since its last
    commit (up to L{MAX_BATCH}, in arrival order) and runs them as one transaction:
    C{BEGIN IMMEDIATE}, each interaction under its own C{SAVEPOINT} (one that raises is rolled
    back alone and fails alone), then one C{COMMIT}, so one fsync for the whole batch. Only
    after that commit is any caller's Deferred fired: nothing is acknowledged before it is
    durable, exactly as with a commit per interaction. A batch whose C{COMMIT} fails fails every
    interaction in it. Interactions see the batch's earlier ones as if those had committed
    first: the order is the order they were queued, as with one connection.

    The interactions asked for in one turn of the reactor are handed to the writer together at
    its end (a C{callLater(0)}): waking the writer thread is a switch of threads and of the
    GIL, and once per interaction it cost the reactor about 5 % of its time (recharges 269-280/s
    -> 295-302/s at 32 terminals, docs/performance.rst).
    """

    #: interactions committed together at most
    MAX_BATCH = 128

    def __init__(self, dsn: DSN) -> None:
        self.dsn = dsn
        self.engine = dsn.engine
        self._queue: queue.SimpleQueue[list[_Queued] | object] = queue.SimpleQueue()
        #: interactions asked for in this turn of the reactor, handed over at its end
        self._turn: list[_Queued] = []
        self._thread: threading.Thread | None = None
        self._conn: DBConnection | None = None
        #: commits and interactions so far (how much grouping happened)
        self.commits = 0
        self.interactions = 0

    def runInteraction(
        self,
        desc: str,
        func: Callable[Concatenate[Cursor, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[R]:
        d: Deferred[R] = Deferred()
        if self._thread is None:
            d.errback(RuntimeError("the ledger is not started (or closed)"))
            return d
        self._turn.append(_Queued(desc, func, args, kwargs, d))
        if len(self._turn) == 1:
            # the writer is woken once per turn of the reactor, with all that turn asked for,
            # not once per interaction: each wake-up is a switch of threads and of the GIL
            self._clock.callLater(0, self._hand_over)
        return d

    def _hand_over(self) -> None:
        turn, self._turn = self._turn, []
        if turn:
            self._queue.put(turn)

    def start(self) -> None:
        """Open the connection in the writer thread (SQLite connections belong to one thread);
        a failure to open it is raised here."""
        from twisted.internet import reactor

        self._reactor: IReactorFromThreads = reactor  # type: ignore[assignment]
        self._clock: IReactorTime = reactor
        ready = threading.Event()
        opened: list[BaseException] = []

        def run() -> None:
            try:
                self._conn = self.engine.connect(self.dsn.target)
            except BaseException as e:
                opened.append(e)
                ready.set()
                return
            ready.set()
            try:
                self._run()
            finally:
                self._conn.close()

        self._thread = threading.Thread(target=run, name="lnt-ledger-writer", daemon=True)
        self._thread.start()
        ready.wait()
        if opened:
            self._thread = None
            raise opened[0]

    def close(self) -> None:
        """Finish what is queued, then stop the writer and close the connection."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._hand_over()
        self._queue.put(_STOP)
        thread.join(timeout=60)

    def _run(self) -> None:
        pending: list[_Queued] = []
        stopping = False
        while True:
            if not pending:
                if stopping:
                    return
                turn = self._queue.get()
                if not isinstance(turn, list):  # _STOP
                    return
                pending.extend(turn)
            while not stopping and len(pending) < self.MAX_BATCH:
                try:
                    turn = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(turn, list):
                    pending.extend(turn)
                else:
                    stopping = True
            batch, pending = pending[:self.MAX_BATCH], pending[self.MAX_BATCH:]
            self._commit(batch)

    def _commit(self, batch: list[_Queued]) -> None:
        assert self._conn is not None
        conn, engine = self._conn, self.engine
        outcomes: list[tuple[bool, Any]] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            outcomes = []
            raw = conn.cursor()
            try:
                engine.begin(raw)
                for item in batch:
                    raw.execute("SAVEPOINT lnt_interaction")
                    try:
                        result = item.func(Cursor(engine, raw), *item.args, **item.kwargs)
                    except Exception as e:
                        outcomes.append((False, Failure(unavailable(item.desc, e))
                                         if engine.is_unavailable(e) else Failure()))
                        raw.execute("ROLLBACK TO SAVEPOINT lnt_interaction")
                    else:
                        outcomes.append((True, result))
                    raw.execute("RELEASE SAVEPOINT lnt_interaction")
                conn.commit()
            except Exception as e:
                conn.rollback()
                if engine.is_transient(e) and attempt < MAX_ATTEMPTS:
                    log.debug("group commit lost a race ({attempt}), retrying", attempt=attempt)
                    time.sleep(backoff(attempt))
                    continue
                failure = Failure(BackendBusy(f"the ledger is busy ({e}): repeat")) \
                    if engine.is_transient(e) else Failure(unavailable("group commit", e)) \
                    if engine.is_unavailable(e) else Failure()
                outcomes = [(False, failure)] * len(batch)
            finally:
                raw.close()
            break
        self.commits += 1
        self.interactions += len(batch)
        # told only now, with the batch durable; one wake-up of the reactor for the batch
        self._reactor.callFromThread(_fire, batch, outcomes)


class Transactor(Protocol):
    """What the ledger needs of a database: L{Database} in the daemon, L{SyncDatabase} in tools."""

    engine: Engine

    def runInteraction(
        self,
        desc: str,
        func: Callable[Concatenate[Cursor, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[R]: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class Database:
    """
    The daemon's database: transactions run off the reactor thread. SQLite: one writer thread
    with group commit (L{GroupCommitWriter}); PostgreSQL: a pool of connections, whose server
    groups commits itself.
    """

    def __init__(self, dsn: DSN) -> None:
        self.dsn = dsn
        self.engine = dsn.engine
        self._writer: GroupCommitWriter | None = None
        self._pool: adbapi.ConnectionPool | None = None
        if dsn.engine is SQLITE:
            self._writer = GroupCommitWriter(dsn)
        else:
            self._pool = dsn.pool()

    def runInteraction(
        self,
        desc: str,
        func: Callable[Concatenate[Cursor, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[R]:
        started = time.monotonic()
        if self._writer is not None:
            d = self._writer.runInteraction(desc, func, *args, **kwargs)
        else:
            assert self._pool is not None
            d = self._pool.runWithConnection(
                lambda conn: run_transaction(self.engine, conn, desc, func, *args, **kwargs)
            )

        def observe(result: Any) -> Any:
            _ledger_seconds(desc).observe(time.monotonic() - started)
            if isinstance(result, Failure) and result.check(BackendBusy):
                metrics.LEDGER_BUSY.labels(desc).inc()
            return result

        return d.addBoth(observe)

    def start(self) -> None:
        if self._writer is not None:
            self._writer.start()
        else:
            assert self._pool is not None
            self._pool.start()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif self._pool is not None:
            self._pool.close()


class SyncDatabase:
    """
    The same interface as L{Database}, but each interaction runs at once on one plain
    connection and the Deferred it returns has already fired. For command-line tools (no
    reactor) and property tests; never inside the daemon, where it would block the reactor.
    """

    def __init__(self, dsn: DSN) -> None:
        self.dsn = dsn
        self.engine = dsn.engine
        self._conn = dsn.connect()

    def runInteraction(
        self,
        desc: str,
        func: Callable[Concatenate[Cursor, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[R]:
        from twisted.internet import defer

        try:
            result = run_transaction(self.engine, self._conn, desc, func, *args, **kwargs)
        except Exception:
            return defer.fail()
        return defer.succeed(result)

    @property
    def connection(self) -> DBConnection:
        return self._conn

    def start(self) -> None:
        pass

    def close(self) -> None:
        self._conn.close()


def result_of(d: Deferred[R]) -> R:
    """The result of a Deferred that has already fired (raising its failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("Deferred has not fired")
    from twisted.python.failure import Failure

    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]
