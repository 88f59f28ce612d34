"""
The contracts of the backends.

Flows (L{lnt.flows.context.IFlow}) talk to the backends only through
L{IPKI}, L{ILedger} and L{ICoreModule}; the web APIs and jobs likewise. An implementation is any
object that provides the interface: the shipped ones are in L{lnt.storage} and
L{lnt.coremodule}; a hardware security module or another database would be another
implementation of the same interface.

Every method that may touch a disk, a database or another process returns a L{Deferred}; methods
that are pure computation return their value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Interface

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from lnt.domain.loads import Verdict
    from lnt.domain.records import (
        ApiContext,
        AtRisk,
        CardIdentity,
        Consignment,
        CPULoad,
        IssuedCard,
        Load,
        Merchant,
        Notification,
        Order,
        OrderClaim,
        OrderState,
        Payment,
        PaymentClaim,
        PKICard,
        Platform,
        ReconRow,
        Redemption,
        SecureStart,
        Session,
    )


T = TypeVar("T")


class BackendTimeout(Exception):
    """A backend call did not answer within its time: the caller answers "system busy"."""


class BackendBusy(BackendTimeout):
    """
    A ledger transaction lost its race with concurrent ones (PostgreSQL serialization
    failures, SQLite locks) on every attempt: nothing was written, and the caller answers
    "system busy" as for a timeout; the terminal or client repeats.
    """


class BackendUnavailable(BackendTimeout):
    """
    The ledger cannot be reached or written (PostgreSQL down or restarting, a read-only or full
    disk under SQLite): nothing was written; the caller answers "system busy" as for a timeout,
    and the daemon reconnects by itself (PostgreSQL's pool replaces broken connections).
    """


def bounded(d: Deferred[T], seconds: float, clock: IReactorTime, what: str) -> Deferred[T]:
    """
    C{d}, a backend call, bounded in time: if it has not fired within C{seconds} it fails with
    L{BackendTimeout} naming C{what}. Every caller of a backend (flows, web APIs, jobs) bounds
    its calls with this, so that no wait is without a timeout.
    """

    def timed_out(f: Failure) -> Failure:
        if f.check(defer.TimeoutError):
            raise BackendTimeout(f"backend call {what!r} did not answer within {seconds:g} s")
        return f

    return d.addTimeout(seconds, clock).addErrback(timed_out)


class IPKI(Interface):
    """
    The terminals' PKI cards and the platform's own key pair.

    A PKI card lives in a terminal's reader; it holds an EC (NIST P-256) private key whose
    public half the platform knows by the card's number. Sign-in is a mutual authentication
    between that card and the platform (docs/protocol.rst, "Sign-in").
    """

    def platform_public_key() -> bytes:
        """The platform's public key, 64 bytes (X || Y)."""

    def platform_sign(data: bytes) -> bytes:
        """The platform's signature over C{data}: 64 bytes (r || s), ECDSA P-256 / SHA-256."""

    def lookup(pki_no: int) -> Deferred[PKICard | None]:
        """The card registered under C{pki_no}, or C{None} if there is none."""

    def register(card: PKICard) -> Deferred[None]:
        """
        Register a new card. Errbacks with L{lnt.domain.records.AlreadyExists} if the number is
        taken.
        """

    def revoke(pki_no: int) -> Deferred[bool]:
        """Mark the card revoked and end its session; C{False} if there is no such card."""

    def enable(pki_no: int) -> Deferred[bool]:
        """Make a revoked card active again (it signs in anew); C{False} if there is none."""

    def cards() -> Deferred[list[PKICard]]:
        """Every registered card, by number."""

    def card_for_user(user_id: bytes) -> Deferred[PKICard | None]:
        """The active card bound to this user ID, if any."""


class ICoreModule(Interface):
    """
    The platform's security module: it holds the card issuer's master keys and computes what
    only the issuer may compute. The shipped implementation keeps its keys in a key file; a
    hardware module is another implementation of this interface (hence Deferreds).

    No method ever returns a master key or a card's diversified load key; M1 sector keys leave
    it only to be wrapped at once in the terminal session's protection.
    """

    def authorize_cpu_load(load: CPULoad) -> Deferred[bytes]:
        """
        Verify MAC1 of a CPU card's INITIALIZE FOR LOAD answer with the session key derived from
        the card's load key, and return MAC2 (4 bytes) for CREDIT FOR LOAD. Errbacks with
        L{lnt.domain.records.MACError} when MAC1 is wrong: there is never a MAC2 without a verified
        MAC1.
        """

    def verify_cpu_tac(load: CPULoad, new_balance: int, tac: bytes) -> Deferred[bool]:
        """Whether C{tac} is the card's transaction certificate for this completed load."""

    def m1_sector_keys(physical_no: bytes, sectors: list[int]) -> Deferred[dict[int, bytes]]:
        """The 6-byte keys of an M1 card's purse sectors, diversified with its serial."""


class IIssuer(Interface):
    """
    Whoever issued the cards merchants consign: verifies a card and redeems it. The shipped
    issuer is the platform's own prepaid vouchers (L{lnt.storage.vouchers}).
    """

    def redeem(card_number: str, password: str, product_code: str, face_value: int,
               reference: str, now_ms: int) -> Deferred[Redemption]:
        """
        Redeem the card for C{reference} (a consignment order) if it exists, the password is
        right, it is of this product and face value, and it was not redeemed before. A card
        redeemed before under the same reference answers that redemption again (processing
        repeated after a crash); under another it is refused. Never raises for a bad card:
        the reason is in the answer.
        """


class IConsignments(Interface):
    """Merchants, consignment orders, merchant top-ups and the notification outbox."""

    def merchant(customer_id: str) -> Deferred[Merchant | None]:
        """The merchant with its keys (unsealed) and rates, if registered."""

    def balance(customer_id: str) -> Deferred[int]:
        """What the platform owes the merchant, fen, derived from the journal."""

    def submit(customer_id: str, order_id: str, batchno: str, product_code: str, amount: int,
               notify_url: str, custom: str, card_number: str, password: str, card_masked: str,
               now_ms: int) -> Deferred[tuple[Consignment, bool]]:
        """
        Record a consignment (card data sealed); (order, created). A repeated orderId of the
        merchant answers the first order. Errbacks with L{lnt.domain.records.BatchFull}.
        """

    def consignment(customer_id: str, order_id: str) -> Deferred[Consignment | None]:
        """The merchant's order with this orderId."""

    def processing() -> Deferred[list[str]]:
        """The system order IDs still to process, oldest first."""

    def card_of(system_order_id: str) -> Deferred[tuple[Consignment, str, str] | None]:
        """(order, card number, password) of an order still processing."""

    def complete(system_order_id: str, face_value: int | None, message: str, now_ms: int
                 ) -> Deferred[Consignment]:
        """Finish an order: state, journal entry, outbox row, card data erased. Idempotent."""

    def topup(customer_id: str, order_id: str, amount: int, logical_no: str, now_ms: int,
              notify_url: str, custom: str) -> Deferred[tuple[Order, bool]]:
        """
        Spend merchant balance on a recharge order for a card; (order, created). When the card
        is loaded (or the load reversed) the merchant is notified at C{notify_url}. Errbacks
        with L{lnt.domain.records.InsufficientBalance} or L{lnt.domain.records.Conflict}.
        """

    def topup_order(customer_id: str, order_id: str) -> Deferred[Order | None]:
        """The recharge order a top-up made."""

    def due(now_ms: int, limit: int, lease_ms: int) -> Deferred[list[Notification]]:
        """Claim notifications due now for C{lease_ms}."""

    def postpone(notification_id: int, next_ms: int) -> Deferred[None]:
        """Release a claimed notification until C{next_ms}, counting no attempt."""

    def attempted(notification_id: int, outcome: str, delivered: bool,
                  retry_intervals: list[float], now_ms: int) -> Deferred[None]:
        """Record an attempt; schedule the next one or end it (delivered / failed)."""

    def outbox(now_ms: int) -> Deferred[dict[str, int]]:
        """C{{"pending", "oldest_ms", "failed"}}: the outbox's depth, the age of its oldest
        pending notification, and how many were given up."""


class ILedger(Interface):
    """
    Everything that must survive a crash. Every method that changes state is one transaction,
    durable when its Deferred fires: a caller may tell the outside world about a state only
    after that.
    """

    def health(now_ms: int) -> Deferred[dict[str, object]]:
        """
        Ready to serve: a probe that writes and commits, and the platform key opening the
        ledger's key check; C{{"engine", "schema_version", "writable", "key"}}. Errbacks when
        the database cannot be reached or written, or the key does not match.
        """

    def next_serial(pki_no: int, now_ms: int) -> Deferred[str]:
        """
        Allocate a handshake serial (16 decimal digits) for a sign-in of this card in
        progress. Serials are never reused, also across daemons sharing a database.
        """

    def note_card_random(
        pki_no: int, card_random: bytes, now_ms: int
    ) -> Deferred[bool]:
        """
        Remember a card random of R_AC_LOGIN_1; C{False} if this card used it before (the
        answer is a replay).
        """

    def begin_signin(pki_no: int, card_random: bytes, now_ms: int) -> Deferred[str | None]:
        """
        L{note_card_random} then, for a fresh random, L{next_serial}, in one transaction: the
        new handshake serial, or C{None} when the card used this random before (a replay).
        """

    def open_session(
        pki_no: int,
        user_id: bytes,
        serial: str,
        session_key: bytes,
        counter: int,
        now_ms: int,
        ttl_ms: int,
    ) -> Deferred[Session | None]:
        """
        Record a completed sign-in, in one transaction: the card's sign-in counter must go up
        (else C{None}: a stale or cloned card), the card must still be active (else C{None}),
        the new session replaces any older one of the card, and the sign-in is in the audit
        log (outcome C{"ok"}).
        """

    def session(pki_no: int, now_ms: int) -> Deferred[Session | None]:
        """The card's session if there is one and it has not expired at C{now_ms}."""

    def session_by_serial(serial: str, now_ms: int) -> Deferred[Session | None]:
        """The live session with this handshake serial (16 digits), if any."""

    def record_signin(
        pki_no: int | None, user_id: bytes, outcome: str, now_ms: int
    ) -> Deferred[None]:
        """Append a sign-in attempt to the audit log (outcome: C{"ok"} or why it failed)."""

    def platform(platform_no: int) -> Deferred[Platform | None]:
        """The third-party platform with this number, if registered."""

    def api_context(platform_no: int, now_ms: int, *, user_id: bytes | None = None,
                    serial: str | None = None) -> Deferred[ApiContext]:
        """
        What an order-API call checks first, in one read: the platform; with C{user_id} the
        terminal's active PKI card and its live session; with C{serial} the live session of
        that handshake serial (of an active card) and, when there is one, its PKI card.
        """

    def register_payment(
        platform_no: int, biz_serial_no: str, money: int, user_id: str, pki_no: int,
        fingerprint: str, now_ms: int,
    ) -> Deferred[tuple[Payment, bool]]:
        """
        Record that a platform collected C{money} under C{biz_serial_no}, and post it to the
        journal; (payment, created). A repeat with the same C{fingerprint} (a digest of the
        request's fields) returns the first payment and posts nothing; with another, errbacks
        with L{lnt.domain.records.Conflict}.
        """

    def create_order(
        platform_no: int, biz_serial_no: str, pki_no: int, card: CardIdentity, amount: int,
        now_ms: int,
    ) -> Deferred[tuple[Order, bool]]:
        """
        The recharge order for a paid C{biz_serial_no}: a new 20-digit order number, or the
        existing order when repeated for the same card and amount; (order, created).
        Errbacks with L{lnt.domain.records.NotFound} (no such payment) or
        L{lnt.domain.records.Conflict} (amount differs from the payment, or the order is for
        another card).
        """

    def register_admitted_payment(
        platform_no: int, now_ms: int, user_id: bytes | None,
        admit: Callable[[ApiContext], PaymentClaim],
    ) -> Deferred[tuple[ApiContext, Payment, bool]]:
        """
        APPLLogin's ledger work in one transaction: read the L{ApiContext} of C{user_id}'s
        terminal (as L{api_context}), call C{admit} with it, and register the payment it
        returns (as L{register_payment}); (context, payment, created). When C{admit} raises,
        nothing is written and the Deferred errbacks with what it raised.

        C{admit} runs inside the transaction, off the reactor thread, and perhaps more than once
        (a transaction that lost a race is run again): it must be a pure check of the context,
        no I/O and no reactor calls. Reading and writing in one transaction spares a round trip
        to the ledger, and what was checked cannot change before the write.
        """

    def create_admitted_order(
        platform_no: int, now_ms: int, serial: str | None,
        admit: Callable[[ApiContext], OrderClaim],
    ) -> Deferred[tuple[ApiContext, Order, bool]]:
        """
        CreateAutoLoadOrder's ledger work in one transaction: read the L{ApiContext} of the
        handshake C{serial} (as L{api_context}), call C{admit} with it, and create the order
        it returns (as L{create_order}, with the same errbacks); (context, order, created).
        C{admit} is called as in L{register_admitted_payment} (pure; off the reactor thread,
        where a signature check does not hold the reactor up).
        """

    def order(order_no: str) -> Deferred[Order | None]:
        """The order with this number, if any."""

    def orders_for_card(
        logical_no: str, since_ms: int | None, until_ms: int | None,
        states: list[OrderState] | None, order_no: str | None,
    ) -> Deferred[list[Order]]:
        """A card's orders, oldest first, filtered (at most 500)."""

    def balances() -> Deferred[dict[str, int]]:
        """Every journal account's balance, derived from the postings."""

    def reserve_sm_seq(pki_no: int, serial: str, count: int) -> Deferred[int]:
        """
        Reserve C{count} secure-messaging sequence numbers of a session; returns the first.
        Never the same number twice for one session key (AES-CTR nonces depend on it).
        Errbacks with L{lnt.domain.records.NotFound} when the session was replaced meanwhile.
        """

    def secure_session(pki_no: int, now_ms: int, count: int, order_no: str | None
                       ) -> Deferred[SecureStart | None]:
        """
        A card flow's first ledger transaction: the card's live session and the first of
        C{count} secure-messaging sequence numbers reserved for it (as L{session} and
        L{reserve_sm_seq}); with C{order_no}, also the order of that number and the load in
        doubt on its card, if any. C{None} when the card has no live session.
        """

    def begin_load(load: Load) -> Deferred[Load]:
        """
        Record a load as pending and mark its order pending, in one transaction: durable
        before MAC2 (or the M1 write) may leave. Errbacks with
        L{lnt.domain.records.Conflict} when the order is not waiting for a load (used, or
        taken by another terminal) or is for another card or amount, or when the card has
        another load in doubt (at most one per card); L{lnt.domain.records.NotFound}
        without such an order.
        """

    def pending_load(logical_no: str) -> Deferred[Load | None]:
        """The card's load in doubt (pending), if it has one: there is at most one."""

    def load(order_no: str) -> Deferred[Load | None]:
        """The order's load, if one was begun."""

    def settle_load(order_no: str, tac: str | None, new_balance: int, now_ms: int
                    ) -> Deferred[Load]:
        """
        The pending load happened: mark it loaded and post it (awaiting load -> card float).
        Repeating it returns the settled load and posts nothing; errbacks with Conflict when
        the load was reversed.
        """

    def reverse_load(order_no: str, now_ms: int) -> Deferred[Load]:
        """
        The pending load provably did not happen: mark it reversed and post it (awaiting load
        -> reversed). Repeating it returns the reversed load; errbacks with Conflict when the
        load was settled.
        """

    def note_deposit_seq(pki_no: int, seq: int) -> Deferred[bool]:
        """Accept a reader's deposit counter if it is above the last one (else a replay)."""

    def record_deposit(logical_no: str, physical_no: str, op: int, flag: int, pki_no: int,
                       now_ms: int) -> Deferred[int]:
        """Record an open/close-card operation; returns its record ID."""

    def deposit_flag(logical_no: str) -> Deferred[int | None]:
        """The card's deposit flag as last recorded, if ever."""

    def register_card(card: IssuedCard, now_ms: int) -> Deferred[bool]:
        """
        Add an issued card to the registry (False: it was there). Errbacks with Conflict when
        its logical number was issued as another card.
        """

    def card(logical_no: str) -> Deferred[IssuedCard | None]:
        """The issued card with this logical number, if any."""

    def note_payment_refusal(platform_no: int, biz_serial_no: str, pki_no: int, reason: str,
                             now_ms: int) -> Deferred[bool]:
        """
        Attach why an order was refused to the terminal's payment that has no order yet, so
        that the money it holds is never silently parked (C{money_at_risk} shows it).
        """

    def money_at_risk(now_ms: int) -> Deferred[list[AtRisk]]:
        """
        Money held without a final answer: loads in doubt, payments without an order, orders
        paid but not loaded for more than a day. Reported, not an inconsistency.
        """

    def resolve_load(order_no: str, verdict: Verdict, reason: str, operator: str,
                     now_ms: int) -> Deferred[Load]:
        """
        An operator settles or reverses a load in doubt; the decision, its reason and who took
        it are stored with it in one transaction. Errbacks with Conflict when the load is not
        in doubt or the reason is empty, NotFound without such a load.
        """

    def refund_payment(platform_no: int, biz_serial_no: str, reason: str, operator: str,
                       now_ms: int) -> Deferred[Payment]:
        """
        An operator refunds a payment that has no order (journal: awaiting load -> the payer),
        audited like L{resolve_load}. Conflict when it has an order or was refunded already.
        """

    def decisions(reference: str) -> Deferred[list[tuple[str, str, str, str, int]]]:
        """The operators' decisions about an order or payment: (kind, decision, reason,
        operator, at_ms), oldest first."""

    def check() -> Deferred[list[str]]:
        """Every inconsistency between the journal, orders and loads; [] when all agree."""

    def reconcile(day: str, platform_no: int | None) -> Deferred[list[ReconRow]]:
        """The loads settled on a China-time day (YYYYMMDD), by platform and biz_serial_no."""

    def close() -> None:
        """Release the database connections; pending transactions finish first."""
