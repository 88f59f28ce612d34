"""
The HTTP order API end to end: a real daemon on loopback, a terminal signed in with the
simulator, requests built here as any client would build them (so that each can be bent into
exactly one error).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lnt.crypto import envelope
from lnt.crypto.ec import sign
from lnt.keyfiles import CardKeyFile
from lnt.messages import cardscript
from lnt.sim.virtualcards import load_card
from lnt.web.orderapi import key_check_value
from tests.support import Daemon

pytestmark = pytest.mark.slow

CPU, M1 = "5100000000000001", "5100000000000002"


def raw_post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Terminal:
    """A signed-in terminal's view: its key, serial, and the virtual cards."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.data = daemon.data_dir
        demo = json.loads((self.data / "demo.json").read_text())
        self.key = CardKeyFile.load(self.data / demo["terminal"]["key_file"])
        self.user = demo["terminal"]["user_id"]
        self.url = daemon.http_url
        self.signin()

    def signin(self) -> None:
        out = subprocess.run([str(Path(sys.executable).with_name("lnt-terminal")),
                              "--data-dir", str(self.data), "signin"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        state = json.loads((self.data / "reader-state.json").read_text())
        self.serial = state["session"]["serial"]
        self.session_key = bytes.fromhex(state["session"]["key"])

    def reqinfo(self, card: str = CPU) -> list[str]:
        c = load_card(self.data / "cards" / f"{card}.json")
        return [a.encode() for a in cardscript.run(cardscript.IDENTIFY, c.apdu)]

    def userinfo(self) -> str:
        return json.dumps({"userid": self.user})

    def post(self, endpoint: str, clear: dict[str, Any], secret: dict[str, Any],
             ts: int | None = None, after: Callable[[dict[str, Any]], None] | None = None
             ) -> dict[str, Any]:
        ts = int(time.time() * 1000) if ts is None else ts
        message: dict[str, Any] = {"timestamp": ts, **clear}
        if secret:
            message["data"] = envelope.encrypt(ts, envelope.compact(secret).encode())
        if endpoint == "CreateAutoLoadOrder" and "Sign" not in message:
            signed = (f"{ts}{message['version']}{message['platformRaw']}"
                      f"{message['crt_version']}{message.get('data', '')}")
            message["Sign"] = sign(self.key.key, signed.encode()).hex()
        message["mac"] = envelope.mac(message)
        if after is not None:
            after(message)
        status, body = raw_post(f"{self.url}/{endpoint}",
                                json.dumps(message, separators=(",", ":")).encode())
        assert status == 200, body
        pairs, opened = envelope.open_message(json.dumps(body, separators=(",", ":"),
                                                         ensure_ascii=False).encode())
        answer = {**dict(pairs), **opened}
        if answer["status"] == 1:
            answer.pop("data", None)  # opened above; a refusal must carry none (see refused)
        return answer

    # the three calls with good defaults; keyword arguments override or (None) drop fields
    def login(self, biz: str, money: int = 500, after: Callable[[dict[str, Any]], None] | None
              = None, **over: Any) -> dict[str, Any]:
        clear = {"version": "v2", "platformRaw": 7}
        secret = {"platform": 7, "userinfo": self.userinfo(), "type": 5, "biz_serial_no": biz,
                  "money": money, "package_name": "t", "package_version_name": "1",
                  "package_version_code": "1", "mobile_imei": "0", "mobile_vendor": "t",
                  "mobile_model": "t", "ip": "127.0.0.1"}
        return self.post("APPLLogin", *_apply(clear, secret, over), after=after)

    def create(self, biz: str, amount: int = 500, card: str = CPU,
               after: Callable[[dict[str, Any]], None] | None = None, **over: Any
               ) -> dict[str, Any]:
        clear = {"version": "v2", "platformRaw": 7, "crt_version": 1, "biz_serial_no": biz}
        secret = {"platform": 7, "userinfo": self.userinfo(), "pki": "70000472",
                  "chargeamt": amount, "chargetype": 0, "transtype": 1, "serial": self.serial,
                  "step": 0, "reqinfo": self.reqinfo(card)}
        if "Sign" in over:
            value = over.pop("Sign")

            def set_sign(message: dict[str, Any]) -> None:
                message.pop("Sign")
                if value is not None:
                    message["Sign"] = value
                message.pop("mac")
                message["mac"] = envelope.mac(message)

            after = set_sign
        return self.post("CreateAutoLoadOrder", *_apply(clear, secret, over), after=after)

    def query(self, card: str = CPU, **over: Any) -> dict[str, Any]:
        clear = {"version": "v2", "platformRaw": 7}
        secret = {"platform": 7, "userinfo": self.userinfo(), "pki": "70000472",
                  "serial": self.serial, "step": 0, "reqinfo": self.reqinfo(card),
                  "qrycondition": "cardnum"}
        return self.post("AcctQueryLNT", *_apply(clear, secret, over))


def _apply(clear: dict[str, Any], secret: dict[str, Any], over: dict[str, Any]
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    clear, secret = dict(clear), dict(secret)
    for name, value in over.items():
        if name.startswith("clear_"):
            name = name[6:]
            secret.pop(name, None)
            target = clear
        else:
            target = clear if name in clear else secret
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return clear, secret


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    daemon = Daemon(tmp_path_factory.mktemp("orderapi") / "data").start()
    try:
        yield Terminal(daemon)
    finally:
        daemon.stop()


def refused(answer: dict[str, Any], text: str) -> None:
    assert answer["status"] == 0, answer
    assert text in answer["errmsg"], answer["errmsg"]
    assert "data" not in answer


_counter = iter(range(10**6))


def biz() -> str:
    return f"T{time.time_ns()}{next(_counter)}"


# -- the happy paths -----------------------------------------------------------------------------

def test_login_create_query(terminal: Terminal) -> None:
    b = biz()
    login = terminal.login(b, 700)
    assert login["status"] == 1 and login["errmsg"] == ""
    assert login["pki"] == "70000472" and login["serial"] == terminal.serial
    assert login["key"] == key_check_value(terminal.session_key)
    assert login["toreader"] == [s.encode() for s in cardscript.IDENTIFY]
    order = terminal.create(b, 700)
    assert order["status"] == 1 and order["pki"] == "70000472"
    assert len(order["order"]) == 20 and order["order"].isdigit()
    # idempotent: the same order again, never a second one
    assert terminal.login(b, 700)["status"] == 1
    assert terminal.create(b, 700)["order"] == order["order"]
    records = terminal.query(qrycondition="cardnum,orderid", orderid=order["order"])
    assert records["chargerecordnum"] == 1 and records["acctstatus"] == "00"
    [r] = records["acctresult"]
    assert r["orderseq"] == order["order"] and r["amount"] == 700 and r["step"] == "02"
    assert r["logiccardnum"] == CPU and r["operate"] == "01" and r["payway"] == "01"
    assert len(r["ordertime"]) == 14


def test_m1_card_order(terminal: Terminal) -> None:
    b = biz()
    terminal.login(b, 300)
    order = terminal.create(b, 300, card=M1)
    assert order["status"] == 1
    records = terminal.query(card=M1, qrycondition="cardnum,orderid", orderid=order["order"])
    assert records["acctresult"][0]["physiccardnum"].startswith("00000000")


def test_query_filters(terminal: Terminal) -> None:
    b = biz()
    terminal.login(b, 100)
    terminal.create(b, 100)
    today = time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600))
    all_today = terminal.query(qrycondition="time", starttime=today, endtime=today)
    assert all_today["chargerecordnum"] >= 1
    assert terminal.query(qrycondition="time", starttime="20200101",
                          endtime="20200102")["chargerecordnum"] == 0
    paid = terminal.query(qrycondition="orderstep", orderstep="02")["chargerecordnum"]
    assert paid == all_today["chargerecordnum"]
    assert terminal.query(qrycondition="orderstep", orderstep="04")["chargerecordnum"] == 0
    assert terminal.query(qrycondition="payway", payway="09")["chargerecordnum"] == 0
    refused(terminal.query(qrycondition="colour"), "qrycondition 'colour' is unknown")
    refused(terminal.query(qrycondition="time"), "needs starttime and endtime")
    refused(terminal.query(qrycondition="time", starttime="2026-01-01", endtime="20260102"),
            "starttime must be a date YYYYMMDD")
    refused(terminal.query(qrycondition="orderstep", orderstep="42"), "orderstep '42'")


# -- idempotency conflicts ----------------------------------------------------------------------

def test_repeats_with_other_fields_are_refused(terminal: Terminal) -> None:
    b = biz()
    terminal.login(b, 500)
    refused(terminal.login(b, 501), f"biz_serial_no {b} was registered with other fields")
    refused(terminal.create(b, 400), "chargeamt 400 differs from the 500 fen paid")
    assert terminal.create(b, 500)["status"] == 1
    refused(terminal.create(b, 500, card=M1), "already has an order for another card")
    refused(terminal.create(biz(), 500), "call APPLLogin (type 5) first")


# -- errors of the envelope and the fields --------------------------------------------------------

def test_envelope_errors(terminal: Terminal) -> None:
    url = terminal.url
    for body, text in [
        (b"{not json", "body is not a JSON object"),
        (b'{"timestamp": 1}', "mac is missing"),
        (b'{"timestamp": 1, "mac": "12345678"}', "mac does not match"),
    ]:
        status, answer = raw_post(f"{url}/APPLLogin", body)
        assert status == 200
        refused(answer, text)
        # every answer carries a valid mac of its own
        assert answer["mac"] == envelope.mac(answer)

    def other_key(message: dict[str, Any]) -> None:
        message["data"] = envelope.encrypt(message["timestamp"] + 1, b'{"platform": 7}')
        message["mac"] = envelope.mac({k: v for k, v in message.items() if k != "mac"})

    refused(terminal.login(biz(), after=lambda m: other_key(m)),
            "data does not decrypt to JSON")


def test_timestamp_window(terminal: Terminal) -> None:
    now = time.time()
    refused(terminal.post("APPLLogin", {"version": "v2"}, {}, ts=int((now - 400) * 1000)),
            "s behind (window ±300 s)")
    refused(terminal.post("APPLLogin", {"version": "v2"}, {}, ts=int(now + 400)),
            "s ahead (window ±300 s)")


@pytest.mark.parametrize(("over", "text"), [
    ({"money": None}, "money is missing (in data)"),
    ({"money": "500"}, "money must be an integer"),
    ({"money": True}, "money must be an integer"),
    ({"clear_money": 500}, "money must travel encrypted in data"),
    ({"version": None}, "version is missing"),
    ({"version": "v1"}, "version 'v1' is not supported (v2)"),
    ({"platform": 9, "platformRaw": 9}, "unknown platform 9"),
    ({"platformRaw": 8}, "platformRaw 8 does not match platform 7"),
    ({"type": 1}, "type 1 is not supported: 5"),
    ({"money": 0}, "money must be 1..100000 fen"),
    ({"money": 100001}, "money must be 1..100000 fen"),
    ({"biz_serial_no": "a b"}, "biz_serial_no must be 1-64"),
    ({"userinfo": "not json"}, "userinfo is not a JSON object"),
    ({"userinfo": json.dumps({"openid": "x"})}, "userinfo has no userid"),
    ({"userinfo": json.dumps({"userid": "NOBODY-REGISTER"})},
     "no terminal is registered for userid NOBODY-REGISTER"),
])
def test_appl_login_errors(terminal: Terminal, over: dict[str, Any], text: str) -> None:
    refused(terminal.login(biz(), **over), text)


@pytest.mark.parametrize(("over", "text"), [
    ({"Sign": None}, "Sign is missing"),
    ({"Sign": "zz"}, "Sign is not hex"),
    ({"Sign": "00" * 64}, "Sign does not verify"),
    ({"crt_version": 2}, "crt_version 2 is not the key version of PKI card 70000472"),
    ({"serial": "0000000000009999"}, "is no live sign-in session"),
    ({"serial": "12"}, "serial must be the 16-digit handshake serial"),
    ({"pki": "70000473"}, "pki 70000473 is not the PKI card of serial"),
    ({"chargetype": 1}, "chargetype 1 is not supported"),
    ({"transtype": 2}, "transtype 2 is not supported"),
    ({"chargeamt": -5}, "chargeamt must be 1..100000 fen"),
    ({"step": 3}, "card reading stopped at step 3"),
    ({"reqinfo": ["zz"]}, "reqinfo: reqinfo entry 'zz' is not hex"),
    ({"reqinfo": []}, "reqinfo: reqinfo stops before step 1"),
    ({"reqinfo": "x"}, "reqinfo must be an array"),
    ({"clear_pki": "70000472"}, "pki must travel encrypted in data"),
])
def test_create_order_errors(terminal: Terminal, over: dict[str, Any], text: str) -> None:
    b = biz()
    terminal.login(b, 500)
    refused(terminal.create(b, 500, **over), text)


def test_create_order_signature_covers_the_data(terminal: Terminal) -> None:
    b = biz()
    terminal.login(b, 500)

    def swap_data(message: dict[str, Any]) -> None:
        # re-encrypt other content under the same timestamp; keep the old Sign
        secret = json.loads(envelope.decrypt(message["timestamp"], message["data"]))
        secret["chargeamt"] = 501
        message["data"] = envelope.encrypt(message["timestamp"], envelope.compact(secret).encode())
        message["mac"] = envelope.mac({k: v for k, v in message.items() if k != "mac"})

    refused(terminal.create(b, 500, after=swap_data), "Sign does not verify")


def test_cpu_card_limit(terminal: Terminal) -> None:
    b = biz()
    terminal.login(b, 100_000)
    refused(terminal.create(b, 100_000), "exceeds the card limit of 100000 fen")


def test_a_payment_is_bound_by_its_own_terminal_only(terminal: Terminal,
                                                     tmp_path: Path) -> None:
    """Terminal B, signed in, cannot take the money paid for terminal A's user."""
    b = biz()
    terminal.login(b, 500)
    admin = str(Path(sys.executable).with_name("lnt-admin"))
    other = tmp_path / "b"
    out = subprocess.run([admin, "--data-dir", str(terminal.data), "terminal", "register",
                          "--pki", "777", "--user-id", "OTHER-TERMINAL-1", "--generate",
                          str(other / "key.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shutil.copytree(terminal.data / "cards", other / "cards")
    (other / "listening.json").write_text((terminal.data / "listening.json").read_text())
    signin = subprocess.run([str(Path(sys.executable).with_name("lnt-terminal")), "--data-dir",
                             str(other), "--key-file", str(other / "key.json"), "signin"],
                            capture_output=True, text=True, timeout=60)
    assert signin.returncode == 0, signin.stdout + signin.stderr
    state = json.loads((other / "reader-state.json").read_text())
    thief = Terminal.__new__(Terminal)
    thief.__dict__.update(terminal.__dict__)
    thief.key = CardKeyFile.load(other / "key.json")
    thief.user = "OTHER-TERMINAL-1"
    thief.serial = state["session"]["serial"]
    answer = thief.create(b, 500, pki="00000777")
    refused(answer, f"no payment for biz_serial_no {b} of platform 7 by this terminal")
    assert terminal.create(b, 500)["status"] == 1  # the payer's terminal still can


def test_not_signed_in_and_other_terminals(terminal: Terminal, tmp_path: Path) -> None:
    admin = str(Path(sys.executable).with_name("lnt-admin"))
    out = subprocess.run([admin, "--data-dir", str(terminal.data), "terminal", "register",
                          "--pki", "555", "--user-id", "NOT-SIGNED-IN-01", "--generate",
                          str(tmp_path / "k.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    refused(terminal.login(biz(), userinfo=json.dumps({"userid": "NOT-SIGNED-IN-01"})),
            "terminal NOT-SIGNED-IN-01 is not signed in")
    refused(terminal.query(userinfo=json.dumps({"userid": "NOT-SIGNED-IN-01"})),
            "userid NOT-SIGNED-IN-01 is not the terminal of serial")


# -- HTTP-level errors --------------------------------------------------------------------------

def test_http_errors(terminal: Terminal) -> None:
    url = terminal.url
    status, body = raw_post(f"{url}/APPLLogin", b"", method="GET")
    assert status == 405 and body == {"error": "/APPLLogin takes POST"}
    status, body = raw_post(f"{url}/NoSuchThing", b"{}")
    assert status == 404 and body == {"error": "no such resource: /NoSuchThing"}
    status, body = raw_post(f"{url}/CreateAutoLoadOrder", b"x" * (64 * 1024 + 1))
    assert status == 413 and "larger than 65536 bytes" in body["error"]


def test_log_has_no_secrets_or_tracebacks(terminal: Terminal) -> None:
    log = terminal.daemon.log()
    assert "Traceback" not in log
    assert CPU not in log and M1 not in log  # card numbers are masked
    assert terminal.session_key.hex() not in log
    assert "order API /APPLLogin: refused: money must be an integer" in log


# -- the README's examples ----------------------------------------------------------------------

def readme_examples() -> dict[str, list[dict[str, Any]]]:
    """C{.. example: NAME} blocks of README.rst: the JSON objects of the code block after it."""
    from tests.support import ROOT

    lines = (ROOT / "README.rst").read_text().splitlines()
    examples: dict[str, list[dict[str, Any]]] = {}
    for i, line in enumerate(lines):
        if not line.startswith(".. example: "):
            continue
        j = i + 1
        while not lines[j].startswith(".. code-block:: json"):
            j += 1
        body = []
        for text in lines[j + 2 :]:
            if text and not text.startswith("    "):
                break
            body.append(text)
        text, objects, decoder = "\n".join(body).strip(), [], json.JSONDecoder()
        while text:
            obj, end = decoder.raw_decode(text)
            objects.append(obj)
            text = text[end:].strip()
        examples[line[len(".. example: "):]] = objects
    return examples


def test_readme_sealed_example_is_consistent() -> None:
    from tests.support import ROOT

    text = (ROOT / "README.rst").read_text()
    line = next(x.strip() for x in text.splitlines() if x.strip().startswith('{"timestamp":1795'))
    pairs, secret = envelope.open_message(line.encode())
    clear, data = readme_examples()["APPLLogin request"]
    assert dict(pairs)["timestamp"] == clear["timestamp"]
    assert secret == data


@pytest.mark.parametrize("endpoint", ["APPLLogin", "CreateAutoLoadOrder", "AcctQueryLNT"])
def test_readme_examples_match_the_daemon(terminal: Terminal, endpoint: str) -> None:
    examples = readme_examples()
    req_clear, req_data = examples[f"{endpoint} request"]
    resp_clear, resp_data = examples[f"{endpoint} response"]
    b = biz()
    login = terminal.login(b, 500)
    if endpoint == "APPLLogin":
        answer = login
        assert answer["toreader"] == resp_data["toreader"]
        sent = {"version", "platformRaw"} | set(req_data)
    elif endpoint == "CreateAutoLoadOrder":
        answer = terminal.create(b, 500)
        sent = {"version", "platformRaw", "crt_version", "biz_serial_no", "Sign"} | set(req_data)
    else:
        terminal.create(b, 500)
        today = time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600))
        answer = terminal.query(qrycondition="cardnum,time", starttime=today, endtime=today)
        assert set(answer["acctresult"][0]) == set(resp_data["acctresult"][0])
        sent = {"version", "platformRaw"} | set(req_data)
    # the example names every field our requests send, and the answer has the fields shown
    assert set(req_clear) - {"timestamp"} <= sent
    assert set(answer) == set(resp_clear) | set(resp_data) | {"mac"}
    refusal = examples["refusal response"][0]
    bad = terminal.login(biz(), 0)
    assert set(bad) == set(refusal) | {"mac"} and bad["errmsg"] == refusal["errmsg"]
