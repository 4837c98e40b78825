"""The real stack the chaos run drives: embedded PostgreSQL, the SPIn simulator process, the
daemon process under a restart-always supervisor, and its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from gatewayd.api.client import GatewayClient
from gatewayd.stack import DaemonProcess, Dialect, StoreSpec, TerminalSpec
from gatewayd.store import migrate
from gatewayd.store.embedded import EmbeddedPostgres, free_port
from gatewayd.terminals.simulator.server import simulator_subprocess

log = logging.getLogger("chaos.stack")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the chaos process goes away (Linux; best effort)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


DAEMON_APP = "gatewayd-chaos"  # application_name of the daemon's connections (pg_terminate targets)
OLDFLOW_APP = "oldflow-chaos"
TERMINAL_TIMEOUT_S = 2
HTTP_MARGIN_S = 1
CHECKOUT_WAIT_S = 8


@dataclass
class Postgres:
    """The embedded server (durable: an immediate stop must not lose acknowledged commits)."""

    data_dir: Path
    server: EmbeddedPostgres = field(init=False)
    port: int = 0
    down: bool = False

    def __post_init__(self) -> None:
        self.server = EmbeddedPostgres(self.data_dir, durable=True)

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        assert self.server.port is not None
        if self.port and self.server.port != self.port:
            raise RuntimeError(f"PostgreSQL came back on port {self.server.port}, not {self.port}")
        self.port = self.server.port
        self.down = False

    async def stop(self, mode: str = "immediate") -> None:
        self.down = True
        await asyncio.to_thread(self.server.stop, mode)

    def dsn(self, app: str = "chaos-check") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/gatewayd?application_name={app}"

    async def connect(self, timeout_s: float = 5.0) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn(), timeout=timeout_s)

    async def migrate(self) -> None:
        conn = await self.connect()
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()

    async def terminate_backends(self, apps: tuple[str, ...]) -> int:
        """pg_terminate_backend of every connection of these applications; how many."""
        conn = await self.connect(3.0)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = 'gatewayd' AND application_name = ANY($1::text[])",
                    list(apps),
                )
            )
        finally:
            await conn.close()


def config_text(
    *,
    store_id: str,
    state_dir: Path,
    socket_path: Path,
    db_port: int,
    metrics_port: int,
    terminal_url: str,
    tpns: dict[str, str],
    authkeys: dict[str, str],
    dialects: Mapping[str, Dialect] | None = None,
) -> str:
    """The daemon's config (gatewayd.stack writes it): DSN through the DB proxy, terminals through
    the terminal proxy (each in its SPIn dialect, REST unless `dialects` says), short timeouts."""
    terminals = [
        TerminalSpec(
            tid, tpn, terminal_url, name=f"Chaos {tid}", authkey=authkeys[tid],
            timeout_s=TERMINAL_TIMEOUT_S, http_margin_s=HTTP_MARGIN_S,
            dialect=(dialects or {}).get(tid, "rest"),
        )
        for tid, tpn in tpns.items()
    ]  # fmt: skip
    return StoreSpec(terminals, store_id=store_id).config_text(
        state_dir=state_dir,
        socket_path=socket_path,
        dsn=f"postgresql://postgres@127.0.0.1:{db_port}/gatewayd?application_name={DAEMON_APP}",
        sections={
            "database": {"pool_min": 1, "pool_max": 8, "connect_timeout_s": 2, "command_timeout_s": 4},
            "api": {"checkout_wait_s": CHECKOUT_WAIT_S},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "health": {"interval_s": 0.5, "failure_threshold": 1, "offline_backoff_cap_s": 2},
            "recovery": {"interval_s": 1, "lease_s": 3, "maintenance_interval_s": 5},
            "log": {"level": "INFO"},
        },
    )


@contextlib.asynccontextmanager
async def simulator_process(slow_s: float = 3.0):  # type: ignore[no-untyped-def]
    """`gatewayd simulate` in its own process (dying with us); yields its port."""
    port = free_port()
    async with simulator_subprocess(port, slow_s=slow_s, preexec_fn=_die_with_parent):
        yield port


class DaemonSupervisor:
    """`gatewayd run` (gatewayd.stack.DaemonProcess), restarted whenever it exits (systemd's
    Restart=always)."""

    def __init__(self, config: Path, socket_path: Path, log_path: Path, restart_delay_s: float = 0.5) -> None:
        self.config = config
        self.socket_path = socket_path
        self.log_path = log_path
        self.restart_delay_s = restart_delay_s
        self.process: DaemonProcess | None = None
        self.hold_until = 0.0  # no restart before this monotonic time (the nemesis keeps it down)
        self.starts = 0
        self.exit_codes: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.final_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def stopped(self) -> bool:
        """SIGSTOPped (or not started)."""
        return self.process is None or self.process.stopped

    async def _spawn(self) -> None:
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - a line before the child's own output
            out.write(f"--- chaos: daemon start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
        process = DaemonProcess(self.config, preexec_fn=_die_with_parent)
        process.socket, process.log = str(self.socket_path), self.log_path
        self.process = await process.start(wait=False)
        self.starts += 1

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        while not self._closing:
            process = self.process
            if process is not None and process.pid is not None:
                await process.exited(0.2)
                continue
            if process is not None and process.proc is not None and process.proc.returncode is not None:
                self.exit_codes.append(process.proc.returncode)
                self.process = None
            wait = max(self.restart_delay_s, self.hold_until - time.monotonic())
            await asyncio.sleep(wait)
            if self._closing or time.monotonic() < self.hold_until:
                continue
            await self._spawn()

    async def ready(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid is not None:
                try:
                    async with GatewayClient(str(self.socket_path), timeout_s=2) as client:
                        if (await client.health()).status == 200:
                            return True
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
            await asyncio.sleep(0.1)
        return False

    async def kill9(self, down_s: float) -> bool:
        """kill -9; the supervisor restarts it after `down_s`."""
        self.hold_until = time.monotonic() + down_s
        process = self.process
        if process is None or process.pid is None:
            return False
        await process.kill()
        return True

    def sigstop(self) -> bool:
        return self.process is not None and self.process.sigstop()

    def sigcont(self) -> None:
        if self.process is not None:
            self.process.sigcont()

    def release(self) -> None:
        """No more hold-down: restart at once if it is down."""
        self.hold_until = 0.0

    async def close(self) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed). Idempotent."""
        if self._closing:
            return self.final_exit
        self._closing = True
        self.final_exit = await self._close()
        return self.final_exit

    async def _close(self) -> int | None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        process = self.process
        if process is None or process.proc is None:
            return None
        if process.proc.returncode is not None:
            return process.proc.returncode
        try:
            return await process.stop(timeout_s=40)
        except TimeoutError:
            await process.kill()
            return None
