"""
The terminal side, as a working terminal: a reader with its PKI card (and, with the recharge
flow, virtual cards), a terminal client that runs flows over TCP, and the C{lnt-terminal} CLI.
"""
