"""
The consignment API (card-consignment-api.txt, SPEC-NOTES section 4): merchants consign prepaid
cards, query them, read their balance, and spend it on Lingnan Tong top-ups.

Form posts in (C{application/x-www-form-urlencoded}), JSON out: C{{"code": 1, "msg": ..., "data":
...}} when done, C{{"code": -1, "msg": "<what is wrong>"}} when refused. Each endpoint answers
at both C{/v2_x} and C{/v2_x.html} (the demo posts to both). C{/v2_tocard} answers as soon as the
order is durable; the card is verified and redeemed in the background (L{Processor}) and the
merchant is notified through the outbox (L{lnt.jobs.notifier}).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lnt.crypto.consignsign import ConsignError, decrypt_field, make_sign, verify_sign
from lnt.domain.inputs import FEN_MAX, SECONDS_MAX, InputError, whole_number
from lnt.domain.masking import mask_card
from lnt.domain.netfence import Fenced
from lnt.domain.records import (
    CPU_BALANCE_LIMIT,
    BatchFull,
    CardRefused,
    Conflict,
    ConsignmentState,
    InsufficientBalance,
    Merchant,
    OrderState,
)
from lnt.interfaces import BackendTimeout, IConsignments, ILedger, bounded
from lnt.jobs.fence import NotifyFence
from lnt.jobs.notifier import http_url
from lnt.jobs.processor import Processor
from lnt.logmask import Logger
from lnt.web.json import finish_json, refuse_other_methods, write_json

log = Logger()

ORDER_ID = re.compile(r"^[A-Za-z0-9_\-]{1,50}$")
LOGICAL_NO = re.compile(r"^\d{16}$")
TOPUP_PRODUCT = "LNT"
STATUS = {ConsignmentState.PROCESSING: "1", ConsignmentState.SUCCESS: "2",
          ConsignmentState.FAILED: "3"}


class Refused(Exception):
    """Answered C{code: -1} with this message."""


def _order_id(params: dict[str, str]) -> str:
    order_id = params["orderId"]
    if not ORDER_ID.match(order_id):
        raise Refused("orderId must be 1-50 letters, digits, '_' or '-'")
    return order_id


def _amount(params: dict[str, str], name: str = "amount") -> int:
    text = params.get(name, "").strip()
    if not text.lstrip("-").isascii() or not text.lstrip("-").isdigit():
        raise Refused(f"{name} must be a whole number of fen")
    if text.startswith("-") or set(text) == {"0"}:
        raise Refused(f"{name} must be positive")
    try:
        return whole_number(name, text, 1, FEN_MAX)
    except InputError:
        raise Refused(f"{name} must be at most {FEN_MAX} fen") from None


def _notify(params: dict[str, str]) -> tuple[str, str]:
    """(notify_url, custom), checked."""
    notify_url = params.get("notify_url", "")
    if notify_url and not http_url(notify_url):
        raise Refused("notify_url must be an http:// or https:// URL")
    custom = params.get("custom", "")
    if len(custom) > 255:
        raise Refused("custom is longer than 255")
    return notify_url, custom


@dataclass(frozen=True)
class ToCardRequest:
    """/v2_tocard: a card consigned for redemption (its number and password still sealed)."""

    REQUIRED: ClassVar = ("orderId", "batchno", "productCode", "cardNumber", "cardPassword",
                          "amount")
    order_id: str
    batchno: str
    product_code: str
    card_number: str
    card_password: str
    amount: int
    notify_url: str
    custom: str

    @classmethod
    def parse(cls, params: dict[str, str]) -> ToCardRequest:
        batchno = params["batchno"]
        if len(batchno) > 50:
            raise Refused("batchno is longer than 50")
        return cls(_order_id(params), batchno, params["productCode"], params["cardNumber"],
                   params["cardPassword"], _amount(params), *_notify(params))


@dataclass(frozen=True)
class QueryBuyRequest:
    """/v2_queryBuy: a top-up of a card, paid from the merchant's balance."""

    REQUIRED: ClassVar = ("orderId", "amount", "account")
    order_id: str
    amount: int
    account: str
    notify_url: str
    custom: str

    @classmethod
    def parse(cls, params: dict[str, str]) -> QueryBuyRequest:
        order_id, amount = _order_id(params), _amount(params)
        if params.get("decimal") and params["decimal"] != params["amount"]:
            raise Refused(f"decimal {params['decimal']} does not match amount {amount}")
        product = params.get("productCode") or TOPUP_PRODUCT
        if product != TOPUP_PRODUCT:
            raise Refused(f"productCode {product} is not a top-up product ({TOPUP_PRODUCT})")
        account = params["account"]
        if not LOGICAL_NO.match(account):
            raise Refused("account must be the card's 16-digit logical number")
        if params.get("quantity", "1") != "1":
            raise Refused("quantity must be 1")
        if amount > CPU_BALANCE_LIMIT:
            raise Refused(f"amount must be at most {CPU_BALANCE_LIMIT} fen")
        return cls(order_id, amount, account, *_notify(params))


