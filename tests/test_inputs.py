"""The pure input bounds (lnt/domain/inputs.py), against independent computations."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lnt.domain.inputs import (
    FEN_MAX,
    SECONDS_MAX,
    SECONDS_MIN,
    InputError,
    check_text,
    json_depth,
    timestamp_seconds,
    whole_number,
    yyyymmdd,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=15)


def depth(value: Any) -> int:
    """The nesting of a Python value, recursively (the independent answer)."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_json_depth_without_parsing(value: Any) -> None:
    try:
        text = json.dumps(value)
    except ValueError:
        return
    assert json_depth(text) == depth(value)
    assert json_depth(json.dumps(value, ensure_ascii=False, indent=1)) == depth(value)


def test_brackets_in_strings_do_not_count() -> None:
    assert json_depth('{"a": "[[[[{{{{\\"]]]"}') == 1
    assert json_depth("[" * 60000) == 60000


@given(st.text())
def test_text_is_valid_exactly_when_it_encodes(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(InputError, match=r"x\.y is not valid text"):
            check_text({"y": text}, "x")
    else:
        check_text({"y": [text, {text: text}]}, "x")


@given(st.integers(-10**30, 10**30))
def test_whole_numbers_agree_with_int(n: int) -> None:
    if 1 <= n <= FEN_MAX:
        assert whole_number("amount", str(n), 1, FEN_MAX) == n
    else:
        with pytest.raises(InputError, match="amount"):
            whole_number("amount", str(n), 1, FEN_MAX)


@pytest.mark.parametrize("text", ["", "1e5", "0x10", " 1", "١٢", "9" * 400, "+-1"])
def test_what_is_no_whole_number(text: str) -> None:
    with pytest.raises(InputError):
        whole_number("amount", text, 1, FEN_MAX)


@given(st.integers(-10**20, 10**20) | st.just(10**400))
def test_timestamps_in_seconds_or_ms(value: int) -> None:
    in_seconds = SECONDS_MIN <= value <= SECONDS_MAX
    in_ms = value > 10**11 and SECONDS_MIN * 1000 <= value <= SECONDS_MAX * 1000
    if in_seconds or in_ms:
        assert SECONDS_MIN <= timestamp_seconds("t", value) <= SECONDS_MAX
    else:
        with pytest.raises(InputError, match="t is not a time"):
            timestamp_seconds("t", value)


def test_dates() -> None:
    assert yyyymmdd("d", "20261126").isoformat() == "2026-11-26"
    for bad in ("99991231", "19991231", "20261331", "2026-11-26", ""):
        with pytest.raises(InputError, match="d must be"):
            yyyymmdd("d", bad)


@given(st.text())
def test_the_surrogate_fast_path_never_misses_one(text: str) -> None:
    from lnt.domain.inputs import may_hold_surrogates

    has = any("\ud800" <= ch <= "\udfff" for ch in text)
    for encoded in (json.dumps({"k": text}), json.dumps({text: 1})):
        if has:
            assert may_hold_surrogates(encoded)
        # and what it lets through decodes to valid text
        if not may_hold_surrogates(encoded):
            check_text(json.loads(encoded), "x")
