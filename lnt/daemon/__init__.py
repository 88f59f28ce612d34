"""
The daemon's wiring: options, the service tree, systemd, logs, demo data.
"""
