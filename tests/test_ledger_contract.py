"""
The ledger contract: every ILedger / IPKI implementation over SQL passes the same tests, on
SQLite and on PostgreSQL (a schema of its own per test). Without a reachable PostgreSQL these
skip with a message, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from lnt.crypto.ec import key_from_scalar
from lnt.domain.loads import Verdict
from lnt.domain.records import (
    AlreadyExists,
    ApiContext,
    AtRisk,
    CardIdentity,
    CardKind,
    CardRefused,
    CardState,
    CardStatus,
    Conflict,
    IssuedCard,
    Load,
    LoadState,
    NotFound,
    OrderClaim,
    OrderState,
    PaymentClaim,
    PKICard,
    Platform,
)
from lnt.keyfiles import CardKeyFile, PlatformKeys
from lnt.storage.database import (
    DSN,
    Cursor,
    Database,
    DatabaseConfigError,
    SyncDatabase,
    result_of,
)
from lnt.storage.journal import UnbalancedEntry, post
from lnt.storage.ledger import KeyMismatch, SQLLedger
from lnt.storage.migrations import LATEST, MIGRATIONS, SchemaTooNew, migrate
from lnt.storage.pkicards import LedgerPKI
from tests.conftest import postgres_dsn

USER = b"terminal-0000001"


def _postgres(schema: str) -> str:
    base = postgres_dsn() or ""
    try:
        import psycopg

        conn = psycopg.connect(base, connect_timeout=3)
    except Exception as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL must be reachable in CI ({base}): {e}")
        pytest.skip(f"PostgreSQL not reachable at {base}: PostgreSQL ledger tests skipped ({e})")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    conn.close()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def _drop(schema: str) -> None:
    import psycopg

    conn = psycopg.connect(postgres_dsn() or "", connect_timeout=3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DSN]:
    if request.param == "sqlite":
        yield DSN.parse(f"sqlite://{tmp_path / 'ledger.db'}")
        return
    schema = f"lnt_test_{uuid.uuid4().hex[:12]}"
    url = _postgres(schema)
    try:
        yield DSN.parse(url)
    finally:
        _drop(schema)


KEYS = PlatformKeys(key_from_scalar(0xC0FFEE), bytes(range(32)))


@pytest.fixture
def stores(dsn: DSN) -> Iterator[tuple[SQLLedger, LedgerPKI]]:
    migrate(dsn)
    db = Database(dsn)
    db.start()
    yield SQLLedger(db, KEYS.sealer()), LedgerPKI(db, KEYS)
    db.close()


def card(pki_no: int = 1001, user: bytes = USER, version: int = 1) -> PKICard:
    return PKICard(pki_no, user, CardKeyFile.generate(pki_no, version, user, bytes(64)).public_key,
                   version)


# -- schema -------------------------------------------------------------------------------------

def test_migrate_is_idempotent_and_refuses_newer(dsn: DSN) -> None:
    assert migrate(dsn) == LATEST
    assert migrate(dsn) == LATEST
    newer = [(LATEST + 1, "CREATE TABLE later_feature (x INTEGER)")]
    assert migrate(dsn, [*MIGRATIONS, *newer]) == LATEST + 1
    with pytest.raises(SchemaTooNew):
        migrate(dsn)


def test_migrates_an_older_database_step_by_step(dsn: DSN) -> None:
    v1 = [(1, "CREATE TABLE t (a INTEGER)")]
    v2 = [*v1, (2, "ALTER TABLE t ADD COLUMN b INTEGER; CREATE TABLE u (c TEXT)")]
    assert migrate(dsn, v1) == 1
    assert migrate(dsn, v2) == 2
    conn = dsn.connect()
    cur = conn.cursor()
    cur.execute("SELECT a, b FROM t")
    cur.execute("SELECT c FROM u")
    cur.execute("SELECT version FROM schema_version")
    assert cur.fetchall() == [(2,)]
    conn.close()


def test_dsn_parsing() -> None:
    assert DSN.parse("sqlite:///var/lib/x.db").target == "/var/lib/x.db"
    assert DSN.parse("/tmp/a.db").engine.name == "sqlite"
    assert DSN.parse("postgresql://u:secret@h:5433/db").engine.name == "postgres"
    assert "secret" not in DSN.parse("postgresql://u:secret@h:5433/db").describe()
    with pytest.raises(DatabaseConfigError):
        DSN.parse("mysql://x")
    with pytest.raises(DatabaseConfigError):
        DSN.parse("sqlite://")


# -- health, PKI --------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_health(stores: tuple[SQLLedger, LedgerPKI], dsn: DSN) -> None:
    ledger, _ = stores
    h = await ledger.health(1)
    assert h["schema_version"] == LATEST and h["writable"] is True and h["key"] == "matches"
    assert h["engine"] in ("sqlite", "postgres")
    assert (await ledger.health(2))["key"] == "matches"  # the second probe opens the check
    # another platform key does not open this ledger's sealed data
    db = Database(dsn)
    db.start()
    try:
        other = SQLLedger(db, PlatformKeys(key_from_scalar(0xBAD), bytes(32)).sealer())
        with pytest.raises(KeyMismatch):
            await other.health(3)
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_pki_cards(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    _, pki = stores
    c = card()
    assert await pki.lookup(c.pki_no) is None
    await pki.register(c)
    assert await pki.lookup(c.pki_no) == c
    with pytest.raises(AlreadyExists):
        await pki.register(card())
    with pytest.raises(ValueError):
        await pki.register(PKICard(5, USER, bytes(64), 1))  # not a curve point
    assert await pki.revoke(c.pki_no) is True
    revoked = await pki.lookup(c.pki_no)
    assert revoked is not None and revoked.status is CardStatus.REVOKED
    assert await pki.revoke(424242) is False
    await pki.register(card(7))
    assert [x.pki_no for x in await pki.cards()] == [7, 1001]
    assert pki.platform_public_key() == KEYS.public_key


# -- sessions -----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_serials_are_unique_and_16_digits(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    serials = await defer.gatherResults([ledger.next_serial(1001, 0) for _ in range(20)])
    assert len(set(serials)) == 20
    assert all(len(s) == 16 and s.isdigit() for s in serials)


@pytest_twisted.ensureDeferred
async def test_card_randoms_are_single_use(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    assert await ledger.note_card_random(1001, b"12345678", 1) is True
    assert await ledger.note_card_random(1001, b"12345678", 2) is False
    assert await ledger.note_card_random(1001, b"12345679", 3) is True


@pytest_twisted.ensureDeferred
async def test_session_lifecycle(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    key = b"K" * 16
    s1 = await ledger.open_session(1001, USER, "0000000000000001", key, 1, 1000, 5000)
    assert s1 is not None and s1.expires_ms == 6000
    assert await ledger.session(1001, 5999) == s1
    assert await ledger.session(1001, 6000) is None  # expired
    assert await ledger.session_by_serial("0000000000000001", 2000) == s1
    # counter must increase
    assert await ledger.open_session(1001, USER, "0000000000000002", key, 1, 2000, 5000) is None
    s2 = await ledger.open_session(1001, USER, "0000000000000003", b"L" * 16, 2, 2000, 5000)
    assert s2 is not None
    assert await ledger.session(1001, 2500) == s2  # replaced
    assert await ledger.session_by_serial("0000000000000001", 2500) is None
    await pki.revoke(1001)
    assert await ledger.session(1001, 2500) is None
    assert await ledger.open_session(1001, USER, "0000000000000004", key, 9, 3000, 5000) is None


@pytest_twisted.ensureDeferred
async def test_api_context_reads_what_the_single_calls_read(
        stores: tuple[SQLLedger, LedgerPKI]) -> None:
    """api_context (one read for the order API) agrees with platform, card_for_user, session,
    session_by_serial and lookup, each asked alone."""
    ledger, pki = stores
    c = card()
    await pki.register(c)
    await ledger.add_platform(Platform(7, "bikes"))
    s1 = await ledger.open_session(1001, USER, "0000000000000001", b"K" * 16, 1, 1000, 5000)

    async def agree(now: int) -> None:
        by_user = await ledger.api_context(7, now, user_id=USER)
        assert by_user.platform == await ledger.platform(7)
        assert by_user.card == await pki.card_for_user(USER)
        assert by_user.session == await ledger.session(1001, now)
        by_serial = await ledger.api_context(7, now, serial="0000000000000001")
        assert by_serial.session == await ledger.session_by_serial("0000000000000001", now)
        expected = await pki.lookup(1001) if by_serial.session is not None else None
        assert by_serial.card == expected

    await agree(2000)
    assert (await ledger.api_context(7, 2000, user_id=USER)).session == s1
    await agree(7000)  # the session expired
    nothing = await ledger.api_context(8, 2000, user_id=b"nobody-000000001")
    assert (nothing.platform, nothing.card, nothing.session) == (None, None, None)
    assert (await ledger.api_context(7, 2000)).card is None
    await pki.revoke(1001)
    await agree(2000)  # a revoked card has no session, and is no terminal of its user
    assert (await ledger.api_context(7, 2000, user_id=USER)).card is None


class Refused(Exception):
    """What a test's admit raises."""