@dataclass(frozen=True)
class OrderQuery:
    """/v2_blindSearch and /v2_queryBizOrder: one of the merchant's orders by its orderId."""

    REQUIRED: ClassVar = ("orderId",)
    order_id: str

    @classmethod
    def parse(cls, params: dict[str, str]) -> OrderQuery:
        return cls(params["orderId"])


class ConsignmentAPI:
    def __init__(self, store: IConsignments, ledger: ILedger, processor: Processor,
                 clock: IReactorTime, timeout: float, window: float,
                 fence: NotifyFence | None = None) -> None:
        #: where notify_urls may point (checked at submission; the notifier checks again)
        self.fence = fence
        self.store = store
        self.ledger = ledger
        self.processor = processor
        self.clock = clock
        self.timeout = timeout
        self.window = window

    async def _b(self, d: Deferred[Any]) -> Any:
        try:
            return await bounded(d, self.timeout, self.clock, "consignment store")
        except BackendTimeout:
            raise Refused("system busy: try again") from None

    async def _fenced(self, notify_url: str) -> None:
        if not notify_url or self.fence is None:  # (no fence: in-process tests only)
            return
        try:
            await self.fence.check(notify_url)
        except Fenced as e:
            raise Refused(str(e)) from None

    async def merchant_of(self, params: dict[str, str], required: tuple[str, ...]) -> Merchant:
        for name in ("customerId", "timestamp", "sign", *required):
            if not params.get(name):
                raise Refused(f"{name} is missing")
        merchant: Merchant | None = await self._b(self.store.merchant(params["customerId"]))
        if merchant is None or not merchant.active:
            raise Refused(f"unknown merchant {params['customerId']}")
        try:
            timestamp = whole_number("timestamp", params["timestamp"].strip(), 0, SECONDS_MAX)
        except InputError:
            raise Refused("timestamp must be a Unix timestamp (seconds)") from None
        if abs(timestamp - self.clock.seconds()) > self.window:
            raise Refused(f"timestamp is off by more than {self.window:.0f} s")
        if not verify_sign(params, merchant.md5_key):
            raise Refused("sign does not match")
        return merchant

    # -- endpoints ------------------------------------------------------------------------

    async def tocard(self, params: dict[str, str]) -> dict[str, Any]:
        merchant = await self.merchant_of(params, ToCardRequest.REQUIRED)
        req = ToCardRequest.parse(params)
        await self._fenced(req.notify_url)
        order_id, product = req.order_id, req.product_code
        if product not in merchant.rates:
            raise Refused(f"productCode {product} is not open to this merchant")
        try:
            number = decrypt_field(req.card_number, merchant.aes_key, "cardNumber")
            password = decrypt_field(req.card_password, merchant.aes_key, "cardPassword")
        except ConsignError as e:
            raise Refused(str(e)) from None
        if not re.fullmatch(r"[0-9A-Za-z]{6,32}", number) or not password or len(password) > 64:
            raise Refused("cardNumber or cardPassword is not a card's")
        try:
            order, created = await self._b(self.store.submit(
                merchant.customer_id, order_id, req.batchno, product, req.amount,
                req.notify_url, req.custom, number, password, mask_card(number),
                int(self.clock.seconds() * 1000)))
        except BatchFull as e:
            raise Refused(str(e)) from None
        if order.state is ConsignmentState.PROCESSING:
            # new, or a repeat of one a timeout left unprocessed: idempotent either way
            self.clock.callLater(0, self.processor.process, order.system_order_id)
        log.info("consignment API: merchant {merchant} order {order_id} ({card}) {what}",
                 merchant=merchant.customer_id, order_id=order_id, card=order.card_masked,
                 what="accepted" if created else "repeated: the first stands")
        return {"msg": "accepted" if created else "order exists: the first submission stands",
                "data": {"systemOrderId": order.system_order_id, "orderId": order.order_id}}

    async def blind_search(self, params: dict[str, str]) -> dict[str, Any]:
        merchant = await self.merchant_of(params, OrderQuery.REQUIRED)
        req = OrderQuery.parse(params)
        order = await self._b(self.store.consignment(merchant.customer_id, req.order_id))
        if order is None:
            data: dict[str, Any] = {"customerId": merchant.customer_id, "systemOrderId": "",
                                    "orderId": req.order_id, "status": "4",
                                    "message": "no such order"}
        else:
            data = {"customerId": order.customer_id, "systemOrderId": order.system_order_id,
                    "orderId": order.order_id, "status": STATUS[order.state],
                    "message": order.message, "amount": str(order.amount),
                    "successAmount": order.success_amount, "actualAmount": order.actual_amount,
                    "successTime": None if order.success_ms is None else order.success_ms // 1000,
                    "custom": order.custom}
        return {"msg": "ok", "data": data}

    async def query_balance(self, params: dict[str, str]) -> dict[str, Any]:
        merchant = await self.merchant_of(params, ())
        balance = await self._b(self.store.balance(merchant.customer_id))
        return {"msg": "ok", "data": {"customerId": merchant.customer_id, "balance": balance}}

    async def query_buy(self, params: dict[str, str]) -> dict[str, Any]:
        merchant = await self.merchant_of(params, QueryBuyRequest.REQUIRED)
        req = QueryBuyRequest.parse(params)
        await self._fenced(req.notify_url)
        order_id, amount, account = req.order_id, req.amount, req.account
        try:
            order, created = await self._b(self.store.topup(
                merchant.customer_id, order_id, amount, account, int(self.clock.seconds() * 1000),
                req.notify_url, req.custom))
        except (InsufficientBalance, Conflict, CardRefused) as e:
            raise Refused(str(e)) from None
        log.info("consignment API: merchant {merchant} top-up {order_id} -> order {order} {what}",
                 merchant=merchant.customer_id, order_id=order_id, order=order.order_no,
                 what="created" if created else "repeated")
        return {"msg": "accepted" if created else "order exists: the first submission stands",
                "data": {"systemOrderId": order.order_no, "orderId": order_id, "status": "1",
                         "account": account, "amount": amount}}

    async def query_biz_order(self, params: dict[str, str]) -> dict[str, Any]:
        merchant = await self.merchant_of(params, OrderQuery.REQUIRED)
        req = OrderQuery.parse(params)
        order = await self._b(self.store.topup_order(merchant.customer_id, req.order_id))
        if order is None:
            return {"msg": "ok", "data": {"orderId": req.order_id, "status": "4",
                                          "message": "no such order"}}
        load = await self._b(self.ledger.load(order.order_no))
        status = {OrderState.CREATED: "1", OrderState.PENDING: "1", OrderState.LOADED: "2",
                  OrderState.REVERSED: "3"}[order.state]
        return {"msg": "ok", "data": {
            "orderId": req.order_id, "systemOrderId": order.order_no,
            "account": order.logical_no, "amount": order.amount, "status": status,
            "loaded": order.state is OrderState.LOADED,
            "balanceAfter": None if load is None else load.new_balance,
            "message": {"1": "waiting for the card to be loaded", "2": "loaded onto the card",
                        "3": "the load was reversed"}[status]}}


