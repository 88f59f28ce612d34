"""
What of a card number may be shown: enough to tell cards apart, never the whole number. Every
log line and every operator's listing that names a card goes through here.
"""

from __future__ import annotations


def mask_card(number: str) -> str:
    """C{"1000123456789012"} -> C{"1000********9012"}: enough to tell cards apart."""
    if len(number) <= 8:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 8) + number[-4:]
