"""The nemesis: a seeded schedule of faults, executed against the real stack.

The schedule (what, when, for how long, on which lane) is a pure function of the seed and the
window, so a failing seed replays the same faults; the interleaving with the processes does
not replay exactly (real time, real processes). The first events cover every kind and every
proxy mode once, in a seeded order; after that kinds are drawn at random. Events on different
resources overlap; two events on one resource never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import aiohttp
import asyncpg

from chaos.oldflow import OldFlow
from chaos.proxy import FaultProxy
from chaos.stack import DAEMON_APP, OLDFLOW_APP, DaemonSupervisor, Postgres

log = logging.getLogger("chaos.nemesis")

PROXY_MODES = ("blackhole", "reset", "latency", "drop_answer")
KINDS = ("kill9", "pg_terminate", "pg_restart", "terminal_offline", "sigstop", "db_fault", "terminal_fault")
RESOURCE = {
    "kill9": "daemon",
    "sigstop": "daemon",
    "pg_terminate": "pg",
    "pg_restart": "pg",
    "terminal_offline": "terminals",
    "db_fault": "db_proxy",
    "terminal_fault": "terminal_proxy",
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
}


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
        return self.duration + {"kill9": 2.0, "pg_restart": 4.0}.get(self.kind, 0.0) + 0.3


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
        kind, mode = cover.pop(0) if cover else (rng.choice(weighted), "")
        start = max(t, free.get(RESOURCE[kind], 0.0))
        event = _draw(rng, kind, mode, round(start, 3), lanes)
        if covering:  # shorter faults while every kind gets its first turn, so all fit a short window
            event = replace(event, duration=round(event.duration * 0.6, 3))
        room = window_s - 0.5 - start
        if event.duration > room:
            if covering and room >= 0.5:
                event = replace(event, duration=round(room, 3))
            elif start > window_s - 1.0:
                break
            else:
                continue
        events.append(event)
        free[RESOURCE[kind]] = start + event.busy_s
        t += rng.uniform(0.7, 1.6) if cover else rng.uniform(1.0, 3.0)
    return sorted(events, key=lambda e: e.at)


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
class Nemesis:
    """Executes a plan against the stack; `heal()` undoes whatever is still in effect."""

    events: list[Event]
    daemon: DaemonSupervisor
    pg: Postgres
    db_proxy: FaultProxy
    terminal_proxy: FaultProxy
    sim_url: str
    tpns_by_lane: list[list[str]]  # lane index -> every flow's tpn on that lane
    oldflow: OldFlow | None = None
    fired: list[Fired] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _t0: float = 0.0

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

    async def _sim(self, path: str) -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.sim_url + path, timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"simulator {path}: {resp.status}")

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
