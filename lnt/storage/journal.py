"""
The double-entry journal: accounts, and L{post}, which appends one balanced entry inside the
caller's transaction. Balances are never stored: they are sums of postings.
"""

from __future__ import annotations

from lnt.storage.database import Cursor

ACCOUNT_AWAITING_LOAD = "orders:awaiting-load"
ACCOUNT_CARD_FLOAT = "cards:float"
ACCOUNT_REVERSED = "orders:reversed"


def account_platform(platform_no: int) -> str:
    """What a third-party platform owes for the recharges it sold (its collected money)."""
    return f"platform:{platform_no}:receivable"


class UnbalancedEntry(AssertionError):
    """A journal entry whose postings do not sum to zero: a bug, never written."""


def post(cur: Cursor, kind: str, reference: str, now_ms: int,
         postings: list[tuple[str, int]]) -> None:
    """
    Append one balanced journal entry (in the caller's transaction). Debits are positive,
    credits negative; they must sum to zero. Entries are never updated or deleted.
    """
    if sum(amount for _, amount in postings) != 0 or not postings:
        raise UnbalancedEntry(f"{kind} {reference}: postings do not balance")
    row = cur.execute("INSERT INTO journal_entries (kind, reference, at_ms) VALUES (?, ?, ?)"
                      " RETURNING id", (kind, reference, now_ms)).fetchone()
    assert row is not None
    cur.executemany("INSERT INTO postings (entry_id, account, amount) VALUES (?, ?, ?)",
                    [(row[0], account, amount) for account, amount in postings])


ACCOUNT_VOUCHERS_OUTSTANDING = "vouchers:outstanding"
ACCOUNT_VOUCHERS_SOLD = "vouchers:sold"
ACCOUNT_CONSIGNMENT_FEES = "consignment:fees"


def account_merchant(customer_id: str) -> str:
    """What the platform owes a consignment merchant (credits are negative)."""
    return f"merchant:{customer_id}:payable"
