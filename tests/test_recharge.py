"""
Recharge (DD11-DD22) and open/close card (DD73/DD74) in memory: the real flows and the real SQL
ledger (in-memory SQLite), the simulator's reader and virtual cards on the terminal side, a
Clock for time. Every check, every fault, and the ledger's books after each.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from lnt.crypto.securemsg import SMKeys
from lnt.domain.loads import Verdict
from lnt.domain.records import (
    CPU_BALANCE_LIMIT,
    CardKind,
    CardRefused,
    IssuedCard,
    LoadState,
    OrderState,
    PKICard,
    Platform,
)
from lnt.flows.context import FlowContext, FlowSettings
from lnt.flows.dispatch import DDServerFactory, FlowPlugin, FlowRegistry
from lnt.keyfiles import CardKeyFile, CoreKeys
from lnt.messages import cardscript
from lnt.messages.purse import DepositOp, Ins, parse_record, parse_value_block, value_block
from lnt.sim.reader import Reader
from lnt.sim.virtualcards import CPUCard, M1Card
from lnt.storage.database import result_of
from lnt.wire import InfoCode, Response, encode_bcd, response_header
from tests.fakes import Conn, SyncBackends, drive
from tests.support import USER, request

PKI, PKI2 = 70000472, 70000473
USER2 = b"TERMINAL-0000002"
FLOWS = [FlowPlugin("sign-in", 0xDD01, "lnt.flows.signin.SignInFlow"),
         FlowPlugin("recharge", 0xDD11, "lnt.flows.recharge.RechargeFlow"),
         FlowPlugin("deposit", 0xDD73, "lnt.flows.deposit.DepositFlow")]

Execute = Callable[[bytes], bytes]


class Harness:
    def __init__(self) -> None:
        import time

        self.clock = Clock()
        self.clock.advance(time.time())
        self.b = SyncBackends()
        self.ledger = self.b.ledger
        ctx = FlowContext(self.ledger, self.b.pki, self.b.core, self.clock,
                          FlowSettings(idle_timeout=30, flow_deadline=120))
        self.factory = DDServerFactory(FlowRegistry(FLOWS), ctx, 50)
        result_of(self.ledger.add_platform(Platform(7, "test")))
        self.biz = 0

    def terminal(self, pki: int = PKI, user: bytes = USER) -> Reader:
        key = CardKeyFile.generate(pki, 1, user, self.b.pki.platform_public_key())
        result_of(self.b.pki.register(PKICard(pki, user, key.public_key, 1)))
        reader = Reader(key)
        assert self.run(request(0xDD01, user=user), reader, user=user)[-1].code == 0
        reader.confirm_session()
        return reader

    def cpu(self, balance: int = 1000, core: CoreKeys | None = None) -> CPUCard:
        keys = core or self.b.core_keys
        return CPUCard.issue("5100000000000001", keys.master_load_key, keys.master_tac_key,
                             balance)

    def m1(self, balance: int = 500, core: CoreKeys | None = None) -> M1Card:
        uid = bytes.fromhex("A1B2C3D4")
        keys = core or self.b.core_keys
        return M1Card.issue("5100000000000002", uid,
                            {2: keys.m1_sector_key(uid.rjust(8, b"\x00"), 2)}, balance)

    def issue(self, card: CPUCard | M1Card) -> None:
        """Enter the card in the registry (replacing another card of its logical number)."""
        self.b.query("DELETE FROM cards WHERE logical_no = ?", (card.logical_no,))
        kind = CardKind.CPU if isinstance(card, CPUCard) else CardKind.M1
        result_of(self.ledger.register_card(IssuedCard(card.logical_no, kind,
                                                       card.physical.hex()), 0))

    def order(self, card: CPUCard | M1Card, amount: int, pki: int = PKI,
              register: bool = True) -> str:
        self.biz += 1
        if register and result_of(self.ledger.card(card.logical_no)) != IssuedCard(
                card.logical_no, CardKind.CPU if isinstance(card, CPUCard) else CardKind.M1,
                card.physical.hex()):
            self.issue(card)
        ident = cardscript.identify(cardscript.run(cardscript.IDENTIFY, card.apdu))
        result_of(self.ledger.register_payment(7, f"B{self.biz}", amount, "u", pki, "f", 0))
        order, _ = result_of(self.ledger.create_order(7, f"B{self.biz}", pki, ident, amount,
                                                      int(self.clock.seconds() * 1000)))
        return order.order_no

    def dd11(self, order_no: str, amount: int, pki: int = PKI, user: bytes = USER,
             app: int = 0) -> bytes:
        info = bytes((app,)) + struct.pack(">I", amount) + encode_bcd(order_no, 10)
        return request(0xDD11, info, pki=pki, user=user)

    def run(self, first: bytes, reader: Reader | Execute, user: bytes = USER,
            stop: Callable[[Response], bool] | None = None,
            tamper: Callable[[int, bytes], bytes] | None = None) -> list[Response]:
        execute = reader.execute if isinstance(reader, Reader) else reader
        self.conn = Conn(self.factory)
        return drive(self.conn, first, execute, user, stop, tamper)

    def load(self, order_no: str) -> LoadState | None:
        load = result_of(self.ledger.load(order_no))
        return None if load is None else load.state

    def state(self, order_no: str) -> OrderState:
        order = result_of(self.ledger.order(order_no))
        assert order is not None
        return order.state

    def books_ok(self) -> None:
        assert result_of(self.ledger.check()) == []
        assert sum(result_of(self.ledger.balances()).values()) == 0


def reseal(reader: Reader, fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """Change the plaintext of a protected answer and seal it again (what a forger with the
    session key could do; tests use it to reach the platform's checks behind the MAC)."""

    def change(answer: bytes) -> bytes:
        assert reader.session is not None
        sm = SMKeys.from_session(reader.session.session_key)
        seq, plaintext, sw = sm.open_answer(answer, None)
        return sm.seal_answer(seq, fn(plaintext), sw, len(answer))

    return change


def at(header: int, change: Callable[[bytes], bytes]) -> Callable[[int, bytes], bytes]:
    return lambda h, a: change(a) if h == header else a


def last(rs: list[Response]) -> tuple[int, int]:
    return rs[-1].header, rs[-1].code


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- the happy paths --------------------------------------------------------------------------

def test_cpu_load(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    rs = h.run(h.dd11(order, 500), reader)
    assert [r.header for r in rs] == [0xDD12, 0xDD14, 0xDD16, 0xDD18, 0xDD20, 0xDD22]
    assert [len(r.info) for r in rs] == [29, 85, 93, 61, 128, 30]
    assert last(rs) == (0xDD22, InfoCode.SUCCESS) and rs[-1].ends_flow
    assert parse_record(rs[-1].info) == (order, str(PKI), card.logical_no, 500, 1500)
    assert card.balance == 1500 and card.online_serial == 1
    assert h.state(order) is OrderState.LOADED and h.load(order) is LoadState.LOADED
    h.books_ok()
    assert result_of(h.ledger.balances())["cards:float"] == -500


def test_m1_load(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 300)
    sizes: dict[int, int] = {}

    def measure(header: int, answer: bytes) -> bytes:
        sizes[header] = len(answer)
        return answer

    rs = h.run(h.dd11(order, 300), reader, tamper=measure)
    assert [len(r.info) for r in rs] == [29, 85, 93, 128, 128, 30]
    assert sizes == {0xDD13: 82, 0xDD15: 74, 0xDD17: 106, 0xDD19: 34, 0xDD21: 74}
    assert parse_record(rs[-1].info)[3:] == (300, 800)
    assert parse_value_block(bytes.fromhex(card.blocks["8"])) == 800
    assert parse_value_block(bytes.fromhex(card.blocks["9"])) == 800
    h.books_ok()


def test_the_reader_sees_nothing_in_clear(h: Harness) -> None:
    """The M1 key and the card data travel only inside secure messaging."""
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 300)
    rs = h.run(h.dd11(order, 300), reader)
    key = h.b.core_keys.m1_sector_key(card.physical, 2)
    assert all(key not in r.info for r in rs)
    assert all(encode_bcd(card.logical_no, 8) not in r.info for r in rs[:-1])


# -- DD11 checks --------------------------------------------------------------------------------

def test_dd11_checks(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu()
    order = h.order(card, 500)
    assert last(h.run(h.dd11(order, 500, pki=123), reader)) == (0xDD12, InfoCode.NOT_SIGNED_IN)
    assert last(h.run(h.dd11(order, 500, app=1), reader)) == (0xDD12,
                                                             InfoCode.APPLICATION_TYPE_UNKNOWN)
    assert last(h.run(h.dd11("20990101000000000001", 500), reader)) == (
        0xDD12, InfoCode.ORDER_NOT_FOUND)
    assert last(h.run(h.dd11(order, 501), reader)) == (0xDD12, InfoCode.ORDER_AMOUNT_MISMATCH)
    bad_bcd = request(0xDD11, b"\x00" + struct.pack(">I", 500) + b"\xaa" * 10, pki=PKI)
    assert last(h.run(bad_bcd, reader)) == (0xDD12, InfoCode.ORDER_NOT_FOUND)
    short = request(0xDD11, b"\x00" * 14, pki=PKI)
    assert last(h.run(short, reader)) == (0xDD12, InfoCode.READER_BAD_LENGTH)
    h.clock.advance(25 * 3600)  # the session expired
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD12, InfoCode.NOT_SIGNED_IN)
    assert h.state(order) is OrderState.CREATED


def test_dd13_card_checks(h: Harness) -> None:
    reader = h.terminal()
    card = h.cpu()
    order = h.order(card, 500)
    reader.presented = h.m1()  # another card on the reader
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD14, InfoCode.ORDER_CARD_MISMATCH)
    reader.presented = None
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD14, InfoCode.READER_ERROR)
    reader.presented = card
    odd_purse = reseal(reader, lambda p: p[:26] + b"\x07" + p[27:])  # purse type byte
    assert last(h.run(h.dd11(order, 500), reader, tamper=at(0xDD13, odd_purse))) == (
        0xDD14, InfoCode.PURSE_TYPE_UNKNOWN)
    assert h.state(order) is OrderState.CREATED and h.load(order) is None


