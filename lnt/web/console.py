"""
The operators' web console and C{/metrics}, on the daemon's admin endpoint (C{--admin}, off
unless configured; docs/operating.rst). Server-rendered HTML, no build step and no script beyond
a confirmation prompt: every page is a plain form or table, every value escaped.

Access: the token in C{<data-dir>/admin-token} (created at the first start, mode 0600), given
on the login page (the operator also names themself: decisions are audited under that name),
as C{Authorization: Bearer TOKEN} (Prometheus' C{bearer_token_file}), or as the password of
HTTP basic authentication (the user name is the operator). A login makes a session cookie
(HttpOnly, SameSite=Strict, Secure on TLS) that lasts eight hours; every form that changes
something carries the session's CSRF token and a reason, and is audited like lnt-admin's.
"""

from __future__ import annotations

import base64
import csv
import hmac
import html
import io
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lnt import metrics
from lnt.domain.loads import Verdict
from lnt.domain.masking import mask_card
from lnt.domain.records import (
    CHINA,
    Conflict,
    ConsignmentState,
    LoadState,
    NotFound,
    NotificationState,
    OrderState,
)
from lnt.interfaces import BackendTimeout, bounded
from lnt.logmask import Logger
from lnt.storage.consignments import SQLConsignments
from lnt.storage.ledger import SQLLedger
from lnt.storage.pkicards import LedgerPKI
from lnt.web.views import (
    age,
    china_time,
    consignment_view,
    notification_view,
    order_view,
    payment_view,
)

log = Logger()

SESSION_SECONDS = 8 * 3600
COOKIE = b"lnt_admin"
#: rows a listing shows at most
LIST_LIMIT = 200


class Refused(Exception):
    """What the operator asked for cannot be done; the message says why (400/409 page)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ConsoleSession:
    operator: str
    csrf: str
    expires: float


@dataclass
class AdminAuth:
    """The admin token and the console's sessions (in memory: a restart logs everyone out)."""

    token: str
    clock: IReactorTime
    sessions: dict[str, ConsoleSession] = field(default_factory=dict)

    def login(self, operator: str, token: str) -> str | None:
        """A new session id when the token is right."""
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        now = self.clock.seconds()
        for sid in [s for s, v in self.sessions.items() if v.expires <= now]:
            del self.sessions[sid]
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = ConsoleSession(operator, secrets.token_urlsafe(24),
                                            now + SESSION_SECONDS)
        return sid

    def session(self, request: Request) -> ConsoleSession | None:
        sid = request.getCookie(COOKIE)
        if sid is None:
            return None
        found = self.sessions.get(sid.decode("ascii", "replace"))
        if found is None or found.expires <= self.clock.seconds():
            return None
        return found

    def bearer(self, request: Request) -> str | None:
        """The operator of a request that carries the token itself (Bearer or basic)."""
        header = (request.getHeader("authorization") or "").strip()
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            if hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return "bearer"
        elif scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if hmac.compare_digest(password.encode(), self.token.encode()):
                return user or "basic"
        return None


@dataclass
class ConsoleBackends:
    ledger: SQLLedger
    pki: LedgerPKI
    consignments: SQLConsignments
    clock: IReactorTime
    timeout: float
    #: recharges settled per second over the last minute (from the money gauges' job)
    load_rate: Callable[[], float] = lambda: 0.0


# -- HTML ------------------------------------------------------------------------------------

