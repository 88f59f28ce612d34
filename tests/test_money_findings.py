"""
Issue 9's findings, each reproduced exactly as it was found: the command-line tools against a
real daemon on a fresh demo data directory, the virtual card's value checked against the books
and ``lnt-admin check`` after each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lnt.messages.purse import value_block
from lnt.sim.virtualcards import M1Card, load_card
from tests.support import Daemon
from tests.test_consignment import Merchant, wait_for
from tests.test_recharge_e2e import CPU, M1, balance, check, order_of, tool

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data").start()
    yield d
    d.stop()


def terminal(data: Path, *args: str) -> tuple[int, str]:
    out = tool("lnt-terminal", *args, data=data)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("amounts", [(50, 50), (50, 70)])
def test_1_two_interrupted_m1_loads_are_never_both_settled(daemon: Daemon,
                                                            amounts: tuple[int, int]) -> None:
    data = daemon.data_dir
    first, second = amounts
    assert terminal(data, "signin")[0] == 0
    code, out = terminal(data, "recharge", "--amount", str(first), "--card", M1, "--interrupt",
                         "before-credit")
    assert code == 4 and balance(data, M1) == 500, out
    a = order_of(out)
    code, out = terminal(data, "recharge", "--amount", str(second), "--card", M1,
                         "--interrupt", "after-credit")
    # the second DD11 read the first load back first (reversed), then went ahead
    assert code == 4 and "platform busy: sending DD11 again" in out, out
    b = order_of(out)
    assert balance(data, M1) == 500 + second
    code, out = terminal(data, "resume", "--order", a, "--card", M1)
    assert code == 1 and "A5 (reversal succeeded)" in out, out
    code, out = terminal(data, "resume", "--order", b, "--card", M1)
    assert code == 0 and f"balance {500 + second} -> {500 + second}" in out, out
    accounts = check(data)
    assert -accounts["cards:float"] == second == balance(data, M1) - 500
    assert accounts["orders:reversed"] == -first


@pytest.mark.parametrize("card", [CPU, M1])
def test_2_the_first_recharge_after_a_new_signin(daemon: Daemon, card: str) -> None:
    data = daemon.data_dir
    before = balance(data, card)
    for _ in range(2):
        assert terminal(data, "signin")[0] == 0
        code, out = terminal(data, "recharge", "--amount", "10", "--card", card)
        assert code == 0, out
    assert balance(data, card) == before + 20 == before - check(data)["cards:float"]


def test_3_and_4_merchant_top_ups(daemon: Daemon) -> None:
    data = daemon.data_dir
    shop = Merchant(daemon)
    voucher = shop.vouchers[0]
    assert shop.tocard("EARN1", voucher["cardNumber"], voucher["cardPassword"], 10_000)[
        "code"] == 1
    wait_for(lambda: shop.balance() == 9500)
    buy = {"amount": "1000", "productCode": "LNT", "quantity": "1"}
    # 4: an unknown card and a closed card are refused before the merchant is debited
    unknown = shop.post("v2_queryBuy", {**buy, "orderId": "T0", "account": "5100000000000099"})
    assert unknown["code"] == -1 and "not issued" in unknown["msg"], unknown
    assert terminal(data, "card", "close", "--card", M1)[0] == 0
    closed = shop.post("v2_queryBuy", {**buy, "orderId": "T1", "account": M1})
    assert closed["code"] == -1 and "closed" in closed["msg"], closed
    assert shop.balance() == 9500
    assert terminal(data, "card", "open", "--card", M1)[0] == 0
    # 3: a top-up bought for the M1 card is loaded onto it
    answer = shop.post("v2_queryBuy", {**buy, "orderId": "T2", "account": M1})
    assert answer["code"] == 1, answer
    assert shop.balance() == 8500
    code, out = terminal(data, "resume", "--order", answer["data"]["systemOrderId"],
                         "--amount", "1000", "--card", M1)
    assert code == 0 and "balance 500 -> 1500" in out, out
    assert "Traceback" not in daemon.log() and "IndexError" not in daemon.log()
    assert check(data)["cards:float"] == -1000


def test_4_a_closed_card_takes_no_payment_for_a_load(daemon: Daemon) -> None:
    data = daemon.data_dir
    assert terminal(data, "card", "close")[0] == 0
    code, out = terminal(data, "recharge", "--amount", "100")
    assert code == 1 and "the card is closed" in out, out
    assert "DD11" not in out  # refused at the order, before any load
    listed = tool("lnt-admin", "check", data=data)
    assert listed.returncode == 0 and "payment without order" in listed.stdout
    assert "refused: the card is closed" in listed.stdout


def test_5_a_refused_orders_payment_is_listed_and_refunded(daemon: Daemon) -> None:
    data = daemon.data_dir
    code, out = terminal(data, "recharge", "--amount", "100000", "--biz-serial-no", "ORPHAN1")
    assert code == 1 and "exceeds the card limit" in out and "stays unused" in out, out
    listed = tool("lnt-admin", "check", data=data)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = re.search(r"payment without order\s+(7:ORPHAN1)\s+(\d+) fen", listed.stdout)
    assert row and row.group(2) == "100000", listed.stdout
    import json

    listed_payments = json.loads(tool("lnt-admin", "payments", "--without-order", "--json",
                                      data=data).stdout)
    assert [(p["payment"], p["money"], p["order"]) for p in listed_payments] == [
        ("7:ORPHAN1", 100000, None)]
    assert "exceeds the card limit" in listed_payments[0]["refusal"]
    refused = tool("lnt-admin", "payment", "refund", "7:ORPHAN1", "--reason", "", data=data)
    assert refused.returncode == 1  # no refund without a reason
    done = tool("lnt-admin", "payment", "refund", "7:ORPHAN1", "--reason",
                "the card cannot take it", "--operator", "alice", data=data)
    assert done.returncode == 0 and "100000 fen refunded by alice" in done.stdout, done.stderr
    after = tool("lnt-admin", "check", data=data)
    assert after.returncode == 0 and "ORPHAN1" not in after.stdout
    text = tool("lnt-admin", "payments", data=data).stdout
    assert "7:ORPHAN1" in text and "refunded" in text
    accounts = check(data)
    assert accounts["platform:7:receivable"] == 0 and accounts["orders:awaiting-load"] == 0
    again = tool("lnt-admin", "payment", "refund", "7:ORPHAN1", "--reason", "twice", data=data)
    assert again.returncode == 1 and "refunded already" in again.stderr


def test_6_a_loaded_order_resumed_with_another_card_is_a_refusal(daemon: Daemon) -> None:
    data = daemon.data_dir
    code, out = terminal(data, "recharge", "--amount", "500", "--card", CPU)
    assert code == 0, out
    order = order_of(out)
    code, out = terminal(data, "resume", "--order", order, "--card", M1)
    assert code == 1 and "98 (order card number does not match)" in out, out
    assert "loaded" not in out.split("refused")[-1]
    assert balance(data, M1) == 500 and balance(data, CPU) == 1500


def test_an_operator_resolves_a_load_the_card_cannot_prove(daemon: Daemon) -> None:
    """A load in doubt is listed with its age, resolved with an audited reason, never guessed."""
    data = daemon.data_dir
    code, out = terminal(data, "recharge", "--amount", "30", "--card", M1, "--interrupt",
                         "before-credit")
    order = order_of(out)
    # another system moves the purse meanwhile: the card proves nothing about this load
    card = load_card(data / "cards" / f"{M1}.json")
    assert isinstance(card, M1Card)
    card.blocks["8"] = card.blocks["9"] = value_block(530, 8).hex()
    card.save()
    code, out = terminal(data, "resume", "--order", order, "--card", M1)
    assert code == 1 and "A4 (reversal failed)" in out, out
    listed = tool("lnt-admin", "check", data=data)
    assert listed.returncode == 0 and re.search(rf"load in doubt\s+{order}\s+30 fen",
                                                listed.stdout), listed.stdout
    resolve = tool("lnt-admin", "load", "resolve", order, "--reverse", "--reason",
                   "purse value set by another system", "--operator", "bob", data=data)
    assert resolve.returncode == 0 and "reversed by bob" in resolve.stdout, resolve.stderr
    assert "load in doubt" not in tool("lnt-admin", "check", data=data).stdout
    again = tool("lnt-admin", "load", "resolve", order, "--settle", "--reason", "x", data=data)
    assert again.returncode == 1 and "not in doubt" in again.stderr
    assert check(data)["orders:reversed"] == -30
