"""The C{twistd lnt-recharge} command (kept tiny: plugin discovery imports this file)."""

from twisted.application.service import ServiceMaker

lnt_recharge = ServiceMaker(
    "lnt-recharge",
    "lnt.daemon.service",
    "Lingnan Tong recharge platform: terminal flows (DD frames) and HTTP APIs",
    "lnt-recharge",
)
