"""The nemesis: a seeded schedule of faults, executed against the real stack.

The schedule (what, when, for how long, on which lane) is a pure function of the seed and the
window, so a failing seed replays the same faults; the interleaving with the processes does
not replay exactly (real time, real processes). The first events cover every kind and every
proxy mode once, in a seeded order; after that kinds are drawn at random. Events on different
resources overlap; two events on one resource never do.

Besides faults, the nemesis plays the people and machines around gatewayd (its lanes only; the
old flow's terminals are left alone): the operator settling a lane through the API (`settle`),
the terminal settling its batch on its own (`auto_settle`), a clerk voiding a charge on the
keypad (`keypad_void`), the operator editing the config and sending SIGHUP (`reload`), and a
terminal re-keyed behind gatewayd's back (`wrong_authkey`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from gatewayd.api.client import GatewayClient
from tests.chaos.oldflow import OldFlow
from tests.chaos.proxy import FaultProxy
from tests.chaos.stack import DAEMON_APP, OLDFLOW_APP, DaemonSupervisor, Postgres
from tests.invariants import COMPLETED

log = logging.getLogger("chaos.nemesis")

PROXY_MODES = ("blackhole", "reset", "latency", "drop_answer")
KINDS = (
    "kill9",
    "pg_terminate",
    "pg_restart",
    "terminal_offline",
    "sigstop",
    "db_fault",
    "terminal_fault",
    "settle",
    "auto_settle",
    "keypad_void",
    "reload",
    "wrong_authkey",
)
RESOURCE = {
    "kill9": "daemon",
    "sigstop": "daemon",
    "pg_terminate": "pg",
    "pg_restart": "pg",
    "terminal_offline": "terminals",
    "db_fault": "db_proxy",
    "terminal_fault": "terminal_proxy",
    # A keypad void is watched until its order is final (and reconciled if it completed): no
    # settlement may close that batch meanwhile, so the three share one resource.
    "settle": "batch",
    "auto_settle": "batch",
    "keypad_void": "batch",
    "reload": "config",
    "wrong_authkey": "authkeys",
}
# Relative frequency once every kind has fired.
WEIGHTS = {
    "kill9": 3,
    "pg_terminate": 2,
    "pg_restart": 2,
    "terminal_offline": 2,
    "sigstop": 2,
    "db_fault": 3,
    "terminal_fault": 4,
    "settle": 1,
    "auto_settle": 1,
    "keypad_void": 2,
    "reload": 1,
    "wrong_authkey": 1,
}
OPEN_ORDERS = ("pending_payment", "payment_processing", "payment_authorized")
# How long an event holds its resource beyond its duration (a restart, an API call, a reconcile).
EXTRA_BUSY_S = {"kill9": 2.0, "pg_restart": 4.0, "settle": 2.0, "keypad_void": 1.0, "reload": 1.0}


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the chaos window opened
    kind: str
    duration: float  # how long the fault lasts (kill9 / pg_restart: how long it stays down)
    mode: str = ""  # proxy mode for db_fault / terminal_fault
    latency_s: float = 0.0
    lanes: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.mode}" if self.mode else self.kind

    @property
    def busy_s(self) -> float:
        """How long the event occupies its resource (a restart takes a while)."""
        return self.duration + EXTRA_BUSY_S.get(self.kind, 0.0) + 0.3


def _draw(rng: random.Random, kind: str, mode: str, at: float, lanes: int) -> Event:
    if kind == "kill9":
        return Event(at, kind, rng.uniform(0.2, 1.5))
    if kind == "sigstop":
        return Event(at, kind, rng.uniform(1.0, 3.0))
    if kind == "pg_terminate":
        return Event(at, kind, 0.2)
    if kind == "pg_restart":
        return Event(at, kind, rng.uniform(0.5, 2.5))
    if kind == "terminal_offline":
        n = 1 if lanes < 2 or rng.random() < 0.6 else 2
        return Event(at, kind, rng.uniform(1.5, 4.0), lanes=tuple(sorted(rng.sample(range(1, lanes + 1), n))))
    lane = (rng.randint(1, lanes),)
    if kind == "settle":  # duration: how long the operator keeps trying (daemon down, lanes busy)
        return Event(at, kind, rng.uniform(1.0, 2.0), lanes=lane)
    if kind == "auto_settle":
        return Event(at, kind, 0.5, lanes=lane)
    if kind == "keypad_void":  # duration: how long the void's order is watched (its batch kept open)
        return Event(at, kind, rng.uniform(2.0, 4.0), lanes=lane)
    if kind in ("reload", "wrong_authkey"):  # the lane out of the config / on a wrong key this long
        return Event(at, kind, rng.uniform(1.5, 4.0), lanes=lane)
    mode = mode or rng.choice(PROXY_MODES)
    if kind == "db_fault":
        latency = rng.uniform(0.2, 0.8) if mode == "latency" else 0.0
        return Event(at, kind, rng.uniform(1.0, 3.0), mode=mode, latency_s=round(latency, 3))
    latency = rng.uniform(0.3, 1.5) if mode == "latency" else 0.0
    return Event(at, kind, rng.uniform(1.0, 4.0), mode=mode, latency_s=round(latency, 3))


def plan(seed: int, window_s: float, lanes: int) -> list[Event]:
    """The seeded fault schedule for a window of `window_s` seconds."""
    rng = random.Random(f"chaos:{seed}:nemesis")
    cover = [(k, "") for k in KINDS if k not in ("db_fault", "terminal_fault")]
    cover += [("db_fault", m) for m in PROXY_MODES] + [("terminal_fault", m) for m in PROXY_MODES]
    rng.shuffle(cover)
    free: dict[str, float] = {}
    events: list[Event] = []
    t = rng.uniform(0.3, 0.8)
    weighted = [k for k, w in WEIGHTS.items() for _ in range(w)]
    for _ in range(10_000):  # bounded
        covering = bool(cover)
        kind, mode = cover.pop(_next_cover(cover, free, t)) if cover else (rng.choice(weighted), "")
        start = max(t, free.get(RESOURCE[kind], 0.0))
        event = _draw(rng, kind, mode, round(start, 3), lanes)
        if covering:  # shorter faults while every kind gets its first turn, so all fit a short window
            event = replace(event, duration=round(event.duration * 0.6, 3))
        room = window_s - 0.5 - start
        if event.duration > room:
            if covering and room >= 0.3:
                event = replace(event, duration=round(room, 3))
            elif start > window_s - 1.0:
                break
            else:
                continue
        events.append(event)
        free[RESOURCE[kind]] = start + event.busy_s
        t += rng.uniform(0.4, 0.9) if cover else rng.uniform(1.0, 3.0)
    return sorted(events, key=lambda e: e.at)


def _next_cover(cover: list[tuple[str, str]], free: dict[str, float], t: float) -> int:
    """Which covering event goes next: of those whose resource is free at `t`, the one whose
    resource has the most covering events left (the longest chain starts first; ties in the
    seeded order); if none is free, the one whose resource frees first."""
    left = Counter(RESOURCE[k] for k, _ in cover)
    ready = [i for i, (k, _) in enumerate(cover) if free.get(RESOURCE[k], 0.0) <= t]
    if ready:
        return max(ready, key=lambda i: (left[RESOURCE[cover[i][0]]], -i))
    return min(range(len(cover)), key=lambda i: (free.get(RESOURCE[cover[i][0]], 0.0), i))


@dataclass
class Fired:
    event: Event
    started: float
    ended: float | None = None
    effect: str = ""
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.event),
            "name": self.event.name,
            "started": round(self.started, 2),
            "ended": None if self.ended is None else round(self.ended, 2),
            "effect": self.effect,
            "ok": self.ok,
        }


@dataclass
class GatewayLanes:
    """What the operator-side kinds need to know about gatewayd's lanes (the old flow has none of it)."""

    store_id: str
    socket_path: str
    terminal_ids: list[str]  # lane k is terminal_ids[k - 1]
    tpns: dict[str, str]  # terminal id -> Tpn
    authkeys: dict[str, str]  # terminal id -> the key in the daemon's config
    # The lanes reconcile can check (SPIn Cloud): a SPIn Local terminal cannot list its batch, so a
    # keypad void on one after its order completed is invisible to gatewayd (docs/terminals.md);
    # the clerk's keypad voids are played on these lanes only.
    reconcilable: set[str] | None = None


