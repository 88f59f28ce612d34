"""
Card numbers, keys and passwords never reach a log line: every logger of lnt is this
L{Logger}, which masks an event's fields by their name before the event is published, so the
rule holds for every observer (twistd's file log, the journal, JSON for log shippers) and
does not depend on each call site remembering it.

A field named like a card number (C{card}, C{logical_no}, C{physical_no}, C{number}, ...)
keeps its first and last four characters (L{lnt.domain.masking.mask_card}: operators still
tell cards apart); a field named like a secret (C{key}, C{password}, C{token}, C{secret}, ...)
is replaced whole. Messages name values only through fields (C{"{card}"}), never by pasting
them into the format string, so the masking sees them all.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

from lnt.domain.masking import mask_card

CARD_FIELDS = frozenset({"card", "card_no", "card_number", "cardnumber", "logical",
                         "logical_no", "physical", "physical_no", "number", "voucher"})
SECRET_FIELDS = frozenset({"key", "session_key", "password", "token", "secret", "pin",
                           "aes_key", "md5_key", "storage_key", "private_key"})
REDACTED = "<redacted>"


def masked(fields: dict[str, Any]) -> dict[str, Any]:
    """The event's fields with card numbers masked and secrets removed."""
    out = dict(fields)
    for name, value in fields.items():
        low = name.lower()
        if low in SECRET_FIELDS or low.endswith(("_key", "_password", "_secret", "_token")):
            out[name] = REDACTED
        elif low in CARD_FIELDS and isinstance(value, str | bytes | int):
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            out[name] = mask_card(text)
    return out


class Logger(_TwistedLogger):
    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        super().emit(level, format, **masked(kwargs))
