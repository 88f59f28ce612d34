"""
The operators' console and /metrics on the admin endpoint, against a real daemon: access by
token (login, Bearer, basic), every page, the audited resolution of a load in doubt with its
refusals (no reason, no confirmation, a stale form), a failed notification retried, the
reconciliation CSV, and the metrics a recharge leaves behind.
"""

from __future__ import annotations

import base64
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support import Daemon
from tests.test_recharge_e2e import tool

pytestmark = pytest.mark.slow


class Browser:
    """urllib with a cookie jar, redirects not followed (we look at them)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  NoRedirect())

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[
            str, str]]:
        return self._open(urllib.request.Request(self.base + path, headers=headers or {}))

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        data = urllib.parse.urlencode(fields).encode()
        return self._open(urllib.request.Request(self.base + path, data=data))

    def _open(self, req: urllib.request.Request) -> tuple[int, str, dict[str, str]]:
        try:
            with self.opener.open(req, timeout=15) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def csrf(self) -> str:
        _, text, _ = self.get("/")
        match = re.search(r'name="csrf" value="([^"]+)"', text)
        assert match, text[:500]
        return match.group(1)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    d = Daemon(tmp_path_factory.mktemp("console") / "data",
               ["--admin", "tcp:0:interface=127.0.0.1"]).start()
    try:
        token = (d.data_dir / "admin-token").read_text().strip()
        yield d, token
    finally:
        d.stop()


def admin_url(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.listening['admin']['port']}"


def logged_in(d: Daemon, token: str, operator: str = "alice") -> Browser:
    b = Browser(admin_url(d))
    status, _, headers = b.post("/login", {"operator": operator, "token": token})
    assert status == 302 and headers["Location"] == "/"
    return b


def terminal(d: Daemon, *args: str) -> str:
    out = tool("lnt-terminal", *args, data=d.data_dir)
    return out.stdout + out.stderr


def test_the_token_is_made_once_and_kept_private(console: tuple[Daemon, str]) -> None:
    d, token = console
    path = d.data_dir / "admin-token"
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert token not in d.log()


def test_nothing_without_the_token(console: tuple[Daemon, str]) -> None:
    d, token = console
    b = Browser(admin_url(d))
    status, _, headers = b.get("/")
    assert status == 302 and headers["Location"] == "/login"
    assert b.get("/orders")[0] == 302
    assert b.get("/metrics")[0] == 401
    assert b.get("/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    status, text, _ = b.post("/login", {"operator": "mallory", "token": token[:-1] + "x"})
    assert status == 401 and "Wrong token" in text
    assert b.post("/login", {"operator": "", "token": token})[0] == 401
    # a form without the session's CSRF token changes nothing
    assert b.post("/resolve", {"order": "1", "verdict": "settle", "reason": "because"}
                  )[0] == 403
    assert "console: a login failed" in d.log()


def test_bearer_and_basic_reach_metrics_and_pages(console: tuple[Daemon, str]) -> None:
    d, token = console
    b = Browser(admin_url(d))
    status, text, headers = b.get("/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "lnt_loads_in_doubt " in text and "process_open_fds" in text
    basic = base64.b64encode(f"bob:{token}".encode()).decode()
    assert b.get("/terminals", {"Authorization": f"Basic {basic}"})[0] == 200


def test_a_recharge_and_a_load_in_doubt_seen_and_resolved(console: tuple[Daemon, str]) -> None:
    d, token = console
    assert "loaded order" in terminal(d, "recharge", "--amount", "100")
    out = terminal(d, "recharge", "--amount", "70", "--interrupt", "after-credit")
    assert "connection dropped after credit" in out
    assert any("#warn" in line and "left in doubt" in line for line in d.log().splitlines())
    b = logged_in(d, token)

    status, text, _ = b.get("/orders")
    assert status == 200 and text.count("/order/") >= 2
    assert "5100********0001" in text and "5100000000000001" not in text  # masked
    status, text, _ = b.get("/loads")
    pending = re.findall(r'href="/order/(\d{20})"', text)
    assert status == 200 and len(pending) == 1
    order_no = pending[0]
    status, text, _ = b.get("/")
    assert re.search(r'id="doubt"><b class="warn">1<', text), text

    csrf = b.csrf()
    form = {"csrf": csrf, "order": order_no, "verdict": "settle",
            "reason": "card read: balance shows the 70 fen", "confirm": "yes"}
    status, text, _ = b.post("/resolve", {**form, "confirm": ""})
    assert status == 400 and "confirmation" in text
    status, text, _ = b.post("/resolve", {**form, "reason": ""})
    assert status == 400 and "reason" in text
    status, text, _ = b.post("/resolve", {**form, "verdict": "guess"})
    assert status == 400
    status, _, headers = b.post("/resolve", form)
    assert status == 302 and headers["Location"].startswith(f"/order/{order_no}")
    status, text, _ = b.get(headers["Location"])
    assert "load settled (loaded) by alice" in text
    assert "console:alice" in text and "balance shows the 70 fen" in text
    status, text, _ = b.post("/resolve", form)  # twice: refused, nothing moves again
    assert status == 409 and "is loaded, not in" in text, text
    status, text, _ = b.get("/")
    assert re.search(r'id="doubt"><b>0<', text), text
    check = tool("lnt-admin", "check", data=d.data_dir)
    assert check.returncode == 0, check.stdout
    assert "resolved the load of order" in d.log()


def test_reconciliation_csv_and_the_other_pages(console: tuple[Daemon, str]) -> None:
    d, token = console
    b = logged_in(d, token, "carol")
    for page in ("/payments", "/payments?without_order=1", "/consignments",
                 "/consignments?state=success", "/notifications", "/notifications?state=failed",
                 "/terminals", "/merchants", "/reconcile"):
        status, text, _ = b.get(page)
        assert status == 200 and "Internal error" not in text, page
    assert b.get("/orders?state=nonsense")[0] == 400
    assert b.get("/nowhere")[0] == 404
    status, text, headers = b.get("/reconcile?format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    lines = text.strip().splitlines()
    assert lines[0].startswith("platform,biz_serial_no,order_no") and len(lines) >= 2
    assert b.get("/reconcile?date=2026-13-45")[0] == 400
    # logging out ends the session
    status, _, _ = b.post("/logout", {"csrf": b.csrf()})
    assert status == 302 and b.get("/")[0] == 302


def test_metrics_after_a_recharge(console: tuple[Daemon, str]) -> None:
    d, token = console
    assert "loaded order" in terminal(d, "recharge", "--amount", "5")
    _, text, _ = Browser(admin_url(d)).get("/metrics", {"Authorization": f"Bearer {token}"})
    for name in ('lnt_flows_total{code="00",flow="recharge"}',
                 'lnt_flows_total{code="00",flow="sign-in"}',
                 'lnt_flow_stage_seconds_count{flow="recharge",stage="DD11"}',
                 'lnt_flow_seconds_count{flow="recharge"}',
                 'lnt_ledger_transaction_seconds_count{name="begin_load"}',
                 'lnt_http_requests_total{endpoint="/APPLLogin",status="200"}',
                 'lnt_open_connections{listener="flows"}',
                 "lnt_payments_awaiting_load ", "lnt_outbox_pending ",
                 "lnt_money_gauges_refreshed_timestamp_seconds "):
        assert name in text, name
    # a path nobody serves is one label, not one per path
    Browser(d.http_url).get("/no/such/thing/12345")
    _, text, _ = Browser(admin_url(d)).get("/metrics", {"Authorization": f"Bearer {token}"})
    assert 'endpoint="/other"' in text and "12345" not in text
