"""Checks the decoder cannot make: the request must add up, within the store's limits."""

from __future__ import annotations

import hashlib

import msgspec

from gatewayd.checkout.errors import InvalidRequest
from gatewayd.checkout.model import CardTender, CashTender, CheckoutRequest
from gatewayd.config import CheckoutConfig


def request_hash(request: CheckoutRequest) -> str:
    """A stable hash of the request: the same body always hashes the same."""
    return hashlib.sha256(msgspec.json.encode(request)).hexdigest()


def validate(request: CheckoutRequest, policy: CheckoutConfig) -> None:
    """Raise InvalidRequest naming the first field that does not add up."""
    if request.currency is not None and request.currency != policy.currency:
        raise InvalidRequest(
            "currency", f"this store takes {policy.currency}, not {request.currency}: send amounts in {policy.currency}"
        )
    if len(request.lines) > policy.max_lines:
        raise InvalidRequest("lines", f"at most {policy.max_lines} lines")
    if len(request.tenders) > policy.max_tenders:
        raise InvalidRequest("tenders", f"at most {policy.max_tenders} tenders")
    for i, line in enumerate(request.lines):
        if line.unit_price > policy.max_amount:
            raise InvalidRequest(f"lines[{i}].unit_price", f"over the maximum amount {policy.max_amount}")
    for name in ("tax", "discount"):
        if getattr(request, name) > policy.max_amount:
            raise InvalidRequest(name, f"over the maximum amount {policy.max_amount}")
    total = request.total
    if total < 0:
        raise InvalidRequest("discount", "larger than the subtotal plus tax")
    if total > policy.max_amount:
        raise InvalidRequest("lines", f"total {total} is over the maximum amount {policy.max_amount}")
    cash = 0
    for i, tender in enumerate(request.tenders):
        if tender.amount > policy.max_amount:
            raise InvalidRequest(f"tenders[{i}].amount", f"over the maximum amount {policy.max_amount}")
        if isinstance(tender, CashTender):
            cash += 1
            if tender.tendered is not None and tender.tendered < tender.amount:
                raise InvalidRequest(f"tenders[{i}].tendered", "less than the amount")
        elif isinstance(tender, CardTender) and tender.amount == 0:
            raise InvalidRequest(f"tenders[{i}].amount", "a card tender must be more than zero")
    if cash > 1:
        raise InvalidRequest("tenders", "at most one cash tender")
    paid = sum(t.amount for t in request.tenders)
    if paid != total:
        raise InvalidRequest("tenders", f"tender amounts add up to {paid}, the total is {total}")


def change_due(request: CheckoutRequest) -> int:
    """Cash handed back: tendered minus amount of the cash tender."""
    return sum((t.tendered - t.amount) for t in request.tenders if isinstance(t, CashTender) and t.tendered is not None)
