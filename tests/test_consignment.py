"""
The consignment API: its sign and AES rules (SPEC-NOTES 4 vectors), the store's limits, and end
to end against a real daemon with a merchant client written the way the PHP demo works, a
loopback notification receiver, and the terminal simulator for top-ups.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from lnt.crypto.consignsign import (
    ConsignError,
    decrypt_field,
    encrypt_field,
    make_sign,
    sign_string,
    verify_sign,
)
from lnt.domain.records import BatchFull
from lnt.jobs.notifier import Notifier
from lnt.storage.consignments import BATCH_LIMIT, SQLConsignments
from lnt.storage.database import result_of
from tests.fakes import SyncBackends
from tests.support import Daemon

PHP_RULE = frozenset({"sign", "Sign", "s"})  # the demo's paraFilter: custom is signed


# -- the rules -------------------------------------------------------------------------------------

def test_spec_vectors() -> None:
    assert encrypt_field("1000123456789012", "0123456789abcdef") == (
        "4751f8582ee2ef000def8c9fbf8bec3a377222e061a924c591cd9c27ea163ed4")
    params = {"customerId": "10001", "timestamp": "1700000000", "orderId": "M20261123000001",
              "batchno": "B1", "productCode": "JD100", "cardNumber": "x", "cardPassword": "y",
              "amount": "100", "notify_url": "http://127.0.0.1:8081/notify", "custom": ""}
    assert sign_string(params, "testapikey") == (
        "amount=100&batchno=B1&cardNumber=x&cardPassword=y&customerId=10001&notify_url=http://"
        "127.0.0.1:8081/notify&orderId=M20261123000001&productCode=JD100&timestamp=1700000000"
        "&key=testapikey")
    assert make_sign(params, "testapikey") == "c7979dea0dc0c05e524bcd4350e09ad5"


def test_sign_accepts_both_rules_and_cases() -> None:
    params = {"customerId": "1", "timestamp": "2", "custom": "c"}
    for leave_out in (PHP_RULE, frozenset({"sign", "Sign", "custom", "message"})):
        for case in (str.lower, str.upper):
            assert verify_sign({**params, "sign": case(make_sign(params, "k", leave_out))}, "k")
    assert not verify_sign({**params, "sign": make_sign(params, "other")}, "k")
    assert not verify_sign(params, "k")


def test_aes_errors() -> None:
    assert decrypt_field(encrypt_field("abc", "0123456789abcdef"), "0123456789abcdef", "x") == "abc"
    for bad in ("zz", "00" * 16, encrypt_field("abc", "fedcba9876543210")):
        with pytest.raises(ConsignError, match="x does not decrypt with your AES key"):
            decrypt_field(bad, "0123456789abcdef", "x")


def test_batch_limit() -> None:
    b = SyncBackends()
    store = SQLConsignments(b.db, b.keys.sealer())
    result_of(store.add_merchant("m", {"P": 10_000}, 0))
    for i in range(BATCH_LIMIT):
        result_of(store.submit("m", f"o{i}", "B", "P", 1, "", "", "1234567890", "p", "x", 0))
    with pytest.raises(BatchFull):
        result_of(store.submit("m", "one-more", "B", "P", 1, "", "", "1234567890", "p", "x", 0))
    # a repeated orderId is answered, not refused, even in a full batch
    again, created = result_of(store.submit("m", "o7", "B", "P", 1, "", "", "1", "p", "x", 0))
    assert not created and again.order_id == "o7"


def test_notification_schedule() -> None:
    b = SyncBackends()
    store = SQLConsignments(b.db, b.keys.sealer())
    result_of(store.add_merchant("m", {"P": 9000}, 0))
    c, _ = result_of(store.submit("m", "o", "B", "P", 100, "http://x/n", "", "1", "p", "x", 0))
    result_of(store.complete(c.system_order_id, None, "unknown card number", 1000))
    [n] = result_of(store.due(1000, 10, 5000))
    assert result_of(store.due(1000, 10, 5000)) == []  # claimed
    result_of(store.attempted(n.id, "HTTP 500", False, [10, 20], 2000))
    assert result_of(store.due(11_999, 10, 5000)) == []
    [n] = result_of(store.due(12_000, 10, 5000))
    result_of(store.attempted(n.id, "timeout", False, [10, 20], 12_000))
    [n] = result_of(store.due(32_000, 10, 5000))
    result_of(store.attempted(n.id, "HTTP 200: 'fail'", False, [10, 20], 32_000))
    assert result_of(store.notifications(c.system_order_id)) == [
        ("failed", 3, ["HTTP 500", "timeout", "HTTP 200: 'fail'"])]
    assert result_of(store.due(10**9, 10, 5000)) == []


# -- end to end ----------------------------------------------------------------------------------

class Receiver:
    """A merchant's notify_url on loopback: answers from a script, records every post."""

    def __init__(self, answers: list[str], port: int = 0) -> None:
        self.answers = list(answers)
        self.posts: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.posts.append(dict(urllib.parse.parse_qsl(body.decode(),
                                                               keep_blank_values=True)))
                answer = outer.answers.pop(0) if outer.answers else "success"
                self.send_response(200)
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Merchant:
    """A merchant client as the PHP demo writes one: form posts, AES hex, custom signed."""

    def __init__(self, daemon: Daemon) -> None:
        demo = json.loads((daemon.data_dir / "demo.json").read_text())
        self.daemon = daemon
        self.id = demo["merchant"]["customerId"]
        self.aes = demo["merchant"]["aes_key"]
        self.md5 = demo["merchant"]["md5_key"]
        self.vouchers = demo["vouchers"]

    def post(self, endpoint: str, fields: dict[str, str], rule: frozenset[str] = PHP_RULE,
             sign: str | None = None) -> dict[str, Any]:
        fields = {"customerId": self.id, "timestamp": str(int(time.time())), **fields}
        fields["sign"] = sign if sign is not None else make_sign(fields, self.md5, rule)
        data = urllib.parse.urlencode(fields).encode()
        url = f"{self.daemon.http_url}/{endpoint}"
        with urllib.request.urlopen(url, data=data, timeout=15) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def tocard(self, order_id: str, number: str, password: str, amount: int,
               notify_url: str = "", product: str = "LNT100", **extra: str) -> dict[str, Any]:
        return self.post("v2_tocard.html", {
            "orderId": order_id, "batchno": "B1", "productCode": product,
            "cardNumber": encrypt_field(number, self.aes),
            "cardPassword": encrypt_field(password, self.aes), "amount": str(amount),
            "notify_url": notify_url, "custom": "from-php", **extra})

    def search(self, order_id: str) -> dict[str, Any]:
        return self.post("v2_blindSearch", {"orderId": order_id})

    def wait(self, order_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data: dict[str, Any] = self.search(order_id)["data"]
            if data["status"] != "1":
                return data
            time.sleep(0.05)
        raise TimeoutError(order_id)

    def balance(self) -> int:
        return int(self.post("v2_queryBalance", {})["data"]["balance"])


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Merchant]:
    d = Daemon(tmp_path_factory.mktemp("consign") / "data", ["--notify-retries", "0.5,1"]).start()
    try:
        yield Merchant(d)
    finally:
        d.stop()


