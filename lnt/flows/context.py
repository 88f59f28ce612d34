"""
What a flow is and what it is given: L{IFlow} (the plugin contract: a first header and a
protocol factory), L{FlowSettings} (the limits every flow obeys) and L{FlowContext} (the
backends, through their interfaces only, and a clock). A third-party flow needs this module and
L{lnt.flows.base}; nothing else of the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.interfaces import IProtocol, IReactorTime
from zope.interface import Attribute, Interface

from lnt.interfaces import IPKI, ICoreModule, ILedger


class IFlow(Interface):
    """
    A DD flow, found by Twisted plugin discovery (C{twisted.plugin.getPlugins(IFlow)}).

    The listening protocol reads a connection's first frame, looks its header up among the
    flows' C{first_header}s and hands the connection, with the bytes already read, to the
    protocol that C{buildProtocol} returns. Two flows claiming one header stop the daemon at
    start with an error naming both.
    """

    name: str = Attribute("Short name for logs and --help, e.g. C{'sign-in'}.")
    first_header: int = Attribute("Header of the flow's first request stage, e.g. C{0xDD01}.")
    description: str = Attribute("One line saying what the flow does.")

    def buildProtocol(context: FlowContext) -> IProtocol:
        """
        A new protocol for one connection. It receives C{makeConnection} and then every byte
        of the connection, starting with its first frame.
        """


@dataclass(frozen=True)
class FlowSettings:
    """The limits every flow obeys; the daemon's options set them."""

    #: seconds without a complete frame before the connection is closed
    idle_timeout: float = 30.0
    #: seconds a whole flow may take, first frame to last answer
    flow_deadline: float = 120.0
    #: seconds a backend call may take before the flow answers DD (system busy)
    backend_timeout: float = 10.0
    #: lifetime of a sign-in session, seconds
    session_ttl: float = 24 * 3600.0


@dataclass
class FlowContext:
    """What a flow may use: the backends (through their interfaces only) and a clock."""

    ledger: ILedger
    pki: IPKI
    core: ICoreModule
    clock: IReactorTime
    settings: FlowSettings = field(default_factory=FlowSettings)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)
