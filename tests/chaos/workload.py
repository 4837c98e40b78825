"""The POS workload: a seeded stream of checkouts per client, the same for both flows.

Client `i` of seed `s` always produces the same sequence of checkouts (kind, amounts, lanes,
SKU, customer), whichever flow runs it, so the two rows of the table see the same shopping.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The simulator's magic cents the run exercises (see gatewayd/terminals/simulator/app.py):
# 51 declined, 52/53/58 approved but the answer lost, 54 busy once, 56 partial approval, 59 cancelled.
MAGIC_CENTS = (51, 52, 53, 54, 56, 58, 59)
PLAIN_CENTS = tuple(c for c in range(100) if not 50 <= c <= 59)
MAGIC_P = 0.25
KINDS = (("card", 0.45), ("split", 0.2), ("card2", 0.15), ("cash", 0.2))
SKUS = ("COFFEE-1KG", "MUG", "SERVICE", "SERVICE")
STOCK = {"COFFEE-1KG": 1_000_000, "MUG": 1_000_000, "LAST-ONE": 1}


@dataclass(frozen=True)
class TenderSpec:
    type: str  # cash | card
    amount: int
    lane: int = 0  # 1-based lane number for a card tender


@dataclass(frozen=True)
class Spec:
    """One checkout as the cashier rings it up."""

    client: int
    seq: int
    kind: str
    sku: str
    tenders: tuple[TenderSpec, ...]
    customer_id: str | None

    @property
    def total(self) -> int:
        return sum(t.amount for t in self.tenders)

    @property
    def card_amount(self) -> int:
        return sum(t.amount for t in self.tenders if t.type == "card")

    @property
    def magic(self) -> tuple[int, ...]:
        return tuple(t.amount % 100 for t in self.tenders if t.type == "card" and t.amount % 100 in MAGIC_CENTS)

    def key(self, seed: int) -> str:
        return f"chaos-{seed}-{self.client}-{self.seq}"

    def body(self, seed: int, terminal_ids: list[str]) -> dict[str, Any]:
        """The gatewayd checkout request."""
        tenders: list[dict[str, Any]] = []
        for t in self.tenders:
            if t.type == "cash":
                tenders.append({"type": "cash", "amount": t.amount, "tendered": t.amount + 500})
            else:
                tenders.append({"type": "card", "amount": t.amount, "terminal_id": terminal_ids[t.lane - 1]})
        body: dict[str, Any] = {
            "idempotency_key": self.key(seed),
            "register_id": f"reg-{self.client}",
            "lines": [{"sku": self.sku, "quantity": 1, "unit_price": self.total}],
            "tenders": tenders,
        }
        if self.customer_id:
            body["customer_id"] = self.customer_id
        return body


def _card_amount(rng: random.Random) -> int:
    dollars = rng.randint(1, 60)
    cents = rng.choice(MAGIC_CENTS) if rng.random() < MAGIC_P else rng.choice(PLAIN_CENTS)
    return dollars * 100 + cents


def checkouts(seed: int, client: int, lanes: int) -> Iterator[Spec]:
    """The endless, seeded checkout stream of one client (its home lane: client % lanes)."""
    rng = random.Random(f"chaos:{seed}:client:{client}")
    home = client % lanes + 1
    seq = 0
    while True:
        seq += 1
        roll, kind = rng.random(), "cash"
        acc = 0.0
        for name, p in KINDS:
            acc += p
            if roll < acc:
                kind = name
                break
        if kind == "cash":
            tenders: tuple[TenderSpec, ...] = (TenderSpec("cash", rng.randint(1, 40) * 100 + rng.choice(PLAIN_CENTS)),)
        elif kind == "card":
            tenders = (TenderSpec("card", _card_amount(rng), home),)
        elif kind == "split":
            tenders = (TenderSpec("cash", rng.randint(1, 20) * 100), TenderSpec("card", _card_amount(rng), home))
        else:
            other = home % lanes + 1
            tenders = (TenderSpec("card", _card_amount(rng), home), TenderSpec("card", _card_amount(rng), other))
        sku = "LAST-ONE" if rng.random() < 0.01 else rng.choice(SKUS)
        customer = f"cust-{rng.randint(1, 20)}" if rng.random() < 0.5 else None
        yield Spec(client=client, seq=seq, kind=kind, sku=sku, tenders=tenders, customer_id=customer)


class ClientPool:
    """`n` POS clients run as tasks until told to stop; subclasses give `_client(index)`."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stop_new = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self, index: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._client(i)) for i in range(self.n)]

    async def finish(self, timeout_s: float) -> bool:
        """Stop taking new checkouts; wait for the in-flight ones (bounded). True if all ended."""
        self.stop_new.set()
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return not pending
