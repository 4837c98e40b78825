"""POS clients of gatewayd: the real GatewayClient over the unix socket, retrying as a POS should.

One idempotency key per checkout, and only that key, whatever happens: a connection error, a 5xx,
a 503 that says nothing was charged and a client timeout are retried with the same key and the
same body; a 504 outcome_pending is polled by key until the checkout is final. Every answer is
recorded, so the final check can compare what the cashier was told with what the database and
the terminal's ledger say.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gatewayd.api.client import Answer, GatewayClient
from tests.chaos.workload import ClientPool, Spec, checkouts

CHECKOUT_DEADLINE_S = 40.0  # a cashier gives up on one checkout after this long
CLIENT_TIMEOUT_S = 15.0  # the HTTP timeout (the daemon answers 504 after checkout_wait_s = 8)
FINAL = frozenset({"completed", "payment_failed", "cancelled", "voided", "refunded", "partially_refunded"})


@dataclass
class CheckoutRecord:
    """What one POS checkout went through."""

    spec: Spec
    key: str
    body: dict[str, Any]
    started: float
    answers: list[str] = field(default_factory=list)  # "200", "503:database_unavailable", "conn", ...
    told: str | None = None  # final status the cashier was told: completed | payment_failed | rejected:<code>
    gave_up: bool = False
    finished: float | None = None
    problems: list[str] = field(default_factory=list)


def _status_of(answer: Answer) -> str | None:
    body = answer.body
    if isinstance(body, dict) and isinstance(body.get("status"), str):
        return str(body["status"])
    return None


class GatewayClients(ClientPool):
    """`n` POS clients (registers) checking out through gatewayd until told to stop."""

    def __init__(self, socket_path: str, seed: int, n: int, lanes: int, terminal_ids: list[str]) -> None:
        super().__init__(n)
        self.socket_path = socket_path
        self.seed = seed
        self.lanes = lanes
        self.terminal_ids = terminal_ids
        self.records: list[CheckoutRecord] = []

    async def _client(self, index: int) -> None:
        rng = random.Random(f"chaos:{self.seed}:gw-retry:{index}")
        stream = checkouts(self.seed, index, self.lanes)
        async with GatewayClient(self.socket_path, timeout_s=CLIENT_TIMEOUT_S) as client:
            while not self.stop_new.is_set():
                spec = next(stream)
                record = CheckoutRecord(
                    spec, spec.key(self.seed), spec.body(self.seed, self.terminal_ids), time.monotonic()
                )
                self.records.append(record)
                await self._checkout(client, record, rng)
                record.finished = time.monotonic()
                await asyncio.sleep(rng.uniform(0.05, 0.3))  # the next customer steps up

    async def _checkout(self, client: GatewayClient, record: CheckoutRecord, rng: random.Random) -> None:
        deadline = record.started + CHECKOUT_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                answer = await client.checkout(record.body)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                record.answers.append(f"conn:{type(exc).__name__}")
                await asyncio.sleep(rng.uniform(0.2, 0.8))
                continue
            code = answer.error_code
            record.answers.append(f"{answer.status}" + (f":{code}" if code else ""))
            status = _status_of(answer)
            if answer.status == 200:
                record.told = status or "?"
                if status != "completed":
                    record.problems.append(f"200 with status {status}")
                return
            if answer.status == 402 or (answer.status == 503 and status in FINAL):
                record.told = status or "?"
                return
            if answer.status == 504:
                if await self._poll(client, record, deadline, rng):
                    return
                continue
            if answer.status in (503, 500):
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                continue
            if answer.status == 422:  # insufficient inventory / unknown terminal: nothing stored
                record.told = f"rejected:{code}"
                return
            if answer.status == 409:
                record.problems.append(f"I6: same key and body refused: {answer.body}")
                record.told = f"rejected:{code}"
                return
            record.problems.append(f"unexpected answer {answer.status}: {answer.body}")
            record.told = f"rejected:{code}"
            return
        record.gave_up = True

    async def _poll(self, client: GatewayClient, record: CheckoutRecord, deadline: float, rng: random.Random) -> bool:
        """After a 504: ask by key until the checkout is final. False: POST again (or deadline)."""
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.3, 0.7))
            try:
                answer = await client.find_checkout(record.key)
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            status = _status_of(answer)
            if answer.status == 200 and status in FINAL:
                record.answers.append(f"poll:{status}")
                record.told = status
                return True
            if answer.status == 404:
                return False
        return False