def admin(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("lnt-admin")), "--data-dir",
                           str(data), *args], capture_output=True, text=True, timeout=60)


def outbox(data: Path, reference: str) -> tuple[str, int] | None:
    """The state and attempt count of a reference's notification, read from the ledger."""
    import sqlite3

    conn = sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT state, attempts FROM notifications WHERE reference = ?",
                           (reference,)).fetchone()
    finally:
        conn.close()
    return None if row is None else (str(row[0]), int(row[1]))


def wait_for(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_a_notification_given_up_is_a_warning(shop: Merchant) -> None:
    receiver = Receiver(["fail", "fail", "fail"])
    try:
        out = admin(shop.daemon.data_dir, "voucher", "issue", "--product", "LNT100", "--value",
                    "1000", "--count", "1")
        number, password = out.stdout.strip().splitlines()[-1].split()
        assert shop.tocard("GIVEUP", number, password, 1000, receiver.url)["code"] == 1
        system_id = shop.wait("GIVEUP")["systemOrderId"]
        wait_for(lambda: outbox(shop.daemon.data_dir, system_id) == ("failed", 3))
        warnings = [line for line in shop.daemon.log().splitlines()
                    if "#warn" in line and "given up" in line and system_id in line]
        assert len(warnings) == 1, shop.daemon.log()[-2000:]

        # an operator sees it, and sends it again once the merchant's endpoint is fixed
        data = shop.daemon.data_dir
        failed = json.loads(admin(data, "notifications", "--state", "failed", "--json").stdout)
        mine = [n for n in failed if n["reference"] == system_id]
        assert len(mine) == 1 and mine[0]["attempts"] == 3 and "fail" in mine[0]["last_outcome"]
        consigned = json.loads(admin(data, "consignments", "--merchant", shop.id, "--state",
                                     "success", "--json").stdout)
        assert [c["order_id"] for c in consigned if c["system_order"] == system_id] == ["GIVEUP"]
        assert number not in json.dumps(consigned)  # the voucher's number stays masked
        shown = json.loads(admin(data, "consignment", "show", system_id, "--json").stdout)
        assert shown["notifications"][0]["state"] == "failed"
        out = admin(data, "notification", "retry", str(mine[0]["id"]), "--reason",
                    "merchant fixed its endpoint", "--operator", "ops1")
        assert out.returncode == 0 and "sent again" in out.stdout, out.stderr
        wait_for(lambda: outbox(data, system_id) == ("delivered", 1))
        again = admin(data, "notification", "retry", str(mine[0]["id"]), "--reason", "twice")
        assert again.returncode == 1 and "only a failed one" in again.stderr
        assert admin(data, "notification", "retry", "999999", "--reason", "x").returncode == 1
        assert admin(data, "notifications", "--state", "lost").returncode == 1
    finally:
        receiver.close()


@pytestmark_slow
def test_consign_with_notifications_that_fail_twice(shop: Merchant) -> None:
    receiver = Receiver(["fail", "not now"])
    try:
        v = shop.vouchers[0]
        before = shop.balance()
        accepted = shop.tocard("N1", v["cardNumber"], v["cardPassword"], 10_000, receiver.url)
        assert accepted["code"] == 1 and accepted["data"]["orderId"] == "N1"
        assert accepted["sign"] == make_sign({k: str(x) for k, x in accepted["data"].items()},
                                             shop.md5)
        data = shop.wait("N1")
        assert data["status"] == "2" and data["successAmount"] == 10_000
        assert data["actualAmount"] == 9_500 and data["custom"] == "from-php"
        assert shop.balance() == before + 9_500
        wait_for(lambda: len(receiver.posts) == 3)
        post = receiver.posts[-1]
        assert post["status"] == "2" and post["orderId"] == "N1" and post["money"] == "10000"
        assert post["sign"] == make_sign(post, shop.md5)  # documented rule: no custom, message
        # delivered: the outbox row is decided, so no attempt can follow
        wait_for(lambda: outbox(shop.daemon.data_dir, data["systemOrderId"]) == ("delivered", 3))
        assert len(receiver.posts) == 3
    finally:
        receiver.close()
    assert "attempt 3: HTTP 200: 'success' (delivered)" in shop.daemon.log()


@pytestmark_slow
@pytest.mark.parametrize(("card", "password", "amount", "message"), [
    ("9999999999999999", "000000000000", 10_000, "unknown card number"),
    (None, "111111111111", 10_000, "wrong card password"),
    (None, None, 5_000, "face value is not 5000"),
])
def test_refused_cards_fail_the_order(shop: Merchant, card: str | None, password: str | None,
                                      amount: int, message: str) -> None:
    v = shop.vouchers[1]
    order = f"F{time.time_ns()}"
    assert shop.tocard(order, card or v["cardNumber"], password or v["cardPassword"],
                       amount)["code"] == 1
    data = shop.wait(order)
    assert (data["status"], data["message"]) == ("3", message)


@pytestmark_slow
def test_already_redeemed_and_documented_sign(shop: Merchant) -> None:
    v = shop.vouchers[2]
    fields = {"orderId": "R1", "batchno": "B2", "productCode": "LNT100",
              "cardNumber": encrypt_field(v["cardNumber"], shop.aes),
              "cardPassword": encrypt_field(v["cardPassword"], shop.aes), "amount": "10000",
              "custom": "not signed"}
    assert shop.post("v2_tocard", fields, frozenset({"sign", "Sign", "custom"}))["code"] == 1
    assert shop.wait("R1")["status"] == "2"
    assert shop.tocard("R2", v["cardNumber"], v["cardPassword"], 10_000)["code"] == 1
    assert shop.wait("R2")["message"] == "card already redeemed"


@pytestmark_slow
def test_duplicate_order_ids_under_concurrency(shop: Merchant, tmp_path: Path) -> None:
    out = admin(shop.daemon.data_dir, "voucher", "issue", "--product", "LNT100", "--value",
                "2000", "--count", "1")
    number, password = out.stdout.strip().splitlines()[-1].split()
    before = shop.balance()
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: shop.tocard("DUP", number, password, 2000),
                                range(10)))
    assert all(a["code"] == 1 for a in answers)
    assert len({a["data"]["systemOrderId"] for a in answers}) == 1
    assert shop.wait("DUP")["status"] == "2"  # paid in the transaction that completed it
    assert shop.balance() == before + 1900  # one payout at 95 %


