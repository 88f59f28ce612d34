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