Handler = Callable[[dict[str, str]], Awaitable[dict[str, Any]]]


class FormEndpoint(Resource):
    isLeaf = True

    def __init__(self, name: str, handler: Handler, md5_of: Callable[[str], Awaitable[str | None]]
                 ) -> None:
        super().__init__()
        self.name = name
        self.handler = handler
        self.md5_of = md5_of

    def render(self, request: Request) -> bytes | int:
        refusal = refuse_other_methods(request, self.name)
        if refusal is not None:
            return refusal
        params: dict[str, str] = {}
        for key, values in (request.args or {}).items():
            try:
                name = key.decode("utf-8")
                if len(values) != 1:
                    return write_json(request, {"code": -1, "msg": f"{name} is given twice"})
                params[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                return write_json(request, {"code": -1, "msg": "parameters are not UTF-8"})
        Deferred.fromCoroutine(self._answer(request, params))
        return NOT_DONE_YET

    async def _answer(self, request: Request, params: dict[str, str]) -> None:
        try:
            result = await self.handler(params)
            body: dict[str, Any] = {"code": 1, **result}
            key = await self.md5_of(params.get("customerId", ""))
            if key and isinstance(body.get("data"), dict):
                flat = {k: "" if v is None else str(v) for k, v in body["data"].items()}
                body["sign"] = make_sign(flat, key)
        except Refused as e:
            log.info("consignment API /{name}: refused: {why}", name=self.name, why=str(e))
            body = {"code": -1, "msg": str(e)}
        except Exception:
            log.failure("consignment API /{name}: internal error", Failure(), name=self.name)
            body = {"code": -1, "msg": "internal error; the request may be repeated"}
        finish_json(request, body)


def install(root: Resource, api: ConsignmentAPI) -> None:
    async def md5_of(customer_id: str) -> str | None:
        if not customer_id:
            return None
        merchant = await api.store.merchant(customer_id)
        return None if merchant is None else merchant.md5_key

    for name, handler in (("v2_tocard", api.tocard), ("v2_blindSearch", api.blind_search),
                          ("v2_queryBalance", api.query_balance), ("v2_queryBuy", api.query_buy),
                          ("v2_queryBizOrder", api.query_biz_order)):
        endpoint = FormEndpoint(name, handler, md5_of)
        root.putChild(name.encode(), endpoint)
        root.putChild(f"{name}.html".encode(), endpoint)
