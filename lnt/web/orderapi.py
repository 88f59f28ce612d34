"""
The order API (source document 3.2): C{/APPLLogin}, C{/AcctQueryLNT}, C{/CreateAutoLoadOrder},
JSON in the 3DES envelope of L{lnt.crypto.envelope}, answered in the same envelope.

Every API call is answered HTTP 200 with C{status} 1 (done) or 0 and an C{errmsg} that says
exactly what is wrong. HTTP errors are only for what is no API call: another method than POST
(405), an unknown path (404, the site root's), a body over the limit (413). No traceback ever
reaches a client: an unexpected error is logged and answered "internal error".

Each endpoint declares its fields: where they travel (in clear, or encrypted in C{data}, as the
source document's tables say), their JSON type and whether they are required. docs/orderapi.rst
and README give worked examples; tests/test_orderapi.py checks them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from Crypto.Cipher import AES
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lnt.crypto import envelope
from lnt.crypto.ec import verify
from lnt.domain.inputs import (
    INT64_MAX,
    InputError,
    bounded_int,
    check_depth,
    check_text,
    may_hold_surrogates,
    yyyymmdd,
)
from lnt.domain.masking import mask_card
from lnt.domain.records import (
    CHINA,
    CPU_BALANCE_LIMIT,
    ApiContext,
    CardIdentity,
    CardRefused,
    Conflict,
    NotFound,
    Order,
    OrderClaim,
    OrderState,
    Payment,
    PaymentClaim,
    Platform,
    Session,
)
from lnt.interfaces import BackendTimeout, BackendUnavailable, ILedger, bounded
from lnt.logmask import Logger
from lnt.messages import cardscript
from lnt.messages.cardscript import ScriptError
from lnt.web.json import finish_json, refuse_other_methods

log = Logger()

BIZ_SERIAL = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_MONEY = CPU_BALANCE_LIMIT


class APIError(Exception):
    """Answered as C{status: 0} with this message."""


class _PaymentRefusal(Exception):
    """CreateAutoLoadOrder's card cannot be read from its C{reqinfo}: refused after the
    terminal's checks passed, so noted on the payment as the ledger's refusals are."""


#: refusals of an order whose terminal passed its checks: noted on the payment
_REFUSALS = (_PaymentRefusal, CardRefused, Conflict, NotFound)


class Where(Enum):
    CLEAR = "in clear"
    DATA = "in data"
    EITHER = "either"


@dataclass(frozen=True)
class Field:
    name: str
    kind: type | tuple[type, ...]
    where: Where
    required: bool = True


def _fields(clear: str, encrypted: str, optional: str = "", either: str = "",
            types: dict[str, type | tuple[type, ...]] | None = None) -> tuple[Field, ...]:
    types = types or {}
    opt = set(optional.split())
    out = []
    for names, where in ((clear, Where.CLEAR), (encrypted, Where.DATA),
                         (either, Where.EITHER)):
        for name in names.split():
            out.append(Field(name, types.get(name, str), where, name not in opt))
    return tuple(out)


INT = int
#: a handshake serial, as sign-in allocates them
SERIAL = re.compile(r"\d{16}")
#: the integer fields' ranges (any other integer: 0 .. the ledger's 64-bit columns)
INT_BOUNDS = {"platformRaw": (0, 2**31 - 1), "platform": (0, 2**31 - 1),
              # (the amounts' business range, 1..100000 fen, is checked with its own message)
              "money": (-INT64_MAX, INT64_MAX), "chargeamt": (-INT64_MAX, INT64_MAX),
              "type": (0, 255),
              "chargetype": (0, 255), "transtype": (0, 255), "step": (0, 255),
              "crt_version": (0, 255)}
#: the longest text field (the body is at most 64 KiB anyway; no field needs more)
MAX_TEXT = 4096
USERINFO = (str, dict)

APPL_LOGIN = _fields(
    clear="version platformRaw",
    encrypted="platform userinfo type biz_serial_no money package_name package_version_name "
           "package_version_code mobile_number mobile_imei mobile_vendor mobile_model lat_lng "
           "address ip",
    optional="mobile_number lat_lng address",
    types={"platformRaw": INT, "platform": INT, "type": INT, "money": INT,
           "userinfo": USERINFO},
)
ACCT_QUERY = _fields(
    clear="version platformRaw",
    encrypted="platform userinfo pki serial step reqinfo qrycondition starttime endtime orderstep",
    either="orderid payway",
    optional="pki starttime endtime orderstep orderid payway",
    types={"platformRaw": INT, "platform": INT, "step": INT, "reqinfo": list,
           "userinfo": USERINFO},
)
CREATE_ORDER = _fields(
    clear="version platformRaw crt_version biz_serial_no Sign",
    encrypted="platform userinfo pki chargeamt chargetype transtype serial step reqinfo",
    optional="pki",
    types={"platformRaw": INT, "crt_version": INT, "platform": INT, "chargeamt": INT,
           "chargetype": INT, "transtype": INT, "step": INT, "reqinfo": list,
           "userinfo": USERINFO},
)

#: our order states as the document's "orderstep" codes (06 is ours: reversed)
ORDER_STEPS = {
    OrderState.CREATED: "02",
    OrderState.PENDING: "03",
    OrderState.LOADED: "04",
    OrderState.REVERSED: "06",
}
PAYWAY_THIRD_PARTY = "01"
QUERY_CONDITIONS = {"username", "cardnum", "time", "orderstep", "orderid", "payway"}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", list: "an array", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names[k] for k in kinds)


@dataclass
class Call:
    """One checked API call: its fields (clear and decrypted together)."""

    timestamp: int
    fields: dict[str, Any]
    #: the encrypted data as sent (C{Sign} covers it)
    data: str


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


@lru_cache(maxsize=256)
def _snake(name: str) -> str:
    """C{platformRaw} -> C{platform_raw}; only the specs' field names come here (a few
    dozen), so the cache is small; the regular expression cost a tenth of L{typed}."""
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", name).lower()


def typed(cls: type[R], call: Call) -> R:
    """The call's checked fields as the endpoint's request dataclass (names in snake case)."""
    values = {_snake(k): v for k, v in call.fields.items()}
    return cls(**{f.name: values.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ApplLoginRequest:
    """/APPLLogin (source document 3.2.2), as L{APPL_LOGIN} checked it."""

    version: str
    platform_raw: int
    platform: int
    userinfo: str | dict[str, Any]
    type: int
    biz_serial_no: str
    money: int
    package_name: str
    package_version_name: str
    package_version_code: str
    mobile_imei: str
    mobile_vendor: str
    mobile_model: str
    ip: str
    mobile_number: str | None = None
    lat_lng: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class AcctQueryRequest:
    """/AcctQueryLNT (3.2.3), as L{ACCT_QUERY} checked it."""

    version: str
    platform_raw: int
    platform: int
    userinfo: str | dict[str, Any]
    serial: str
    step: int
    reqinfo: list[Any]
    qrycondition: str
    pki: str | None = None
    starttime: str | None = None
    endtime: str | None = None
    orderstep: str | None = None
    orderid: str | None = None
    payway: str | None = None


@dataclass(frozen=True)
class CreateOrderRequest:
    """/CreateAutoLoadOrder (3.2.4), as L{CREATE_ORDER} checked it."""

    version: str
    platform_raw: int
    crt_version: int
    biz_serial_no: str
    sign: str
    platform: int
    userinfo: str | dict[str, Any]
    chargeamt: int
    chargetype: int
    transtype: int
    serial: str
    step: int
    reqinfo: list[Any]
    pki: str | None = None


def check_fields(spec: tuple[Field, ...], clear: dict[str, Any], secret: dict[str, Any]
                 ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in spec:
        in_clear, in_secret = f.name in clear, f.name in secret
        if in_clear and in_secret:
            raise APIError(f"{f.name} is both in clear and in data")
        if f.where is Where.DATA and in_clear:
            raise APIError(f"{f.name} must travel encrypted in data")
        if f.where is Where.CLEAR and in_secret:
            raise APIError(f"{f.name} must travel in clear, not in data")
        value = clear.get(f.name, secret.get(f.name))
        if value is None or value == "":
            if f.required:
                where = {Where.CLEAR: "", Where.DATA: " (in data)", Where.EITHER: ""}[f.where]
                raise APIError(f"{f.name} is missing{where}")
            continue
        kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise APIError(f"{f.name} must be {_kind_name(f.kind)}")
        if isinstance(value, int):
            try:
                bounded_int(f.name, value, *INT_BOUNDS.get(f.name, (0, INT64_MAX)))
            except InputError as e:
                raise APIError(str(e)) from None
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise APIError(f"{f.name} is longer than {MAX_TEXT} characters")
        out[f.name] = value
    return out


def user_id_of(userinfo: str | dict[str, Any]) -> str:
    """C{userinfo} is a JSON object, or a string holding one (as in the document's example)."""
    if isinstance(userinfo, str):
        try:
            check_depth(userinfo, "userinfo")
            text, userinfo = userinfo, json.loads(userinfo)
            if may_hold_surrogates(text):
                check_text(userinfo, "userinfo")
        except InputError as e:
            raise APIError(str(e)) from None
        except ValueError:
            raise APIError("userinfo is not a JSON object") from None
    if not isinstance(userinfo, dict):
        raise APIError("userinfo is not a JSON object")
    userid = userinfo.get("userid")
    if not isinstance(userid, str) or not userid:
        raise APIError("userinfo has no userid")
    if len(userid) > 64:
        raise APIError("userinfo's userid is longer than 64 characters")
    return userid


def key_check_value(session_key: bytes) -> str:
    """What the C{key} field carries: the session key's check value, never the key."""
    return bytes(AES.new(session_key, AES.MODE_ECB).encrypt(bytes(16))[:4]).hex().upper()


def _yyyymmdd(value: str, name: str) -> datetime:
    try:
        day = yyyymmdd(name, value)
    except InputError as e:
        raise APIError(str(e)) from None
    return datetime(day.year, day.month, day.day, tzinfo=CHINA)


def _ms_to_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, CHINA).strftime("%Y%m%d%H%M%S")