@pytestmark_slow
@pytest.mark.parametrize(("fields", "message"), [
    ({"orderId": ""}, "orderId is missing"),
    ({"orderId": "x" * 51}, "orderId must be 1-50"),
    ({"amount": "1.5"}, "amount must be a whole number of fen"),
    ({"productCode": "JD100"}, "productCode JD100 is not open to this merchant"),
    ({"notify_url": "ftp://127.0.0.1/x"}, "notify_url must be an http:// or https:// URL"),
    ({"cardNumber": "zz"}, "cardNumber does not decrypt with your AES key"),
    ({"timestamp": "1000"}, "timestamp is off by more than 300 s"),
    ({"customerId": "nobody"}, "unknown merchant nobody"),
])
def test_tocard_refusals(shop: Merchant, fields: dict[str, str], message: str) -> None:
    base = {"orderId": "E1", "batchno": "B", "productCode": "LNT100",
            "cardNumber": encrypt_field("1234567890123456", shop.aes),
            "cardPassword": encrypt_field("123456", shop.aes), "amount": "100"}
    answer = shop.post("v2_tocard", {**base, **fields})
    assert answer["code"] == -1 and answer["msg"].startswith(message), answer


@pytestmark_slow
def test_http_level_errors(shop: Merchant) -> None:
    assert shop.post("v2_queryBalance", {}, sign="0" * 32) == {"code": -1,
                                                               "msg": "sign does not match"}
    req = urllib.request.Request(f"{shop.daemon.http_url}/v2_tocard", method="GET")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405 and json.loads(e.value.read()) == {"error": "/v2_tocard takes POST"}
    twice = urllib.request.urlopen(f"{shop.daemon.http_url}/v2_queryBalance",
                                   data=b"customerId=1&customerId=2", timeout=10)
    assert json.loads(twice.read()) == {"code": -1, "msg": "customerId is given twice"}


