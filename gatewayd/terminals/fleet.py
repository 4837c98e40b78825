"""The store's terminals at run time: a driver, a lane and its owner task for each; reloadable."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator, Mapping

import aiohttp

from gatewayd.config import HealthConfig, TerminalConfig
from gatewayd.terminals.driver import TerminalDriver
from gatewayd.terminals.drivers import make_driver, warn_plain_http
from gatewayd.terminals.health import HealthMonitor, Write
from gatewayd.terminals.lane import Lane
from gatewayd.terminals.outcomes import PaymentType

log = logging.getLogger(__name__)


ResultHook = Callable[[str, str, str, float], None]  # terminal, operation, outcome, seconds
EventHook = Callable[[str, str], None]  # terminal, "unknown" | "inquiry"
StateHook = Callable[[str, str, str | None], None]  # terminal, new state, last health error


class Fleet(Mapping[str, Lane]):
    """Lanes by terminal id (the coordinator reads it as a mapping) plus their supervision."""

    def __init__(
        self,
        health: HealthConfig,
        *,
        write_health: Write | None = None,
        on_result: ResultHook | None = None,
        on_event: EventHook | None = None,
        on_state: StateHook | None = None,
    ) -> None:
        self._on_result = on_result
        self._on_event = on_event
        self._on_state = on_state
        self.configs: dict[str, TerminalConfig] = {}
        self._lanes: dict[str, Lane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Terminals removed from the configuration: their lanes keep running with their last
        # settings, for inquiries, voids, captures and returns of the charges they took, never a
        # new charge. Re-adding the terminal takes its lane back.
        self._retired: dict[str, Lane] = {}
        self._retired_configs: dict[str, TerminalConfig] = {}
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
        config = self.configs.get(terminal_id) or self._retired_configs.get(terminal_id)
        return config.timeout_s if config is not None else 120

    def payment_type(self, terminal_id: str) -> PaymentType:
        """The payment type a card tender on this terminal runs as unless it names its own."""
        config = self.configs.get(terminal_id) or self._retired_configs.get(terminal_id)
        return config.payment_type if config is not None else "credit"

    def for_charge(self, terminal_id: str | None) -> Lane | None:
        """A configured terminal's lane: the only place a new charge goes."""
        return self._lanes.get(terminal_id) if terminal_id is not None else None

    def for_followup(self, terminal_id: str | None) -> Lane | None:
        """A lane that can still answer for its charges, configured or removed."""
        if terminal_id is None:
            return None
        return self._lanes.get(terminal_id) or self._retired.get(terminal_id)

    @property
    def retired(self) -> list[str]:
        """Terminals removed from the configuration whose lanes still answer for their charges."""
        return sorted(self._retired)

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

    def _driver(self, config: TerminalConfig) -> TerminalDriver:
        """The terminal's driver, SPIn Cloud (REST) or SPIn Local (XML) as its config says: a
        store may mix them; nothing above this line knows which one a lane drives."""
        warn_plain_http(config)
        return make_driver(config, self._shared_session())

    def _add(self, config: TerminalConfig) -> None:
        lane = self._retired.pop(config.id, None)
        self._retired_configs.pop(config.id, None)
        if lane is not None:
            lane.reconfigure(self._driver(config))
        else:
            lane = Lane(
                config.id,
                self._driver(config),
                queue_depth=config.queue_depth,
                on_result=functools.partial(self._on_result, config.id) if self._on_result else None,
                on_event=functools.partial(self._on_event, config.id) if self._on_event else None,
                on_state=functools.partial(self._on_state, config.id) if self._on_state else None,
            )
            self._tasks[config.id] = asyncio.create_task(lane.run(), name=f"lane-{config.id}")
        self.configs[config.id] = config
        self._lanes[config.id] = lane
        self.monitor.add(lane)

    def _retire(self, terminal_id: str) -> None:
        """Take a terminal out of service: no new charge, no health checks; its lane goes on
        answering for the charges it took (in flight ones finish; inquiries and voids run)."""
        lane = self._lanes.pop(terminal_id)
        self._retired[terminal_id] = lane
        self._retired_configs[terminal_id] = self.configs.pop(terminal_id)
        self.monitor.remove(terminal_id)

    async def reload(self, configs: list[TerminalConfig]) -> tuple[list[str], list[str], list[str]]:
        """Add, remove and edit terminals in place; nothing in flight is cancelled.
        Returns (added, removed, changed)."""
        wanted = {c.id: c for c in configs}
        added = [tid for tid in wanted if tid not in self.configs]
        removed = [tid for tid in self.configs if tid not in wanted]
        changed = [tid for tid in wanted if tid in self.configs and self.configs[tid] != wanted[tid]]
        for tid in removed:
            self._retire(tid)
        for tid in added:
            self._add(wanted[tid])
        for tid in changed:
            config = wanted[tid]
            self.configs[tid] = config
            # The next operation uses the new settings; the one in flight ends on the old ones.
            self._lanes[tid].reconfigure(self._driver(config))
        return added, removed, changed

    async def close(self) -> None:
        """Stop the sweeper and every lane."""
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for lane in [*self._lanes.values(), *self._retired.values()]:
            await lane.driver.aclose()
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