@pytest.mark.parametrize("stage", [0xDD13, 0xDD15, 0xDD17])
@pytest.mark.parametrize("fault", ["short", "garbage", "error-sw", "bad-mac"])
def test_reader_faults_before_the_load_move_no_money(h: Harness, stage: int, fault: str) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    change = {
        "short": lambda a: a[:-3],
        "garbage": lambda a: bytes(len(a) - 2) + b"\x90\x00",
        "error-sw": lambda a: a[:-2] + b"\x6a\x82",
        "bad-mac": lambda a: a[:10] + bytes((a[10] ^ 1,)) + a[11:],
    }[fault]
    rs = h.run(h.dd11(order, 500), reader, tamper=at(stage, change))
    code = InfoCode.READER_BAD_LENGTH if fault == "short" else InfoCode.READER_ERROR
    assert last(rs) == (response_header(stage), code)
    assert card.balance == 1000 and h.state(order) is OrderState.CREATED and h.load(order) is None
    h.books_ok()
    # and the order can still be loaded
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD22, InfoCode.SUCCESS)


@pytest.mark.parametrize("fault", ["short", "garbage", "bad-mac"])
def test_garbage_after_mac2_is_settled_by_the_read_back(h: Harness, fault: str) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    change = {"short": lambda a: a[:-3], "garbage": lambda a: bytes(len(a) - 2) + b"\x90\x00",
              "bad-mac": lambda a: a[:10] + bytes((a[10] ^ 1,)) + a[11:]}[fault]
    rs = h.run(h.dd11(order, 500), reader, tamper=at(0xDD19, change))
    assert last(rs) == (0xDD22, InfoCode.SUCCESS)  # the card's proof settled it
    assert card.balance == 1500 and h.load(order) is LoadState.LOADED
    h.books_ok()