@pytestmark_slow
def test_top_up_loaded_by_a_terminal(shop: Merchant) -> None:
    # earn the balance first: consign a voucher of 1000 fen (paid 950)
    out = admin(shop.daemon.data_dir, "voucher", "issue", "--product", "LNT100", "--value",
                "1000", "--count", "1")
    number, password = out.stdout.strip().splitlines()[-1].split()
    assert shop.tocard(f"EARN{time.time_ns()}", number, password, 1000)["code"] == 1
    wait_for(lambda: shop.balance() >= 600)
    before = shop.balance()
    receiver = Receiver([])
    buy = {"orderId": "TOP1", "amount": "600", "decimal": "600", "productCode": "LNT",
           "account": "5100000000000001", "quantity": "1", "notify_url": receiver.url,
           "custom": "top-up"}
    answer = shop.post("v2_queryBuy", buy)
    assert answer["code"] == 1, answer
    order_no = answer["data"]["systemOrderId"]
    assert shop.post("v2_queryBuy", buy)["data"]["systemOrderId"] == order_no  # idempotent
    assert shop.balance() == before - 600
    status = shop.post("v2_queryBizOrder", {"orderId": "TOP1"})["data"]
    assert (status["status"], status["loaded"]) == ("1", False)
    terminal = subprocess.run([str(Path(sys.executable).with_name("lnt-terminal")),
                               "--data-dir", str(shop.daemon.data_dir), "resume", "--order",
                               order_no, "--amount", "600"], capture_output=True, text=True,
                              timeout=60)
    assert terminal.returncode == 0, terminal.stdout + terminal.stderr
    status = shop.post("v2_queryBizOrder", {"orderId": "TOP1"})["data"]
    assert (status["status"], status["loaded"]) == ("2", True)
    wait_for(lambda: len(receiver.posts) == 1)
    receiver.close()
    note = receiver.posts[0]
    assert (note["orderId"], note["systemOrderId"], note["status"]) == ("TOP1", order_no, "2")
    assert note["custom"] == "top-up" and note["sign"] == make_sign(note, shop.md5)
    refusals = [
        ({**buy, "orderId": "TOP2", "decimal": "601"}, "decimal 601 does not match amount 600"),
        ({**buy, "orderId": "TOP3", "amount": "99999999", "decimal": ""},
         "amount must be at most 100000 fen"),
        ({**buy, "orderId": "TOP4", "account": "51"}, "account must be the card's 16-digit"),
        ({**buy, "orderId": "TOP5", "amount": "100000", "decimal": ""}, "does not cover"),
        ({**buy, "amount": "700", "decimal": ""}, "orderId TOP1 was used for another top-up"),
        ({**buy, "orderId": "TOP6", "notify_url": "file:///etc/passwd"},
         "notify_url must be an http:// or https:// URL"),
    ]
    for fields, message in refusals:
        answer = shop.post("v2_queryBuy", fields)
        assert answer["code"] == -1 and message in answer["msg"], answer
    assert shop.post("v2_queryBizOrder", {"orderId": "NOPE"})["data"]["status"] == "4"


