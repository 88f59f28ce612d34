"""
Logging for operators: observers for journald and for log shippers (JSON). Card numbers, keys
and passwords are masked before any observer sees an event (L{lnt.logmask}).

Under systemd the journal timestamps every line itself, so the observer L{journal_observer}
(C{twistd --logger lnt.daemon.logs.journal_observer}) writes C{<priority>[namespace] message} with
no timestamp of its own; the C{<N>} prefix is the syslog priority that journald reads from a stream
(sd-daemon(3)), so C{journalctl -p warning} works.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
)

from lnt.logmask import masked

_PRIORITY = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


def format_journal_event(event: LogEvent) -> str | None:
    text = formatEvent(event)
    if "log_failure" in event:
        text = f"{text}\n{event['log_failure'].getTraceback()}"
    if not text:
        return None
    level = event.get("log_level", LogLevel.info)
    prio = _PRIORITY.get(level, 6)
    namespace = event.get("log_namespace", "-")
    lines = text.rstrip("\n").split("\n")
    return "".join(f"<{prio}>[{namespace}] {line}\n" for line in lines)


def journal_observer(out: TextIO | None = None) -> ILogObserver:
    """The observer factory for C{twistd --logger}: one line per event, no timestamp."""
    return FileLogObserver(out or sys.stdout, format_journal_event)


#: the event keys Twisted uses for its own bookkeeping, not worth a shipper's field
_INTERNAL = frozenset({"log_format", "log_logger", "log_source", "log_io", "log_failure",
                       "log_trace", "log_time", "log_level", "log_namespace", "log_system",
                       "format", "message", "isError", "system", "time", "why", "log_text",
                       "log_flattened"})


def format_json_event(event: LogEvent) -> str | None:
    """One JSON object per line: time, level, namespace, message, the event's plain fields
    (masked like every lnt event), and the traceback of a failure."""
    text = formatEvent(event)
    if not text:
        return None
    level = event.get("log_level", LogLevel.info)
    record: dict[str, object] = {
        "time": datetime.fromtimestamp(event.get("log_time") or time.time(), UTC).isoformat(
            timespec="milliseconds"),
        "level": level.name,
        "namespace": event.get("log_namespace", "-"),
        "message": text,
    }
    for name, value in masked({k: v for k, v in event.items()
                               if k not in _INTERNAL and not k.startswith("log_")}).items():
        if isinstance(value, str | int | float | bool) or value is None:
            record.setdefault(name, value)
    if "log_failure" in event:
        record["traceback"] = event["log_failure"].getTraceback()
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def json_observer(out: TextIO | None = None) -> ILogObserver:
    """C{twistd --logger lnt.daemon.logs.json_observer}: JSON lines for log shippers."""
    return FileLogObserver(out or sys.stdout, format_json_event)
