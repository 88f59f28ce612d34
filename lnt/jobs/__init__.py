"""
Background work of the daemon: the consignment processor and the notifier.
"""
