"""
The daemon's metrics, in Prometheus' text format on the admin endpoint's C{/metrics}
(docs/operating.rst lists them with the alerts built on them). One registry of its own, not
prometheus_client's global one, so that tests and a second daemon in one process (they do not
happen in production) do not share counters by accident; the process collector adds CPU,
memory and descriptors.

Counters and histograms are updated where things happen (flows, ledger calls, HTTP requests,
the notifier); the money gauges (loads in doubt, payments awaiting their load, the outbox) are
set by a periodic job of the daemon from the ledger, because a scrape must never wait on it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

#: seconds: a stage is milliseconds, a ledger call may queue behind a batch's fsync
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

FLOWS = Counter("lnt_flows", "Terminal flows ended, by flow and the info code answered "
                "(00 success; the protocol's table for the others)", ["flow", "code"],
                registry=REGISTRY)
FLOW_SECONDS = Histogram("lnt_flow_seconds", "A terminal flow from its first frame to its "
                         "end", ["flow"], buckets=(*_FAST[3:], 30.0, 120.0), registry=REGISTRY)
STAGE_SECONDS = Histogram("lnt_flow_stage_seconds", "The platform's part of one stage: from a "
                          "terminal's frame to the platform's answer", ["flow", "stage"],
                          buckets=_FAST, registry=REGISTRY)
LEDGER_SECONDS = Histogram("lnt_ledger_transaction_seconds", "A ledger transaction from its "
                           "call to its answer (queue, run, commit)", ["name"], buckets=_FAST,
                           registry=REGISTRY)
LEDGER_BUSY = Counter("lnt_ledger_busy", "Ledger transactions that lost every race with "
                      "concurrent ones (answered busy)", ["name"], registry=REGISTRY)
BACKEND_TIMEOUTS = Counter("lnt_backend_timeouts", "Backend calls that did not answer in "
                           "time (answered busy, or a background job's turn skipped)", ["what"],
                           registry=REGISTRY)
HTTP_REQUESTS = Counter("lnt_http_requests", "HTTP requests answered, by endpoint and status",
                        ["endpoint", "status"], registry=REGISTRY)
NOTIFICATIONS = Counter("lnt_notifications", "Merchant notification attempts, by result "
                        "(delivered, failed: another attempt follows, given_up)", ["result"],
                        registry=REGISTRY)
UNKNOWN_SIGNINS = Counter("lnt_signin_refusals_unknown_card", "Sign-ins refused because the "
                          "PKI card is unknown (counted, not stored)", registry=REGISTRY)
OPEN_CONNECTIONS = Gauge("lnt_open_connections", "Connections open now", ["listener"],
                         registry=REGISTRY)

LOADS_IN_DOUBT = Gauge("lnt_loads_in_doubt", "Loads the cards have not proven yet (money in "
                       "doubt: resolved by a read-back or an operator)", registry=REGISTRY)
LOADS_IN_DOUBT_FEN = Gauge("lnt_loads_in_doubt_fen", "The amount of the loads in doubt, fen",
                           registry=REGISTRY)
PAYMENTS_AWAITING = Gauge("lnt_payments_awaiting_load", "Payments taken whose load has not "
                          "happened (no order, or an order unloaded for a day)",
                          registry=REGISTRY)
PAYMENTS_AWAITING_FEN = Gauge("lnt_payments_awaiting_load_fen", "The amount of those "
                              "payments, fen", registry=REGISTRY)
OLDEST_AT_RISK = Gauge("lnt_money_at_risk_oldest_seconds", "Age of the oldest item of money "
                       "at risk (0: none)", registry=REGISTRY)
OUTBOX_PENDING = Gauge("lnt_outbox_pending", "Merchant notifications not delivered yet",
                       registry=REGISTRY)
OUTBOX_OLDEST = Gauge("lnt_outbox_oldest_seconds", "Age of the oldest pending notification",
                      registry=REGISTRY)
OUTBOX_FAILED = Gauge("lnt_outbox_failed", "Notifications given up (an operator may retry "
                      "them)", registry=REGISTRY)
MONEY_REFRESHED = Gauge("lnt_money_gauges_refreshed_timestamp_seconds", "When the money "
                        "gauges were last read from the ledger (stale: the ledger is not "
                        "answering)", registry=REGISTRY)
