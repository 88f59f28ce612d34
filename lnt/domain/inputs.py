"""
Bounds for what arrives from outside, checked before anything else touches it (both HTTP APIs):
JSON nesting, text that is valid Unicode (no lone surrogates, which cannot be encoded to UTF-8
and would break the MAC computation or the database), integers within the 64-bit columns and
their field's sense, timestamps and dates within a sane window. Each refusal names the field.
Pure: no I/O, tested alone (tests/test_inputs.py).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

#: the largest value of the ledger's integer columns (SQLite INTEGER, PostgreSQL BIGINT)
INT64_MAX = 2**63 - 1
#: JSON nesting the APIs accept (their messages nest two or three levels)
MAX_DEPTH = 16
#: one amount of money, in fen: ten million yuan is more than any card or order holds
FEN_MAX = 10**9
#: Unix seconds the platform accepts in a timestamp (2000-01-01 .. 2100-01-01, UTC)
SECONDS_MIN, SECONDS_MAX = 946_684_800, 4_102_444_800
#: dates the queries accept
DATE_MIN, DATE_MAX = date(2000, 1, 1), date(2099, 12, 31)


class InputError(ValueError):
    """A field out of bounds; the message names it."""


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON C{text} (strings skipped), computed
    without parsing: a parser given 60,000 brackets recurses until it fails."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_depth(text: str, what: str, limit: int = MAX_DEPTH) -> None:
    # nesting needs opening brackets: when there are few (every real message), no scan at all
    if text.count("[") + text.count("{") <= limit:
        return
    if json_depth(text) > limit:
        raise InputError(f"{what} nests deeper than {limit} levels")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def may_hold_surrogates(json_text: str) -> bool:
    """Whether JSON decoded from C{json_text} can hold a lone surrogate: text decoded from
    UTF-8 holds none, so only a C{\\uD800}-style escape can make one. Most messages have
    none, and L{check_text} need not walk them."""
    return _SURROGATE_ESCAPE.search(json_text) is not None


def check_text(value: Any, where: str) -> None:
    """Every string in C{value} (keys too, at any depth) encodes to UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{where} is not valid text (a lone surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, f"a field name in {where}")
            check_text(v, f"{where}.{k}" if isinstance(k, str) and _printable(k) else where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_text(v, f"{where}[{i}]")


def _printable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(name) <= 40


def bounded_int(name: str, value: int, low: int = 0, high: int = INT64_MAX) -> int:
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}")
    return value


def whole_number(name: str, text: str, low: int = 0, high: int = INT64_MAX) -> int:
    """A decimal integer sent as text (form fields), without converting 400 digits first."""
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit():
        raise InputError(f"{name} must be a whole number")
    if len(digits) > len(str(max(abs(low), abs(high)))):
        raise InputError(f"{name} must be between {low} and {high}")
    return bounded_int(name, int(text), low, high)


def timestamp_seconds(name: str, value: int) -> float:
    """A timestamp in seconds or milliseconds (the order API's clients send either), as
    seconds, within 2000-2100."""
    # compared as integers first: 10**400 has no float
    if not SECONDS_MIN <= value <= SECONDS_MAX * 1000:
        raise InputError(f"{name} is not a time between 2000 and 2100 (seconds or ms)")
    seconds = value / 1000 if value > 10**11 else float(value)
    if not SECONDS_MIN <= seconds <= SECONDS_MAX:
        raise InputError(f"{name} is not a time between 2000 and 2100 (seconds or ms)")
    return seconds


def yyyymmdd(name: str, text: str) -> date:
    try:
        day = datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise InputError(f"{name} must be a date YYYYMMDD") from None
    if not DATE_MIN <= day <= DATE_MAX:
        raise InputError(f"{name} must be between {DATE_MIN:%Y%m%d} and {DATE_MAX:%Y%m%d}")
    return day
