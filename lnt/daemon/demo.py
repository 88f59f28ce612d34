"""
The embedded default's demo data: a terminal (and, as the product grows, cards and a
merchant) that the simulator can use against a fresh daemon at once.

Provisioning runs at start, before the reactor, and is idempotent: what exists is kept. It
writes C{<data-dir>/demo.json}, which names everything a first user needs. Production configs
turn it off (C{demo = no} / C{--no-demo}). Everything here is marked DEMO: these keys live in
plain files next to the ledger and protect nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from Crypto.Random import get_random_bytes

from lnt.domain.masking import mask_card
from lnt.domain.records import CardKind, Conflict, IssuedCard, PKICard, Platform
from lnt.jsonfile import write_json_atomically
from lnt.keyfiles import CardKeyFile, CoreKeys, PlatformKeys
from lnt.logmask import Logger
from lnt.messages import cardissue
from lnt.storage.consignments import SQLConsignments
from lnt.storage.database import DSN, SyncDatabase, result_of
from lnt.storage.ledger import SQLLedger
from lnt.storage.pkicards import LedgerPKI
from lnt.storage.vouchers import VoucherIssuer

log = Logger()

DEMO_PKI_NO = 70000472
DEMO_USER_ID = b"DEMO-TERMINAL-01"
DEMO_FILE = "demo.json"
DEMO_PLATFORM = 7
DEMO_MERCHANT = "10001"
DEMO_PRODUCT = "LNT100"
#: (kind, logical card number, balance in fen at issue)
DEMO_CARDS = (("cpu", "5100000000000001", 1000), ("m1", "5100000000000002", 500))


def load_demo(data_dir: Path) -> dict[str, Any]:
    path = data_dir / DEMO_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write(data_dir: Path, content: dict[str, Any]) -> None:
    # it names demo keys and voucher passwords: readable by the owner only
    write_json_atomically(data_dir / DEMO_FILE, content, 0o600)


def provision(data_dir: Path, dsn: DSN, keys: PlatformKeys, core: CoreKeys) -> dict[str, Any]:
    """Create what is missing of the demo data; return the content of demo.json."""
    demo = load_demo(data_dir)
    demo["notice"] = "DEMO DATA: keys in plain files, for trying the simulator only"
    db = SyncDatabase(dsn)
    try:
        demo["terminal"] = _terminal(data_dir, db, keys)
        demo["platform"] = _platform(db, keys)
        demo.setdefault("merchant", None)
        if not demo["merchant"]:
            demo["merchant"], demo["vouchers"] = _merchant(db, keys)
        demo["cards"] = _cards(data_dir, core, SQLLedger(db, keys.sealer()))
    finally:
        db.close()
    _write(data_dir, demo)
    return demo


def _platform(db: SyncDatabase, keys: PlatformKeys) -> dict[str, Any]:
    ledger = SQLLedger(db, keys.sealer())
    if result_of(ledger.add_platform(Platform(DEMO_PLATFORM, "public bicycle (demo)"))):
        log.info("demo: registered platform {n}", n=DEMO_PLATFORM)
    return {"platform_no": DEMO_PLATFORM, "name": "public bicycle (demo)"}


def _merchant(db: SyncDatabase, keys: PlatformKeys
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The demo merchant and a few unredeemed vouchers (their passwords only here)."""
    store = SQLConsignments(db, keys.sealer())
    now = int(time.time() * 1000)
    existing = result_of(store.merchant(DEMO_MERCHANT))
    merchant = existing or result_of(store.add_merchant(DEMO_MERCHANT, {DEMO_PRODUCT: 9500},
                                                        now))
    vouchers = result_of(VoucherIssuer(db, keys.storage_key).issue(DEMO_PRODUCT, 10_000, 3, now))
    log.info("demo: merchant {m} with 3 vouchers", m=DEMO_MERCHANT)
    return ({"customerId": merchant.customer_id, "aes_key": merchant.aes_key,
             "md5_key": merchant.md5_key, "rates": {DEMO_PRODUCT: 0.95}},
            [{"cardNumber": v.card_number, "cardPassword": v.password,
              "productCode": v.product_code, "faceValue": v.face_value} for v in vouchers])


def _cards(data_dir: Path, core: CoreKeys, ledger: SQLLedger) -> list[dict[str, Any]]:
    """
    The virtual cards a terminal's reader can present, issued with the core module's keys and
    entered in the platform's card registry (only issued cards take orders).
    """
    cards_dir = data_dir / "cards"
    listed = []
    for kind, logical_no, balance in DEMO_CARDS:
        path = cardissue.card_path(cards_dir, logical_no)
        if path.exists():
            card = cardissue.read_card(path)
        else:
            if kind == "cpu":
                card = cardissue.cpu_card(logical_no, core.master_load_key,
                                          core.master_tac_key, balance)
            else:
                uid = get_random_bytes(4)
                sector = cardissue.M1_PURSE_SECTOR
                card = cardissue.m1_card(logical_no, uid, {sector: core.m1_sector_key(
                    uid.rjust(8, b"\x00"), sector)}, balance)
            cardissue.write_card(cards_dir, card)
            log.info("demo: issued virtual {kind} card {no}", kind=kind, no=mask_card(logical_no))
        issued = IssuedCard(logical_no, CardKind(kind), cardissue.physical_number(card).hex())
        try:
            if result_of(ledger.register_card(issued, int(time.time() * 1000))):
                log.info("demo: card {no} entered in the card registry",
                         no=mask_card(logical_no))
        except Conflict:
            # a shared ledger where another data dir issued its own demo card first
            log.warn("demo: card {no} is in the registry as another card: this data dir's "
                     "virtual card takes no orders", no=mask_card(logical_no))
        listed.append({"kind": kind, "logical_no": logical_no, "file": f"cards/{path.name}"})
    return listed


def _terminal(data_dir: Path, db: SyncDatabase, keys: PlatformKeys) -> dict[str, Any]:
    pki = LedgerPKI(db, keys)
    key_path = data_dir / "demo-terminal-key.json"
    if key_path.exists():
        card_key = CardKeyFile.load(key_path)
    else:
        card_key = CardKeyFile.generate(DEMO_PKI_NO, 1, DEMO_USER_ID, keys.public_key)
        card_key.save(key_path)
    if result_of(pki.lookup(card_key.pki_no)) is None:
        result_of(pki.register(PKICard(card_key.pki_no, card_key.user_id, card_key.public_key,
                                       card_key.key_version)))
        log.info("demo: registered demo terminal, PKI card {pki}", pki=card_key.pki_no)
    return {
        "user_id": card_key.user_id.decode("ascii"),
        "pki_no": card_key.pki_no,
        "key_version": card_key.key_version,
        "key_file": key_path.name,
    }
