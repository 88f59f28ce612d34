"""
Issuing a transit card: what is personalised into a new CPU or M1 card (its numbers, its keys
diversified from the issuer's master keys, its opening balance), as the card file the
simulator's virtual cards live in (C{<dir>/cards/<logical number>.json}).

Both sides use it: the daemon's demo data issues its demo cards with it, and the simulator
(L{lnt.sim.virtualcards}) reads the files back as working cards. The daemon never imports the
simulator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lnt.crypto import pboc
from lnt.jsonfile import write_json_atomically
from lnt.messages.purse import value_block
from lnt.wire import encode_bcd

#: the M1 purse's sector (its value block 8, backup 9, load record 10) and the issuer block
M1_PURSE_SECTOR = 2
M1_ISSUER_BLOCK = 4


def cpu_card(logical_no: str, master_load_key: bytes, master_tac_key: bytes,
             balance: int = 0, uid: bytes | None = None) -> dict[str, Any]:
    """A PBOC purse card: its load and TAC keys are diversified with the logical number."""
    card_id = encode_bcd(logical_no, 8)
    return {"kind": "cpu", "logical_no": logical_no, "uid": (uid or os.urandom(8)).hex(),
            "dlk": pboc.diversify(master_load_key, card_id).hex(),
            "dtk": pboc.diversify(master_tac_key, card_id).hex(), "balance": balance}


def m1_card(logical_no: str, uid: bytes, sector_keys: dict[int, bytes],
            balance: int = 0) -> dict[str, Any]:
    """A MIFARE Classic card: issuer block 4, purse value block 8 with its backup in 9."""
    issuer = encode_bcd(logical_no, 8) + b"\x00\x02" + bytes(6)
    block = value_block(balance, M1_PURSE_SECTOR * 4).hex()
    return {"kind": "m1", "logical_no": logical_no, "uid": uid.hex(),
            "keys": {str(s): k.hex() for s, k in sector_keys.items()},
            "blocks": {str(M1_ISSUER_BLOCK): issuer.hex(), str(M1_PURSE_SECTOR * 4): block,
                       str(M1_PURSE_SECTOR * 4 + 1): block}}


def physical_number(card: dict[str, Any]) -> bytes:
    """The 8-byte physical number: the UID, left-padded with zero bytes (M1: 4-byte UIDs)."""
    return bytes.fromhex(str(card["uid"])).rjust(8, b"\x00")


def card_path(cards_dir: Path, logical_no: str) -> Path:
    return cards_dir / f"{logical_no}.json"


def write_card(cards_dir: Path, card: dict[str, Any]) -> Path:
    path = card_path(cards_dir, str(card["logical_no"]))
    write_json_atomically(path, card, 0o600)
    return path


def read_card(path: Path) -> dict[str, Any]:
    content = json.loads(path.read_text())
    if not isinstance(content, dict) or content.get("kind") not in ("cpu", "m1"):
        raise ValueError(f"{path} is no card file")
    return content