@dataclass
class KeypadVoid:
    """A charge the clerk voided on the keypad, and what became of its order."""

    terminal_id: str
    tpn: str
    reference_id: str
    amount: int
    at: float
    order_id: str | None
    order_status_at_void: str | None  # None: the database could not be read then
    order_status: str | None = None  # the last one seen
    # The order COMPLETED with the charge voided at the terminal: an external discrepancy that
    # POST /v1/reconcile must report. The kind it listed the charge under ("not listed" if none).
    reconcile: str | None = None
    done: bool = False  # the order is final (and, if completed, reconciled)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Nemesis:
    """Executes a plan against the stack; `heal()` undoes whatever is still in effect."""

    events: list[Event]
    daemon: DaemonSupervisor
    pg: Postgres
    db_proxy: FaultProxy
    terminal_proxy: FaultProxy
    simulator_url: str
    tpns_by_lane: list[list[str]]  # lane index -> every flow's tpn on that lane
    oldflow: OldFlow | None = None
    gw: GatewayLanes | None = None
    # False: the terminal settles on its own only when gatewayd has no tender in doubt on it (a
    # scheduled end-of-day settlement); an in-doubt charge settled away is then read as "not
    # charged" (open: test_sale_in_doubt_when_the_terminal_settles_on_its_own_...). True: any time.
    auto_settle_anytime: bool = False
    fired: list[Fired] = field(default_factory=list)
    keypad: list[KeypadVoid] = field(default_factory=list)
    settles: list[str] = field(default_factory=list)  # the operator's settle answers
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _t0: float = 0.0
    _closed: dict[str, int] = field(default_factory=dict)  # Tpn -> last batch known to be closed
    _config_full: str | None = None
    _config_dirty: bool = False

    async def run(self) -> None:
        """Fire every event at its time (bounded by the plan); returns when the last one started."""
        self._t0 = time.monotonic()
        for event in self.events:
            delay = self._t0 + event.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self._fire(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def counts(self) -> Counter[str]:
        return Counter(f.event.name for f in self.fired if f.ok)

    def kinds_fired(self) -> Counter[str]:
        return Counter(f.event.kind for f in self.fired if f.ok)

    async def _fire(self, event: Event) -> None:
        # The plan keeps events on one resource apart, but a real restart can take longer than
        # planned (crash recovery under load): the next event on that resource waits its turn.
        lock = self._locks.setdefault(RESOURCE[event.kind], asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), 15.0)
        except TimeoutError:
            self.fired.append(Fired(event, time.monotonic() - self._t0, effect="skipped: resource busy", ok=False))
            return
        fired = Fired(event, time.monotonic() - self._t0)
        self.fired.append(fired)
        log.info("nemesis: %s for %.1fs", event.name, event.duration)
        try:
            await self._apply(event, fired)
        except asyncio.CancelledError:
            fired.effect += " (cut short by the heal)"
            raise
        except Exception as exc:  # a nemesis action failing is reported, not fatal
            fired.ok = False
            fired.effect += f" failed: {type(exc).__name__}: {exc}"
            log.warning("nemesis %s failed: %s", event.name, exc)
        finally:
            fired.ended = time.monotonic() - self._t0
            lock.release()

    async def _apply(self, event: Event, fired: Fired) -> None:
        kind = event.kind
        if kind == "kill9":
            if not await self._daemon_up(3.0):
                fired.ok, fired.effect = False, "daemon was not running"
                return
            killed = await self.daemon.kill9(event.duration)
            crashed = self.oldflow.crash() if self.oldflow else 0
            fired.ok = killed
            fired.effect = f"daemon killed, restart in {event.duration:.1f}s; old POS app crashed ({crashed} in flight)"
        elif kind == "sigstop":
            if not await self._daemon_up(3.0) or not self.daemon.sigstop():
                fired.ok, fired.effect = False, "daemon was not running"
                return
            if self.oldflow:
                self.oldflow.freeze()
            fired.effect = f"daemon stopped for {event.duration:.1f}s"
            try:
                await asyncio.sleep(event.duration)
            finally:
                self.daemon.sigcont()
                if self.oldflow:
                    self.oldflow.thaw()
        elif kind == "pg_terminate":
            n = await self._retrying(lambda: self.pg.terminate_backends((DAEMON_APP, OLDFLOW_APP)), 5.0)
            fired.effect = f"{n} backend(s) terminated"
        elif kind == "pg_restart":
            await self.pg.stop("immediate")
            fired.effect = f"pg_ctl stop -m immediate, down {event.duration:.1f}s"
            try:
                await asyncio.sleep(event.duration)
            finally:
                await asyncio.shield(self._start_pg())
        elif kind == "terminal_offline":
            tpns = [tpn for lane in event.lanes for tpn in self.tpns_by_lane[lane - 1]]
            for tpn in tpns:
                await self._sim(f"/_sim/terminals/{tpn}/offline")
            fired.effect = f"lane(s) {list(event.lanes)} offline {event.duration:.1f}s"
            try:
                await asyncio.sleep(event.duration)
            finally:
                for tpn in tpns:
                    await asyncio.shield(self._sim(f"/_sim/terminals/{tpn}/online"))
        elif kind == "settle":
            await self._settle(event, fired)
        elif kind == "auto_settle":
            await self._auto_settle(event, fired)
        elif kind == "keypad_void":
            await self._keypad_void(event, fired)
        elif kind == "reload":
            await self._reload(event, fired)
        elif kind == "wrong_authkey":
            await self._wrong_authkey(event, fired)
        else:
            proxy = self.db_proxy if kind == "db_fault" else self.terminal_proxy
            proxy.set_mode(event.mode, event.latency_s)
            fired.effect = (
                f"{proxy.name} proxy {event.mode}"
                + (f" {event.latency_s * 1000:.0f} ms/chunk" if event.mode == "latency" else "")
                + f" for {event.duration:.1f}s"
            )
            try:
                await asyncio.sleep(event.duration)
            finally:
                proxy.set_mode("pass")

    @staticmethod
    async def _retrying(action: Any, within_s: float) -> Any:
        """`action()`, retried while the server is still starting up (bounded)."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                return await action()
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _daemon_up(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.daemon.pid is not None and not self.daemon.stopped:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _start_pg(self) -> None:
        for attempt in range(5):
            try:
                await self.pg.start()
                return
            except Exception as exc:
                log.warning("PostgreSQL restart attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(1.0)
        raise RuntimeError("PostgreSQL did not come back")

    async def _sim(self, path: str, body: dict[str, Any] | None = None) -> None:
        status, _ = await self._sim_call(path, body)
        if status != 200:
            raise RuntimeError(f"simulator {path}: {status}")

    async def _sim_call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """POST to a simulator control; (status, JSON answer)."""
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.simulator_url + path, json=body, timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    # ------------------------------------------------------------------ the operator's side

    def _gw(self) -> GatewayLanes:
        if self.gw is None:
            raise RuntimeError("this kind needs gatewayd's lanes (Nemesis.gw)")
        return self.gw

    def _lanes_from(self, event: Event) -> list[str]:
        """The event's lane first, then the others (terminal ids)."""
        ids = self._gw().terminal_ids
        first = ids[event.lanes[0] - 1] if event.lanes else ids[0]
        return [first] + [tid for tid in ids if tid != first]

    async def _api(self, method: str, path: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
        """One request to the daemon's API, as the operator sends it."""
        async with GatewayClient(self._gw().socket_path, timeout_s=timeout_s) as client:
            answer = await client.request(method, path, body)
        return answer.status, answer.body

    async def _orders_of(self, refs: list[str]) -> dict[str, tuple[str, str]] | None:
        """Reference id -> (order id, order status) from the database; None when it cannot be read."""
        if not refs:
            return {}
        try:
            conn = await asyncpg.connect(self.pg.dsn("chaos-nemesis"), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            rows = await conn.fetch(
                """SELECT t.reference_id, o.id::text AS order_id, o.status
                     FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                    WHERE t.store_id = $1 AND t.kind = 'payment' AND t.reference_id = ANY($2::text[])""",
                self._gw().store_id,
                refs,
                timeout=3,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
        return {r["reference_id"]: (r["order_id"], r["status"]) for r in rows}

    async def _ledger(self) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(self.simulator_url + "/_sim/ledger", timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return list((await resp.json())["transactions"])

    def pending_keypad(self) -> list[KeypadVoid]:
        return [kv for kv in self.keypad if not kv.done]

    async def audit_keypad(self, kv: KeypadVoid) -> None:
        """Follow a keypad void's order; once it is final and COMPLETED (the charge voided at the
        terminal, the order counting it: an external discrepancy), ask POST /v1/reconcile for that
        terminal, while the voided charge is still in the open batch, how it reports it."""
        if kv.done:
            return
        found = await self._orders_of([kv.reference_id])
        if not found or kv.reference_id not in found:
            return
        kv.order_id, kv.order_status = found[kv.reference_id]
        if kv.order_status in OPEN_ORDERS:
            return
        if kv.order_status not in COMPLETED:
            kv.done = True  # gatewayd saw the void in time (or the order failed anyway): nothing to reconcile
            return
        try:
            status, body = await self._api("POST", "/v1/reconcile", {"terminal_id": kv.terminal_id}, timeout_s=5.0)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return
        if status != 200 or not isinstance(body, dict) or kv.terminal_id in (body.get("errors") or {}):
            return  # the daemon or the terminal is away (a fault, a reload): ask again later
        kv.reconcile = next(
            (
                kind
                for kind, items in body.items()
                if isinstance(items, list)
                and any(isinstance(i, dict) and i.get("reference_id") == kv.reference_id for i in items)
            ),
            "not listed",
        )
        kv.done = True

    async def audit_all(self, timeout_s: float) -> list[KeypadVoid]:
        """After the heal: finish every keypad void's audit (bounded); those still not done."""
        deadline = time.monotonic() + timeout_s
        while self.pending_keypad() and time.monotonic() < deadline:
            for kv in self.pending_keypad():
                await self.audit_keypad(kv)
            if self.pending_keypad():
                await asyncio.sleep(0.3)
        return self.pending_keypad()

    async def _batch_lane(self, event: Event, until: float, nothing_in_doubt: bool = False) -> str | None:
        """A lane whose batch may be closed now: none of its keypad voids is still being followed
        (closing the batch would hide the voided charge from reconciliation), and with
        `nothing_in_doubt` no tender on it is processing or unknown. None by `until`."""
        while True:
            for kv in self.pending_keypad():
                await self.audit_keypad(kv)
            blocked = {kv.terminal_id for kv in self.pending_keypad()}
            doubt = await self._in_doubt() if nothing_in_doubt else {}
            for tid in self._lanes_from(event):
                if tid not in blocked and doubt is not None and not doubt.get(tid):
                    return tid
            if time.monotonic() > until:
                return None
            await asyncio.sleep(0.3)

    async def _in_doubt(self) -> dict[str, int] | None:
        """Terminal id -> tenders on it that are processing or unknown; None when the database cannot be read."""
        try:
            conn = await asyncpg.connect(self.pg.dsn("chaos-nemesis"), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            rows = await conn.fetch(
                "SELECT payment_processor_id AS tid, count(*) AS n FROM payment_transactions WHERE store_id = $1"
                " AND status IN ('processing', 'unknown') GROUP BY payment_processor_id",
                self._gw().store_id,
                timeout=3,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
        return {r["tid"]: int(r["n"]) for r in rows}

    async def _settle(self, event: Event, fired: Fired) -> None:
        """The operator settles a lane through gatewayd (POST /v1/terminals/{id}/settle); a 409
        (tenders in doubt, captures owed) is an answer like any other."""
        gw = self._gw()
        until = time.monotonic() + event.duration
        tid = await self._batch_lane(event, until)
        if tid is None:
            fired.ok, fired.effect = False, "skipped: a keypad void is being followed on every lane"
            return
        # An operator tries again while the daemon is down or without its database (a 503): a
        # database fault or restart can outlast a few seconds on a loaded machine.
        deadline = time.monotonic() + event.duration + 16.0
        fired.ok = False  # until the daemon answers: cut short by the heal, it never settled
        while True:
            try:
                status, body = await self._api("POST", f"/v1/terminals/{tid}/settle", timeout_s=8.0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, body = 0, f"{type(exc).__name__}"
            if 0 < status < 500 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)  # the daemon is down, stopped or without its database: try again
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            answer = f"{status} {err.get('code')} {err.get('details') or ''}".strip()
        elif isinstance(body, dict):
            answer = f"{status} ok={body.get('ok')} batch={body.get('batch')} count={body.get('count')}"
            answer += f" total={body.get('total')}" + (f" {body['message']}" if body.get("message") else "")
            batch = str(body.get("batch") or "")
            if status == 200 and body.get("ok") and batch.isdigit():
                self._closed[gw.tpns[tid]] = max(self._closed.get(gw.tpns[tid], 0), int(batch))
        else:
            answer = f"{status} {body}"
        self.settles.append(f"{tid}: {answer}")
        fired.ok = 0 < status < 500
        fired.effect = f"POST /v1/terminals/{tid}/settle: {answer}"

    async def _auto_settle(self, event: Event, fired: Fired) -> None:
        """The terminal closes its open batch on its own (the simulator's control), unknown to gatewayd."""
        gw = self._gw()
        careful = not self.auto_settle_anytime
        tid = await self._batch_lane(event, time.monotonic() + event.duration + 6.0, nothing_in_doubt=careful)
        if tid is None:
            why = "a tender in doubt or a keypad void being followed" if careful else "a keypad void being followed"
            fired.ok, fired.effect = False, f"skipped: {why} on every lane"
            return
        tpn = gw.tpns[tid]
        status, body = await self._sim_call(f"/_sim/terminals/{tpn}/settle")
        if status == 200:
            self._closed[tpn] = max(self._closed.get(tpn, 0), int(body["batch"]))
            fired.effect = f"{tid} settled on its own: batch {body['batch']}, {body['count']} txn(s), {body['amount']}"
        elif status == 409:
            fired.effect = f"{tid}: no open batch to settle"
        else:
            fired.ok, fired.effect = False, f"{tid}: simulator answered {status} {body}"

    async def _keypad_void(self, event: Event, fired: Fired) -> None:
        """The clerk voids an approved charge on the keypad: preferably one whose order gatewayd
        has not completed yet (it must notice: the tender voided, the order failed); failing that,
        any approved charge in an open batch (gatewayd cannot notice: reconciliation must)."""
        gw = self._gw()
        started = time.monotonic()
        pick_until, watch_until = started + event.duration / 2, started + event.duration
        order = {tid: i for i, tid in enumerate(self._lanes_from(event))}
        lane_of = {tpn: tid for tid, tpn in gw.tpns.items() if gw.reconcilable is None or tid in gw.reconcilable}
        tried: set[str] = set()
        chosen: KeypadVoid | None = None
        while chosen is None:
            late = time.monotonic() >= pick_until
            rows = [
                t
                for t in await self._ledger()
                if t["tpn"] in lane_of
                and t["type"] in ("sale", "capture", "auth")
                and t["status"] in ("approved", "captured")
                and t["reference_id"] not in tried
                and t["batch"] > self._closed.get(t["tpn"], 0)
            ]
            orders = await self._orders_of([t["reference_id"] for t in rows])
            in_flight = [t for t in rows if orders and orders.get(t["reference_id"], ("", ""))[1] in OPEN_ORDERS]
            pool = in_flight or (rows if late else [])
            # the event's lane first, the newest charge first
            pool = sorted(enumerate(pool), key=lambda it: (order[lane_of[it[1]["tpn"]]], -it[0]))
            for _, t in pool:
                status, _ = await self._sim_call(f"/_sim/terminals/{t['tpn']}/void/{t['reference_id']}")
                tried.add(t["reference_id"])
                if status == 404:  # its batch is closed (a settlement we did not see answered)
                    self._closed[t["tpn"]] = max(self._closed.get(t["tpn"], 0), t["batch"])
                if status != 200:
                    continue
                ref = t["reference_id"]
                order_id, order_status = (orders or {}).get(ref, (None, None))
                chosen = KeypadVoid(
                    lane_of[t["tpn"]], t["tpn"], ref, t["amount"], time.monotonic() - self._t0, order_id, order_status
                )
                break
            if chosen is None:
                if time.monotonic() > watch_until:
                    fired.ok, fired.effect = False, "no approved charge in an open batch to void"
                    return
                await asyncio.sleep(0.2)
        self.keypad.append(chosen)
        fired.effect = (
            f"{chosen.terminal_id}: voided {chosen.reference_id} ({chosen.amount}) on the keypad; its order was "
            f"{chosen.order_status_at_void or 'unknown (database unreachable)'}"
        )
        # Watch the order until the event ends; a COMPLETED one is reconciled before anything may
        # close the batch (a little longer if the daemon is away at that moment).
        while not chosen.done and time.monotonic() < watch_until:
            await self.audit_keypad(chosen)
            if not chosen.done:
                await asyncio.sleep(0.3)
        while not chosen.done and chosen.order_status in COMPLETED and time.monotonic() < watch_until + 10.0:
            await asyncio.sleep(0.3)
            await self.audit_keypad(chosen)
        fired.effect += f"; then {chosen.order_status}"
        if chosen.reconcile:
            fired.effect += f", reconcile: {chosen.reconcile}"

    def _config_path(self) -> Path:
        return Path(self.daemon.config)

    def _write_config(self, text: str) -> None:
        path = self._config_path()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # the daemon never reads half a file

    def _config_without(self, terminal_id: str) -> str:
        if self._config_full is None:
            self._config_full = self._config_path().read_text()
        head, *blocks = self._config_full.split("[[terminals]]\n")
        kept = [b for b in blocks if not b.startswith(f'id = "{terminal_id}"\n')]
        if len(kept) != len(blocks) - 1:
            raise RuntimeError(f"{terminal_id} not found in the config")
        return "[[terminals]]\n".join([head, *kept])

    async def _sighup(self, wait_s: float = 5.0) -> str:
        """SIGHUP the daemon once it handles SIGHUP (before that, the signal would kill it); a
        daemon that is down reads the file when it starts."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            pid = self.daemon.pid
            if pid is not None and _handles(pid, signal.SIGHUP):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
                    return f"SIGHUP to pid {pid}"
            await asyncio.sleep(0.1)
        return "no SIGHUP (the daemon is down; it reads the file when it starts)"

    async def _restore_config(self) -> str:
        if self._config_full is None:
            return "config untouched"
        self._write_config(self._config_full)
        self._config_dirty = False
        return await self._sighup()

    async def lanes_listed(self, timeout_s: float) -> list[str]:
        """Until GET /v1/terminals lists every lane (bounded); the terminal ids still missing."""
        wanted = set(self._gw().terminal_ids)
        deadline = time.monotonic() + timeout_s
        missing = sorted(wanted)
        while True:
            try:
                status, body = await self._api("GET", "/v1/terminals", timeout_s=3.0)
                if status == 200 and isinstance(body, dict) and isinstance(body.get("terminals"), list):
                    missing = sorted(wanted - {t.get("id") for t in body["terminals"] if isinstance(t, dict)})
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.2)

    async def _reload(self, event: Event, fired: Fired) -> None:
        """The operator takes a lane out of the config and sends SIGHUP; later puts it back, SIGHUP again."""
        tid = self._lanes_from(event)[0]
        self._config_dirty = True
        self._write_config(self._config_without(tid))
        sent = await self._sighup()
        fired.effect = f"{tid} removed from the config ({sent}) for {event.duration:.1f}s"
        try:
            await asyncio.sleep(event.duration)
        finally:
            back = await asyncio.shield(self._restore_config())
            fired.effect += f"; put back ({back})"
        missing = await self.lanes_listed(5.0)
        fired.effect += f"; {tid} listed again" if tid not in missing else f"; {tid} not listed 5s later"

    async def _wrong_authkey(self, event: Event, fired: Fired) -> None:
        """The terminal is re-keyed behind gatewayd's back: every request with the daemon's key is
        refused (SPIn 2002) until the right key is bound again."""
        gw = self._gw()
        tid = self._lanes_from(event)[0]
        wrong = "wk" + secrets.token_urlsafe(12)
        await self._sim(f"/_sim/terminals/{gw.tpns[tid]}/authkey", {"authkey": wrong})
        fired.effect = f"{tid} bound to a wrong auth key for {event.duration:.1f}s"
        try:
            await asyncio.sleep(event.duration)
        finally:
            await asyncio.shield(self._sim(f"/_sim/terminals/{gw.tpns[tid]}/authkey", {"authkey": gw.authkeys[tid]}))

    async def heal(self) -> None:
        """Cut every running event short (each undoes itself), then make sure all is back."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self.db_proxy.set_mode("pass")
        self.terminal_proxy.set_mode("pass")
        self.daemon.sigcont()
        self.daemon.release()
        if self.oldflow:
            self.oldflow.thaw()
        if self.pg.down:
            await self._start_pg()
        for tpns in self.tpns_by_lane:
            for tpn in tpns:
                with contextlib.suppress(Exception):
                    await self._sim(f"/_sim/terminals/{tpn}/online")
        if self.gw is not None:
            for tid, tpn in self.gw.tpns.items():  # the daemon's keys bound again
                with contextlib.suppress(Exception):
                    await self._sim(f"/_sim/terminals/{tpn}/authkey", {"authkey": self.gw.authkeys[tid]})
            if self._config_dirty:  # every lane back in the config
                await self._restore_config()


def _handles(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux: SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        return False
    return False
