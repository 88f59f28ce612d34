"""
Logging for operators: a twistd observer for journald (card numbers are masked where they are
logged, with L{lnt.domain.masking.mask_card}).

Under systemd the journal timestamps every line itself, so the observer L{journal_observer}
(C{twistd --logger lnt.daemon.logs.journal_observer}) writes C{<priority>[namespace] message} with
no timestamp of its own; the C{<N>} prefix is the syslog priority that journald reads from a stream
(sd-daemon(3)), so C{journalctl -p warning} works.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
)

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
