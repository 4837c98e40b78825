"""The flow the deployment guide replaced, modelled minimally, to run side by side with gatewayd.

The POS charges the card itself (SPIn Sale straight to the terminal, through the same terminal
proxy), and only then saves the order in a separate step (one plain INSERT into a table of its
own, `oldflow_orders`, in the same PostgreSQL, through the same DB proxy). No intent journal, no
inquiry, no void, no recovery, no terminal health check:

- an answer with ResultCode "0" counts as approved (the usual check, so a partial approval 0001
  is taken for the whole amount);
- a decline (1015) or a customer cancel (1012) ends the checkout;
- anything else (a timeout, a lost answer, a reset, 2001 offline, 2007, 2008 busy) counts as
  failed, and the cashier rings the checkout up again with a NEW reference id (at most
  `MAX_ATTEMPTS` tries); the same when the INSERT fails;
- process faults map onto the POS app: the daemon's kill -9 crashes the app (every attempt in
  flight is abandoned where it stands, the cashier starts over), SIGSTOP freezes it.

Its own terminals (Tpns) on the same simulator keep its ledger rows apart from gatewayd's.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import msgspec

from gatewayd.terminals.spin.requests import Credentials, sale_body
from tests.chaos.workload import ClientPool, Spec, checkouts

MAX_ATTEMPTS = 2
SALE_TIMEOUT_S = 2  # SPInProxyTimeout, as gatewayd's terminals
HTTP_TIMEOUT_S = 3.0  # the POS's HTTP timeout (timeout + 1 s, as gatewayd's)
DB_TIMEOUT_S = 3.0
CHECKOUT_DEADLINE_S = 40.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS oldflow_orders (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checkout_id   text   NOT NULL,
    attempt       int    NOT NULL,
    reference_ids text[] NOT NULL,
    total         bigint NOT NULL,
    card_amount   bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
)"""


@dataclass
class OldRecord:
    spec: Spec
    key: str
    started: float
    attempts: list[str] = field(default_factory=list)  # per attempt: approved+saved | declined | error:... | crashed
    told: str | None = None  # completed | declined | failed


