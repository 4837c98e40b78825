"""The store's terminals at run time: a driver, a lane and its owner task for each; reloadable."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator, Mapping

import aiohttp

from gatewayd.config import HealthConfig, TerminalConfig
from gatewayd.terminals import ops
from gatewayd.terminals.health import HealthMonitor, Write
from gatewayd.terminals.lane import Lane
from gatewayd.terminals.outcomes import SettleResult
from gatewayd.terminals.spin.driver import SpinDriver

log = logging.getLogger(__name__)


ResultHook = Callable[[str, str, str, float], None]  # terminal, operation, outcome, seconds
EventHook = Callable[[str, str], None]  # terminal, "unknown" | "inquiry"


def _make_lane(
    config: TerminalConfig,
    on_result: ResultHook | None,
    on_event: EventHook | None,
    session: aiohttp.ClientSession | None = None,
) -> Lane:
    assert config.authkey is not None, "secrets are resolved when the config is loaded"
    driver = SpinDriver(
        config.id,
        config.base_url,
        config.tpn,
        config.authkey.reveal(),
        config.timeout_s,
        http_margin_s=config.http_margin_s,
        session=session,
    )
    return Lane(
        config.id,
        driver,
        queue_depth=config.queue_depth,
        on_result=functools.partial(on_result, config.id) if on_result else None,
        on_event=functools.partial(on_event, config.id) if on_event else None,
    )


class Fleet(Mapping[str, Lane]):
    """Lanes by terminal id (the coordinator reads it as a mapping) plus their supervision."""

    def __init__(
        self,
        health: HealthConfig,
        *,
        write_health: Write | None = None,
        on_result: ResultHook | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self._on_result = on_result
        self._on_event = on_event
        self.configs: dict[str, TerminalConfig] = {}
        self._lanes: dict[str, Lane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.monitor = HealthMonitor(
            [],
            health.interval_s,
            failure_threshold=health.failure_threshold,
            offline_backoff_cap_s=health.offline_backoff_cap_s,
            write=write_health,
        )
        self._monitor_task: asyncio.Task[None] | None = None
        # One HTTP session for every terminal: keep-alive connections are pooled per host and reused
        # across terminals (a sweep needs as many as it checks at once, not one per terminal). The
        # lane already allows one operation at a time per terminal, so no per-connector limit.
        self._session: aiohttp.ClientSession | None = None

    # Mapping
    def __getitem__(self, terminal_id: str) -> Lane:
        return self._lanes[terminal_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lanes)

    def __len__(self) -> int:
        return len(self._lanes)

    def timeout_s(self, terminal_id: str) -> int:
        return self.configs[terminal_id].timeout_s

    def start(self, configs: list[TerminalConfig]) -> None:
        """Start a lane for every terminal and the health sweeper."""
        for config in configs:
            self._add(config)
        self._monitor_task = asyncio.create_task(self.monitor.run(), name="health-monitor")

    def _shared_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
            )
        return self._session

    def _add(self, config: TerminalConfig) -> None:
        lane = _make_lane(config, self._on_result, self._on_event, self._shared_session())
        self.configs[config.id] = config
        self._lanes[config.id] = lane
        self._tasks[config.id] = asyncio.create_task(lane.run(), name=f"lane-{config.id}")
        self.monitor.add(lane)

    async def _remove(self, terminal_id: str, drain_s: float = 30.0) -> None:
        """Stop a terminal's lane once what it runs is finished (or after `drain_s`)."""
        lane = self._lanes.pop(terminal_id)
        self.configs.pop(terminal_id, None)
        self.monitor.remove(terminal_id)
        task = self._tasks.pop(terminal_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while not lane.idle and loop.time() < deadline:  # noqa: ASYNC110 - the lane has no idle event
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lane.driver.aclose()

    async def reload(self, configs: list[TerminalConfig]) -> tuple[list[str], list[str], list[str]]:
        """Add, remove and replace terminals; untouched ones keep running. Returns (added, removed, changed)."""
        wanted = {c.id: c for c in configs}
        added = [tid for tid in wanted if tid not in self.configs]
        removed = [tid for tid in self.configs if tid not in wanted]
        changed = [tid for tid in wanted if tid in self.configs and self.configs[tid] != wanted[tid]]
        for tid in removed + changed:
            await self._remove(tid)
        for tid in added + changed:
            self._add(wanted[tid])
        return added, removed, changed

    async def settle(self, terminal_id: str) -> SettleResult:
        return await self._lanes[terminal_id].execute(ops.Settle())

    async def close(self) -> None:
        """Stop the sweeper and every lane."""
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for lane in self._lanes.values():
            await lane.driver.aclose()
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