E = html.escape

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#1d3557;color:#fff;padding:.6em 1em;display:flex;gap:1.2em;align-items:center}
header a{color:#fff;text-decoration:none}header b{margin-right:1em}
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f1f4f8}.num{text-align:right;font-variant-numeric:tabular-nums}
.tiles{display:flex;flex-wrap:wrap;gap:1em}.tile{border:1px solid #ccd;border-radius:6px;
padding:.7em 1em;min-width:11em}.tile b{display:block;font-size:1.6em}
.warn{color:#b00020}.ok{color:#2a7a2a}.flash{background:#eef6ee;padding:.5em 1em}
form.inline{display:inline}input[type=text],input[type=password]{padding:.25em}
"""

NAV = (("/", "Dashboard"), ("/orders", "Orders"), ("/loads", "Loads in doubt"),
       ("/payments", "Payments"), ("/consignments", "Consignments"),
       ("/notifications", "Notifications"), ("/terminals", "Terminals"),
       ("/merchants", "Merchants"), ("/reconcile", "Reconciliation"))


def page(title: str, body: str, session: ConsoleSession | None = None,
         flash: str | None = None) -> str:
    nav = "".join(f'<a href="{href}">{E(text)}</a>' for href, text in NAV) if session else ""
    who = ""
    if session is not None:
        who = (f'<span style="margin-left:auto">{E(session.operator)}</span>'
               f'<form class="inline" method="post" action="/logout">'
               f'<input type="hidden" name="csrf" value="{E(session.csrf)}">'
               f'<button>Log out</button></form>')
    note = f'<p class="flash" id="flash">{E(flash)}</p>' if flash else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{E(title)} - "
            f"lnt-recharge</title><style>{STYLE}</style></head><body><header>"
            f"<b>lnt-recharge</b>{nav}{who}</header><main><h1>{E(title)}</h1>{note}{body}"
            f"</main></body></html>")


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None,
          raw: set[int] | None = None) -> str:
    """Cells are escaped unless their column is in C{raw} (links and forms we built)."""
    numeric, raw = numeric or set(), raw or set()
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td{" class=num" if i in numeric else ""}>'
            f'{cell if i in raw else E("" if cell is None else str(cell))}</td>'
            for i, cell in enumerate(row)) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def link(href: str, text: str) -> str:
    return f'<a href="{E(href)}">{E(text)}</a>'


def arg(request: Request, name: str) -> str:
    values = (request.args or {}).get(name.encode())
    if not values:
        return ""
    return str(values[0].decode("utf-8", "replace")).strip()


def fen(amount: int | None) -> str:
    return "" if amount is None else f"{amount / 100:,.2f}"


# -- the resource ------------------------------------------------------------------------------

Handler = Callable[[Request, ConsoleSession], Awaitable[str]]


class Console(Resource):
    isLeaf = True

    def __init__(self, backends: ConsoleBackends, auth: AdminAuth) -> None:
        super().__init__()
        self.b = backends
        self.auth = auth
        self.pages: dict[str, Handler] = {
            "": self.dashboard, "orders": self.orders, "order": self.order,
            "loads": self.loads, "payments": self.payments, "consignments": self.consignments,
            "notifications": self.notifications, "terminals": self.terminals,
            "merchants": self.merchants, "reconcile": self.reconcile}
        self.actions: dict[str, Handler] = {"resolve": self.resolve, "retry": self.retry}

    # twisted.web entry points

    def render_GET(self, request: Request) -> bytes | int:
        name = (request.postpath or [b""])[0].decode("utf-8", "replace")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-frame-options", b"DENY")
        if name == "metrics":
            return self._metrics(request)
        if name == "health" and (request.postpath or [])[1:] == [b"live"]:
            # liveness for the operator and systemd checks, reachable while the public
            # endpoint is flooded (it is on its own listener and budget)
            request.setHeader(b"content-type", b"text/plain")
            return b"live\n"
        if name == "login":
            return self._html(request, page("Log in", LOGIN_FORM))
        session = self.auth.session(request)
        if session is None:
            operator = self.auth.bearer(request)
            if operator is None:
                request.redirect(b"/login")
                return b""
            session = ConsoleSession(operator, "", 0)
        handler = self.pages.get(name)
        if handler is None:
            request.setResponseCode(404)
            return self._html(request, page("Not found", "<p>No such page.</p>", session))
        return self._run(request, session, handler)

    def render_POST(self, request: Request) -> bytes | int:
        name = (request.postpath or [b""])[0].decode("utf-8", "replace")
        request.setHeader(b"cache-control", b"no-store")
        if name == "login":
            return self._login(request)
        session = self.auth.session(request)
        if session is None or not hmac.compare_digest(arg(request, "csrf").encode(),
                                                      session.csrf.encode()):
            request.setResponseCode(403)
            return self._html(request, page("Forbidden", "<p>Your session has ended or the "
                                            "form is stale: <a href=/login>log in</a>.</p>"))
        if name == "logout":
            self.auth.sessions = {k: v for k, v in self.auth.sessions.items() if v is not session}
            request.redirect(b"/login")
            return b""
        handler = self.actions.get(name)
        if handler is None:
            request.setResponseCode(404)
            return self._html(request, page("Not found", "<p>No such action.</p>", session))
        return self._run(request, session, handler)

    def _login(self, request: Request) -> bytes:
        operator = arg(request, "operator")[:60]
        sid = self.auth.login(operator, arg(request, "token")) if operator else None
        if sid is None:
            request.setResponseCode(401)
            log.warn("console: a login failed (operator {operator!r})", operator=operator)
            return self._html(request, page("Log in", '<p class="warn">Wrong token, or no '
                                            "operator name.</p>" + LOGIN_FORM))
        secure = b"; Secure" if request.isSecure() else b""
        request.setHeader(b"set-cookie", COOKIE + b"=" + sid.encode() + b"; Path=/; HttpOnly;"
                          b" SameSite=Strict; Max-Age=%d" % SESSION_SECONDS + secure)
        log.info("console: {operator} logged in", operator=operator)
        request.redirect(b"/")
        return b""

    def _metrics(self, request: Request) -> bytes:
        if self.auth.session(request) is None and self.auth.bearer(request) is None:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="lnt-recharge"')
            return b"the admin token is needed (Authorization: Bearer ...)\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(metrics.REGISTRY)

    @staticmethod
    def _html(request: Request, text: str) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return text.encode()

    def _run(self, request: Request, session: ConsoleSession, handler: Handler) -> int:
        async def go() -> None:
            try:
                text = await handler(request, session)
            except Refused as e:
                request.setResponseCode(e.status)
                text = page("Refused", f'<p class="warn" id="refused">{E(str(e))}</p>',
                            session)
            except BackendTimeout as e:
                request.setResponseCode(503)
                text = page("Busy", f'<p class="warn">{E(str(e))}: try again.</p>', session)
            except Exception:
                log.failure("console: {path} failed", path=request.path)
                request.setResponseCode(500)
                text = page("Error", "<p>Internal error; it is in the daemon's log.</p>",
                            session)
            if request.finished or request._disconnected:
                return
            if text:
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                request.write(text.encode())
            request.finish()

        Deferred.fromCoroutine(go())
        return NOT_DONE_YET

    def _call(self, d: Deferred[Any], what: str) -> Deferred[Any]:
        return bounded(d, self.b.timeout, self.b.clock, what)

    def _now_ms(self) -> int:
        return int(self.b.clock.seconds() * 1000)

    # -- pages ------------------------------------------------------------------------------

    async def dashboard(self, request: Request, s: ConsoleSession) -> str:
        now = self._now_ms()
        risks = await self._call(self.b.ledger.money_at_risk(now), "money at risk")
        doubt = [r for r in risks if r.what == "load in doubt"]
        waiting = [r for r in risks if r.what != "load in doubt"]
        outbox = await self._call(self.b.consignments.outbox(now), "outbox")
        today = datetime.fromtimestamp(now / 1000, CHINA).strftime("%Y%m%d")
        loaded = await self._call(self.b.ledger.reconcile(today, None), "reconcile")
        sessions = await self._call(self.b.ledger.sessions(), "sessions")
        live = sum(1 for _, expires in sessions.values() if expires > now)
        codes: dict[str, int] = {}
        for family in metrics.FLOWS.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["code"] != "00":
                    key = f"{sample.labels['flow']} {sample.labels['code']}"
                    codes[key] = codes.get(key, 0) + int(sample.value)

        def tile(ident: str, label: str, value: str, warn: bool = False) -> str:
            cls = ' class="warn"' if warn else ""
            return (f'<div class="tile" id="{ident}"><b{cls}>{E(value)}</b>{E(label)}</div>')

        tiles = "".join([
            tile("rate", "loads/s (last minute)", f"{self.b.load_rate():.2f}"),
            tile("today", f"loads today, {fen(sum(r.amount for r in loaded))} yuan",
                 str(len(loaded))),
            tile("doubt", f"loads in doubt, {fen(sum(r.amount for r in doubt))} yuan",
                 str(len(doubt)), bool(doubt)),
            tile("waiting", f"payments awaiting load, {fen(sum(r.amount for r in waiting))} "
                 "yuan", str(len(waiting)), bool(waiting)),
            tile("outbox", f"notifications pending (oldest {age(outbox['oldest_ms'])})",
                 str(outbox["pending"])),
            tile("failed", "notifications given up", str(outbox["failed"]),
                 bool(outbox["failed"])),
            tile("signed-in", "terminals signed in", str(live)),
        ])
        errors = table(["flow and info code", "since start"],
                       [[k, v] for k, v in sorted(codes.items())], {1})
        risk_rows = [[r.what, link(f"/order/{r.reference}", r.reference)
                      if r.what != "payment without order" else E(r.reference),
                      fen(r.amount), age(now - r.since_ms), r.note] for r in risks]
        return page("Dashboard", f'<div class="tiles">{tiles}</div><h2>Money at risk</h2>'
                    + table(["what", "reference", "yuan", "for", "note"], risk_rows, {2}, {1})
                    + "<h2>Refusals and errors by info code</h2>" + errors, s)

    async def orders(self, request: Request, s: ConsoleSession) -> str:
        q = arg(request, "q")
        if q.isdigit() and len(q) == 20:
            request.redirect(f"/order/{q}".encode())
            return ""
        state = _choice(OrderState, arg(request, "state"))
        card = arg(request, "card") or None
        terminal = arg(request, "terminal")
        found = await self._call(self.b.ledger.search_orders(
            state, card, int(terminal) if terminal.isdigit() else None, None, None,
            LIST_LIMIT), "search orders")
        rows = [[link(f"/order/{v['order']}", v["order"]), v["state"], fen(v["amount"]),
                 v["card"], v["terminal"], v["payment"], v["created"]]
                for v in (order_view(o, ld) for o, ld in found)]
        form = _filter_form("/orders", [("q", "order number", q), ("card", "card number",
                                                                    card or ""),
                                        ("terminal", "terminal PKI", terminal)],
                            ("state", [x.value for x in OrderState], arg(request, "state")))
        return page("Orders", form + table(["order", "state", "yuan", "card", "terminal",
                                            "payment", "created"], rows, {2}, {0}), s)

    async def order(self, request: Request, s: ConsoleSession) -> str:
        order_no = [*(request.postpath or []), b"", b""][1].decode("utf-8", "replace")
        ledger = self.b.ledger
        order = await self._call(ledger.order(order_no), "order")
        if order is None:
            raise Refused(f"no order {order_no}", 404)
        load = await self._call(ledger.load(order_no), "load")
        v = order_view(order, load)
        entries = await self._call(ledger.entries(order_no), "entries")
        entries += await self._call(ledger.entries(v["payment"]), "entries")
        decisions = await self._call(ledger.decisions(order_no), "decisions")
        facts = table(["", ""], [[k, v[k]] for k in ("order", "state", "amount", "card",
                                                      "card_kind", "terminal", "payment",
                                                      "created", "updated")])
        body = facts
        if v["load"]:
            body += "<h2>Load</h2>" + table(list(v["load"]), [list(v["load"].values())])
        body += "<h2>Journal entries</h2>" + table(
            ["kind", "at", "postings"],
            [[k, china_time(at), ", ".join(f"{a} {m:+d}" for a, m in p)]
             for k, at, p in entries])
        body += "<h2>Operators' decisions</h2>" + table(
            ["decision", "operator", "at", "reason"],
            [[d, o, china_time(at), r] for _, d, r, o, at in decisions])
        if load is not None and load.state is LoadState.PENDING:
            body += "<h2>Resolve this load</h2>" + _resolve_form(order_no, s.csrf)
        flash = arg(request, "done") or None
        return page(f"Order {order_no}", body, s, flash)

    async def loads(self, request: Request, s: ConsoleSession) -> str:
        found = await self._call(self.b.ledger.search_orders(
            OrderState.PENDING, None, None, None, None, 10_000), "loads in doubt")
        rows = []
        for o, ld in found:
            v = order_view(o, ld)
            rows.append([link(f"/order/{v['order']}", v["order"]), fen(v["amount"]),
                         v["card_kind"], v["card"], v["terminal"],
                         v["load"]["created"] if v["load"] else "",
                         _resolve_form(o.order_no, s.csrf)])
        intro = ("<p>Loads the card has not proven. A terminal's next DD11 reads the card back "
                 "and settles or reverses the load by itself; decide here only from the card's "
                 "own reading (docs/operating.rst).</p>")
        return page("Loads in doubt", intro + table(
            ["order", "yuan", "kind", "card", "terminal", "since", "resolve"], rows, {1},
            {0, 6}), s)

    async def resolve(self, request: Request, s: ConsoleSession) -> str:
        order_no, verdict, reason = arg(request, "order"), arg(request, "verdict"), \
            arg(request, "reason")
        if verdict not in ("settle", "reverse"):
            raise Refused("choose settle (the card got the load) or reverse (it did not)", 400)
        if len(reason) < 5:
            raise Refused("give the reason for the decision (it is stored with it)", 400)
        if arg(request, "confirm") != "yes":
            raise Refused("tick the confirmation: the decision moves money and cannot be "
                          "undone", 400)
        try:
            load = await self._call(self.b.ledger.resolve_load(
                order_no, Verdict(verdict), reason, f"console:{s.operator}", self._now_ms()),
                "resolve load")
        except (Conflict, NotFound) as e:
            raise Refused(str(e)) from None
        what = "settled (loaded)" if load.state is LoadState.LOADED else "reversed"
        log.warn("console: {operator} resolved the load of order {order}: {what} ({reason})",
                 operator=s.operator, order=order_no, what=what, reason=reason)
        request.redirect(f"/order/{order_no}?done={quote(f'load {what} by {s.operator}')}"
                         .encode())
        return ""

    async def payments(self, request: Request, s: ConsoleSession) -> str:
        without = arg(request, "without_order") == "1"
        rows = await self._call(self.b.ledger.search_payments(None, without, LIST_LIMIT),
                                "payments")
        views = [payment_view(r) for r in rows]
        table_rows = [[v["payment"], fen(v["money"]), v["terminal"], v["created"],
                       link(f"/order/{v['order']}", v["order"]) if v["order"] else "",
                       v["order_state"] or v["refusal"] or ("refunded " + v["refunded"]
                                                            if v["refunded"] else "")]
                      for v in views]
        toggle = link("/payments" if without else "/payments?without_order=1",
                      "all payments" if without else "only those without an order")
        return page("Payments", f"<p>{toggle}</p>" + table(
            ["payment", "yuan", "terminal", "created", "order", "state"], table_rows, {1},
            {4}), s)

    async def consignments(self, request: Request, s: ConsoleSession) -> str:
        state = _choice(ConsignmentState, arg(request, "state"))
        merchant = arg(request, "merchant") or None
        found = await self._call(self.b.consignments.search(state, merchant, None, None,
                                                            LIST_LIMIT), "consignments")
        rows = [[v["system_order"], v["merchant"], v["order_id"], v["state"],
                 fen(v["amount"]), v["voucher"], v["created"], v["message"]]
                for v in map(consignment_view, found)]
        form = _filter_form("/consignments", [("merchant", "merchant", merchant or "")],
                            ("state", [x.value for x in ConsignmentState],
                             arg(request, "state")))
        return page("Consignments", form + table(
            ["system order", "merchant", "order id", "state", "yuan", "voucher", "created",
             "message"], rows, {4}), s)

    async def notifications(self, request: Request, s: ConsoleSession) -> str:
        state = _choice(NotificationState, arg(request, "state"))
        found = await self._call(self.b.consignments.search_notifications(
            state, None, LIST_LIMIT), "notifications")
        now = self._now_ms()
        rows = []
        for v in (notification_view(n, now) for n in found):
            action = ""
            if v["state"] == "failed":
                action = (f'<form class="inline" method="post" action="/retry">'
                          f'<input type="hidden" name="csrf" value="{E(s.csrf)}">'
                          f'<input type="hidden" name="id" value="{v["id"]}">'
                          f'<input type="text" name="reason" placeholder="reason" required>'
                          f"<button>Retry</button></form>")
            rows.append([v["id"], v["reference"], v["url"], v["state"], v["attempts"],
                         v["age"], v["last_outcome"] or "", action])
        form = _filter_form("/notifications", [], ("state", [x.value for x in
                                                             NotificationState],
                                                   arg(request, "state")))
        return page("Notifications", form + table(
            ["id", "reference", "url", "state", "attempts", "age", "last outcome", ""], rows,
            {0, 4}, {7}), s, arg(request, "done") or None)

    async def retry(self, request: Request, s: ConsoleSession) -> str:
        ident, reason = arg(request, "id"), arg(request, "reason")
        if not ident.isdigit() or len(reason) < 3:
            raise Refused("give the notification and the reason for retrying it", 400)
        try:
            done = await self._call(self.b.consignments.retry_notification(
                int(ident), reason, f"console:{s.operator}", self._now_ms()), "retry")
        except (Conflict, NotFound) as e:
            raise Refused(str(e)) from None
        log.info("console: {operator} retried notification {id} ({reference}): {reason}",
                 operator=s.operator, id=done["id"], reference=done["reference"],
                 reason=reason)
        request.redirect(f"/notifications?done={quote('notification ' + ident + ' retried')}"
                         .encode())
        return ""

    async def terminals(self, request: Request, s: ConsoleSession) -> str:
        cards = await self._call(self.b.pki.cards(), "terminals")
        sessions = await self._call(self.b.ledger.sessions(), "sessions")
        now = self._now_ms()
        rows = []
        for c in cards:
            _, expires = sessions.get(c.pki_no, ("", 0))
            rows.append([c.pki_no, c.user_id.decode("ascii", "replace"), c.status.value,
                         c.key_version,
                         f"until {china_time(expires)}" if expires > now else "no"])
        return page("Terminals", "<p>Revoke and enable with <code>lnt-admin terminal</code>."
                    "</p>" + table(["PKI card", "user ID", "status", "key version",
                                    "signed in"], rows, {0}), s)

    async def merchants(self, request: Request, s: ConsoleSession) -> str:
        store = self.b.consignments
        rows = []
        for cid, active, rates in await self._call(store.merchants(), "merchants"):
            balance = await self._call(store.balance(cid), "balance")
            rows.append([cid, "active" if active else "disabled", fen(balance),
                         ", ".join(f"{p} {r / 100:.2f}%" for p, r in sorted(rates.items()))])
        return page("Merchants", table(["merchant", "state", "balance (yuan)", "rates"],
                                       rows, {2}), s)

    async def reconcile(self, request: Request, s: ConsoleSession) -> str:
        day = arg(request, "date") or datetime.fromtimestamp(
            self._now_ms() / 1000, CHINA).strftime("%Y%m%d")
        try:
            rows = await self._call(self.b.ledger.reconcile(day, None), "reconcile")
        except ValueError:
            raise Refused("the date is YYYYMMDD", 400) from None
        if arg(request, "format") == "csv":
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["platform", "biz_serial_no", "order_no", "logical_card_no",
                             "amount_fen", "loaded_at"])
            for r in rows:
                writer.writerow([r.platform_no, r.biz_serial_no, r.order_no, r.logical_no,
                                 r.amount, china_time(r.loaded_ms)])
            request.setHeader(b"content-type", b"text/csv; charset=utf-8")
            request.setHeader(b"content-disposition",
                              f'attachment; filename="lnt-reconcile-{day}.csv"'.encode())
            request.write(out.getvalue().encode())
            return ""
        body = (_filter_form("/reconcile", [("date", "YYYYMMDD", day)], None)
                + f'<p>{len(rows)} loads, {fen(sum(r.amount for r in rows))} yuan. '
                + link(f"/reconcile?date={day}&format=csv", "Download CSV") + "</p>"
                + table(["platform", "biz_serial_no", "order", "card", "yuan", "loaded"],
                        [[r.platform_no, r.biz_serial_no, r.order_no, mask_card(r.logical_no),
                          fen(r.amount), china_time(r.loaded_ms)] for r in rows], {4}))
        return page(f"Reconciliation {day}", body, s)


LOGIN_FORM = """
<form method="post" action="/login">
<p><label>Operator name <input type="text" name="operator" required></label></p>
<p><label>Admin token <input type="password" name="token" required></label></p>
<p><button>Log in</button></p>
<p>The token is in <code>DATA-DIR/admin-token</code> on the daemon's machine.</p>
</form>
"""


def _resolve_form(order_no: str, csrf: str) -> str:
    return (f'<form class="inline resolve" method="post" action="/resolve" '
            f"onsubmit=\"return confirm('This decision moves money and cannot be undone.')\">"
            f'<input type="hidden" name="csrf" value="{E(csrf)}">'
            f'<input type="hidden" name="order" value="{E(order_no)}">'
            f'<select name="verdict"><option value="">decide...</option>'
            f'<option value="settle">settle: the card has it</option>'
            f'<option value="reverse">reverse: the card does not</option></select> '
            f'<input type="text" name="reason" placeholder="reason (the card\'s reading)" '
            f"required> <label><input type=checkbox name=confirm value=yes required> "
            f"sure</label> <button>Resolve</button></form>")


def _filter_form(action: str, fields: list[tuple[str, str, str]],
                 choice: tuple[str, list[str], str] | None) -> str:
    parts = [f'<input type="text" name="{E(n)}" placeholder="{E(p)}" value="{E(v)}">'
             for n, p, v in fields]
    if choice is not None:
        name, options, current = choice
        opts = "".join(f'<option{" selected" if o == current else ""}>{E(o)}</option>'
                       for o in options)
        parts.append(f'<select name="{E(name)}"><option value="">any {E(name)}</option>'
                     f"{opts}</select>")
    return f'<form method="get" action="{E(action)}">{" ".join(parts)} <button>Show</button></form>'


def _choice(kind: Any, value: str) -> Any:
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise Refused(f"{value!r} is not one of {', '.join(k.value for k in kind)}",
                      400) from None