@pytestmark_slow
def test_books_and_secrets(shop: Merchant) -> None:
    out = admin(shop.daemon.data_dir, "check")
    assert out.returncode == 0, out.stdout
    db = (shop.daemon.data_dir / "ledger.db").read_bytes()
    wal = shop.daemon.data_dir / "ledger.db-wal"
    db += wal.read_bytes() if wal.exists() else b""
    log = shop.daemon.log()
    for v in shop.vouchers:
        for secret in (v["cardNumber"], v["cardPassword"]):
            assert secret.encode() not in db and secret not in log
    assert shop.aes.encode() not in db and shop.md5.encode() not in db


@pytestmark_slow
def test_pending_notifications_survive_a_restart(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "data", ["--notify-retries", "2,2"]).start()
    shop = Merchant(d)
    receiver = Receiver([])
    url = receiver.url
    receiver.close()  # the merchant's endpoint is down
    v = shop.vouchers[0]
    assert shop.tocard("P1", v["cardNumber"], v["cardPassword"], 10_000, url)["code"] == 1
    assert shop.wait("P1")["status"] == "2"
    wait_for(lambda: "attempt 1: ConnectionRefusedError" in d.log())
    d.stop()
    # the endpoint comes back on its port while the daemon is down
    back = Receiver([], port=int(urllib.parse.urlsplit(url).port or 0))
    try:
        d.start()
        wait_for(lambda: len(back.posts) == 1)
        assert back.posts[0]["orderId"] == "P1"
        wait_for(lambda: "(delivered)" in d.log())
    finally:
        back.close()
        d.stop()


