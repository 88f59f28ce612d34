"""
What an operator sees of the ledger's records, the same in C{lnt-admin --json} and in the web
console: plain dicts of strings and numbers, times in China time, card numbers masked (an
operator needs to tell cards apart, never to read one whole).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lnt.domain.masking import mask_card
from lnt.domain.records import CHINA, Consignment, Load, Order


def china_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, CHINA).strftime("%Y-%m-%d %H:%M:%S")


def order_view(order: Order, load: Load | None) -> dict[str, Any]:
    """An order with its load."""
    return {
        "order": order.order_no, "state": order.state.value, "amount": order.amount,
        "card": mask_card(order.logical_no), "card_kind": order.card_kind.value,
        "terminal": order.pki_no, "payment": f"{order.platform_no}:{order.biz_serial_no}",
        "created": china_time(order.created_ms), "updated": china_time(order.updated_ms),
        "load": None if load is None else {
            "state": load.state.value, "old_balance": load.old_balance,
            "new_balance": load.new_balance, "terminal": load.pki_no,
            "created": china_time(load.created_ms)},
    }


def payment_view(r: dict[str, Any]) -> dict[str, Any]:
    """A row of L{lnt.storage.ledger.SQLLedger.search_payments}."""
    return {"payment": f"{r['platform_no']}:{r['biz_serial_no']}", "money": r["money"],
            "terminal": r["pki_no"], "created": china_time(int(str(r["created_ms"]))),
            "order": r["order_no"], "order_state": r["order_state"],
            "refusal": r["refusal"] or None,
            "refunded": None if r["refunded_ms"] is None else
            china_time(int(str(r["refunded_ms"])))}


def consignment_view(c: Consignment) -> dict[str, Any]:
    """A merchant's consignment (the voucher's number is stored masked already)."""
    return {"system_order": c.system_order_id, "merchant": c.customer_id,
            "order_id": c.order_id, "batch": c.batchno, "product": c.product_code,
            "amount": c.amount, "state": c.state.value, "message": c.message,
            "voucher": c.card_masked, "success_amount": c.success_amount,
            "actual_amount": c.actual_amount, "created": china_time(c.created_ms),
            "notify_url": c.notify_url}


def notification_view(n: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A row of L{lnt.storage.consignments.SQLConsignments.search_notifications}."""
    pending = n["state"] == "pending"
    return {"id": n["id"], "reference": n["reference"], "url": n["url"], "state": n["state"],
            "attempts": n["attempts"], "created": china_time(int(n["created_ms"])),
            "next": china_time(int(n["next_ms"])) if pending else None,
            "age": age(now_ms - int(n["created_ms"])), "last_outcome": n["last_outcome"]}


def age(ms: int) -> str:
    """A duration as an operator reads it: 4m05s, 3h12m, 2d04h."""
    seconds = max(0, ms // 1000)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"