def test_garbage_read_back_leaves_it_pending_then_resume_settles(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    wreck = at(0xDD19, lambda a: bytes(len(a) - 2) + b"\x90\x00")
    rs = h.run(h.dd11(order, 500), reader,
               tamper=lambda hd, a: wreck(hd, a) if hd == 0xDD19 else
               (bytes(len(a)) if hd == 0xDD21 else a))
    assert last(rs) == (0xDD22, InfoCode.READER_ERROR)
    assert h.load(order) is LoadState.PENDING and card.balance == 1500
    h.books_ok()
    rs = h.run(h.dd11(order, 500), reader)
    assert [r.header for r in rs] == [0xDD12, 0xDD20, 0xDD22]
    assert last(rs) == (0xDD22, InfoCode.SUCCESS) and h.load(order) is LoadState.LOADED
    h.books_ok()


def test_forged_mac1_gets_no_mac2(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)

    def forge(plaintext: bytes) -> bytes:  # flip a bit of MAC1 inside the relayed answer
        return plaintext[:15] + bytes((plaintext[15] ^ 1,)) + plaintext[16:]

    rs = h.run(h.dd11(order, 500), reader, tamper=at(0xDD17, reseal(reader, forge)))
    assert last(rs) == (0xDD18, InfoCode.BACKEND_ERROR)
    assert all(r.header != 0xDD18 or not r.info for r in rs)
    assert h.load(order) is None and card.balance == 1000


def test_card_of_another_issuer_is_refused(h: Harness) -> None:
    reader = h.terminal()
    other = CoreKeys(bytes(16), b"\x01" * 16, b"\x02" * 16)
    reader.presented = card = h.cpu(1000, core=other)
    order = h.order(card, 500)
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD18, InfoCode.BACKEND_ERROR)
    reader.presented = m1 = h.m1(500, core=other)
    order = h.order(m1, 100)
    assert last(h.run(h.dd11(order, 100), reader)) == (0xDD18, InfoCode.READER_ERROR)
    assert h.load(order) is None