@pytestmark_slow
def test_admin_merchants(tmp_path: Path) -> None:
    data = tmp_path / "adm"
    assert admin(data, "merchant", "list").returncode == 1  # no ledger: nothing is created
    assert not data.exists()
    assert admin(data, "init").returncode == 0
    out = admin(data, "merchant", "add", "20002", "--rate", "LNT100=0.9", "--rate", "X=1")
    assert out.returncode == 0 and "AES key: " in out.stdout and "MD5 key: " in out.stdout
    assert admin(data, "merchant", "add", "20002").returncode == 1
    assert admin(data, "merchant", "add", "20003", "--rate", "LNT100=1.5").returncode == 1
    listing = admin(data, "merchant", "list").stdout
    assert "20002" in listing and "LNT100=0.9000" in listing and "active" in listing
    assert admin(data, "merchant", "disable", "20002").returncode == 0
    assert "disabled" in admin(data, "merchant", "list").stdout
    assert admin(data, "merchant", "disable", "nobody").returncode == 1
    issued = admin(data, "voucher", "issue", "--product", "P", "--value", "500", "--count", "2")
    assert issued.returncode == 0 and len(issued.stdout.strip().splitlines()) == 3
    assert admin(data, "voucher", "issue", "--product", "P", "--value", "0").returncode == 1


class SlowReceiver(Receiver):
    def __init__(self, delay: float) -> None:
        super().__init__([])
        handler = self.server.RequestHandlerClass
        original = handler.do_POST  # type: ignore[attr-defined]

        def slow(h: Any) -> None:
            time.sleep(delay)
            original(h)

        handler.do_POST = slow  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_slow_endpoint_does_not_stall_others() -> None:
    from twisted.internet import reactor

    b = SyncBackends()
    store = SQLConsignments(b.db, b.keys.sealer())
    result_of(store.add_merchant("m", {"P": 9000}, 0))
    slow, fast = SlowReceiver(1.5), Receiver([])
    try:
        for i in range(4):
            c, _ = result_of(store.submit("m", f"s{i}", "B", "P", 1, slow.url, "", "1", "p",
                                          "x", 0))
            result_of(store.complete(c.system_order_id, None, "no", 0))
        c, _ = result_of(store.submit("m", "f", "B", "P", 1, fast.url, "", "1", "p", "x", 0))
        result_of(store.complete(c.system_order_id, None, "no", 0))
        # two delivery slots in all: without the per-host cap the slow endpoint would take both
        notifier = Notifier(store, reactor, 5, [1], poll=0.1, concurrency=2, per_host=1,
                            reactor=reactor)
        notifier.startService()
        started = time.monotonic()
        while not fast.posts:
            assert time.monotonic() - started < 1.0, "the fast endpoint waited for the slow one"
            await deferLater(reactor, 0.05)
        await notifier.stopService()
    finally:
        slow.close()
        fast.close()