def acct_record(order: Order) -> dict[str, Any]:
    return {
        "orderseq": order.order_no,
        "logiccardnum": order.logical_no,
        "physiccardnum": order.physical_no.upper(),
        "ordertime": _ms_to_text(order.created_ms),
        "paytime": _ms_to_text(order.created_ms),
        "amount": order.amount,
        "payway": PAYWAY_THIRD_PARTY,
        "step": ORDER_STEPS[order.state],
        "operate": "01",
    }


Handler = Callable[[Call], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]


class OrderAPI:
    """The three endpoints' logic; talks to the backends through their interfaces only."""

    def __init__(self, ledger: ILedger, clock: IReactorTime, timeout: float,
                 window: float) -> None:
        self.ledger = ledger
        self.clock = clock
        self.timeout = timeout
        self.window = window

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    async def _backend(self, d: Deferred[Any], keep: tuple[type[Exception], ...] = ()) -> Any:
        """C{d}'s result, bounded in time; the ledger's refusals and failures become
        L{APIError}s, except those in C{keep}, raised as they are."""
        try:
            return await bounded(d, self.timeout, self.clock, "ledger")
        except keep:
            raise
        except Conflict as e:
            raise APIError(str(e)) from None
        except NotFound as e:
            raise APIError(str(e)) from None
        except BackendUnavailable:
            raise APIError("system busy: the ledger is unavailable; repeat the request"
                           ) from None
        except BackendTimeout:
            raise APIError("system busy: the ledger did not answer in time; repeat the "
                           "request") from None

    # -- common checks ----------------------------------------------------------------------

    def check_envelope(self, body: bytes, spec: tuple[Field, ...]) -> Call:
        try:
            pairs, secret = envelope.open_message(body)
        except envelope.EnvelopeError as e:
            raise APIError(str(e)) from None
        clear = dict(pairs)
        timestamp = int(clear["timestamp"])
        seconds = timestamp / 1000 if timestamp > 10**11 else timestamp
        skew = seconds - self.clock.seconds()
        if abs(skew) > self.window:
            raise APIError(f"timestamp is {abs(skew):.0f} s {'ahead' if skew > 0 else 'behind'}"
                           f" (window ±{self.window:.0f} s)")
        fields = check_fields(spec, {k: v for k, v in clear.items()
                                     if k not in ("timestamp", "data", "mac")}, secret)
        if fields["version"] != "v2":
            raise APIError(f"version {fields['version']!r} is not supported (v2)")
        if fields["platformRaw"] != fields["platform"]:
            raise APIError(f"platformRaw {fields['platformRaw']} does not match platform "
                           f"{fields['platform']}")
        data = clear.get("data", "")
        return Call(timestamp, fields, data if isinstance(data, str) else "")

    @staticmethod
    def _platform_ok(platform: Platform | None, platform_no: int) -> None:
        if platform is None or not platform.active:
            raise APIError(f"unknown platform {platform_no}")

    @staticmethod
    def _well_formed(serial: str) -> str | None:
        """C{serial} when it has a handshake serial's form, else None (the ledger is asked for
        well-formed serials only; L{_serial_ok} says what is wrong, in its turn)."""
        return serial if SERIAL.fullmatch(serial) else None

    @staticmethod
    def _serial_ok(well_formed: str | None) -> None:
        if well_formed is None:
            raise APIError("serial must be the 16-digit handshake serial of a sign-in")

    @staticmethod
    def _session_ok(session: Session | None, serial: str, pki: str | None,
                    userinfo: str | dict[str, Any]) -> Session:
        if session is None:
            raise APIError(f"serial {serial} is no live sign-in session: sign in (DD01) again")
        if pki is not None and pki != f"{session.pki_no:08d}" and pki != str(session.pki_no):
            raise APIError(f"pki {pki} is not the PKI card of serial {serial}")
        userid = user_id_of(userinfo)
        if userid.encode() != session.user_id:
            raise APIError(f"userid {userid} is not the terminal of serial {serial}")
        return session

    @staticmethod
    def card_of(step: int, reqinfo: list[Any]) -> CardIdentity:
        if step != 0:
            raise APIError(f"card reading stopped at step {step}: run toreader to the "
                           "end (step 0)")
        try:
            answers = [cardscript.Answer.decode(entry) for entry in reqinfo]
            return cardscript.identify(answers)
        except ScriptError as e:
            raise APIError(f"reqinfo: {e}") from None

    # -- endpoints --------------------------------------------------------------------------

    async def appl_login(self, call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        req = typed(ApplLoginRequest, call)
        try:
            userid: str | None = user_id_of(req.userinfo)
            bad_userinfo: APIError | None = None
        except APIError as e:
            userid, bad_userinfo = None, e
        fingerprint = hashlib.sha256(json.dumps([userid, req.money, req.type]).encode()
                                     ).hexdigest()

        def admit(ctx: ApiContext) -> PaymentClaim:
            # the checks keep their order (an unknown platform is said first); they run in the
            # ledger's transaction, which registers the payment when they pass
            self._platform_ok(ctx.platform, req.platform)
            if req.type != 5:
                raise APIError(f"type {req.type} is not supported: 5 (create a third-party "
                               "recharge order)")
            if not BIZ_SERIAL.match(req.biz_serial_no):
                raise APIError("biz_serial_no must be 1-64 letters, digits, '_' or '-'")
            if not 0 < req.money <= MAX_MONEY:
                raise APIError(f"money must be 1..{MAX_MONEY} fen")
            if bad_userinfo is not None or userid is None:
                raise bad_userinfo or APIError("userinfo has no userid")
            if ctx.card is None:
                raise APIError(f"no terminal is registered for userid {userid}")
            if ctx.session is None:
                raise APIError(f"terminal {userid} is not signed in: sign in (DD01) first")
            return PaymentClaim(req.biz_serial_no, req.money, userid, ctx.card.pki_no,
                                fingerprint)

        ctx: ApiContext
        payment: Payment
        ctx, payment, created = await self._backend(self.ledger.register_admitted_payment(
            req.platform, self.now_ms(), None if userid is None else userid.encode(), admit))
        assert ctx.card is not None and ctx.session is not None  # admitted
        log.info("order API: payment {platform}/{biz} of {money} fen {what}",
                 platform=req.platform, biz=req.biz_serial_no, money=payment.money,
                 what="registered" if created else "repeated")
        return {}, {
            "pki": f"{ctx.card.pki_no:08d}",
            "serial": ctx.session.serial,
            "key": key_check_value(ctx.session.session_key),
            "toreader": [step.encode() for step in cardscript.IDENTIFY],
        }

    async def acct_query(self, call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        req = typed(AcctQueryRequest, call)
        # the platform and the serial's session in one read
        serial = self._well_formed(req.serial)
        ctx: ApiContext = await self._backend(self.ledger.api_context(
            req.platform, self.now_ms(), serial=serial))
        self._platform_ok(ctx.platform, req.platform)
        self._serial_ok(serial)
        session = self._session_ok(ctx.session, req.serial, req.pki, req.userinfo)
        card = self.card_of(req.step, req.reqinfo)
        conditions = {c.strip() for c in req.qrycondition.split(",") if c.strip()}
        unknown = conditions - QUERY_CONDITIONS
        if unknown:
            raise APIError(f"qrycondition {sorted(unknown)[0]!r} is unknown (one of "
                           f"{', '.join(sorted(QUERY_CONDITIONS))})")
        since = until = None
        if "time" in conditions:
            if not req.starttime or not req.endtime:
                raise APIError("qrycondition time needs starttime and endtime")
            start = _yyyymmdd(req.starttime, "starttime")
            end = _yyyymmdd(req.endtime, "endtime") + timedelta(days=1)
            if end <= start:
                raise APIError("endtime is before starttime")
            since, until = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        states: list[OrderState] | None = None
        if "orderstep" in conditions and req.orderstep not in (None, "00"):
            wanted = req.orderstep
            if wanted not in ("01", "02", "03", "04", "05", "06"):
                raise APIError(f"orderstep {wanted!r} is unknown (00-06)")
            states = [s for s, code in ORDER_STEPS.items() if code == wanted] or []
        order_no = None
        if "orderid" in conditions:
            if not req.orderid:
                raise APIError("qrycondition orderid needs orderid")
            order_no = req.orderid
        orders: list[Order] = []
        if states != [] and ("payway" not in conditions or req.payway == PAYWAY_THIRD_PARTY):
            orders = await self._backend(self.ledger.orders_for_card(
                card.logical_no, since, until, states, order_no))
        log.info("order API: account query of card {card} by PKI {pki}: {n} records",
                 card=mask_card(card.logical_no), pki=session.pki_no, n=len(orders))
        return ({"acctstatus": "00", "chargerecordnum": len(orders)},
                {"pki": f"{session.pki_no:08d}", "acctresult": [acct_record(o) for o in orders]})

    async def create_order(self, call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        req = typed(CreateOrderRequest, call)
        serial = self._well_formed(req.serial)
        try:
            card: CardIdentity | APIError = self.card_of(req.step, req.reqinfo)
        except APIError as e:
            card = e  # said only after the checks before it, as the payment's refusal
        signed = (f"{call.timestamp}{req.version}{req.platform_raw}"
                  f"{req.crt_version}{call.data}").encode()

        #: the PKI card whose checks passed (a refusal after them is noted on the payment)
        admitted_pki: int | None = None

        def admit(ctx: ApiContext) -> OrderClaim:
            nonlocal admitted_pki
            # the platform, the serial's session and its PKI card are read in the order's
            # transaction, which creates the order when these checks pass; the signature is
            # verified there too, off the reactor thread (OpenSSL releases the GIL)
            self._platform_ok(ctx.platform, req.platform)
            self._serial_ok(serial)
            session = self._session_ok(ctx.session, req.serial, req.pki, req.userinfo)
            card_key = ctx.card
            if card_key is None or not card_key.active:
                raise APIError(f"PKI card {session.pki_no} is not active")
            if req.crt_version != card_key.key_version:
                raise APIError(f"crt_version {req.crt_version} is not the key version of PKI "
                               f"card {session.pki_no}")
            try:
                signature = bytes.fromhex(req.sign)
            except ValueError:
                raise APIError("Sign is not hex") from None
            if not verify(card_key.public_key, signed, signature):
                raise APIError("Sign does not verify with the terminal's public key")
            if req.chargetype != 0:
                raise APIError(f"chargetype {req.chargetype} is not supported: 0 (merchant "
                               "load)")
            if req.transtype != 1:
                raise APIError(f"transtype {req.transtype} is not supported: 1 (recharge)")
            if not 0 < req.chargeamt <= MAX_MONEY:
                raise APIError(f"chargeamt must be 1..{MAX_MONEY} fen")
            if not BIZ_SERIAL.match(req.biz_serial_no):
                raise APIError("biz_serial_no must be 1-64 letters, digits, '_' or '-'")
            admitted_pki = session.pki_no
            if isinstance(card, APIError):
                raise _PaymentRefusal(str(card))
            # every check of the card (issued, open, the same card, its limit) is made by the
            # ledger next, in this transaction, before the order exists
            return OrderClaim(req.biz_serial_no, session.pki_no, card, req.chargeamt)

        ctx: ApiContext
        order: Order
        try:
            ctx, order, created = await self._backend(
                self.ledger.create_admitted_order(req.platform, self.now_ms(), serial, admit),
                keep=_REFUSALS)
        except _REFUSALS as e:
            # refused after the terminal's checks passed: the payment stays visibly attached
            # to the refusal, never silently parked
            if admitted_pki is not None and await self._backend(self.ledger.note_payment_refusal(
                    req.platform, req.biz_serial_no, admitted_pki, str(e), self.now_ms())):
                log.info("order API: payment {platform}/{biz} has no order: {why}",
                         platform=req.platform, biz=req.biz_serial_no, why=str(e))
                raise APIError(f"{e}; the payment under biz_serial_no {req.biz_serial_no} "
                               "stays unused until an order is made for it or it is "
                               "refunded") from None
            raise APIError(str(e)) from None
        assert ctx.session is not None  # admitted
        log.info("order API: order {order} for card {card}, {amount} fen {what}",
                 order=order.order_no, card=mask_card(order.logical_no), amount=order.amount,
                 what="created" if created else "repeated")
        return {}, {"pki": f"{ctx.session.pki_no:08d}", "order": order.order_no}


class Endpoint(Resource):
    """One API path: POST only; every outcome is an enveloped JSON answer."""

    isLeaf = True

    def __init__(self, name: str, api: OrderAPI, spec: tuple[Field, ...], handler: Handler
                 ) -> None:
        super().__init__()
        self.name = name
        self.api = api
        self.spec = spec
        self.handler = handler

    def render(self, request: Request) -> bytes | int:
        refusal = refuse_other_methods(request, self.name)
        if refusal is not None:
            return refusal
        body = request.content.read() if request.content is not None else b""
        Deferred.fromCoroutine(self._answer(request, body))
        return NOT_DONE_YET

    async def _answer(self, request: Request, body: bytes) -> None:
        api = self.api
        try:
            call = api.check_envelope(body, self.spec)
            clear, secret = await self.handler(call)
            message = envelope.seal(
                {"timestamp": api.now_ms(), "status": 1, "errmsg": "", **clear}, secret,
                upper=False)
        except APIError as e:
            log.info("order API /{name}: refused: {why}", name=self.name, why=str(e))
            message = envelope.seal({"timestamp": api.now_ms(), "status": 0,
                                     "errmsg": str(e)}, {})
        except Exception:
            log.failure("order API /{name}: internal error", Failure(), name=self.name)
            message = envelope.seal({"timestamp": api.now_ms(), "status": 0,
                                     "errmsg": "internal error; the request may be repeated"},
                                    {})
        finish_json(request, message)


def install(root: Resource, api: OrderAPI) -> None:
    root.putChild(b"APPLLogin", Endpoint("APPLLogin", api, APPL_LOGIN, api.appl_login))
    root.putChild(b"AcctQueryLNT", Endpoint("AcctQueryLNT", api, ACCT_QUERY, api.acct_query))
    root.putChild(b"CreateAutoLoadOrder",
                  Endpoint("CreateAutoLoadOrder", api, CREATE_ORDER, api.create_order))

