"""
The domain layer: rules about money, states and limits that hold no I/O (no database, no
socket, no clock of their own). Everything above it (flows, web APIs, storage, admin) asks
these modules instead of deciding for itself.
"""
