"""
The plain values that cross the interfaces of L{lnt.interfaces}: immutable, with no behaviour
that touches a database or a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class AlreadyExists(Exception):
    """A record with this key exists already."""


class CardStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class PKICard:
    """A terminal's PKI card as the platform knows it."""

    pki_no: int
    #: the operator user ID (16 bytes) the card is bound to; frames must carry it
    user_id: bytes
    #: 64 bytes, X || Y of a P-256 point
    public_key: bytes = field(repr=False)
    #: the C{crt_version} of the order API; a reader reporting another version is refused
    key_version: int
    status: CardStatus = CardStatus.ACTIVE

    @property
    def active(self) -> bool:
        return self.status is CardStatus.ACTIVE


class MACError(Exception):
    """A card's MAC (MAC1, TAC) does not verify: the card or the message is not genuine."""


@dataclass(frozen=True)
class CPULoad:
    """
    One PBOC purse load (圈存) as the core module sees it: the card's INITIALIZE FOR LOAD answer
    and what the platform adds (docs/protocol.rst, "Recharge").
    """

    #: the card's application serial, 8 bytes: what the card's load key is diversified with
    card_serial: bytes
    key_index: int
    amount: int
    #: 6 bytes
    terminal_id: bytes
    old_balance: int
    online_serial: int
    key_version: int
    algorithm: int
    #: 4 bytes drawn by the card
    random: bytes = field(repr=False)
    mac1: bytes = field(repr=False)
    #: date (4, BCD YYYYMMDD) and time (3, BCD hhmmss) of the load
    when: bytes = b""


@dataclass(frozen=True)
class Session:
    """A completed sign-in: what later flows and the order API check."""

    pki_no: int
    user_id: bytes
    #: the handshake serial (握手流水号), 16 decimal digits
    serial: str
    session_key: bytes = field(repr=False)
    created_ms: int
    expires_ms: int

    def live(self, now_ms: int) -> bool:
        return now_ms < self.expires_ms
