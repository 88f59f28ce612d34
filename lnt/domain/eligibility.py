"""
Which card may take an order: the checks made before any money is accepted for it, so that no
payment or merchant debit is taken for a load that can never happen. Pure, no I/O.
"""

from __future__ import annotations

from lnt.domain.records import CPU_BALANCE_LIMIT, CardKind, CardState, IssuedCard


def card_refusal(issued: IssuedCard | None, kind: CardKind | None = None,
                 physical_no: str | None = None, balance: int | None = None,
                 amount: int = 0) -> str | None:
    """
    Why the card cannot take a load of C{amount} fen, or C{None}. C{kind}, C{physical_no} and
    C{balance} are what the card itself showed, when it was read (the order API); a merchant's
    top-up names the card's logical number only. The reasons never name the card: they reach
    clients and logs.
    """
    if issued is None:
        return "the card was not issued by this platform"
    if issued.state is CardState.CLOSED:
        return "the card is closed (its deposit was refunded): open it first"
    if kind is not None and kind is not issued.kind:
        return f"the card is an {issued.kind.value} card, not {kind.value}"
    if physical_no is not None and physical_no.lower() != issued.physical_no.lower():
        return "the card read is not the card issued under this number (another physical card)"
    if issued.kind is CardKind.CPU and balance is not None \
            and balance + amount > CPU_BALANCE_LIMIT:
        return (f"card balance {balance} + {amount} exceeds the card limit of "
                f"{CPU_BALANCE_LIMIT} fen")
    return None
