"""
The load lifecycle, in one place: the states an order and its load go through, the moves
allowed between them, and the read-back decision (settle, reverse, or leave in doubt) from what
the card shows. Pure functions, no I/O: flows, the ledger and the operator's tool call them;
nobody else decides (docs/design.rst, "Money in doubt").

    order:  created --begin--> pending --settle--> loaded      (final)
                                       --reverse-> reversed    (final)

The card is the truth. A load is settled only on the card's proof that *this* load reached it
(CPU: the TAC of the load's own online serial; M1: the load record written into the purse's
sector before the value, naming the order); it is reversed only when the card proves the load
did not happen *and* can no longer happen. Anything else stays in doubt: visible, resolved by a
later read-back or by an operator's audited decision, never guessed. At most one load per card
is in doubt at a time, so a read-back never has to tell two of them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lnt.domain.records import Load, LoadState, OrderState

#: the moves an order may make; final states have none
ORDER_MOVES: dict[OrderState, frozenset[OrderState]] = {
    OrderState.CREATED: frozenset({OrderState.PENDING}),
    OrderState.PENDING: frozenset({OrderState.LOADED, OrderState.REVERSED}),
    OrderState.LOADED: frozenset(),
    OrderState.REVERSED: frozenset(),
}

#: an order paid for but not loaded for longer than this is money at risk (reported)
STALE_ORDER_MS = 86_400_000


class IllegalMove(Exception):
    """A state change the lifecycle does not allow (a bug or a race lost)."""


def may_move(current: OrderState, target: OrderState) -> bool:
    return target in ORDER_MOVES[current]


def require_move(current: OrderState, target: OrderState) -> None:
    if not may_move(current, target):
        raise IllegalMove(f"an order cannot go from {current.value} to {target.value}")


def order_state_of(load: LoadState) -> OrderState:
    """The order's state that goes with its load's."""
    return {LoadState.PENDING: OrderState.PENDING, LoadState.LOADED: OrderState.LOADED,
            LoadState.REVERSED: OrderState.REVERSED}[load]


class Verdict(StrEnum):
    SETTLE = "settle"
    REVERSE = "reverse"
    IN_DOUBT = "in doubt"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    #: why, in words an operator reads in the log and in C{lnt-admin check}
    reason: str
    #: SETTLE: the balance after the load, as the card proves it
    new_balance: int | None = None
    #: SETTLE of a CPU load: the card's TAC (hex)
    tac: str | None = None


def _settle(load: Load, reason: str, tac: str | None = None) -> Decision:
    return Decision(Verdict.SETTLE, reason, load.old_balance + load.amount, tac)


# -- CPU (PBOC purse) ---------------------------------------------------------------------

@dataclass(frozen=True)
class CPUReadBack:
    """
    What GET TRANSACTION PROOF for the load's online serial answered: the card's TAC of its
    last load if that load had this serial (C{tac}, and whether the core module verified it),
    else the card's current online serial (C{current_serial}). Neither: the answer was unusable.
    """

    tac: bytes | None = None
    tac_verified: bool = False
    current_serial: int | None = None


def decide_cpu(load: Load, seen: CPUReadBack) -> Decision:
    """
    Settle on a TAC that verifies for this load's serial; reverse when the card's online serial
    never moved (CREDIT never happened, and the read-back's SELECT ended the card's INITIALIZE,
    so the MAC2 that left can never load anything); in doubt otherwise.
    """
    if load.online_serial is None:
        raise ValueError("a CPU load without its online serial")
    if seen.tac is not None:
        if seen.tac_verified:
            return _settle(load, "the card's TAC for this load verifies", seen.tac.hex())
        return Decision(Verdict.IN_DOUBT, "the card's proof for this load does not verify")
    if seen.current_serial is None:
        return Decision(Verdict.IN_DOUBT, "the card gave no usable proof")
    if seen.current_serial == load.online_serial:
        return Decision(Verdict.REVERSE, "the card's online serial never moved: no credit")
    return Decision(Verdict.IN_DOUBT,
                    f"the card moved on (online serial {seen.current_serial}, the load had "
                    f"{load.online_serial}) and holds no proof of this load")


# -- M1 (value block purse with a load record) ----------------------------------------------

@dataclass(frozen=True)
class M1ReadBack:
    """
    What the purse's sector shows: the purse value (the primary block, else its backup when
    the primary is damaged; None when both are) and the load record (the order it names and the
    value it announces; None when blank or damaged).
    """

    value: int | None
    record_order: str | None
    record_value: int | None


def m1_write_ruled_out(load: Load, *, reader_pki: int, now_ms: int) -> bool:
    """
    Whether the load's write command can no longer reach the card. A reader executes a command
    only if its sequence number is above the last one it executed, under its current session
    key: once the reader of the terminal that got the write (same PKI card) has answered a later
    command, a late write is refused. Any other terminal rules it out only when the write's hold
    (its expiry plus clock margin, fixed by the daemon that sent it) has passed.
    """
    return reader_pki == load.pki_no or now_ms > load.hold_until_ms


def decide_m1(load: Load, seen: M1ReadBack, *, ruled_out: bool) -> Decision:
    """
    Settle only when the load record names this order and the purse holds the value the
    record announces, old + amount; reverse when the purse holds the old value and the write
    can no longer happen (whether or not the record was written: it is written first, so a
    record without the value is a write cut short); in doubt otherwise.
    """
    expected = load.old_balance + load.amount
    named = seen.record_order == load.order_no
    if seen.value is None:
        return Decision(Verdict.IN_DOUBT, "both purse blocks are damaged")
    if named and seen.record_value == expected and seen.value == expected:
        return _settle(load, "the card's load record names this order and the purse holds it")
    if seen.value == load.old_balance:
        if ruled_out:
            return Decision(Verdict.REVERSE, "the purse holds the old value and the write can "
                                             "no longer happen")
        return Decision(Verdict.IN_DOUBT, "the purse holds the old value but the write may "
                                          "still be in flight: retry after its hold")
    if named:
        return Decision(Verdict.IN_DOUBT, f"the load record names this order but the purse "
                                          f"shows {seen.value}, not {expected}")
    return Decision(Verdict.IN_DOUBT, f"the purse shows {seen.value} without a record of this "
                                      f"load (old value {load.old_balance})")


# -- operators ---------------------------------------------------------------------------------

def operator_decision(load: Load, verdict: Verdict, reason: str) -> Decision:
    """An operator's audited resolution of a load in doubt: settle or reverse, with a reason."""
    if load.state is not LoadState.PENDING:
        raise IllegalMove(f"the load of order {load.order_no} is {load.state.value}, not in "
                          "doubt")
    if verdict is Verdict.IN_DOUBT:
        raise ValueError("an operator settles or reverses")
    if not reason.strip():
        raise ValueError("an operator's decision needs a reason")
    if verdict is Verdict.SETTLE:
        return _settle(load, f"operator: {reason.strip()}")
    return Decision(Verdict.REVERSE, f"operator: {reason.strip()}")
