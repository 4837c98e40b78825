"""Checkout bodies for the load: cash, card and split, amounts that avoid the simulator's magic cents."""

from __future__ import annotations

import random
import uuid
from typing import Any

from bench.env import encode

MIX = (("card", 0.4), ("cash", 0.3), ("split", 0.3))


def amount(rng: random.Random) -> int:
    """1.00 .. 99.50 with cents 00..50 (51..59 are the simulator's failure cents)."""
    return rng.randint(1, 99) * 100 + rng.randint(0, 50)


def body(kind: str, terminal: str, sku: str, rng: random.Random) -> bytes:
    if kind == "cash":
        tenders: list[dict[str, Any]] = [{"type": "cash", "amount": amount(rng)}]
    elif kind == "card":
        tenders = [{"type": "card", "amount": amount(rng), "terminal_id": terminal}]
    else:
        tenders = [
            {"type": "cash", "amount": amount(rng)},
            {"type": "card", "amount": amount(rng), "terminal_id": terminal},
        ]
    total = sum(t["amount"] for t in tenders)
    return encode(
        {
            "idempotency_key": uuid.uuid4().hex,
            "lines": [{"sku": sku, "quantity": 1, "unit_price": total}],
            "tenders": tenders,
        }
    )


def pick(rng: random.Random) -> str:
    x = rng.random()
    for kind, share in MIX:
        if x < share:
            return kind
        x -= share
    return MIX[-1][0]
