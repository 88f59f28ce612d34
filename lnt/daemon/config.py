"""
The daemon's settings: command line over ini file over built-in defaults.

The ini file (C{--config FILE}) has one section, C{[lnt-recharge]}, whose keys are the long
option names (C{flows = tcp:9000:interface=127.0.0.1}, C{idle-timeout = 30}, ...); see
etc/lnt.ini. An unknown key or section is an error, so a typo never silently keeps a default.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lnt.domain.netfence import Fenced, parse_networks

SECTION = "lnt-recharge"


class ConfigError(Exception):
    """The configuration is invalid; the message says which setting and why."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    kind: type = str


SETTINGS: tuple[Setting, ...] = (
    Setting("flows", "tcp:9000:interface=127.0.0.1",
            "endpoint for terminal (DD frame) connections, a Twisted endpoint string"),
    Setting("http", "tcp:8080:interface=127.0.0.1",
            "endpoint for the HTTP APIs (order, consignment, health)"),
    Setting("admin", None,
            "endpoint for the operators' console and /metrics (off unless given; e.g. "
            "tcp:9090:interface=127.0.0.1, or ssl:... for TLS)"),
    Setting("admin-token", None,
            "file holding the console's access token (default: DATA-DIR/admin-token, created "
            "at the first start)"),
    Setting("backlog", "1024",
            "listen backlog of tcp/ssl endpoints that do not set backlog= themselves", int),
    Setting("data-dir", "./lnt-data", "directory for the ledger, keys and demo.json"),
    Setting("ledger", None,
            "ledger DSN: sqlite:///PATH or postgresql://... (default: SQLite in the data dir)"),
    Setting("key-file", None, "platform key file (default: DATA-DIR/platform-key.json)"),
    Setting("core-key-file", None,
            "core module (card issuer) key file (default: DATA-DIR/core-keys.json)"),
    Setting("idle-timeout", "30", "seconds without a complete frame before closing", float),
    Setting("flow-deadline", "120", "seconds one flow may take in all", float),
    Setting("backend-timeout", "10", "seconds a backend call may take before DD", float),
    Setting("max-connections", "1000",
            "terminal connections at once; at the limit the port stops accepting until one "
            "closes", int),
    Setting("shutdown-grace", "15", "seconds running flows get to finish at shutdown", float),
    Setting("session-ttl", "86400", "lifetime of a sign-in session, seconds", float),
    Setting("timestamp-window", "300", "order API: seconds a request's timestamp may be off",
            float),
    Setting("http-max-body", "65536", "largest HTTP request body in bytes; larger get 413", int),
    Setting("http-max-connections", "1000",
            "HTTP connections at once; at the limit the port stops accepting until one closes",
            int),
    Setting("http-request-timeout", "30",
            "seconds an HTTP request may take to arrive whole (headers and body)", float),
    Setting("notify-timeout", "10", "seconds one merchant notification attempt may take",
            float),
    Setting("notify-allow", "none",
            "networks merchant notifications may reach besides public addresses, e.g. "
            "127.0.0.0/8 (demo, tests); none by default"),
    Setting("notify-retries", "10,20",
            "seconds before each retry of an undelivered notification, comma-separated"),
    Setting("demo", "yes", "provision the demo terminal, cards and merchant (yes/no)", bool),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _convert(setting: Setting, raw: str) -> Any:
    try:
        if setting.kind is bool:
            low = raw.strip().lower()
            if low in ("yes", "true", "on", "1"):
                return True
            if low in ("no", "false", "off", "0"):
                return False
            raise ValueError(raw)
        value = setting.kind(raw)
    except ValueError:
        kind = setting.kind.__name__
        raise ConfigError(f"{setting.name}: {raw!r} is not a valid {kind}") from None
    if setting.kind in (int, float) and value <= 0:
        raise ConfigError(f"{setting.name}: must be positive, not {raw}")
    if setting.name == "notify-retries":
        try:
            intervals = [float(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"notify-retries: {raw!r} is not a list of seconds") from None
        if any(x <= 0 for x in intervals):
            raise ConfigError("notify-retries: intervals must be positive")
        return intervals
    if setting.name == "notify-allow":
        try:
            parse_networks(raw)  # the service parses it again; a typo stops the start here
        except Fenced as e:
            raise ConfigError(f"notify-allow: {e}") from None
    return value


def read_ini(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open() as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise ConfigError(f"config file {path}: {e.message}") from None
    extra = [s for s in parser.sections() if s != SECTION]
    if extra:
        raise ConfigError(f"config file {path}: unknown section [{extra[0]}], use [{SECTION}]")
    if not parser.has_section(SECTION):
        return {}
    values = dict(parser.items(SECTION))
    for key in values:
        if key not in _BY_NAME:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
    return values


@dataclass(frozen=True)
class Settings:
    """Every setting, typed: what the daemon is built from (one field per L{SETTINGS} entry)."""

    flows: str
    http: str
    admin: str | None
    admin_token: Path | None
    backlog: int
    data_dir: Path
    ledger: str | None
    key_file: Path | None
    core_key_file: Path | None
    idle_timeout: float
    flow_deadline: float
    backend_timeout: float
    max_connections: int
    shutdown_grace: float
    session_ttl: float
    timestamp_window: float
    http_max_body: int
    http_max_connections: int
    http_request_timeout: float
    notify_timeout: float
    notify_allow: str
    notify_retries: tuple[float, ...]
    demo: bool


_PATHS = {"data_dir", "key_file", "core_key_file", "admin_token"}


def resolve(command_line: Mapping[str, str | None], ini: Mapping[str, str]) -> Settings:
    """Every setting's value: the command line's if given, else the file's, else the default."""
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = command_line.get(s.name)
        if raw is None:
            raw = ini.get(s.name, s.default)
        field = s.name.replace("-", "_")
        value = None if raw is None else _convert(s, raw)
        if field in _PATHS and value is not None:
            value = Path(value)
        if isinstance(value, list):
            value = tuple(value)
        values[field] = value
    return Settings(**values)


def _check_settings_match() -> None:
    # the table of options and the dataclass name the same settings (caught at import)
    names = {s.name.replace("-", "_") for s in SETTINGS}
    typed = {f.name for f in fields(Settings)}
    if names != typed:
        raise AssertionError(f"SETTINGS and Settings differ: {sorted(names ^ typed)}")


_check_settings_match()
