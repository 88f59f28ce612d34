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
import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from lnt.backends.database import DSN, SyncDatabase, result_of
from lnt.backends.keys import CardKeyFile, PlatformKeys
from lnt.backends.pki import LedgerPKI
from lnt.records import PKICard

log = Logger()

DEMO_PKI_NO = 70000472
DEMO_USER_ID = b"DEMO-TERMINAL-01"
DEMO_FILE = "demo.json"


def load_demo(data_dir: Path) -> dict[str, Any]:
    path = data_dir / DEMO_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write(data_dir: Path, content: dict[str, Any]) -> None:
    path = data_dir / DEMO_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def provision(data_dir: Path, dsn: DSN, keys: PlatformKeys) -> dict[str, Any]:
    """Create what is missing of the demo data; return the content of demo.json."""
    demo = load_demo(data_dir)
    demo["notice"] = "DEMO DATA: keys in plain files, for trying the simulator only"
    db = SyncDatabase(dsn)
    try:
        demo["terminal"] = _terminal(data_dir, db, keys)
    finally:
        db.close()
    _write(data_dir, demo)
    return demo


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