def test_cpu_limit(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(CPU_BALANCE_LIMIT - 100)
    with pytest.raises(CardRefused):  # refused before an order (and its money) exists
        h.order(card, 101)
    card.balance -= 100
    order = h.order(card, 101)
    card.balance += 100  # the card was loaded elsewhere since: DD13 still checks
    assert last(h.run(h.dd11(order, 101), reader)) == (0xDD14, InfoCode.BACKEND_ERROR)
    order = h.order(card, 100)
    assert last(h.run(h.dd11(order, 100), reader)) == (0xDD22, InfoCode.SUCCESS)
    assert card.balance == CPU_BALANCE_LIMIT


# -- lost outcomes, resume, reversal --------------------------------------------------------------

def interrupted(reader: Reader, after_credit: bool) -> Execute:
    def execute(command: bytes) -> bytes:
        if command[1:3] in (bytes((0xBB, Ins.CPU_LOAD)), bytes((0xBB, Ins.M1_LOAD))):
            if after_credit:
                reader.execute(command)
            raise ConnectionAbortedError("terminal lost the connection")
        return reader.execute(command)

    return execute


def drop_at_load(h: Harness, reader: Reader, order: str, amount: int, after: bool) -> None:
    with pytest.raises(ConnectionAbortedError):
        h.run(h.dd11(order, amount), interrupted(reader, after))
    h.conn.proto.connectionLost()
    assert h.load(order) is LoadState.PENDING  # durable before MAC2 left
    h.books_ok()


def test_lost_after_credit_is_settled_on_resume(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    drop_at_load(h, reader, order, 500, after=True)
    assert card.balance == 1500
    rs = h.run(h.dd11(order, 500), reader)
    assert [r.header for r in rs] == [0xDD12, 0xDD20, 0xDD22]
    assert parse_record(rs[-1].info)[3:] == (500, 1500)
    assert h.load(order) is LoadState.LOADED
    # resuming again reads the card (it must be the order's) and answers the record
    rs = h.run(h.dd11(order, 500), reader)
    assert [r.header for r in rs] == [0xDD12, 0xDD22] and rs[-1].code == InfoCode.SUCCESS
    assert card.balance == 1500
    h.books_ok()


def test_lost_before_credit_is_reversed_on_resume(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    drop_at_load(h, reader, order, 500, after=False)
    rs = h.run(h.dd11(order, 500), reader)
    assert last(rs) == (0xDD22, InfoCode.REVERSAL_DONE)
    assert h.state(order) is OrderState.REVERSED and card.balance == 1000
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD12, InfoCode.REVERSAL_DONE)
    balances = result_of(h.ledger.balances())
    assert balances["orders:reversed"] == -500 and "cards:float" not in balances
    h.books_ok()


def test_a_new_load_resolves_the_cards_load_in_doubt_first(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    first = h.order(card, 500)
    drop_at_load(h, reader, first, 500, after=False)
    second = h.order(card, 200)
    # the second order's DD11 reads the first load back (DD20) and resolves it, then waits
    rs = h.run(h.dd11(second, 200), reader)
    assert [r.header for r in rs] == [0xDD12, 0xDD20, 0xDD22]
    assert last(rs) == (0xDD22, InfoCode.SYSTEM_BUSY)
    assert h.state(first) is OrderState.REVERSED and h.load(second) is None
    assert last(h.run(h.dd11(second, 200), reader)) == (0xDD22, InfoCode.SUCCESS)
    assert last(h.run(h.dd11(first, 500), reader)) == (0xDD12, InfoCode.REVERSAL_DONE)
    assert card.balance == 1200 == 1000 - result_of(h.ledger.balances())["cards:float"]
    h.books_ok()


def test_a_load_the_card_cannot_prove_stays_in_doubt_and_blocks_the_card(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    first = h.order(card, 500)
    drop_at_load(h, reader, first, 500, after=False)
    card.online_serial += 1  # loaded elsewhere since: the card proves nothing of this load
    assert last(h.run(h.dd11(first, 500), reader)) == (0xDD22, InfoCode.REVERSAL_FAILED)
    assert h.load(first) is LoadState.PENDING  # never guessed
    second = h.order(card, 200)
    assert last(h.run(h.dd11(second, 200), reader)) == (0xDD22, InfoCode.REVERSAL_FAILED)
    assert h.load(second) is None and card.balance == 1000  # no second load in doubt
    [risk] = result_of(h.ledger.money_at_risk(0))
    assert (risk.what, risk.reference, risk.amount) == ("load in doubt", first, 500)
    h.books_ok()
    # an operator decides, with a reason that is kept
    result_of(h.ledger.resolve_load(first, Verdict.REVERSE, "card shows no load", "ops", 1))
    assert result_of(h.ledger.decisions(first)) == [("load", "reverse", "card shows no load",
                                                     "ops", 1)]
    assert last(h.run(h.dd11(second, 200), reader)) == (0xDD22, InfoCode.SUCCESS)
    assert card.balance == 1200 and result_of(h.ledger.money_at_risk(0)) == []
    h.books_ok()


def test_m1_resume_by_the_same_terminal_rules_the_write_out_at_once(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 100)
    drop_at_load(h, reader, order, 100, after=False)
    # the reader executed the read-back under a later seq: the lost write can never run
    assert last(h.run(h.dd11(order, 100), reader)) == (0xDD22, InfoCode.REVERSAL_DONE)
    assert parse_value_block(bytes.fromhex(card.blocks["8"])) == 500
    h.books_ok()


def test_m1_resume_by_another_terminal_waits_out_the_write_window(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 100)
    drop_at_load(h, reader, order, 100, after=False)
    other = h.terminal(PKI2, USER2)
    other.presented = card
    resume = h.dd11(order, 100, pki=PKI2, user=USER2)
    assert last(h.run(resume, other, user=USER2)) == (0xDD22, InfoCode.REVERSAL_FAILED)
    assert h.load(order) is LoadState.PENDING
    h.clock.advance(181)  # flow deadline 120 s + clock margin 60 s
    assert last(h.run(resume, other, user=USER2)) == (0xDD22, InfoCode.REVERSAL_DONE)
    assert parse_value_block(bytes.fromhex(card.blocks["8"])) == 500
    h.books_ok()


def test_m1_hold_is_the_sending_daemons_not_the_resumers(h: Harness) -> None:
    """A daemon with a shorter flow deadline must not rule out a write sent by another."""
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 100)
    drop_at_load(h, reader, order, 100, after=False)  # sent with flow deadline 120 s
    other = h.terminal(PKI2, USER2)
    other.presented = card
    hasty = DDServerFactory(FlowRegistry(FLOWS), FlowContext(
        h.ledger, h.b.pki, h.b.core, h.clock, FlowSettings(flow_deadline=5)), 50)
    h.factory, original = hasty, h.factory
    resume = h.dd11(order, 100, pki=PKI2, user=USER2)
    h.clock.advance(70)  # past 5 + 60 s, within 120 + 60 s
    assert last(h.run(resume, other, user=USER2)) == (0xDD22, InfoCode.REVERSAL_FAILED)
    h.clock.advance(111)
    assert last(h.run(resume, other, user=USER2)) == (0xDD22, InfoCode.REVERSAL_DONE)
    h.factory = original
    h.books_ok()


@pytest.mark.parametrize("amounts", [(50, 50), (50, 70)])
def test_m1_two_lost_loads_are_never_confused(h: Harness, amounts: tuple[int, int]) -> None:
    """Issue 9, finding 1: one load lost before the write, one after; resumed in any order."""
    a_amount, b_amount = amounts
    reader = h.terminal()
    other = h.terminal(PKI2, USER2)
    reader.presented = other.presented = card = h.m1(500)
    a = h.order(card, a_amount)
    drop_at_load(h, reader, a, a_amount, after=False)
    b = h.order(card, b_amount, pki=PKI2)
    # another terminal cannot rule A's write out within its hold: B is refused, A in doubt
    assert last(h.run(h.dd11(b, b_amount, pki=PKI2, user=USER2), other, user=USER2)) == (
        0xDD22, InfoCode.REVERSAL_FAILED)
    assert h.load(b) is None
    # once A's write hold has passed, B's DD11 rules A out (reversed), then B goes through
    h.clock.advance(181)
    assert last(h.run(h.dd11(b, b_amount, pki=PKI2, user=USER2), other, user=USER2)) == (
        0xDD22, InfoCode.SYSTEM_BUSY)
    assert h.state(a) is OrderState.REVERSED
    with pytest.raises(ConnectionAbortedError):
        h.run(h.dd11(b, b_amount, pki=PKI2, user=USER2), interrupted(other, True), user=USER2)
    h.conn.proto.connectionLost()
    assert parse_value_block(bytes.fromhex(card.blocks["8"])) == 500 + b_amount
    for order, amount in ((a, a_amount), (b, b_amount), (a, a_amount)):
        h.run(h.dd11(order, amount), reader)
    assert (h.state(a), h.state(b)) == (OrderState.REVERSED, OrderState.LOADED)
    assert -result_of(h.ledger.balances())["cards:float"] == b_amount
    assert parse_value_block(bytes.fromhex(card.blocks["8"])) == 500 + b_amount
    h.books_ok()


def test_m1_value_without_this_loads_record_is_not_a_proof(h: Harness) -> None:
    """A purse holding old + amount settles nothing unless the load record names the order."""
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 50)
    drop_at_load(h, reader, order, 50, after=False)
    card.blocks["8"] = card.blocks["9"] = value_block(550, 8).hex()  # someone else's 50
    assert last(h.run(h.dd11(order, 50), reader)) == (0xDD22, InfoCode.REVERSAL_FAILED)
    assert h.load(order) is LoadState.PENDING
    h.books_ok()


@pytest.mark.parametrize("torn", ["record", "value"])
def test_m1_write_cut_short(h: Harness, torn: str) -> None:
    """The card pulled away after the load record (value unchanged: reversed) or after the
    primary value block (backup old: the primary is the proof, settled)."""
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 50)
    reader.m1_interrupt = torn
    with pytest.raises(ConnectionAbortedError):
        h.run(h.dd11(order, 50), reader)
    h.conn.proto.connectionLost()
    reader.m1_interrupt = None
    rs = h.run(h.dd11(order, 50), reader)
    if torn == "record":
        assert last(rs) == (0xDD22, InfoCode.REVERSAL_DONE)
        assert parse_value_block(bytes.fromhex(card.blocks["8"])) == 500
    else:
        assert last(rs) == (0xDD22, InfoCode.SUCCESS) and parse_record(rs[-1].info)[4] == 550
    h.books_ok()


def test_first_recharge_after_a_new_signin(h: Harness) -> None:
    """Issue 9, finding 2: the reader's seqs count per session key."""
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    assert last(h.run(h.dd11(h.order(card, 10), 10), reader))[1] == InfoCode.SUCCESS
    assert h.run(request(0xDD01), reader)[-1].code == 0
    reader.confirm_session()
    assert last(h.run(h.dd11(h.order(card, 10), 10), reader)) == (0xDD22, InfoCode.SUCCESS)
    h.books_ok()


def test_a_loaded_order_resumed_with_another_card_is_refused(h: Harness) -> None:
    """Issue 9, finding 6: the record of a loaded order is given only for its own card."""
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD22, InfoCode.SUCCESS)
    reader.presented = h.m1(500)
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD14, InfoCode.ORDER_CARD_MISMATCH)
    h.books_ok()


