"""
The load lifecycle's pure rules (lnt.domain.loads) and the card checks (lnt.domain.eligibility),
alone and under hypothesis: no database, no socket. The expected verdicts are written out from the
rules in docs/protocol.rst, not computed by the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lnt.domain.eligibility import card_refusal
from lnt.domain.loads import (
    ORDER_MOVES,
    CPUReadBack,
    IllegalMove,
    M1ReadBack,
    Verdict,
    decide_cpu,
    decide_m1,
    m1_write_ruled_out,
    may_move,
    operator_decision,
    order_state_of,
    require_move,
)
from lnt.domain.records import (
    CPU_BALANCE_LIMIT,
    CardKind,
    CardState,
    IssuedCard,
    Load,
    LoadState,
    OrderState,
)

ORDER = "20261125000000000001"


def load(kind: CardKind = CardKind.M1, old: int = 500, amount: int = 50, serial: int | None = 7,
         pki: int = 70000472, hold: int = 1_000) -> Load:
    return Load(ORDER, pki, kind, "5100000000000002", "00000000a1b2c3d4", amount, old,
                serial if kind is CardKind.CPU else None, "000070000472", "20261125103000", 1,
                LoadState.PENDING, None, None, 0, 0, hold)


# -- states ----------------------------------------------------------------------------------

def test_order_moves() -> None:
    assert may_move(OrderState.CREATED, OrderState.PENDING)
    assert may_move(OrderState.PENDING, OrderState.LOADED)
    assert may_move(OrderState.PENDING, OrderState.REVERSED)
    for final in (OrderState.LOADED, OrderState.REVERSED):
        assert not ORDER_MOVES[final]
    with pytest.raises(IllegalMove):
        require_move(OrderState.CREATED, OrderState.LOADED)  # never loaded without pending
    with pytest.raises(IllegalMove):
        require_move(OrderState.REVERSED, OrderState.LOADED)
    assert order_state_of(LoadState.LOADED) is OrderState.LOADED


@given(st.sampled_from(list(OrderState)), st.sampled_from(list(OrderState)))
def test_property_final_states_are_final_and_no_state_is_skipped(a: OrderState, b: OrderState
                                                                   ) -> None:
    if a in (OrderState.LOADED, OrderState.REVERSED) or b is OrderState.CREATED:
        assert not may_move(a, b)
    if a is OrderState.CREATED and b in (OrderState.LOADED, OrderState.REVERSED):
        assert not may_move(a, b)


# -- CPU ----------------------------------------------------------------------------------------

def test_cpu_decisions() -> None:
    cpu = load(CardKind.CPU, old=1000, amount=500, serial=7)
    settled = decide_cpu(cpu, CPUReadBack(tac=bytes.fromhex("01020304"), tac_verified=True))
    assert (settled.verdict, settled.new_balance, settled.tac) == (Verdict.SETTLE, 1500,
                                                                   "01020304")
    forged = decide_cpu(cpu, CPUReadBack(tac=bytes(4), tac_verified=False))
    assert forged.verdict is Verdict.IN_DOUBT
    assert decide_cpu(cpu, CPUReadBack(current_serial=7)).verdict is Verdict.REVERSE
    assert decide_cpu(cpu, CPUReadBack(current_serial=8)).verdict is Verdict.IN_DOUBT
    assert decide_cpu(cpu, CPUReadBack()).verdict is Verdict.IN_DOUBT


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans(), st.booleans())
def test_property_cpu_settles_only_on_a_verified_tac(serial: int, current: int, has_tac: bool,
                                                     verified: bool) -> None:
    cpu = load(CardKind.CPU, serial=serial)
    seen = CPUReadBack(tac=b"\x00" * 4, tac_verified=verified) if has_tac else \
        CPUReadBack(current_serial=current)
    d = decide_cpu(cpu, seen)
    assert (d.verdict is Verdict.SETTLE) == (has_tac and verified)
    assert (d.verdict is Verdict.REVERSE) == (not has_tac and current == serial)


# -- M1 -----------------------------------------------------------------------------------------

def test_m1_decisions() -> None:
    m1 = load(old=500, amount=50)
    named = M1ReadBack(550, ORDER, 550)
    assert decide_m1(m1, named, ruled_out=False).verdict is Verdict.SETTLE
    assert decide_m1(m1, named, ruled_out=False).new_balance == 550
    # the value alone is no proof: another load of 50 looks the same
    other = M1ReadBack(550, "20261125000000000002", 550)
    assert decide_m1(m1, other, ruled_out=True).verdict is Verdict.IN_DOUBT
    assert decide_m1(m1, M1ReadBack(550, None, None), ruled_out=True).verdict is Verdict.IN_DOUBT
    # the old value: reversed only once the write cannot come any more
    untouched = M1ReadBack(500, "20261125000000000002", 500)
    assert decide_m1(m1, untouched, ruled_out=True).verdict is Verdict.REVERSE
    assert decide_m1(m1, untouched, ruled_out=False).verdict is Verdict.IN_DOUBT
    cut_short = M1ReadBack(500, ORDER, 550)  # the record written, the value not
    assert decide_m1(m1, cut_short, ruled_out=True).verdict is Verdict.REVERSE
    assert decide_m1(m1, M1ReadBack(None, ORDER, 550), ruled_out=True).verdict \
        is Verdict.IN_DOUBT
    assert decide_m1(m1, M1ReadBack(530, ORDER, 550), ruled_out=True).verdict \
        is Verdict.IN_DOUBT


@given(st.one_of(st.none(), st.integers(0, 2000)), st.sampled_from([None, ORDER,
       "20261125000000000002"]), st.one_of(st.none(), st.integers(0, 2000)), st.booleans(),
       st.integers(1, 1000), st.integers(0, 1000))
def test_property_m1_never_settles_without_this_loads_record(
        value: int | None, record_order: str | None, record_value: int | None, ruled_out: bool,
        amount: int, old: int) -> None:
    m1 = load(old=old, amount=amount)
    d = decide_m1(m1, M1ReadBack(value, record_order, record_value), ruled_out=ruled_out)
    if d.verdict is Verdict.SETTLE:
        assert record_order == ORDER and value == record_value == old + amount
        assert d.new_balance == old + amount
    if d.verdict is Verdict.REVERSE:
        assert value == old and ruled_out


def test_m1_write_ruled_out() -> None:
    m1 = load(pki=70000472, hold=10_000)
    assert m1_write_ruled_out(m1, reader_pki=70000472, now_ms=0)  # the same reader
    assert not m1_write_ruled_out(m1, reader_pki=70000473, now_ms=10_000)
    assert m1_write_ruled_out(m1, reader_pki=70000473, now_ms=10_001)


# -- operators -----------------------------------------------------------------------------------

def test_operator_decisions() -> None:
    m1 = load(old=500, amount=50)
    assert operator_decision(m1, Verdict.SETTLE, " seen on the card ").new_balance == 550
    assert operator_decision(m1, Verdict.REVERSE, "card shows 500").verdict is Verdict.REVERSE
    with pytest.raises(ValueError):
        operator_decision(m1, Verdict.REVERSE, "  ")
    with pytest.raises(ValueError):
        operator_decision(m1, Verdict.IN_DOUBT, "why not")
    done = Load(**{**m1.__dict__, "state": LoadState.LOADED})
    with pytest.raises(IllegalMove):
        operator_decision(done, Verdict.REVERSE, "oops")


# -- cards ---------------------------------------------------------------------------------------

def test_card_refusals() -> None:
    cpu = IssuedCard("5100000000000001", CardKind.CPU, "00112233445566ff")
    assert card_refusal(None) == "the card was not issued by this platform"
    closed = IssuedCard(cpu.logical_no, cpu.kind, cpu.physical_no, CardState.CLOSED)
    assert "closed" in (card_refusal(closed) or "")
    assert "m1" in (card_refusal(cpu, CardKind.M1) or "")
    assert "another physical card" in (card_refusal(cpu, CardKind.CPU, "00") or "")
    assert card_refusal(cpu, CardKind.CPU, "00112233445566FF", 1000, 500) is None
    assert "limit" in (card_refusal(cpu, balance=CPU_BALANCE_LIMIT - 10, amount=11) or "")
    assert card_refusal(cpu, balance=CPU_BALANCE_LIMIT - 10, amount=10) is None
    for reason in (card_refusal(None), card_refusal(closed)):
        assert reason is not None and cpu.logical_no not in reason  # never names the card
