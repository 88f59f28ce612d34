"""
The plain values that cross the interfaces of L{lnt.interfaces}: immutable, with no behaviour
that touches a database or a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta, timezone
from enum import StrEnum


class AlreadyExists(Exception):
    """A record with this key exists already."""


#: the platform's business day and the order API's dates are China time (UTC+8)
CHINA = timezone(timedelta(hours=8))

#: a CPU card's purse never holds more than this many fen (the field terminal's limit)
CPU_BALANCE_LIMIT = 100_000


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


class CardKind(StrEnum):
    CPU = "cpu"
    M1 = "m1"


@dataclass(frozen=True)
class CardIdentity:
    kind: CardKind
    #: 16 decimal digits
    logical_no: str
    #: 16 hex digits (M1: the 4-byte UID left-padded with zero bytes)
    physical_no: str
    #: the purse balance the card reported (CPU cards; None for M1)
    balance: int | None


class Conflict(Exception):
    """An idempotency key (biz_serial_no, orderId) reused with different fields."""


class CardState(StrEnum):
    ACTIVE = "active"
    #: its deposit was refunded (DD73/DD74 close): it takes no load until opened again
    CLOSED = "closed"


@dataclass(frozen=True)
class IssuedCard:
    """A transit card the platform knows it issued: only these take orders."""

    logical_no: str
    kind: CardKind
    #: 16 hex digits (M1: the 4-byte UID left-padded with zero bytes)
    physical_no: str
    state: CardState = CardState.ACTIVE


class CardRefused(Exception):
    """The card cannot take this order (unknown, closed, another card, over its limit)."""


@dataclass(frozen=True)
class AtRisk:
    """
    Money the platform holds without a final answer: a load in doubt, a payment without an
    order, an order paid but not loaded for long. Reported, not an inconsistency.
    """

    #: "load in doubt", "payment without order" or "order not loaded"
    what: str
    reference: str
    amount: int
    since_ms: int
    note: str


@dataclass(frozen=True)
class ApiContext:
    """What an order-API call needs to know first, read together: its platform, the terminal's
    PKI card and its live session (each None when there is none)."""

    platform: Platform | None
    card: PKICard | None
    session: Session | None


@dataclass(frozen=True)
class SecureStart:
    """What a card flow's first frame needs of the ledger, read together: the terminal's live
    session, the first of the secure-messaging sequence numbers reserved for the flow, and
    (for a recharge's DD11) the order it names and the load in doubt on that order's card."""

    session: Session
    first_seq: int
    order: Order | None
    earlier: Load | None


@dataclass(frozen=True)
class PaymentClaim:
    """A payment an order-API call asks the ledger to register, once its checks of the call's
    L{ApiContext} passed (L{lnt.interfaces.ILedger.register_admitted_payment})."""

    biz_serial_no: str
    money: int
    user_id: str
    pki_no: int
    #: a digest of the request's fields: a repeat must carry the same
    fingerprint: str


@dataclass(frozen=True)
class OrderClaim:
    """An order an order-API call asks the ledger to create for a payment, once its checks of
    the call's L{ApiContext} passed (L{lnt.interfaces.ILedger.create_admitted_order})."""

    biz_serial_no: str
    pki_no: int
    card: CardIdentity
    amount: int


class NotFound(Exception):
    """What the request refers to does not exist."""


@dataclass(frozen=True)
class Platform:
    """A third-party platform of the order API (the source document's appendix 1)."""

    platform_no: int
    name: str
    active: bool = True


@dataclass(frozen=True)
class Payment:
    """
    What APPLLogin (type 5) records: the third party collected C{money} fen for a recharge and
    identifies it by C{biz_serial_no} (the reconciliation key).
    """

    platform_no: int
    biz_serial_no: str
    money: int
    user_id: str
    pki_no: int
    created_ms: int


class OrderState(StrEnum):
    #: paid by the third party, waiting for a terminal to load it
    CREATED = "created"
    #: a load is in progress: MAC2 (or the M1 write) may have reached the card
    PENDING = "pending"
    #: the card's TAC (or M1 read-back) proved the load; final
    LOADED = "loaded"
    #: the load provably did not happen and never will (冲正); final
    REVERSED = "reversed"


@dataclass(frozen=True)
class Order:
    """A recharge order: an amount for one card, used at most once."""

    #: 20 decimal digits: YYYYMMDD and a 12-digit sequence
    order_no: str
    platform_no: int
    biz_serial_no: str
    pki_no: int
    card_kind: CardKind
    logical_no: str
    physical_no: str
    amount: int
    state: OrderState
    created_ms: int
    updated_ms: int


class LoadState(StrEnum):
    PENDING = "pending"
    LOADED = "loaded"
    REVERSED = "reversed"


@dataclass(frozen=True)
class Load:
    """
    One load of an order onto a card: written as pending before MAC2 (or the M1 write) leaves
    the platform, then settled (loaded) or reversed, never both, never twice.
    """

    order_no: str
    pki_no: int
    card_kind: CardKind
    logical_no: str
    physical_no: str
    amount: int
    old_balance: int
    #: CPU: the online serial INITIALIZE FOR LOAD returned; M1: None
    online_serial: int | None
    #: 6 bytes hex
    terminal_id: str
    #: date and time of the load, 14 BCD digits YYYYMMDDhhmmss (China time)
    load_time: str
    key_version: int
    state: LoadState
    tac: str | None
    new_balance: int | None
    created_ms: int
    updated_ms: int
    #: M1: until when the write may still reach the card (its expiry, with clock margin), so
    #: that no daemon, whatever its own settings, rules it out earlier; CPU: 0
    hold_until_ms: int = 0


@dataclass(frozen=True)
class ReconRow:
    """One loaded order in the day's reconciliation."""

    platform_no: int
    biz_serial_no: str
    order_no: str
    logical_no: str
    amount: int
    loaded_ms: int


class InsufficientBalance(Exception):
    """The merchant's balance does not cover the top-up."""


class BatchFull(Exception):
    """A batch holds at most 2000 cards."""


@dataclass(frozen=True)
class Merchant:
    customer_id: str
    aes_key: str = field(repr=False)
    md5_key: str = field(repr=False)
    active: bool
    #: product code -> settlement rate in basis points (9500 = 95 %)
    rates: dict[str, int]


class ConsignmentState(StrEnum):
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"


@dataclass(frozen=True)
class Consignment:
    system_order_id: str
    customer_id: str
    order_id: str
    batchno: str
    product_code: str
    amount: int
    notify_url: str
    custom: str
    card_masked: str
    state: ConsignmentState
    message: str
    success_amount: int | None
    actual_amount: int | None
    success_ms: int | None
    created_ms: int


@dataclass(frozen=True)
class Redemption:
    """What the issuer says of a card: redeemed now (or before, for the same reference)."""

    ok: bool
    face_value: int | None
    reason: str


class NotificationState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    #: every attempt failed; an operator may retry it
    FAILED = "failed"


class VoucherState(StrEnum):
    ISSUED = "issued"
    REDEEMED = "redeemed"


@dataclass(frozen=True)
class Notification:
    id: int
    reference: str
    url: str
    body: str
    attempts: int


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
