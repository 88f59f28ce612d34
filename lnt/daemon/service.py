"""
Builds the daemon (C{twistd lnt-recharge}) from its options: no protocol logic lives here.

Start-up, in order, before the reactor runs (so that any failure stops twistd with a message
and a non-zero exit): settings resolved (command line > ini file > defaults), data directory
and platform key file created if missing, the ledger migrated to the current schema, the flow
plugins discovered, the demo provisioned when asked for, and the listeners bound. When the
reactor runs: the ledger's pool starts, C{<data-dir>/listening.json} records the bound
addresses, and systemd is told C{READY=1}.

Shutdown (SIGTERM, SIGINT): listeners stop accepting, running flows get C{shutdown-grace}
seconds to finish (then are aborted), then the ledger is closed.
"""

from __future__ import annotations

import fcntl
import gc
import os
import secrets
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime
from twisted.python import usage
from twisted.web.server import Site

import lnt
from lnt.coremodule import FileCoreModule
from lnt.daemon import systemd
from lnt.daemon.budget import ConnectionBudget
from lnt.daemon.config import SETTINGS, ConfigError, Settings, read_ini, resolve
from lnt.daemon.demo import provision
from lnt.domain.netfence import parse_networks
from lnt.flows.context import FlowContext, FlowSettings
from lnt.flows.dispatch import DDServerFactory, FlowConflict, FlowRegistry, FlowUnavailable
from lnt.jobs.fence import NotifyFence
from lnt.jobs.moneygauges import MoneyGauges
from lnt.jobs.notifier import Notifier
from lnt.jobs.processor import Processor
from lnt.jsonfile import write_json_atomically
from lnt.keyfiles import CoreKeys, KeyFileError, PlatformKeys
from lnt.logmask import Logger
from lnt.storage.consignments import SQLConsignments
from lnt.storage.database import DSN, Database, DatabaseConfigError
from lnt.storage.ledger import SQLLedger
from lnt.storage.migrations import SchemaTooNew, ledger_in_use, migrate
from lnt.storage.pkicards import LedgerPKI
from lnt.storage.vouchers import VoucherIssuer
from lnt.web import consignapi, orderapi
from lnt.web.consignapi import ConsignmentAPI
from lnt.web.console import AdminAuth, Console, ConsoleBackends
from lnt.web.health import Health
from lnt.web.json import Root
from lnt.web.limits import deadline_channel, limited_request
from lnt.web.metered import MeteredSite
from lnt.web.orderapi import OrderAPI

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the Lingnan Tong recharge platform: terminal flows over DD frames and the HTTP "
        "APIs, in one process. With no options it runs on an embedded default: a SQLite ledger "
        "and keys in ./lnt-data, created on first start, with demo data. Endpoints are Twisted "
        "endpoint strings (tcp:PORT:interface=ADDR, ssl:PORT:privateKey=K:certKey=C, "
        "systemd:domain=INET:name=NAME). Settings can also come from an ini file (--config); "
        "the command line wins."
    )
    optParameters: list[list[Any]] = [
        [s.name, None, None, f"{s.help} [default: {s.default or 'see above'}]"] for s in SETTINGS
        if s.kind is not bool
    ] + [["config", "c", None, "ini file with a [lnt-recharge] section (keys: the option names)"]]
    optFlags = [["no-demo", None, "do not provision demo data (production)"]]

    def opt_version(self) -> None:
        """Print the version of lnt-recharge and exit."""
        print(f"lnt-recharge {lnt.__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        given = {s.name: self[s.name] for s in SETTINGS if s.kind is not bool}
        if self["no-demo"]:
            given["demo"] = "no"
        try:
            ini = read_ini(Path(self["config"])) if self["config"] else {}
            self.settings = resolve(given, ini)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class EndpointError(Exception):
    """An endpoint string that Twisted cannot parse."""


class DataDirInUse(Exception):
    """Another daemon runs on this data directory."""


def lock_data_dir(data_dir: Path) -> int:
    """
    Hold C{<data-dir>/lnt-recharge.lock} for the life of the process (the lock goes with it,
    also on SIGKILL): a second daemon on the same data directory would overwrite
    listening.json and the demo data. Returns the descriptor to keep open.
    """
    path = data_dir / "lnt-recharge.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise DataDirInUse(f"another lnt-recharge (pid {holder}) runs on {data_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def with_backlog(description: str, backlog: int) -> str:
    """
    A tcp: or ssl: endpoint with a listen backlog of C{backlog} unless it names one: Twisted's
    default of 50 drops the SYNs of a burst of terminals (each then waits a second for the
    retransmit) long before the daemon is busy.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


class ListenerService(StreamServerEndpointService):
    """
    Twisted's endpoint service, bound at privileged start (so a bind failure stops twistd at
    once, with one line), which also tells the address it got (for C{listening.json}).
    """

    _raiseSynchronously = True

    def __init__(self, name: str, description: str, factory: IProtocolFactory,
                 reactor: Any, backlog: int = 50) -> None:
        try:
            endpoint = serverFromString(reactor, with_backlog(description, backlog))
        except (ValueError, KeyError, TypeError) as e:
            raise EndpointError(f"--{name} {description!r} is no endpoint: {e}") from None
        super().__init__(endpoint, factory)
        self.setName(name)
        self.description = description
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            message = f"cannot listen for {self.name} on {self.description}: {e}"
            log.critical("{message}", message=message)
            raise SystemExit(f"lnt-recharge: cannot start: {message}") from None
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if isinstance(self.factory, ConnectionBudget):
            self.factory.add_port(port)
        log.info("{name} listening on {address}", name=self.name, address=port.getHost())
        return port

    def stopService(self) -> Deferred[None]:
        self.port = None
        return super().stopService()  # type: ignore[no-any-return]

    def address(self) -> dict[str, Any] | None:
        if self.port is None:
            return None
        host = self.port.getHost()
        if isinstance(host, IPv4Address | IPv6Address):
            return {"host": host.host, "port": host.port}
        return {"address": str(host)}


class RechargeService(MultiService):
    """The whole daemon; children are the listeners."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        ledger: SQLLedger,
        flows: DDServerFactory,
        notifier: Notifier,
        processor: Processor,
    ) -> None:
        super().__init__()
        self.notifier = notifier
        self.processor = processor
        self.settings = settings
        self.db = db
        self.ledger = ledger
        self.flows = flows
        self.data_dir = settings.data_dir
        #: the descriptor holding the data directory's lock
        self.lock: int | None = None

    def startService(self) -> None:
        from twisted.internet import reactor

        reactor.callWhenRunning(self._once_per_signal)
        self.db.start()
        super().startService()
        self.notifier.startService()
        # consignments a crash interrupted are finished now, and stragglers every 30 s
        self.processor.start()
        listening: dict[str, Any] = {
            str(s.name): s.address() for s in self if isinstance(s, ListenerService)
        }
        listening["pid"] = os.getpid()
        write_json_atomically(self.data_dir / "listening.json", listening, 0o644)
        systemd.notify("READY=1")
        # what start-up built (modules, keys, plugins, resources) lives as long as the daemon:
        # frozen, the collector stops walking it, and its full collections under load went
        # from 30-43 ms pauses of the reactor (every few seconds) to none in a run of 3,000
        # recharges (docs/performance.rst)
        gc.freeze()
        log.info("lnt-recharge {version} ready", version=lnt.__version__)

    def _once_per_signal(self) -> None:
        """
        The reactor's SIGTERM/SIGINT handlers stop it; a second signal while the running flows
        drain would stop it again (a ReactorNotRunning traceback). Wrap them: the first signal
        goes through, a repeat only says what is happening.
        """
        grace = self.settings.shutdown_grace
        for number in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(number)
            if not callable(previous):
                continue
            received: list[int] = []

            def handler(signum: int, frame: Any, previous: Any = previous,
                        received: list[int] = received) -> None:
                if received:
                    log.warn("{signal} again: already stopping (running flows get up to "
                             "{grace:.0f} s); SIGKILL ends the daemon at once",
                             signal=signal.Signals(signum).name, grace=grace)
                    return
                received.append(signum)
                previous(signum, frame)

            signal.signal(number, handler)

    async def _stop(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping: closing listeners")
        listeners = [s for s in self if isinstance(s, ListenerService)]
        await defer.gatherResults([s.stopService() for s in listeners])
        await self.flows.drain(self.settings.shutdown_grace)
        await self.processor.stop()
        await self.notifier.stopService()
        # the other jobs (the money gauges' timer) end before the ledger they read closes
        for job in [s for s in self if not isinstance(s, ListenerService)]:
            await job.stopService()
        self.running = 0
        self.ledger.close()
        try:
            (self.data_dir / "listening.json").unlink()
        except FileNotFoundError:
            pass
        log.info("stopped")

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def makeService(options: Options, reactor: Any = None) -> RechargeService:
    """
    The daemon's service. Whatever keeps it from starting (keys, database, schema, plugins)
    ends twistd with one line saying why and a non-zero exit status, not a traceback.
    """
    try:
        return _make_service(options, reactor)
    except (OSError, KeyFileError, DatabaseConfigError, SchemaTooNew, FlowConflict,
            FlowUnavailable, EndpointError, DataDirInUse, sqlite3.Error) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.critical("cannot start: {message}", message=message)
        raise SystemExit(f"lnt-recharge: cannot start: {message}") from None
    except Exception as e:
        if type(e).__module__.startswith("psycopg"):
            message = str(e).strip().splitlines()[0]
            log.critical("cannot start: ledger: {message}", message=message)
            raise SystemExit(f"lnt-recharge: cannot start: ledger: {message}") from None
        raise


def _make_service(options: Options, reactor: Any = None) -> RechargeService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    data_dir = options.settings.data_dir.resolve()
    settings = replace(options.settings, data_dir=data_dir)
    key_file = settings.key_file or data_dir / "platform-key.json"
    dsn = DSN.parse(settings.ledger or f"sqlite://{data_dir / 'ledger.db'}")
    if not key_file.exists() and ledger_in_use(dsn):
        # a new key would make every sealed row unreadable: a wrong --key-file, not a new start
        raise KeyFileError(f"key file {key_file} does not exist, but the ledger "
                           f"{dsn.describe()} already holds data sealed with a platform key: "
                           "give its --key-file (nothing was created)")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    lock = lock_data_dir(data_dir)

    keys, created = PlatformKeys.load_or_create(key_file)
    if created:
        log.info("created the platform key file {path}", path=key_file)

    core_keys = CoreKeys.load_or_create(settings.core_key_file or data_dir / "core-keys.json")

    version = migrate(dsn)
    log.info("ledger {dsn} at schema version {version}", dsn=dsn.describe(), version=version)

    if settings.demo:
        provision(data_dir, dsn, keys, core_keys)
        log.info("demo data in {path}", path=data_dir / "demo.json")

    registry = FlowRegistry.discover()
    for flow in registry.flows():
        log.info("flow {name} starts with {header:04X}", name=flow.name, header=flow.first_header)

    db = Database(dsn)
    ledger = SQLLedger(db, keys.sealer())
    pki = LedgerPKI(db, keys)
    clock: IReactorTime = reactor
    flow_settings = FlowSettings(
        idle_timeout=settings.idle_timeout,
        flow_deadline=settings.flow_deadline,
        backend_timeout=settings.backend_timeout,
        session_ttl=settings.session_ttl,
    )
    core = FileCoreModule(core_keys)
    context = FlowContext(ledger=ledger, pki=pki, core=core, clock=clock, settings=flow_settings)
    flows = DDServerFactory(registry, context, settings.max_connections)
    flows.noisy = False

    root = Root()
    root.putChild(b"health", Health(ledger, clock, settings.backend_timeout))
    orderapi.install(root, OrderAPI(ledger, clock, settings.backend_timeout,
                                    settings.timestamp_window))
    store = SQLConsignments(db, keys.sealer())
    issuer = VoucherIssuer(db, keys.storage_key)
    fence = NotifyFence(reactor, parse_networks(settings.notify_allow), settings.notify_timeout)
    notifier = Notifier(store, clock, settings.notify_timeout, list(settings.notify_retries),
                        reactor=reactor, store_timeout=settings.backend_timeout, fence=fence)
    processor = Processor(store, issuer, clock, notifier.wake, settings.backend_timeout)
    consignapi.install(root, ConsignmentAPI(store, ledger, processor, clock,
                                            settings.backend_timeout, settings.timestamp_window,
                                            fence))
    site = MeteredSite(root, timeout=60, requestFactory=limited_request(settings.http_max_body))
    # (Site's protocol is typed as a method; a channel class is what it takes)
    site.protocol = deadline_channel(  # type: ignore[method-assign,assignment]
        settings.http_request_timeout)
    site.displayTracebacks = False
    site.noisy = False

    gauges = MoneyGauges(ledger, store, clock, settings.backend_timeout)
    service = RechargeService(settings, db, ledger, flows, notifier, processor)
    service.lock = lock  # held as long as the process lives
    gauges.setServiceParent(service)
    backlog = settings.backlog
    ensure_descriptors(settings)
    ListenerService("flows", settings.flows,
                    ConnectionBudget(flows, settings.max_connections, "flows"), reactor,
                    backlog).setServiceParent(service)
    ListenerService("http", settings.http,
                    ConnectionBudget(site, settings.http_max_connections, "http"), reactor,
                    backlog).setServiceParent(service)
    if settings.admin:
        token = admin_token(settings.admin_token or data_dir / "admin-token")
        console = Console(ConsoleBackends(ledger, pki, store, clock, settings.backend_timeout,
                                          gauges.load_rate), AdminAuth(token, clock))
        admin_site = Site(console, timeout=60, requestFactory=limited_request(64 * 1024))
        admin_site.protocol = deadline_channel(  # type: ignore[method-assign,assignment]
            settings.http_request_timeout)
        admin_site.displayTracebacks = False
        admin_site.noisy = False
        ListenerService("admin", settings.admin, admin_site, reactor, backlog
                        ).setServiceParent(service)
    return service


#: descriptors beyond the connection limits: the ledger, log files, the admin endpoint's
#: connections, the notifier's outbound requests, listening ports
DESCRIPTOR_MARGIN = 256


def ensure_descriptors(settings: Settings) -> None:
    """
    Raise the soft RLIMIT_NOFILE to what the connection limits need (up to the hard limit; the
    systemd unit sets LimitNOFILE with room), or say at start that the limits cannot all be
    held: running out of descriptors would refuse everyone, the operator included.
    """
    import resource

    needed = settings.max_connections + settings.http_max_connections + DESCRIPTOR_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn("descriptor limit {soft} could not be raised: {error}", soft=soft,
                     error=str(e))
        else:
            soft = target
            log.info("descriptor limit raised to {soft}", soft=soft)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warn("descriptor limit {soft} is below the {needed} that --max-connections and "
                 "--http-max-connections need (raise LimitNOFILE / ulimit -n, or lower them)",
                 soft=soft, needed=needed)


def admin_token(path: Path) -> str:
    """The console's token: read from C{path}, or made there (0600) at the first start."""
    if path.exists():
        token = path.read_text().strip()
        if len(token) < 16:
            raise KeyFileError(f"admin token file {path} holds no token of 16 characters or "
                               "more")
        return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created the admin token file {path}", path=path)
    return token
