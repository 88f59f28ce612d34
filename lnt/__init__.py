"""
lnt-recharge: the recharge platform for Lingnan Tong stored-value transit cards.

The package is split the way the system is: L{lnt.wire} is the DD frame, L{lnt.interfaces}
the contracts between the parts, L{lnt.flows} the terminal protocols, L{lnt.backends} the
PKI / core module / ledger implementations, L{lnt.web} the HTTP APIs, L{lnt.sim} the
terminal side, and L{lnt.daemon.service} wires them into one twistd service.
"""

__version__ = "0.1.0"