def test_a_timed_out_redemption_is_finished_by_the_sweep_and_paid_once() -> None:
    from hashlib import pbkdf2_hmac

    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.task import Clock

    from lnt.jobs.processor import Processor
    from lnt.storage.vouchers import PBKDF2_ROUNDS, VoucherIssuer

    clock = Clock()
    b = SyncBackends()
    store = SQLConsignments(b.db, b.keys.sealer())
    issuer = VoucherIssuer(b.db, b.keys.storage_key, hasher=lambda p, s: succeed(
        pbkdf2_hmac("sha256", p.encode(), s, PBKDF2_ROUNDS)))
    result_of(store.add_merchant("m", {"P": 9000}, 0))
    [voucher] = result_of(issuer.issue("P", 1000, 1, 0))

    class Late:
        """The first redemption commits but answers after the timeout."""

        calls = 0

        def redeem(self, *args: Any) -> Deferred[Any]:
            Late.calls += 1
            done = issuer.redeem(*args)
            return Deferred() if Late.calls == 1 else done

    processor = Processor(store, Late(), clock, lambda: None, timeout=5, sweep_every=30)  # type: ignore[arg-type]
    result_of(store.submit("m", "o", "B", "P", 1000, "", "", voucher.card_number,
                                  voucher.password, "x", 0))
    processor.start()  # sweeps at once: the redemption hangs
    clock.advance(6)  # timed out; the voucher is redeemed, the order still processing
    assert result_of(store.consignment("m", "o")).state.value == "processing"  # type: ignore[union-attr]
    clock.advance(30)  # the next sweep
    done = result_of(store.consignment("m", "o"))
    assert done is not None and done.state.value == "success" and Late.calls == 2
    assert result_of(store.balance("m")) == 900  # paid once, at 90 %
    assert result_of(b.ledger.check()) == []
    processor.stop()



@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_never_finishes_its_answer_times_out() -> None:
    """Headers, then a body that never ends: the attempt ends at the timeout, its slot is
    freed, and stopping the notifier does not wait for it."""
    import socket

    from twisted.internet import reactor

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []

    def trickle() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsu")
            held.append(conn)

    threading.Thread(target=trickle, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/n"
    b = SyncBackends()
    store = SQLConsignments(b.db, b.keys.sealer())
    result_of(store.add_merchant("m", {"P": 9000}, 0))
    c, _ = result_of(store.submit("m", "o", "B", "P", 1, url, "", "1", "p", "x", 0))
    result_of(store.complete(c.system_order_id, None, "no", 0))
    notifier = Notifier(store, reactor, 0.5, [60], poll=0.1, reactor=reactor)
    notifier.startService()
    try:
        started = time.monotonic()
        while not result_of(store.notifications(c.system_order_id))[0][2]:
            assert time.monotonic() - started < 5, "the attempt never ended"
            await deferLater(reactor, 0.05)
        [(state, attempts, outcomes)] = result_of(store.notifications(c.system_order_id))
        assert (state, attempts, outcomes) == ("pending", 1, ["timeout after 0.5 s"])
        assert notifier._busy[urllib.parse.urlsplit(url).netloc] == 0
    finally:
        stopping = time.monotonic()
        await notifier.stopService()
        assert time.monotonic() - stopping < 2
        listener.close()
        for conn in held:
            conn.close()


def test_a_late_attempt_never_undoes_a_delivery() -> None:
    b = SyncBackends()
    store = SQLConsignments(b.db, b.keys.sealer())
    result_of(store.add_merchant("m", {"P": 9000}, 0))
    c, _ = result_of(store.submit("m", "o", "B", "P", 1, "http://x/n", "", "1", "p", "x", 0))
    result_of(store.complete(c.system_order_id, None, "no", 0))
    [n] = result_of(store.due(0, 10, 1))
    result_of(store.attempted(n.id, "HTTP 200: 'success'", True, [10], 1))
    result_of(store.attempted(n.id, "timeout after 10 s", False, [10], 2))  # a late twin
    assert result_of(store.notifications(c.system_order_id)) == [
        ("delivered", 1, ["HTTP 200: 'success'", "timeout after 10 s"])]