@pytest_twisted.ensureDeferred
async def test_admitted_payment_and_order(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    """register_admitted_payment and create_admitted_order: admit is given what api_context
    reads; what it returns is written as register_payment and create_order write it (their
    refusals included); when it raises, nothing is written and its exception comes out."""
    ledger, pki = stores
    await pki.register(card())
    await ledger.add_platform(Platform(7, "bikes"))
    await issue_cards(ledger)
    session = await ledger.open_session(1001, USER, "0000000000000001", b"K" * 16, 1, 1000,
                                        10**9)
    seen: list[ApiContext] = []

    def refuse(ctx: ApiContext) -> Any:
        seen.append(ctx)
        raise Refused("no")

    def pay(ctx: ApiContext) -> PaymentClaim:
        assert ctx.card is not None
        return PaymentClaim("B1", 500, "u", ctx.card.pki_no, "fp")

    def order_of(ident: CardIdentity, amount: int) -> Callable[[ApiContext], OrderClaim]:
        def admit(ctx: ApiContext) -> OrderClaim:
            assert ctx.session is not None
            return OrderClaim("B1", ctx.session.pki_no, ident, amount)
        return admit

    with pytest.raises(Refused):
        await ledger.register_admitted_payment(7, 2000, USER, refuse)
    assert seen[-1] == await ledger.api_context(7, 2000, user_id=USER)
    assert await ledger.money_at_risk(2000) == []  # no payment was registered
    ctx, payment, created = await ledger.register_admitted_payment(7, 2000, USER, pay)
    assert created and (payment.money, payment.pki_no) == (500, 1001)
    assert ctx == await ledger.api_context(7, 2000, user_id=USER) and ctx.session == session
    _, again, created = await ledger.register_admitted_payment(7, 3000, USER, pay)
    assert not created and again == payment
    with pytest.raises(Refused):
        await ledger.create_admitted_order(7, 2000, "0000000000000001", refuse)
    assert seen[-1] == await ledger.api_context(7, 2000, serial="0000000000000001")
    with pytest.raises(Conflict):  # the ledger's own refusal: the amount differs from the paid
        await ledger.create_admitted_order(7, 2000, "0000000000000001", order_of(CARD, 400))
    assert await ledger.orders_for_card(CARD.logical_no, None, None, None, None) == []
    ctx, order, created = await ledger.create_admitted_order(7, 2000, "0000000000000001",
                                                             order_of(CARD, 500))
    assert created and ctx.session == session and (order.amount, order.pki_no) == (500, 1001)
    assert await ledger.orders_for_card(CARD.logical_no, None, None, None, None) == [order]
    _, same, created = await ledger.create_admitted_order(7, 2000, "0000000000000001",
                                                          order_of(CARD, 500))
    assert not created and same == order
    assert await ledger.check() == []


@pytest_twisted.ensureDeferred
async def test_secure_session_reserves_seqs_and_reads_the_order(
        stores: tuple[SQLLedger, LedgerPKI]) -> None:
    """secure_session: the live session and fresh sequence numbers each time; with an order
    number, the order and the load in doubt on its card, read in the same transaction."""
    ledger, pki = stores
    assert await ledger.secure_session(1001, 2000, 8, None) is None  # no card, no session
    order_no = await _ordered(ledger, pki)
    session = await ledger.open_session(1001, USER, "0000000000000001", b"K" * 16, 1, 1000,
                                        10**9)
    first = await ledger.secure_session(1001, 2000, 8, None)
    assert first is not None and first.session == session == await ledger.session(1001, 2000)
    assert (first.order, first.earlier) == (None, None)
    second = await ledger.secure_session(1001, 2000, 8, order_no)
    assert second is not None and second.first_seq == first.first_seq + 8
    assert second.order == await ledger.order(order_no) and second.earlier is None
    unknown = await ledger.secure_session(1001, 2000, 8, "20261124000000009999")
    assert unknown is not None and (unknown.order, unknown.earlier) == (None, None)
    await ledger.begin_load(_pending(order_no))
    third = await ledger.secure_session(1001, 2000, 8, order_no)
    assert third is not None and third.earlier == await ledger.load(order_no)
    assert third.order is not None and third.order.state is OrderState.PENDING
    assert await ledger.secure_session(1001, 2 * 10**9, 8, order_no) is None  # expired


@pytest_twisted.ensureDeferred
async def test_session_key_is_sealed_at_rest(stores: tuple[SQLLedger, LedgerPKI],
                                             dsn: DSN) -> None:
    ledger, pki = stores
    await pki.register(card())
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    await ledger.open_session(1001, USER, "0000000000000001", key, 1, 0, 10_000)
    conn = dsn.connect()
    cur = conn.cursor()
    cur.execute("SELECT session_key FROM sessions")
    (stored,) = cur.fetchone()
    conn.close()
    assert key not in bytes(stored)
    other = SQLLedger(ledger.db, PlatformKeys(key_from_scalar(1), bytes(32)).sealer())
    with pytest.raises(ValueError):
        await other.session(1001, 1)


@pytest_twisted.ensureDeferred
async def test_signin_audit(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    await ledger.record_signin(1001, USER, "ok", 5)
    await ledger.record_signin(None, USER, "unknown PKI card 9", 6)
    assert await ledger.signins(1001) == [("ok", 5)]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counters=st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_property_session_accepted_iff_counter_increases(tmp_path: Path,
                                                         counters: list[int]) -> None:
    """Only a strictly increasing counter opens a session; the last accepted one is live."""
    dsn = DSN.parse(f"sqlite://{tmp_path / uuid.uuid4().hex}.db")
    migrate(dsn)
    db = SyncDatabase(dsn)
    ledger, pki = SQLLedger(db, KEYS.sealer()), LedgerPKI(db, KEYS)
    result_of(pki.register(card(1)))
    best, accepted = 0, ""
    for i, c in enumerate(counters):
        serial = str(i).rjust(16, "0")
        result = result_of(ledger.open_session(1, USER, serial, b"k" * 16, c, 0, 10_000))
        assert (result is not None) == (c > best)
        if c > best:
            best, accepted = c, serial
    live = result_of(ledger.session(1, 1))
    assert live is not None and live.serial == accepted
    db.close()


# -- payments, orders, journal ----------------------------------------------------------------

CARD = CardIdentity(CardKind.CPU, "5100000000000001", "0011223344556677", 0)
OTHER_CARD = CardIdentity(CardKind.M1, "5100000000000002", "00000000a1b2c3d4", None)


async def issue_cards(ledger: SQLLedger) -> None:
    """The registry holds both test cards (only issued cards take orders)."""
    for c in (CARD, OTHER_CARD):
        await ledger.register_card(IssuedCard(c.logical_no, c.kind, c.physical_no), 0)


@pytest_twisted.ensureDeferred
async def test_payments_and_orders(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    assert await ledger.add_platform(Platform(7, "bikes")) is True
    assert await ledger.add_platform(Platform(7, "bikes")) is False
    await issue_cards(ledger)
    assert await ledger.platform(7) == Platform(7, "bikes", True)
    assert await ledger.platform(8) is None
    with pytest.raises(NotFound):
        await ledger.create_order(7, "B1", 1001, CARD, 500, 0)
    p, created = await ledger.register_payment(7, "B1", 500, "u", 1001, "fp", 1_795_400_000_000)
    assert created and p.money == 500
    p2, created = await ledger.register_payment(7, "B1", 500, "u", 1001, "fp", 1)
    assert not created and p2 == p
    with pytest.raises(Conflict):
        await ledger.register_payment(7, "B1", 501, "u", 1001, "other", 1)
    with pytest.raises(Conflict):
        await ledger.create_order(7, "B1", 1001, CARD, 400, 0)
    # 2026-11-23 20:00 UTC is 2026-11-24 04:00 in China: the order number takes the China date
    order, created = await ledger.create_order(7, "B1", 1001, CARD, 500, 1_795_464_000_000)
    assert created and order.state is OrderState.CREATED
    assert order.order_no.startswith("20261124") and len(order.order_no) == 20  # China date
    again, created = await ledger.create_order(7, "B1", 1001, CARD, 500, 5)
    assert not created and again == order
    with pytest.raises(Conflict):
        await ledger.create_order(7, "B1", 1001, OTHER_CARD, 500, 5)
    # another terminal cannot bind this terminal's payment: to it, there is no such payment
    await pki.register(card(1002))
    with pytest.raises(NotFound, match="by this terminal"):
        await ledger.create_order(7, "B1", 1002, OTHER_CARD, 500, 5)
    assert await ledger.order(order.order_no) == order
    assert await ledger.orders_for_card(CARD.logical_no, None, None, None, None) == [order]
    assert await ledger.orders_for_card(CARD.logical_no, None, None,
                                        [OrderState.LOADED], None) == []
    assert await ledger.orders_for_card(CARD.logical_no, 0, 1, None, None) == []
    assert await ledger.balances() == {"platform:7:receivable": 500,
                                       "orders:awaiting-load": -500}


@pytest_twisted.ensureDeferred
async def test_concurrent_duplicates_move_money_once(stores: tuple[SQLLedger, LedgerPKI],
                                                     dsn: DSN) -> None:
    """However often and concurrently a biz_serial_no is sent: one payment, one order."""
    _, pki = stores
    await pki.register(card())
    ledgers = daemons(dsn, 4)
    try:
        await ledgers[0].add_platform(Platform(7, "bikes"))
        await issue_cards(ledgers[0])
        results = await defer.gatherResults([
            lg.register_payment(7, "DUP", 300, "u", 1001, "fp", 1)
            for lg in ledgers for _ in range(3)])
        assert sum(created for _, created in results) == 1
        orders = await defer.gatherResults([
            lg.create_order(7, "DUP", 1001, CARD, 300, 2) for lg in ledgers for _ in range(3)])
        assert sum(created for _, created in orders) == 1
        assert len({o.order_no for o, _ in orders}) == 1
        assert await ledgers[0].balances() == {"platform:7:receivable": 300,
                                               "orders:awaiting-load": -300}
    finally:
        for lg in ledgers:
            lg.close()


def test_journal_refuses_unbalanced_entries(dsn: DSN) -> None:
    migrate(dsn)
    db = SyncDatabase(dsn)
    try:
        with pytest.raises(UnbalancedEntry):
            result_of(db.runInteraction("t", post, "x", "r", 0, [("a", 5), ("b", -4)]))
        result_of(db.runInteraction("t", post, "x", "r", 0, [("a", 5), ("b", -5)]))
        assert result_of(SQLLedger(db, KEYS.sealer()).balances()) == {"a": 5, "b": -5}
    finally:
        db.close()


# -- loads ------------------------------------------------------------------------------------

def daemons(dsn: DSN, n: int) -> list[SQLLedger]:
    """C{n} ledgers on the same database, each with its own pool, as so many daemons."""
    out = []
    for _ in range(n):
        db = Database(dsn)
        db.start()
        out.append(SQLLedger(db, KEYS.sealer()))
    return out


def tamper(dsn: DSN, sql: str, params: tuple[object, ...]) -> None:
    """Change the database behind the ledger's back."""
    conn = dsn.connect()
    conn.cursor().execute(dsn.engine.sql(sql), params)
    conn.commit()
    conn.close()


def _pending(order_no: str, amount: int = 500) -> Load:
    return Load(order_no, 1001, CardKind.CPU, CARD.logical_no, CARD.physical_no, amount, 1000,
                7, "000070000472", "20261123120000", 1, LoadState.PENDING, None, None, 1, 1)


async def _ordered(ledger: SQLLedger, pki: LedgerPKI, biz: str = "L1", amount: int = 500) -> str:
    if await pki.lookup(1001) is None:
        await pki.register(card())
    await ledger.add_platform(Platform(7, "bikes"))
    await issue_cards(ledger)
    await ledger.register_payment(7, biz, amount, "u", 1001, "fp", 1)
    order, _ = await ledger.create_order(7, biz, 1001, CARD, amount, 1)
    return order.order_no


@pytest_twisted.ensureDeferred
async def test_load_lifecycle(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    order_no = await _ordered(ledger, pki)
    with pytest.raises(Conflict):
        await ledger.begin_load(replace(_pending(order_no), amount=501))
    await ledger.begin_load(_pending(order_no))
    with pytest.raises(Conflict):  # an order is loaded at most once
        await ledger.begin_load(_pending(order_no))
    assert (await ledger.order(order_no)).state is OrderState.PENDING  # type: ignore[union-attr]
    assert await ledger.check() == []
    settled = await ledger.settle_load(order_no, "aabbccdd", 1500, 5)
    assert settled.state is LoadState.LOADED and settled.new_balance == 1500
    again = await ledger.settle_load(order_no, "aabbccdd", 1500, 6)
    assert again.state is LoadState.LOADED and again.updated_ms == 5  # the first one counts
    with pytest.raises(Conflict):
        await ledger.reverse_load(order_no, 7)
    assert await ledger.check() == []
    assert (await ledger.balances())["cards:float"] == -500


@pytest_twisted.ensureDeferred
async def test_settle_and_reverse_race(stores: tuple[SQLLedger, LedgerPKI], dsn: DSN) -> None:
    """Two daemons decide one pending load at once: exactly one decision stands."""
    ledger, pki = stores
    order_no = await _ordered(ledger, pki)
    await ledger.begin_load(_pending(order_no))
    others = daemons(dsn, 2)
    try:
        results = await defer.DeferredList(
            [others[0].settle_load(order_no, "aa", 1500, 9),
             others[1].reverse_load(order_no, 9)], consumeErrors=True)
        outcomes = [ok for ok, _ in results]
        assert outcomes.count(True) == 1
        assert await ledger.check() == []
        entries = await ledger.balances()
        assert ("cards:float" in entries) != ("orders:reversed" in entries)
    finally:
        for other in others:
            other.close()


@pytest_twisted.ensureDeferred
async def test_check_finds_tampering(stores: tuple[SQLLedger, LedgerPKI], dsn: DSN) -> None:
    ledger, pki = stores
    order_no = await _ordered(ledger, pki)
    await ledger.begin_load(_pending(order_no))
    await ledger.settle_load(order_no, "aa", 1500, 5)
    tamper(dsn, "UPDATE postings SET amount = amount + 1 WHERE account = ?", ("cards:float",))
    problems = await ledger.check()
    assert any("does not balance" in p for p in problems)
    assert any(f"order {order_no}" in p for p in problems)


@pytest_twisted.ensureDeferred
async def test_sm_seq_and_deposits(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    await ledger.open_session(1001, USER, "0000000000000001", b"k" * 16, 1, 0, 10_000)
    first = await ledger.reserve_sm_seq(1001, "0000000000000001", 8)
    second = await ledger.reserve_sm_seq(1001, "0000000000000001", 8)
    assert (first, second) == (1, 9)
    with pytest.raises(NotFound):
        await ledger.reserve_sm_seq(1001, "0000000000000009", 8)
    assert await ledger.note_deposit_seq(1001, 3) is True
    assert await ledger.note_deposit_seq(1001, 3) is False
    assert await ledger.deposit_flag(CARD.logical_no) is None
    rid = await ledger.record_deposit(CARD.logical_no, CARD.physical_no, 2, 2, 1001, 5)
    assert rid >= 1 and await ledger.deposit_flag(CARD.logical_no) == 2


# -- the card registry, money at risk, operators' decisions ---------------------------------------

@pytest_twisted.ensureDeferred
async def test_orders_only_for_issued_open_cards(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    await ledger.add_platform(Platform(7, "bikes"))
    await ledger.register_payment(7, "R1", 500, "u", 1001, "fp", 1)
    with pytest.raises(CardRefused, match="not issued"):
        await ledger.create_order(7, "R1", 1001, CARD, 500, 2)
    assert await ledger.register_card(IssuedCard(CARD.logical_no, CardKind.CPU,
                                                 CARD.physical_no), 1) is True
    assert await ledger.register_card(IssuedCard(CARD.logical_no, CardKind.CPU,
                                                 CARD.physical_no), 1) is False
    with pytest.raises(Conflict):
        await ledger.register_card(IssuedCard(CARD.logical_no, CardKind.CPU, "ff" * 8), 1)
    with pytest.raises(CardRefused, match="another physical card"):
        await ledger.create_order(7, "R1", 1001, replace(CARD, physical_no="ff" * 8), 500, 2)
    with pytest.raises(CardRefused, match="limit"):
        await ledger.create_order(7, "R1", 1001, replace(CARD, balance=99_600), 500, 2)
    await ledger.record_deposit(CARD.logical_no, CARD.physical_no, 2, 2, 1001, 3)  # closed
    assert (await ledger.card(CARD.logical_no)).state is CardState.CLOSED  # type: ignore[union-attr]
    with pytest.raises(CardRefused, match="closed"):
        await ledger.create_order(7, "R1", 1001, CARD, 500, 4)
    # the refusal stays attached to the payment, which is money at risk until ordered
    assert await ledger.note_payment_refusal(7, "R1", 1001, "the card is closed", 5)
    assert not await ledger.note_payment_refusal(7, "R1", 1002, "not its terminal", 5)
    [risk] = await ledger.money_at_risk(10)
    assert (risk.what, risk.reference, risk.amount, risk.since_ms) == (
        "payment without order", "7:R1", 500, 1)
    assert "closed" in risk.note
    await ledger.record_deposit(CARD.logical_no, CARD.physical_no, 1, 1, 1001, 6)  # open
    order, _ = await ledger.create_order(7, "R1", 1001, CARD, 500, 7)
    assert await ledger.money_at_risk(10) == []
    assert await ledger.money_at_risk(7 + 86_400_001) == [
        AtRisk("order not loaded", order.order_no, 500, 7, "paid, no load for more than a day")]
    with pytest.raises(Conflict, match="has an order"):
        await ledger.refund_payment(7, "R1", "asked", "ops", 8)
    assert await ledger.check() == []


@pytest_twisted.ensureDeferred
async def test_refund_of_a_payment_without_order(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    await pki.register(card())
    await ledger.add_platform(Platform(7, "bikes"))
    await issue_cards(ledger)
    await ledger.register_payment(7, "R2", 300, "u", 1001, "fp", 1)
    with pytest.raises(Conflict, match="reason"):
        await ledger.refund_payment(7, "R2", " ", "ops", 2)
    with pytest.raises(NotFound):
        await ledger.refund_payment(7, "NOPE", "x", "ops", 2)
    paid = await ledger.refund_payment(7, "R2", "customer gave up", "ops", 2)
    assert paid.money == 300
    with pytest.raises(Conflict, match="refunded already"):
        await ledger.refund_payment(7, "R2", "again", "ops", 3)
    with pytest.raises(Conflict, match="refunded"):  # no order on refunded money
        await ledger.create_order(7, "R2", 1001, CARD, 300, 4)
    assert await ledger.money_at_risk(5) == []
    assert await ledger.decisions("7:R2") == [("payment", "refund", "customer gave up", "ops",
                                               2)]
    assert await ledger.balances() == {"platform:7:receivable": 0, "orders:awaiting-load": 0}
    assert await ledger.check() == []


@pytest_twisted.ensureDeferred
async def test_one_load_in_doubt_per_card(stores: tuple[SQLLedger, LedgerPKI]) -> None:
    ledger, pki = stores
    first = await _ordered(ledger, pki, "D1")
    second = await _ordered(ledger, pki, "D2")
    await ledger.begin_load(_pending(first))
    assert (await ledger.pending_load(CARD.logical_no)).order_no == first  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="in doubt"):
        await ledger.begin_load(_pending(second))
    assert (await ledger.order(second)).state is OrderState.CREATED  # type: ignore[union-attr]
    [risk] = await ledger.money_at_risk(2)
    assert (risk.what, risk.reference, risk.amount) == ("load in doubt", first, 500)
    # an operator resolves it, with a reason that is kept
    with pytest.raises(Conflict):
        await ledger.resolve_load(first, Verdict.SETTLE, "", "ops", 3)
    done = await ledger.resolve_load(first, Verdict.SETTLE, "seen on the card", "ops", 3)
    assert (done.state, done.new_balance) == (LoadState.LOADED, 1500)
    with pytest.raises(Conflict):
        await ledger.resolve_load(first, Verdict.REVERSE, "changed my mind", "ops", 4)
    assert await ledger.decisions(first) == [("load", "settle", "seen on the card", "ops", 3)]
    assert await ledger.pending_load(CARD.logical_no) is None
    await ledger.begin_load(_pending(second))
    assert await ledger.check() == []


@pytest_twisted.ensureDeferred
async def test_two_daemons_never_begin_two_loads_on_one_card(
        stores: tuple[SQLLedger, LedgerPKI], dsn: DSN) -> None:
    ledger, pki = stores
    orders = [await _ordered(ledger, pki, f"P{i}") for i in range(4)]
    others = daemons(dsn, 4)
    try:
        results = await defer.DeferredList(
            [lg.begin_load(_pending(o)) for lg, o in zip(others, orders, strict=True)],
            consumeErrors=True)
        assert [ok for ok, _ in results].count(True) == 1
        assert await ledger.check() == []
    finally:
        for other in others:
            other.close()


@pytest_twisted.ensureDeferred
async def test_check_finds_two_loads_in_doubt_on_one_card(stores: tuple[SQLLedger, LedgerPKI],
                                                          dsn: DSN) -> None:
    """What the release before this one could leave behind is reported, not hidden."""
    ledger, pki = stores
    first = await _ordered(ledger, pki, "T1")
    second = await _ordered(ledger, pki, "T2")
    await ledger.begin_load(_pending(first))
    tamper(dsn, "UPDATE loads SET state = 'loaded' WHERE order_no = ?", (first,))
    await ledger.begin_load(_pending(second))
    tamper(dsn, "UPDATE loads SET state = 'pending' WHERE order_no = ?", (first,))
    assert any("2 loads in doubt" in p for p in await ledger.check())


def test_postgres_without_its_driver_says_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    dsn = DSN.parse("postgresql://u@127.0.0.1:1/none")
    with pytest.raises(DatabaseConfigError, match=r"install lnt-recharge\[postgres\]"):
        dsn.connect()
    with pytest.raises(DatabaseConfigError, match=r"install lnt-recharge\[postgres\]"):
        dsn.pool()


def test_the_database_refuses_an_order_state_that_is_none(dsn: DSN) -> None:
    """The order states are enforced by the database too (a CHECK, or SQLite triggers)."""
    migrate(dsn)
    db = SyncDatabase(dsn)
    try:
        ledger = SQLLedger(db, KEYS.sealer())
        result_of(ledger.add_platform(Platform(7, "bikes")))
        result_of(ledger.register_card(IssuedCard(CARD.logical_no, CARD.kind,
                                                  CARD.physical_no), 0))
        result_of(ledger.register_payment(7, "S1", 500, "u", 1001, "fp", 1))
        order, _ = result_of(ledger.create_order(7, "S1", 1001, CARD, 500, 1))

        def bad(cur: Cursor) -> None:
            cur.execute("UPDATE orders SET state = 'lost' WHERE order_no = ?",
                        (order.order_no,))

        with pytest.raises(Exception, match=r"(?i)check"):
            result_of(db.runInteraction("bad state", bad))
        assert result_of(ledger.order(order.order_no)).state is OrderState.CREATED  # type: ignore[union-attr]
    finally:
        db.close()
