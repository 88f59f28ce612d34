"""
lnt-admin: the operator's command line. It works on the same data directory, key file and
ledger as the daemon (and may run while the daemon runs: every change is one transaction).

    lnt-admin [--data-dir DIR] [--ledger DSN] [--key-file FILE] COMMAND ...

    init                             create the data directory, the platform key file and the
                                     ledger (the only command that creates them)
    key create|show                  the platform key pair (show prints the public key only)
    terminal register --pki N --user-id ID (--generate KEYFILE | --public-key HEX)
                      [--key-version V]
    terminal revoke N | enable N      (enable: a revoked card may sign in again)
    platform add N NAME | list | disable N | enable N
                                     third-party platforms of the order API
    terminal list
    merchant add ID --rate PRODUCT=RATE [--rate ...]   (prints its AES and MD5 keys once)
    merchant list
    merchant disable ID
    voucher issue --product P --value FEN --count N    (prints numbers and passwords once)
    card register --kind cpu|m1 --logical NO --physical HEX
                                     enter an issued card in the registry (only these take
                                     orders); card show NO
    check                            the journal balances and every load agrees with it; then
                                     the money at risk (loads in doubt, payments without an
                                     order, orders unloaded for a day), which is no error
    orders [--state S] [--card NO] [--terminal PKI] [--since YYYYMMDD] [--until YYYYMMDD]
           [--limit N] [--json]        orders with their loads, newest first
    order show ORDER [--json]        one order: its load, journal entries, operators' decisions
    loads --in-doubt [--json]        the loads the cards have not proven (what check lists)
    load resolve ORDER --settle|--reverse --reason TEXT [--operator NAME]
                                     an operator's audited decision on a load in doubt
    payments [--platform N] [--without-order] [--limit N] [--json]
    payment refund PLATFORM:BIZ_SERIAL_NO --reason TEXT [--operator NAME]
                                     refund a payment that has no order (audited)
    consignments [--state S] [--merchant ID] [--since D] [--until D] [--limit N] [--json]
    consignment show SYSTEM_ORDER_ID [--json]
                                     merchants' consignments, with their notifications
    notifications [--state pending|delivered|failed] [--reference REF] [--limit N] [--json]
    notification retry ID --reason TEXT [--operator NAME]
                                     send a failed notification again (audited)
    reconcile --date YYYYMMDD [--platform N] [--csv FILE]
                                     the day's loads by biz_serial_no, with totals
    plugin-cache                     regenerate Twisted's plugin cache (dropin.cache)

Exit status: 0 done, 1 refused (the message says why: also a data directory, key file or ledger
that does not exist, which only init creates), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import lnt
from lnt.domain.loads import Verdict
from lnt.domain.masking import mask_card
from lnt.domain.records import (
    CHINA,
    AlreadyExists,
    CardKind,
    Conflict,
    ConsignmentState,
    IssuedCard,
    LoadState,
    NotFound,
    NotificationState,
    OrderState,
    PKICard,
    Platform,
)
from lnt.keyfiles import CardKeyFile, KeyFileError, PlatformKeys
from lnt.storage.consignments import SQLConsignments
from lnt.storage.database import DSN, SQLITE, DatabaseConfigError, SyncDatabase, result_of
from lnt.storage.ledger import SQLLedger
from lnt.storage.migrations import migrate
from lnt.storage.pkicards import LedgerPKI
from lnt.storage.vouchers import VoucherIssuer
from lnt.web.views import (
    age,
    china_time,
    consignment_view,
    notification_view,
    order_view,
    payment_view,
)


class Refused(Exception):
    """What the operator asked for cannot be done; the message says why."""


def parse_user_id(text: str) -> bytes:
    """A user ID: 16 ASCII characters, or 32 hex digits (C{hex:...})."""
    if text.startswith("hex:"):
        raw = bytes.fromhex(text[4:])
    else:
        raw = text.encode("ascii")
    if len(raw) != 16:
        raise argparse.ArgumentTypeError(
            "user ID must be 16 bytes (16 ASCII chars or hex:32 digits)"
        )
    return raw


def show_user_id(raw: bytes) -> str:
    text = raw.decode("ascii", "replace")
    return text if text.isprintable() and text.isascii() else "hex:" + raw.hex()


class Admin:
    def __init__(self, data_dir: Path, ledger: str | None, key_file: Path | None) -> None:
        self.data_dir = data_dir
        self.key_file = key_file or data_dir / "platform-key.json"
        self.dsn = DSN.parse(ledger or f"sqlite://{data_dir / 'ledger.db'}")
        self._db: SyncDatabase | None = None

    def db(self) -> SyncDatabase:
        if self._db is None:
            if self.dsn.engine is SQLITE and not Path(self.dsn.target).exists():
                raise Refused(f"no ledger at {self.dsn.target}: nothing was created; check "
                              "--data-dir/--ledger, or run `lnt-admin init` to create one")
            migrate(self.dsn)
            self._db = SyncDatabase(self.dsn)
        return self._db

    def keys(self) -> PlatformKeys:
        return PlatformKeys.load(self.key_file)

    def pki(self) -> LedgerPKI:
        return LedgerPKI(self.db(), self.keys())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    # -- commands ---------------------------------------------------------------------------

    def init(self, args: argparse.Namespace) -> None:
        created = []
        if not self.data_dir.exists():
            self.data_dir.mkdir(parents=True, mode=0o700)
            created.append(f"data directory {self.data_dir}")
        if not self.key_file.exists():
            PlatformKeys.load_or_create(self.key_file)
            created.append(f"key file {self.key_file}")
        else:
            self.keys()  # an existing key file must be readable
        fresh = self.dsn.engine is SQLITE and not Path(self.dsn.target).exists()
        version = migrate(self.dsn)
        if fresh:
            created.append(f"ledger {self.dsn.describe()} (schema version {version})")
        print("created " + ", ".join(created) if created else
              f"nothing to create: {self.data_dir} is initialised (ledger schema {version})")

    def key_create(self, args: argparse.Namespace) -> None:
        if self.key_file.exists():
            raise Refused(f"key file {self.key_file} exists already; it is never overwritten")
        keys = PlatformKeys.load_or_create(self.key_file)[0]
        print(f"created {self.key_file}")
        print(f"platform public key: {keys.public_key.hex()}")

    def key_show(self, args: argparse.Namespace) -> None:
        print(f"platform public key: {self.keys().public_key.hex()}")

    def terminal_register(self, args: argparse.Namespace) -> None:
        if not 0 <= args.pki < 0xFFFFFFFF:
            raise Refused("PKI card number must be 0..4294967294")
        pki = self.pki()
        if args.generate:
            path = Path(args.generate)
            if path.exists():
                raise Refused(f"{path} exists already; it is never overwritten")
            keyfile = CardKeyFile.generate(args.pki, args.key_version, args.user_id,
                                           pki.platform_public_key())
            public = keyfile.public_key
        else:
            try:
                public = bytes.fromhex(args.public_key)
            except ValueError:
                raise Refused("--public-key must be 128 hex digits (X || Y)") from None
            keyfile = None
        card = PKICard(args.pki, args.user_id, public, args.key_version)
        try:
            result_of(pki.register(card))
        except AlreadyExists as e:
            raise Refused(str(e)) from None
        except ValueError as e:
            raise Refused(f"public key refused: {e}") from None
        if keyfile is not None:
            keyfile.save(Path(args.generate))
            print(f"wrote the PKI card key file {args.generate}")
        print(f"registered PKI card {args.pki} for user ID {show_user_id(args.user_id)}, "
              f"key version {args.key_version}")

    def terminal_revoke(self, args: argparse.Namespace) -> None:
        if not result_of(self.pki().revoke(args.pki)):
            raise Refused(f"no PKI card {args.pki}")
        print(f"revoked PKI card {args.pki}; its session is ended")

    def terminal_enable(self, args: argparse.Namespace) -> None:
        if not result_of(self.pki().enable(args.pki)):
            raise Refused(f"no PKI card {args.pki}")
        print(f"PKI card {args.pki} is active again; it signs in anew")

    def platform_add(self, args: argparse.Namespace) -> None:
        if not 0 < args.platform_no <= 2**31 - 1:
            raise Refused("the platform number is 1..2147483647 (0 is the consignment "
                          "merchants')")
        if not args.name.strip():
            raise Refused("the platform needs a name")
        if not result_of(self.ledger().add_platform(Platform(args.platform_no,
                                                             args.name.strip()))):
            raise Refused(f"platform {args.platform_no} exists already")
        print(f"platform {args.platform_no} ({args.name.strip()}) added")

    def platform_list(self, args: argparse.Namespace) -> None:
        for p in result_of(self.ledger().platforms()):
            print(f"{p.platform_no:>10}  {'active' if p.active else 'disabled':<9} {p.name}")

    def platform_disable(self, args: argparse.Namespace) -> None:
        self._platform_active(args.platform_no, False)

    def platform_enable(self, args: argparse.Namespace) -> None:
        self._platform_active(args.platform_no, True)

    def _platform_active(self, platform_no: int, active: bool) -> None:
        if platform_no == 0:
            raise Refused("platform 0 is the consignment merchants'; disable merchants instead")
        if not result_of(self.ledger().set_platform_active(platform_no, active)):
            raise Refused(f"no platform {platform_no}")
        print(f"platform {platform_no} {'enabled' if active else 'disabled'}")

    def terminal_list(self, args: argparse.Namespace) -> None:
        cards = result_of(self.pki().cards())
        keys = self.keys()
        sessions = result_of(SQLLedger(self.db(), keys.sealer()).sessions())
        del keys
        now = time.time() * 1000
        print(f"{'PKI':>10}  {'user ID':<18} {'ver':>3}  {'status':<8} session")
        for c in cards:
            serial, expires = sessions.get(c.pki_no, (None, 0))
            if serial is None:
                state = "-"
            else:
                until = datetime.fromtimestamp(expires / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
                state = f"{serial} {'live until' if expires > now else 'expired at'} {until}"
            print(f"{c.pki_no:>10}  {show_user_id(c.user_id):<18} {c.key_version:>3}  "
                  f"{c.status.value:<8} {state}")

    def ledger(self) -> SQLLedger:
        return SQLLedger(self.db(), self.keys().sealer())

    def consignments(self) -> SQLConsignments:
        return SQLConsignments(self.db(), self.keys().sealer())

    def merchant_add(self, args: argparse.Namespace) -> None:
        rates: dict[str, int] = {}
        for text in args.rate or []:
            product, _, rate = text.partition("=")
            try:
                value = float(rate)
            except ValueError:
                raise Refused(f"--rate {text!r}: use PRODUCT=RATE, e.g. LNT100=0.95") from None
            if not product or not 0 <= value <= 1:
                raise Refused(f"--rate {text!r}: the rate is between 0 and 1")
            rates[product] = round(value * 10_000)
        try:
            m = result_of(self.consignments().add_merchant(args.customer_id, rates,
                                                           int(time.time() * 1000)))
        except AlreadyExists as e:
            raise Refused(str(e)) from None
        print(f"merchant {m.customer_id} added; give them these keys (shown only now):")
        print(f"  AES key: {m.aes_key}")
        print(f"  MD5 key: {m.md5_key}")
        for product, bp in sorted(m.rates.items()):
            print(f"  rate {product}: {bp / 10_000:.4f}")

    def merchant_list(self, args: argparse.Namespace) -> None:
        store = self.consignments()
        print(f"{'customerId':<16} {'status':<9} {'balance':>10}  rates")
        for cid, active, rates in result_of(store.merchants()):
            balance = result_of(store.balance(cid))
            shown = ", ".join(f"{p}={bp / 10_000:.4f}" for p, bp in sorted(rates.items()))
            print(f"{cid:<16} {'active' if active else 'disabled':<9} {balance:>10}  {shown}")

    def merchant_disable(self, args: argparse.Namespace) -> None:
        if not result_of(self.consignments().set_active(args.customer_id, False)):
            raise Refused(f"no merchant {args.customer_id}")
        print(f"merchant {args.customer_id} disabled")

    def voucher_issue(self, args: argparse.Namespace) -> None:
        issuer = VoucherIssuer(self.db(), self.keys().storage_key)
        try:
            issued = result_of(issuer.issue(args.product, args.value, args.count,
                                            int(time.time() * 1000)))
        except ValueError as e:
            raise Refused(str(e)) from None
        print(f"{len(issued)} vouchers of {args.product}, {args.value} fen each "
              "(numbers and passwords are shown only now):")
        for v in issued:
            print(f"  {v.card_number}  {v.password}")

    def check(self, args: argparse.Namespace) -> None:
        ledger = self.ledger()
        problems = result_of(ledger.check())
        balances = result_of(ledger.balances())
        for account in sorted(balances):
            print(f"{account:<28} {balances[account]:>14}")
        total = sum(balances.values())
        print(f"{'(sum of all accounts)':<28} {total:>14}")
        if total != 0:
            problems.append(f"accounts sum to {total}, not 0")
        now = int(time.time() * 1000)
        risks = result_of(ledger.money_at_risk(now))
        if risks:
            print(f"money at risk: {len(risks)} items, {sum(r.amount for r in risks)} fen "
                  "(reported, not an inconsistency)")
            for r in risks:
                since = age(now - r.since_ms)
                print(f"  {r.what:<22} {r.reference:<32} {r.amount:>9} fen  {since:>8}  {r.note}")
        if problems:
            for p in problems:
                print(f"PROBLEM: {p}")
            raise Refused(f"{len(problems)} problems")
        print("ok: every entry balances and every order agrees with its load and entries"
              + (f"; {len(risks)} items of money at risk listed above" if risks else ""))

    def card_register(self, args: argparse.Namespace) -> None:
        if not (len(args.logical) == 16 and args.logical.isdigit()):
            raise Refused("--logical must be the card's 16-digit logical number")
        try:
            physical = bytes.fromhex(args.physical)
        except ValueError:
            physical = b""
        if not 4 <= len(physical) <= 8:
            raise Refused("--physical must be the card's UID, 8 to 16 hex digits")
        card = IssuedCard(args.logical, CardKind(args.kind), physical.rjust(8, b"\x00").hex())
        try:
            added = result_of(self.ledger().register_card(card, int(time.time() * 1000)))
        except Conflict as e:
            raise Refused(str(e)) from None
        print(f"card {mask_card(args.logical)} ({args.kind}) "
              + ("entered in the registry" if added else "was in the registry already"))

    def card_show(self, args: argparse.Namespace) -> None:
        card = result_of(self.ledger().card(args.logical))
        if card is None:
            raise Refused("no such card in the registry")
        print(f"card {mask_card(card.logical_no)}: {card.kind.value}, {card.state.value}")

    def orders(self, args: argparse.Namespace) -> None:
        since = _day_ms(args.since, "--since") if args.since else None
        until = _day_ms(args.until, "--until") + 86_400_000 if args.until else None
        state = _choice(OrderState, args.state, "--state")
        found = result_of(self.ledger().search_orders(state, args.card, args.terminal, since,
                                                      until, args.limit))
        rows = [order_view(order, load) for order, load in found]
        if args.json:
            print(json.dumps(rows, indent=1))
            return
        print(f"{'order':<20} {'state':<9} {'fen':>8}  {'card':<16} {'terminal':>9}  "
              f"{'created (China)':<19}  platform:biz")
        for r in rows:
            print(f"{r['order']:<20} {r['state']:<9} {r['amount']:>8}  {r['card']:<16} "
                  f"{r['terminal']:>9}  {r['created']:<19}  {r['payment']}")
        print(f"{len(rows)} orders" + (f" (at most {args.limit})" if len(rows) == args.limit
                                       else ""))

    def order_show(self, args: argparse.Namespace) -> None:
        ledger = self.ledger()
        order = result_of(ledger.order(args.order))
        if order is None:
            raise Refused(f"no order {args.order}")
        load = result_of(ledger.load(args.order))
        view = order_view(order, load)
        view["entries"] = [{"kind": k, "at": china_time(at), "postings": dict(p)} for k, at, p in
                           result_of(ledger.entries(args.order))
                           + result_of(ledger.entries(view["payment"]))]
        view["decisions"] = [{"kind": k, "decision": d, "reason": r, "operator": o,
                              "at": china_time(at)} for k, d, r, o, at in
                             result_of(ledger.decisions(args.order))]
        if args.json:
            print(json.dumps(view, indent=1))
            return
        for key in ("order", "state", "amount", "card", "card_kind", "terminal", "payment",
                    "created", "updated"):
            print(f"{key:<10} {view[key]}")
        if view["load"]:
            print("load       " + ", ".join(f"{k} {v}" for k, v in view["load"].items()))
        for e in view["entries"]:
            postings = ", ".join(f"{a} {m:+d}" for a, m in e["postings"].items())
            print(f"entry      {e['kind']} at {e['at']}: {postings}")
        for d in view["decisions"]:
            print(f"decision   {d['decision']} by {d['operator']} at {d['at']}: {d['reason']}")

    def loads(self, args: argparse.Namespace) -> None:
        if not args.in_doubt:
            raise Refused("give --in-doubt (settled and reversed loads are listed by `orders`)")
        # a load in doubt is a pending load, and its order is pending with it
        found = result_of(self.ledger().search_orders(OrderState.PENDING, None, None, None, None,
                                                      10_000))
        rows = [order_view(order, load) for order, load in found]
        if args.json:
            print(json.dumps(rows, indent=1))
            return
        for v in rows:
            print(f"{v['order']}  {v['amount']:>8} fen  {v['card_kind']} card {v['card']}  "
                  f"terminal {v['terminal']}  since {v['load']['created']}")
        print(f"{len(rows)} loads in doubt: `lnt-admin load resolve ORDER --settle|--reverse "
              "--reason ...` once the card is read" if rows else "no load in doubt")

    def load_resolve(self, args: argparse.Namespace) -> None:
        verdict = Verdict.SETTLE if args.settle else Verdict.REVERSE
        ledger = self.ledger()
        try:
            load = result_of(ledger.resolve_load(args.order, verdict, args.reason,
                                                 args.operator, int(time.time() * 1000)))
        except (Conflict, NotFound) as e:
            raise Refused(str(e)) from None
        what = "settled (loaded)" if load.state is LoadState.LOADED else "reversed"
        print(f"order {load.order_no}: {load.amount} fen {what} by {args.operator}: "
              f"{args.reason.strip()}")

    def payments(self, args: argparse.Namespace) -> None:
        rows = result_of(self.ledger().search_payments(args.platform, args.without_order,
                                                       args.limit))
        views = [payment_view(r) for r in rows]
        if args.json:
            print(json.dumps(views, indent=1))
            return
        for v in views:
            fate = (f"order {v['order']} ({v['order_state']})" if v["order"] else
                    f"refunded {v['refunded']}" if v["refunded"] else
                    f"no order: {v['refusal'] or 'none made yet'}")
            print(f"{v['payment']:<32} {v['money']:>9} fen  {v['created']}  {fate}")
        print(f"{len(views)} payments")

    def consignments_list(self, args: argparse.Namespace) -> None:
        since = _day_ms(args.since, "--since") if args.since else None
        until = _day_ms(args.until, "--until") + 86_400_000 if args.until else None
        state = _choice(ConsignmentState, args.state, "--state")
        found = result_of(self.consignments().search(state, args.merchant, since, until,
                                                      args.limit))
        views = [consignment_view(c) for c in found]
        if args.json:
            print(json.dumps(views, indent=1))
            return
        for v in views:
            print(f"{v['system_order']:<24} {v['state']:<10} {v['merchant']:<10} "
                  f"{v['order_id']:<24} {v['amount']:>8} fen  {v['voucher']:<20} "
                  f"{v['created']}  {v['message']}")
        print(f"{len(views)} consignments")

    def consignment_show(self, args: argparse.Namespace) -> None:
        store = self.consignments()
        found = result_of(store.by_system_id(args.system_order))
        if found is None:
            raise Refused(f"no consignment {args.system_order}")
        view = consignment_view(found)
        view["notifications"] = [{"state": st, "attempts": n, "outcomes": outcomes}
                                 for st, n, outcomes in
                                 result_of(store.notifications(args.system_order))]
        if args.json:
            print(json.dumps(view, indent=1))
            return
        for key, value in view.items():
            print(f"{key:<15} {value}")

    def notifications_list(self, args: argparse.Namespace) -> None:
        state = _choice(NotificationState, args.state, "--state")
        rows = result_of(self.consignments().search_notifications(state, args.reference,
                                                                  args.limit))
        now = int(time.time() * 1000)
        views = [notification_view(r, now) for r in rows]
        if args.json:
            print(json.dumps(views, indent=1))
            return
        for v in views:
            print(f"{v['id']:>6}  {v['state']:<9} {v['attempts']:>2} attempts  "
                  f"{v['reference']:<24} {v['age']:>8} old  {v['url']}  "
                  f"{v['last_outcome'] or ''}")
        print(f"{len(views)} notifications")

    def notification_retry(self, args: argparse.Namespace) -> None:
        try:
            done = result_of(self.consignments().retry_notification(
                args.id, args.reason, args.operator, int(time.time() * 1000)))
        except (Conflict, NotFound) as e:
            raise Refused(str(e)) from None
        print(f"notification {done['id']} ({done['reference']}) will be sent again by the "
              f"running daemon; retried by {args.operator}: {args.reason.strip()}")

    def payment_refund(self, args: argparse.Namespace) -> None:
        platform, sep, biz = args.payment.partition(":")
        if not sep or not platform.isdigit() or not biz:
            raise Refused("the payment is PLATFORM:BIZ_SERIAL_NO, as check lists it")
        try:
            payment = result_of(self.ledger().refund_payment(
                int(platform), biz, args.reason, args.operator, int(time.time() * 1000)))
        except (Conflict, NotFound) as e:
            raise Refused(str(e)) from None
        print(f"payment {args.payment}: {payment.money} fen refunded by {args.operator}: "
              f"{args.reason.strip()}")

    def reconcile(self, args: argparse.Namespace) -> None:
        try:
            rows = result_of(self.ledger().reconcile(args.date, args.platform))
        except ValueError:
            raise Refused("--date must be YYYYMMDD") from None
        print(f"loads settled on {args.date} (China time)"
              + (f", platform {args.platform}" if args.platform is not None else ""))
        print(f"{'platform':>8}  {'biz_serial_no':<24} {'order':<20} {'card':<16} {'fen':>9}")
        for r in rows:
            print(f"{r.platform_no:>8}  {r.biz_serial_no:<24} {r.order_no:<20} "
                  f"{r.logical_no:<16} {r.amount:>9}")
        print(f"{len(rows)} loads, {sum(r.amount for r in rows)} fen")
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["platform", "biz_serial_no", "order_no", "logical_card_no",
                                 "amount_fen", "loaded_at"])
                for r in rows:
                    loaded = datetime.fromtimestamp(r.loaded_ms / 1000, CHINA)
                    writer.writerow([r.platform_no, r.biz_serial_no, r.order_no, r.logical_no,
                                     r.amount, loaded.strftime("%Y-%m-%d %H:%M:%S")])
                writer.writerow(["total", "", "", "", sum(r.amount for r in rows), ""])
            print(f"wrote {args.csv}")

    def plugin_cache(self, args: argparse.Namespace) -> None:
        from twisted.plugin import IPlugin, getPlugins

        import twisted.plugins

        found = sorted({str(getattr(p, "name", None) or getattr(p, "tapname", "?"))
                        for p in getPlugins(IPlugin, twisted.plugins)})
        print(f"plugin cache regenerated; {len(found)} plugins")




def _day_ms(text: str, name: str) -> int:
    try:
        day = datetime.strptime(text, "%Y%m%d").replace(tzinfo=CHINA)
    except ValueError:
        raise Refused(f"{name} must be a date YYYYMMDD") from None
    return int(day.timestamp() * 1000)






def _dates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="YYYYMMDD, China time")
    p.add_argument("--until", help="YYYYMMDD, China time (that day included)")


def _listing(p: argparse.ArgumentParser, limit: bool = True) -> None:
    if limit:
        p.add_argument("--limit", type=int, default=100, help="at most this many [100]")
    p.add_argument("--json", action="store_true", help="JSON, for scripts")


def _decision(p: argparse.ArgumentParser) -> None:
    """What every audited action takes: why, and who."""
    p.add_argument("--reason", required=True, help="why (stored with the decision)")
    p.add_argument("--operator", default=_operator(), help="who decides [login name]")


E = TypeVar("E", bound=StrEnum)


def _choice(kind: type[E], value: str | None, name: str) -> E | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise Refused(f"{name} is one of {', '.join(k.value for k in kind)}") from None


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lnt-admin", description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lnt-admin {lnt.__version__}")
    p.add_argument("--data-dir", type=Path, default=Path("lnt-data"),
                   help="the daemon's data directory [lnt-data]")
    p.add_argument("--ledger", help="ledger DSN [SQLite in the data dir]")
    p.add_argument("--key-file", type=Path, help="platform key file [DATA-DIR/platform-key.json]")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("init", help="create the data directory, key file and ledger (only this "
                   "command creates them)").set_defaults(run=Admin.init)
    key = sub.add_parser("key", help="the platform key pair")
    ks = key.add_subparsers(dest="action", required=True)
    ks.add_parser("create", help="create the key file (never overwrites)").set_defaults(
        run=Admin.key_create)
    ks.add_parser("show", help="print the public key").set_defaults(run=Admin.key_show)

    term = sub.add_parser("terminal", help="terminals' PKI cards")
    ts = term.add_subparsers(dest="action", required=True)
    reg = ts.add_parser("register", help="register a PKI card")
    reg.add_argument("--pki", type=int, required=True, help="PKI card number")
    reg.add_argument("--user-id", type=parse_user_id, required=True,
                     help="operator user ID bound to the card (16 chars or hex:...)")
    reg.add_argument("--key-version", type=int, default=1, help="key version (crt_version) [1]")
    how = reg.add_mutually_exclusive_group(required=True)
    how.add_argument("--generate", metavar="KEYFILE",
                     help="generate the card's key pair into KEYFILE (for the simulator)")
    how.add_argument("--public-key", metavar="HEX", help="import the card's public key (X || Y)")
    reg.set_defaults(run=Admin.terminal_register)
    rev = ts.add_parser("revoke", help="revoke a PKI card and end its session")
    rev.add_argument("pki", type=int)
    rev.set_defaults(run=Admin.terminal_revoke)
    ena = ts.add_parser("enable", help="make a revoked PKI card active again")
    ena.add_argument("pki", type=int)
    ena.set_defaults(run=Admin.terminal_enable)
    ts.add_parser("list", help="list PKI cards").set_defaults(run=Admin.terminal_list)

    plat = sub.add_parser("platform", help="the order API's third-party platforms")
    ps_ = plat.add_subparsers(dest="action", required=True)
    padd = ps_.add_parser("add", help="register a platform")
    padd.add_argument("platform_no", type=int)
    padd.add_argument("name")
    padd.set_defaults(run=Admin.platform_add)
    ps_.add_parser("list", help="platforms and their state").set_defaults(
        run=Admin.platform_list)
    for action, run, text in (("disable", Admin.platform_disable, "refuse its calls"),
                              ("enable", Admin.platform_enable, "accept its calls again")):
        cmd = ps_.add_parser(action, help=text)
        cmd.add_argument("platform_no", type=int)
        cmd.set_defaults(run=run)

    merchant = sub.add_parser("merchant", help="consignment merchants")
    ms = merchant.add_subparsers(dest="action", required=True)
    madd = ms.add_parser("add", help="add a merchant; prints its keys once")
    madd.add_argument("customer_id")
    madd.add_argument("--rate", action="append", metavar="PRODUCT=RATE",
                      help="settlement rate of a product, e.g. LNT100=0.95 (repeatable)")
    madd.set_defaults(run=Admin.merchant_add)
    ms.add_parser("list", help="merchants, balances, rates").set_defaults(run=Admin.merchant_list)
    mdis = ms.add_parser("disable", help="refuse the merchant's calls from now on")
    mdis.add_argument("customer_id")
    mdis.set_defaults(run=Admin.merchant_disable)
    voucher = sub.add_parser("voucher", help="the platform's prepaid vouchers")
    vs = voucher.add_subparsers(dest="action", required=True)
    vis = vs.add_parser("issue", help="issue vouchers; prints numbers and passwords once")
    vis.add_argument("--product", required=True)
    vis.add_argument("--value", type=int, required=True, help="face value, fen")
    vis.add_argument("--count", type=int, default=1)
    vis.set_defaults(run=Admin.voucher_issue)

    cards = sub.add_parser("card", help="the registry of issued transit cards")
    cs = cards.add_subparsers(dest="action", required=True)
    creg = cs.add_parser("register", help="enter an issued card (only these take orders)")
    creg.add_argument("--kind", choices=["cpu", "m1"], required=True)
    creg.add_argument("--logical", required=True, help="16-digit logical card number")
    creg.add_argument("--physical", required=True, help="the card's UID (hex)")
    creg.set_defaults(run=Admin.card_register)
    cshow = cs.add_parser("show", help="a card's kind and state")
    cshow.add_argument("logical")
    cshow.set_defaults(run=Admin.card_show)

    sub.add_parser("check", help="verify the journal and every load, then list the money at "
                   "risk; exit 0 unless something disagrees").set_defaults(run=Admin.check)
    ords = sub.add_parser("orders", help="orders with their loads, newest first")
    ords.add_argument("--state", help="created, pending, loaded or reversed")
    ords.add_argument("--card", help="the card's 16-digit logical number")
    ords.add_argument("--terminal", type=int, help="the terminal's PKI card number")
    _dates(ords)
    _listing(ords)
    ords.set_defaults(run=Admin.orders)
    order = sub.add_parser("order", help="one order")
    os_ = order.add_subparsers(dest="action", required=True)
    show = os_.add_parser("show", help="an order with its load, entries and decisions")
    show.add_argument("order", help="the 20-digit order number")
    _listing(show, limit=False)
    show.set_defaults(run=Admin.order_show)
    lds = sub.add_parser("loads", help="loads the cards have not proven")
    lds.add_argument("--in-doubt", action="store_true", help="the loads in doubt")
    _listing(lds, limit=False)
    lds.set_defaults(run=Admin.loads)
    load = sub.add_parser("load", help="loads of orders onto cards")
    ls = load.add_subparsers(dest="action", required=True)
    res = ls.add_parser("resolve", help="settle or reverse a load in doubt (audited)")
    res.add_argument("order", help="the 20-digit order number")
    way = res.add_mutually_exclusive_group(required=True)
    way.add_argument("--settle", action="store_true", help="the card got the load")
    way.add_argument("--reverse", action="store_true", help="the card did not get it")
    _decision(res)
    res.set_defaults(run=Admin.load_resolve)
    pays = sub.add_parser("payments", help="third parties' payments, newest first")
    pays.add_argument("--platform", type=int, help="only this platform")
    pays.add_argument("--without-order", action="store_true",
                      help="only payments no order was made for (refund candidates)")
    _listing(pays)
    pays.set_defaults(run=Admin.payments)
    pay = sub.add_parser("payment", help="third parties' payments")
    ps = pay.add_subparsers(dest="action", required=True)
    ref = ps.add_parser("refund", help="refund a payment without an order (audited)")
    ref.add_argument("payment", help="PLATFORM:BIZ_SERIAL_NO")
    _decision(ref)
    ref.set_defaults(run=Admin.payment_refund)
    cons = sub.add_parser("consignments", help="merchants' consignments, newest first")
    cons.add_argument("--state", help="processing, success or failed")
    cons.add_argument("--merchant", help="the merchant's customerId")
    _dates(cons)
    _listing(cons)
    cons.set_defaults(run=Admin.consignments_list)
    con = sub.add_parser("consignment", help="one consignment")
    cs_ = con.add_subparsers(dest="action", required=True)
    cshow_ = cs_.add_parser("show", help="a consignment with its notifications")
    cshow_.add_argument("system_order", help="the platform's systemOrderId")
    _listing(cshow_, limit=False)
    cshow_.set_defaults(run=Admin.consignment_show)
    nots = sub.add_parser("notifications", help="the merchants' notification outbox")
    nots.add_argument("--state", help="pending, delivered or failed")
    nots.add_argument("--reference", help="a systemOrderId or top-up order")
    _listing(nots)
    nots.set_defaults(run=Admin.notifications_list)
    note = sub.add_parser("notification", help="one notification")
    ns = note.add_subparsers(dest="action", required=True)
    retry = ns.add_parser("retry", help="send a failed notification again (audited)")
    retry.add_argument("id", type=int, help="the notification's id (from notifications)")
    _decision(retry)
    retry.set_defaults(run=Admin.notification_retry)
    rec = sub.add_parser("reconcile", help="the day's loads by biz_serial_no, with totals")
    rec.add_argument("--date", required=True, help="YYYYMMDD, China time")
    rec.add_argument("--platform", type=int, help="only this platform")
    rec.add_argument("--csv", help="also write the rows as CSV to this file")
    rec.set_defaults(run=Admin.reconcile)

    sub.add_parser("plugin-cache", help="regenerate Twisted's dropin.cache").set_defaults(
        run=Admin.plugin_cache)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        admin = Admin(args.data_dir, args.ledger, args.key_file)
    except DatabaseConfigError as e:
        print(f"lnt-admin: {e}", file=sys.stderr)
        return 2
    try:
        args.run(admin, args)
    except (Refused, KeyFileError) as e:
        print(f"lnt-admin: {e}", file=sys.stderr)
        return 1
    except DatabaseConfigError as e:
        print(f"lnt-admin: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lnt-admin: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except Exception as e:
        if type(e).__module__.startswith(("psycopg", "sqlite3")):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"lnt-admin: the ledger cannot be used: {first}", file=sys.stderr)
            return 1
        raise
    finally:
        admin.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