def test_m1_lost_after_write_and_torn_write_settle(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.m1(500)
    order = h.order(card, 100)
    drop_at_load(h, reader, order, 100, after=True)
    assert last(h.run(h.dd11(order, 100), reader)) == (0xDD22, InfoCode.SUCCESS)
    order = h.order(card, 50)
    reader.m1_interrupt = "value"  # primary block written, backup not
    with pytest.raises(ConnectionAbortedError):
        h.run(h.dd11(order, 50), reader)
    h.conn.proto.connectionLost()
    reader.m1_interrupt = None
    assert parse_value_block(bytes.fromhex(card.blocks["9"])) == 600
    rs = h.run(h.dd11(order, 50), reader)
    assert last(rs) == (0xDD22, InfoCode.SUCCESS) and parse_record(rs[-1].info)[4] == 650
    h.books_ok()


def test_two_terminals_race_for_one_order(h: Harness) -> None:
    a = h.terminal()
    b = h.terminal(PKI2, USER2)
    a.presented = card = h.cpu(1000)
    b.presented = replace(card)  # the same card, presented at another terminal
    order = h.order(card, 500)
    at_dd16 = lambda r: r.header == 0xDD16  # noqa: E731
    ra = h.run(h.dd11(order, 500), a, stop=at_dd16)
    conn_a = h.conn
    rb = h.run(h.dd11(order, 500, pki=PKI2, user=USER2), b, user=USER2, stop=at_dd16)
    conn_b = h.conn
    ans_a = a.execute(b"\x40" + ra[-1].info)
    ans_b = b.execute(b"\x40" + rb[-1].info)
    [win] = conn_a.send(request(0xDD17, ans_a, pki=PKI))
    [lose] = conn_b.send(request(0xDD17, ans_b, pki=PKI2, user=USER2))
    assert (win.header, win.code) == (0xDD18, InfoCode.SUCCESS)
    assert (lose.header, lose.code) == (0xDD18, InfoCode.ORDER_MISSING) and not lose.info
    h.books_ok()


def test_resume_by_another_terminal(h: Harness) -> None:
    a = h.terminal()
    a.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    drop_at_load(h, a, order, 500, after=True)
    b = h.terminal(PKI2, USER2)
    b.presented = card
    rs = h.run(h.dd11(order, 500, pki=PKI2, user=USER2), b, user=USER2)
    assert last(rs) == (0xDD22, InfoCode.SUCCESS)
    h.books_ok()


def test_a_replayed_load_command_does_nothing(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    captured: dict[int, bytes] = {}
    rs = h.run(h.dd11(order, 500), reader)
    captured = {r.header: r.info for r in rs}
    answer = reader.execute(b"\x40" + captured[0xDD18])
    assert answer[-2:] == b"\x69\x82"  # the reader refuses a seq it has executed
    assert card.balance == 1500


# -- open / close card ------------------------------------------------------------------------

def test_open_close_card(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    init = reader.deposit_init(DepositOp.CLOSE)
    assert len(init) == 176
    rs = h.run(request(0xDD73, init, pki=PKI), reader)
    assert [(r.header, r.code, len(r.info)) for r in rs] == [(0xDD74, 0, 152)]
    reader.execute(b"\x40" + rs[0].info)
    assert card.deposit_flag == DepositOp.CLOSE
    assert result_of(h.ledger.deposit_flag(card.logical_no)) == DepositOp.CLOSE
    order = h.order(card, 100)
    assert last(h.run(h.dd11(order, 100), reader)) == (0xDD14, InfoCode.BACKEND_ERROR)
    # a replayed DD73 is refused
    assert last(h.run(request(0xDD73, init, pki=PKI), reader)) == (0xDD74,
                                                                    InfoCode.READER_ERROR)
    rs = h.run(request(0xDD73, reader.deposit_init(DepositOp.OPEN), pki=PKI), reader)
    reader.execute(b"\x40" + rs[0].info)
    assert card.deposit_flag == DepositOp.OPEN
    assert last(h.run(h.dd11(order, 100), reader)) == (0xDD22, InfoCode.SUCCESS)
    assert last(h.run(request(0xDD73, bytes(176), pki=PKI), reader)) == (0xDD74,
                                                                          InfoCode.READER_ERROR)
    assert last(h.run(request(0xDD73, bytes(175), pki=PKI), reader)) == (
        0xDD74, InfoCode.READER_BAD_LENGTH)


def test_a_pending_load_is_resolved_even_if_the_card_was_closed(h: Harness) -> None:
    reader = h.terminal()
    reader.presented = card = h.cpu(1000)
    order = h.order(card, 500)
    drop_at_load(h, reader, order, 500, after=True)
    rs = h.run(request(0xDD73, reader.deposit_init(DepositOp.CLOSE), pki=PKI), reader)
    reader.execute(b"\x40" + rs[0].info)
    assert card.deposit_flag == DepositOp.CLOSE
    assert last(h.run(h.dd11(order, 500), reader)) == (0xDD22, InfoCode.SUCCESS)
    h.books_ok()


# -- the books under any sequence ------------------------------------------------------------------

def load_with_retries(h: Harness, order: str, amount: int, execute: Reader | Execute
                      ) -> tuple[int, int] | None:
    """DD11 as a terminal sends it: again after DD (busy); None when the connection dropped."""
    for _ in range(3):
        try:
            rs = h.run(h.dd11(order, amount), execute)
        except ConnectionAbortedError:
            h.conn.proto.connectionLost()
            return None
        if last(rs)[1] != InfoCode.SYSTEM_BUSY:
            return last(rs)
    return last(rs)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(["cpu", "m1"]), st.lists(st.tuples(st.integers(1, 900), st.sampled_from(
    ["load", "lost-before", "lost-after", "lost-before+resume", "lost-after+resume",
     "resume-twice"])), min_size=1, max_size=6))
def test_property_money_is_never_created_or_lost(kind: str, steps: list[tuple[int, str]]
                                                  ) -> None:
    """The card against the books: after any sequence and a final resume of every order, the
    card holds exactly what the ledger says reached it, and nothing stays in doubt."""
    h = Harness()
    reader = h.terminal()
    reader.presented = card = h.cpu(0) if kind == "cpu" else h.m1(0)

    def value() -> int:
        if isinstance(card, CPUCard):
            return card.balance
        v = parse_value_block(bytes.fromhex(card.blocks["8"]))
        assert v is not None
        return v

    orders: list[tuple[str, int]] = []
    for amount, what in steps:
        try:
            order = h.order(card, amount)
        except CardRefused:
            continue  # over the card's limit: no order, no money
        orders.append((order, amount))
        execute = reader if what == "load" else interrupted(reader, "after" in what)
        outcome = load_with_retries(h, order, amount, execute)
        if what == "load":
            assert outcome == (0xDD22, InfoCode.SUCCESS)
        if "resume" in what:
            for _ in range(2 if what == "resume-twice" else 1):
                load_with_retries(h, order, amount, reader)
        h.books_ok()
        assert len(result_of(h.ledger.money_at_risk(0))) <= len(orders)
    for order, amount in orders:
        load_with_retries(h, order, amount, reader)
    h.books_ok()
    assert not [r for r in result_of(h.ledger.money_at_risk(0)) if r.what == "load in doubt"]
    assert value() == -result_of(h.ledger.balances()).get("cards:float", 0)
