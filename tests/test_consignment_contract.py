"""
The consignment store (L{IConsignments}), the voucher issuer (L{IIssuer}) and the notification
outbox, against SQLite and PostgreSQL alike (the C{dsn} fixture of test_ledger_contract): the
same contract on both engines, concurrency across pools included.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
import pytest_twisted
from twisted.internet import defer

from lnt.crypto.consignsign import make_sign
from lnt.domain.records import AlreadyExists, CardRefused, ConsignmentState, Redemption
from lnt.storage.consignments import SQLConsignments
from lnt.storage.database import DSN, Database
from lnt.storage.ledger import SQLLedger
from lnt.storage.migrations import migrate
from lnt.storage.vouchers import VoucherIssuer
from tests.test_ledger_contract import KEYS, dsn

__all__ = ["dsn"]


class Stores:
    def __init__(self, dsn: DSN) -> None:
        migrate(dsn)
        self.db = Database(dsn)
        self.db.start()
        self.store = SQLConsignments(self.db, KEYS.sealer())
        self.issuer = VoucherIssuer(self.db, KEYS.storage_key)
        self.ledger = SQLLedger(self.db, KEYS.sealer())

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def s(dsn: DSN) -> Iterator[Stores]:
    stores = Stores(dsn)
    yield stores
    stores.close()


async def consign(s: Stores, order_id: str = "M1", value: int = 1000,
                  notify_url: str = "http://127.0.0.1:1/n") -> tuple[str, str, str]:
    """A merchant, a voucher and a consignment of it: (system order ID, number, password)."""
    if await s.store.merchant("10001") is None:
        await s.store.add_merchant("10001", {"P": 9500}, 1)
    [voucher] = await s.issuer.issue("P", value, 1, 1)
    c, created = await s.store.submit("10001", order_id, "B1", "P", value, notify_url,
                                      "custom", voucher.card_number, voucher.password,
                                      "9000********0000", 2)
    assert created
    return c.system_order_id, voucher.card_number, voucher.password


@pytest_twisted.ensureDeferred
async def test_merchants(s: Stores) -> None:
    m = await s.store.add_merchant("10001", {"P": 9500, "Q": 10_000}, 1)
    assert len(m.aes_key) == 16 and len(m.md5_key) == 32
    with pytest.raises(AlreadyExists):
        await s.store.add_merchant("10001", {}, 1)
    again = await s.store.merchant("10001")
    assert again == m  # its keys come back unsealed
    assert await s.store.merchant("nobody") is None
    assert await s.store.set_active("10001", False) is True
    assert (await s.store.merchant("10001")).active is False  # type: ignore[union-attr]
    assert await s.store.set_active("nobody", False) is False
    assert await s.store.merchants() == [("10001", False, {"P": 9500, "Q": 10_000})]


@pytest_twisted.ensureDeferred
async def test_a_consignment_is_paid_once_and_notified(s: Stores) -> None:
    system_id, number, password = await consign(s)
    again, created = await s.store.submit("10001", "M1", "B1", "P", 1000, "", "", "x", "y",
                                          "m", 3)
    assert not created and again.system_order_id == system_id  # the first submission stands
    assert await s.store.processing() == [system_id]
    found = await s.store.card_of(system_id)
    assert found is not None and found[1:] == (number, password)  # unsealed for the processor
    assert await s.issuer.redeem(number, password, "P", 1000, system_id, 4) == \
        Redemption(True, 1000, "redeemed")
    done = await s.store.complete(system_id, 1000, "success", 5)
    assert (done.state, done.success_amount, done.actual_amount) == (
        ConsignmentState.SUCCESS, 1000, 950)
    assert await s.store.complete(system_id, 1000, "success", 6) == done  # idempotent
    assert await s.store.card_of(system_id) is None  # card data erased with completion
    assert await s.store.processing() == []
    assert await s.store.balance("10001") == 950
    assert await s.ledger.check() == []
    # the outbox: one notification, signed with the merchant's key, claimed with a lease
    [note] = await s.store.due(5, 10, 30_000)
    fields = dict(parse_qsl(note.body))
    merchant = await s.store.merchant("10001")
    assert merchant is not None and fields["sign"] == make_sign(fields, merchant.md5_key)
    assert (fields["orderId"], fields["status"]) == ("M1", "2")
    assert await s.store.due(6, 10, 30_000) == []  # leased to the first claimant
    await s.store.attempted(note.id, "HTTP 500", False, [10.0, 20.0], 7)
    assert await s.store.due(7 + 9_999, 10, 30_000) == []
    [retry] = await s.store.due(7 + 10_000, 10, 30_000)
    assert retry.attempts == 1
    await s.store.postpone(retry.id, 50_000)  # not counted as an attempt
    [later] = await s.store.due(50_000, 10, 30_000)
    await s.store.attempted(later.id, "success", True, [10.0, 20.0], 50_001)
    await s.store.attempted(later.id, "timeout", False, [10.0, 20.0], 50_002)  # late: recorded
    assert await s.store.notifications(system_id) == [
        ("delivered", 2, ["HTTP 500", "success", "timeout"])]


@pytest_twisted.ensureDeferred
async def test_an_undeliverable_notification_fails_after_its_retries(s: Stores) -> None:
    system_id, _, _ = await consign(s, "M2")
    await s.store.complete(system_id, None, "wrong card password", 3)
    for at in (3, 10_003, 30_003):
        [note] = await s.store.due(at, 10, 1_000)
        await s.store.attempted(note.id, "refused", False, [10.0, 20.0], at)
    assert await s.store.due(10**12, 10, 1_000) == []
    assert await s.store.notifications(system_id) == [("failed", 3, ["refused"] * 3)]
    assert await s.store.balance("10001") == 0 and await s.ledger.check() == []


@pytest_twisted.ensureDeferred
async def test_vouchers(s: Stores) -> None:
    [v] = await s.issuer.issue("P", 500, 1, 1)
    assert (await s.issuer.redeem(v.card_number, "000000000000", "P", 500, "R1", 2)).reason \
        == "wrong card password"
    assert (await s.issuer.redeem("9" * 16, v.password, "P", 500, "R1", 2)).reason == \
        "unknown card number"
    assert (await s.issuer.redeem(v.card_number, v.password, "Q", 500, "R1", 2)).ok is False
    assert (await s.issuer.redeem(v.card_number, v.password, "P", 400, "R1", 2)).ok is False
    assert await s.issuer.redeem(v.card_number, v.password, "P", 500, "R1", 3) == \
        Redemption(True, 500, "redeemed")
    # the same reference again: the same redemption; another: refused
    assert (await s.issuer.redeem(v.card_number, v.password, "P", 500, "R1", 4)).ok is True
    assert (await s.issuer.redeem(v.card_number, v.password, "P", 500, "R2", 4)).reason == \
        "card already redeemed"
    with pytest.raises(ValueError):
        s.issuer.issue("P", 0, 1, 1)


@pytest_twisted.ensureDeferred
async def test_two_daemons_complete_one_consignment_once(s: Stores, dsn: DSN) -> None:
    system_id, _, _ = await consign(s, "M3")
    others = [Stores(dsn) for _ in range(3)]
    try:
        results = await defer.gatherResults(
            [o.store.complete(system_id, 1000, "success", 9) for o in others])
        assert {r.state for r in results} == {ConsignmentState.SUCCESS}
        assert await s.store.balance("10001") == 950  # paid once
        assert len(await s.store.notifications(system_id)) == 1
        assert await s.ledger.check() == []
    finally:
        for o in others:
            o.close()


@pytest_twisted.ensureDeferred
async def test_a_merchants_order_id_moves_money_once_across_daemons(s: Stores,
                                                                    dsn: DSN) -> None:
    await s.store.add_merchant("10001", {"P": 9500}, 1)
    others = [Stores(dsn) for _ in range(3)]
    try:
        results = await defer.gatherResults([
            o.store.submit("10001", "DUP", "B1", "P", 1000, "", "", "n", "p", "m", 2)
            for o in others for _ in range(2)])
        assert sum(created for _, created in results) == 1
        assert len({c.system_order_id for c, _ in results}) == 1
    finally:
        for o in others:
            o.close()
    with pytest.raises(CardRefused):  # checked before the merchant's balance
        await s.store.topup("10001", "T1", 100, "5100000000000099", 3)
