"""
Log lines never carry card numbers, keys or passwords (masked centrally, by field name, for
every observer), and the JSON observer writes one object per line for log shippers.
"""

from __future__ import annotations

import io
import json
from typing import cast

from twisted.logger import ILogObserver, LogLevel, LogPublisher, formatEvent

from lnt.daemon.logs import format_journal_event, json_observer
from lnt.logmask import REDACTED, Logger


def events() -> tuple[Logger, list[dict[str, object]]]:
    seen: list[dict[str, object]] = []
    publisher = LogPublisher(cast(ILogObserver, seen.append))
    return Logger(namespace="lnt.test", observer=publisher), seen


def test_card_numbers_and_secrets_are_masked_for_every_observer() -> None:
    log, seen = events()
    log.info("card {card} (physical {physical_no}) key {session_key} password {password} "
             "order {order}", card="5390123456789012", physical_no=b"04A1B2C3D4E5F607",
             session_key=bytes(range(16)), password="123456", order="20261126000000000001")
    text = formatEvent(seen[0])
    assert "5390********9012" in text and "5390123456789012" not in text
    assert "04A1********F607" in text
    assert text.count(REDACTED) == 2 and "123456 " not in text
    assert "20261126000000000001" in text  # an order number is no secret
    # what was masked already stays masked
    log.warn("{card}", card="5390********9012")
    assert formatEvent(seen[1]) == "5390********9012"
    # any field named like a key
    log.info("{merchant_aes_key}", merchant_aes_key="00112233")
    assert formatEvent(seen[2]) == REDACTED


def test_failures_keep_their_traceback_and_are_masked_too() -> None:
    log, seen = events()
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("order {order} for card {card} failed", order="1", card="5390123456789012")
    assert "5390123456789012" not in formatEvent(seen[0])
    line = format_journal_event(seen[0])
    assert line is not None and line.startswith("<2>[lnt.test] order 1") and "ValueError" in line


def test_json_lines_for_log_shippers() -> None:
    out = io.StringIO()
    observer = json_observer(out)
    log = Logger(namespace="lnt.flows", observer=LogPublisher(observer))
    log.warn("recharge: order {order} in doubt on card {card}", order="20261126000000000001",
             card="5390123456789012", amount=70)
    log.emit(LogLevel.info, "")  # nothing to say: no line
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "warn" and record["namespace"] == "lnt.flows"
    assert record["message"] == ("recharge: order 20261126000000000001 in doubt on card "
                                 "5390********9012")
    assert record["card"] == "5390********9012" and record["amount"] == 70
    assert record["time"].endswith("+00:00")
    assert "5390123456789012" not in out.getvalue()


def test_the_alert_rules_name_metrics_the_daemon_has() -> None:
    import re
    from pathlib import Path

    from lnt import metrics

    rules = (Path(__file__).parent.parent / "etc" / "lnt-recharge-alerts.yml").read_text()
    named = set(re.findall(r"\b(lnt_[a-z_]+)", rules))
    exported = {s.name for family in metrics.REGISTRY.collect() for s in family.samples}
    exported |= {f.name + ("_total" if f.type == "counter" else "")
                 for f in metrics.REGISTRY.collect()}
    assert named and named <= exported, named - exported
    assert "alert: LntLoadInDoubt" in rules
