"""The health monitor: one sweeper task for every lane, bounded concurrency, one write per sweep.

A lane is only checked while idle (a running transaction is evidence enough and
must not be disturbed); the check goes through the lane, so it never overlaps a
transaction. A lane whose terminal answered a transaction within the interval is
not asked either: that answer proved it online (recorded as its check). An online
terminal needs `failure_threshold` consecutive failed checks (confirmed within the
same sweep) before it is declared offline; an offline terminal is re-checked with
capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from gatewayd.errors import GatewayError, TerminalBusy, TerminalError, UnknownTerminal
from gatewayd.retry import backoff_s
from gatewayd.terminals.lane import Lane
from gatewayd.terminals.ops import HealthCheck
from gatewayd.terminals.outcomes import Health, HealthState

log = logging.getLogger("gatewayd.terminals.health")

Row = tuple[str, HealthState, datetime, str | None]
Write = Callable[[list[Row]], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _discard(rows: list[Row]) -> None:
    return None


@dataclass(slots=True)
class _Track:
    state: HealthState = "unknown"
    written: HealthState | None = None
    next_due: float = 0.0
    streak: int = 0
    recovered_at: float | None = None


class HealthMonitor:
    """Checks idle lanes with TerminalStatus and records their state (`lane.state`)."""

    def __init__(
        self,
        lanes: Iterable[Lane],
        interval_s: float,
        *,
        failure_threshold: int = 2,
        offline_backoff_cap_s: float = 300.0,
        write: Write | None = None,
        concurrency: int = 256,
        confirm_delay_s: float = 1.0,
        flap_window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._lanes = {lane.terminal_id: lane for lane in lanes}
        self._tracks = {tid: _Track() for tid in self._lanes}
        self._interval_s = interval_s
        self._threshold = max(1, failure_threshold)
        self._cap_s = max(interval_s, offline_backoff_cap_s)
        self._write = write or _discard
        self._concurrency = max(1, concurrency)
        self._confirm_delay_s = confirm_delay_s
        self._flap_window_s = flap_window_s
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._now = now

    def add(self, lane: Lane) -> None:
        """Start watching `lane`."""
        self._lanes[lane.terminal_id] = lane
        self._tracks.setdefault(lane.terminal_id, _Track())

    def remove(self, terminal_id: str) -> None:
        """Stop watching a terminal."""
        self._lanes.pop(terminal_id, None)
        self._tracks.pop(terminal_id, None)

    def status(self, terminal_id: str) -> HealthState:
        """The monitor's view of a terminal."""
        return self._tracks[terminal_id].state if terminal_id in self._tracks else "unknown"

    async def run(self) -> None:
        """The sweeper task: one sweep every `interval_s`, forever."""
        while True:
            started = self._clock()
            try:
                await self.sweep()
            except Exception:
                log.exception("health sweep failed")
            await self._sleep(max(0.0, self._interval_s - (self._clock() - started)))

    async def sweep(self) -> list[Row]:
        """Check every due, idle lane once; write all rows in one call; return them."""
        now = self._clock()
        due = [lane for tid, lane in self._lanes.items() if self._is_due(lane, self._tracks[tid], now)]
        rows: list[Row] = []
        lanes = iter(due)
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self._concurrency, len(due))):
                tg.create_task(self._worker(lanes, rows))
        await self._flush(rows)
        return rows

    async def check_now(self, terminal_id: str) -> HealthState:
        """Check one terminal at once (through its lane, after whatever it is running)."""
        lane = self._lanes.get(terminal_id)
        if lane is None:
            raise UnknownTerminal("no such terminal", terminal_id=terminal_id)
        row = await self._check(lane)
        if row is not None:
            await self._flush([row])
        return self._tracks[terminal_id].state

    # ------------------------------------------------------------ one terminal

    def _is_due(self, lane: Lane, track: _Track, now: float) -> bool:
        proven_online = lane.state == "online" and track.state == "offline"
        return track.next_due <= now or proven_online

    async def _worker(self, lanes: Iterator[Lane], rows: list[Row]) -> None:
        for lane in lanes:
            if not lane.idle:
                row = self._evidence(lane)
            elif self._answered_lately(lane):
                row = (
                    lane.terminal_id,
                    "online",
                    self._apply(lane, self._tracks[lane.terminal_id], "online", None),
                    None,
                )
            else:
                row = await self._check(lane)
            if row is not None:
                rows.append(row)

    def _answered_lately(self, lane: Lane) -> bool:
        """Online by a transaction's answer within the interval: no check needed."""
        answered = lane.answered_at
        return lane.state == "online" and answered is not None and self._clock() - answered < self._interval_s

    def _evidence(self, lane: Lane) -> Row | None:
        """A busy lane is not checked; a state its transactions proved is still recorded."""
        track = self._tracks[lane.terminal_id]
        if lane.state not in ("online", "offline") or lane.state == track.written:
            return None
        error = None if lane.state == "online" else "transaction outcome: offline"
        return (
            lane.terminal_id,
            lane.state,
            self._apply(lane, track, lane.state, error, record=False),
            error,
        )

    async def _check(self, lane: Lane) -> Row | None:
        track = self._tracks.setdefault(lane.terminal_id, _Track())
        attempts = self._threshold if track.state in ("online", "busy") else 1
        health = Health(state="unknown")
        for attempt in range(attempts):
            if attempt:
                await self._sleep(self._confirm_delay_s)
            try:
                health = await lane.execute(HealthCheck())
            except TerminalBusy:
                return self._evidence(lane)
            except TerminalError:
                return None  # the lane is stopped
            if health.state in ("online", "busy"):
                break
        ok = health.state in ("online", "busy")
        state: HealthState = health.state if ok else "offline"
        error = None if ok else (health.message or health.state)
        checked_at = self._apply(lane, track, state, error)
        if health.misconfigured:
            track.next_due = self._clock() + self._cap_s  # park it: no point hammering a wrong TPN
        return (lane.terminal_id, state, checked_at, error)

    def _apply(
        self, lane: Lane, track: _Track, state: HealthState, error: str | None, *, record: bool = True
    ) -> datetime:
        checked_at = self._now()
        previous = track.state
        if record:
            lane.record_health(state, checked_at, error)
        track.state = state
        if state == "offline":
            track.streak += 1
            delay = backoff_s(track.streak, self._interval_s, self._cap_s, self._rand)
            track.next_due = self._clock() + max(self._interval_s, delay)
        else:
            track.streak = 0
            track.next_due = 0.0
        self._log_transition(lane.terminal_id, track, previous, state, error)
        return checked_at

    def _log_transition(
        self, terminal_id: str, track: _Track, previous: HealthState, state: HealthState, error: str | None
    ) -> None:
        flapping = track.recovered_at is not None and self._clock() - track.recovered_at < self._flap_window_s
        if state == "offline" and previous != "offline":
            level = logging.DEBUG if flapping else logging.WARNING
            log.log(level, "terminal %s offline: %s", terminal_id, error)
        elif state == "offline":
            log.debug("terminal %s still offline: %s", terminal_id, error)
        elif previous == "offline":
            track.recovered_at = self._clock()
            log.log(logging.DEBUG if flapping else logging.INFO, "terminal %s back %s", terminal_id, state)

    async def _flush(self, rows: list[Row]) -> None:
        if not rows:
            return
        try:
            await self._write(rows)
        except GatewayError as exc:  # the database blinked: the next sweep writes again
            log.warning("health write of %d rows failed: %s", len(rows), exc.message)
            return
        except Exception:
            log.exception("health write of %d rows failed", len(rows))
            return
        for terminal_id, state, _, _ in rows:
            if terminal_id in self._tracks:
                self._tracks[terminal_id].written = state