class OldFlow(ClientPool):
    """`n` old-style POS clients on their own terminals."""

    def __init__(
        self, seed: int, n: int, lanes: int, terminal_url: str, tpns: list[str], authkeys: list[str], dsn: str
    ) -> None:
        super().__init__(n)
        self.seed = seed
        self.lanes = lanes
        self.terminal_url = terminal_url.rstrip("/")
        self.creds = [Credentials(tpn=t, authkey=k) for t, k in zip(tpns, authkeys, strict=True)]
        self.dsn = dsn
        self.records: list[OldRecord] = []
        self.refs: dict[str, tuple[str, int, int]] = {}  # reference id -> (checkout, tender index, attempt)
        self.running = asyncio.Event()  # cleared while the app is frozen
        self.running.set()
        self.crashes = 0
        self._inflight: set[asyncio.Task[str]] = set()

    @staticmethod
    async def create_schema(conn: asyncpg.Connection) -> None:
        await conn.execute(SCHEMA)

    # ------------------------------------------------------------------ nemesis hooks

    def crash(self) -> int:
        """The POS app dies: every attempt in flight is abandoned where it stands."""
        self.crashes += 1
        victims = [t for t in self._inflight if not t.done()]
        for task in victims:
            task.cancel()
        return len(victims)

    def freeze(self) -> None:
        self.running.clear()

    def thaw(self) -> None:
        self.running.set()

    # ------------------------------------------------------------------ clients

    async def finish(self, timeout_s: float) -> bool:
        self.thaw()
        return await super().finish(timeout_s)

    async def _client(self, index: int) -> None:
        rng = random.Random(f"chaos:{self.seed}:old-retry:{index}")
        stream = checkouts(self.seed, index, self.lanes)
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self.stop_new.is_set():
                spec = next(stream)
                record = OldRecord(spec, f"old-{self.seed}-{spec.client}-{spec.seq}", time.monotonic())
                self.records.append(record)
                await self._checkout(session, record, rng)
                await asyncio.sleep(rng.uniform(0.05, 0.3))

    async def _checkout(self, session: aiohttp.ClientSession, record: OldRecord, rng: random.Random) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if time.monotonic() > record.started + CHECKOUT_DEADLINE_S:
                break
            task = asyncio.ensure_future(self._attempt(session, record, attempt))
            self._inflight.add(task)
            try:
                await asyncio.wait({task})
            finally:
                self._inflight.discard(task)
            result = "crashed" if task.cancelled() else task.result()
            record.attempts.append(result)
            if result == "completed":
                record.told = "completed"
                return
            if result == "declined":
                record.told = "declined"
                return
            await asyncio.sleep(rng.uniform(0.3, 1.0))  # the cashier rings it up again
        record.told = "failed"

    async def _attempt(self, session: aiohttp.ClientSession, record: OldRecord, attempt: int) -> str:
        refs: list[str] = []
        for index, tender in enumerate(record.spec.tenders):
            if tender.type != "card":
                continue
            await self.running.wait()
            ref = "OLD" + uuid.uuid4().hex[:17].upper()
            self.refs[ref] = (record.key, index, attempt)
            result = await self._sale(session, self.creds[tender.lane - 1], ref, tender.amount)
            if result != "approved":
                return result
            refs.append(ref)
        await self.running.wait()
        return "completed" if await self._save(record, attempt, refs) else "error:save"

    async def _sale(self, session: aiohttp.ClientSession, cred: Credentials, ref: str, amount: int) -> str:
        body = sale_body(cred, ref, amount, SALE_TIMEOUT_S)
        try:
            async with session.post(
                f"{self.terminal_url}/v2/Payment/Sale", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                answer: Any = msgspec.json.decode(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError) as exc:
            return f"error:{type(exc).__name__}"
        general = answer.get("GeneralResponse") if isinstance(answer, dict) else None
        if not isinstance(general, dict):
            return "error:garbled"
        if str(general.get("ResultCode")) == "0":
            return "approved"
        if str(general.get("StatusCode")) in ("1015", "1012"):
            return "declined"
        return f"error:{general.get('StatusCode')}"

    async def _save(self, record: OldRecord, attempt: int, refs: list[str]) -> bool:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(self.dsn, timeout=DB_TIMEOUT_S)
            await conn.execute(
                "INSERT INTO oldflow_orders (checkout_id, attempt, reference_ids, total, card_amount)"
                " VALUES ($1, $2, $3, $4, $5)",
                record.key,
                attempt,
                refs,
                record.spec.total,
                record.spec.card_amount,
                timeout=DB_TIMEOUT_S,
            )
            return True
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        finally:
            if conn is not None:
                conn.terminate()

    # ------------------------------------------------------------------ the verdict

    def summarize(self, ledger: list[dict[str, Any]], saved: list[dict[str, Any]]) -> dict[str, Any]:
        """Counts from the terminal's ledger and the saved orders (not from what the POS believed)."""
        tpns = {c.tpn for c in self.creds}
        charges = [t for t in ledger if t["tpn"] in tpns and t["type"] == "sale" and t["status"] == "approved"]
        charge_by_ref = {c["reference_id"]: c for c in charges}
        saved_refs = {r for row in saved for r in row["reference_ids"]}
        orders_per_checkout = Counter(row["checkout_id"] for row in saved)
        per_tender: dict[tuple[str, int], int] = defaultdict(int)
        for c in charges:
            key, index, _ = self.refs.get(c["reference_id"], ("?", -1, 0))
            per_tender[(key, index)] += 1
        double_checkouts = {key for (key, _), n in per_tender.items() if n > 1}
        lost = 0
        specs = {r.key: r.spec for r in self.records}
        for row in saved:
            spec = specs.get(row["checkout_id"])
            card_tenders = [t for t in spec.tenders if t.type == "card"] if spec else []
            charged_ok = all(
                ref in charge_by_ref and charge_by_ref[ref]["amount"] == t.amount
                for ref, t in zip(row["reference_ids"], card_tenders, strict=False)
            )
            if not charged_ok or len(row["reference_ids"]) != len(card_tenders):
                lost += 1
        attempted = len(self.records)
        completed = sum(1 for r in self.records if orders_per_checkout.get(r.key))
        return {
            "attempted": attempted,
            "completed": completed,
            "charges": len(charges),
            "charged_amount": sum(c["amount"] for c in charges),
            "orphaned": sum(1 for c in charges if c["reference_id"] not in saved_refs),
            "orphaned_amount": sum(c["amount"] for c in charges if c["reference_id"] not in saved_refs),
            "double": len(double_checkouts),
            "lost": lost,
            "duplicate_orders": sum(1 for n in orders_per_checkout.values() if n > 1),
            "declined": sum(1 for r in self.records if r.told == "declined"),
            "failure_rate": (attempted - completed) / attempted if attempted else 0.0,
            "crashes": self.crashes,
        }
