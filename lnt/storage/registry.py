"""
The card registry's rows (table C{cards}): the transit cards the platform issued, read inside
the caller's transaction by every store that takes money for a card (orders, merchant top-ups).
"""

from __future__ import annotations

from lnt.domain.records import CardKind, CardState, IssuedCard
from lnt.storage.database import Cursor


def issued_card(cur: Cursor, logical_no: str) -> IssuedCard | None:
    row = cur.execute("SELECT logical_no, card_kind, physical_no, state FROM cards WHERE"
                      " logical_no = ?", (logical_no,)).fetchone()
    return None if row is None else IssuedCard(str(row[0]), CardKind(row[1]), str(row[2]),
                                               CardState(row[3]))
