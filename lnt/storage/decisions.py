"""
The audit of operators' decisions (resolving a load, refunding a payment, retrying a
notification): who, why and when, written in the transaction that carries the decision out, so
that there is never a decision without its record or a record without its decision.
"""

from __future__ import annotations

from lnt.storage.database import Cursor


def decided(cur: Cursor, kind: str, reference: str, decision: str, reason: str,
            operator: str, now_ms: int) -> None:
    """The audit of an operator's decision, in the transaction that carries it out."""
    cur.execute("INSERT INTO decisions (kind, reference, decision, reason, operator, at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)", (kind, reference, decision, reason.strip()[:500],
                                               operator[:100], now_ms))
