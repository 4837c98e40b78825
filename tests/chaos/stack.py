"""The real stack the chaos run drives: embedded PostgreSQL, the SPIn simulator process, the
daemon process under a restart-always supervisor, and its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from gatewayd.api.client import GatewayClient
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
) -> str:
    """The daemon's config: DSN through the DB proxy, terminals through the terminal proxy, short timeouts."""
    terminals = "".join(
        f'[[terminals]]\nid = "{tid}"\nname = "Chaos {tid}"\nbase_url = "{terminal_url}"\ntpn = "{tpn}"\n'
        f'authkey = "{authkeys[tid]}"\ntimeout_s = {TERMINAL_TIMEOUT_S}\nhttp_margin_s = {HTTP_MARGIN_S}\n'
        f"is_live = false\n\n"
        for tid, tpn in tpns.items()
    )
    return (
        f'store_id = "{store_id}"\nstate_dir = "{state_dir}"\n\n'
        f'[database]\ndsn = "postgresql://postgres@127.0.0.1:{db_port}/gatewayd?application_name={DAEMON_APP}"\n'
        f"pool_min = 1\npool_max = 8\nconnect_timeout_s = 2\ncommand_timeout_s = 4\n\n"
        f'[api]\nsocket = "{socket_path}"\ncheckout_wait_s = {CHECKOUT_WAIT_S}\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n\n'
        f"[health]\ninterval_s = 0.5\nfailure_threshold = 1\noffline_backoff_cap_s = 2\n\n"
        f"[recovery]\ninterval_s = 1\nlease_s = 3\nmaintenance_interval_s = 5\n\n"
        f'[log]\nlevel = "INFO"\n\n{terminals}'
    )


@contextlib.asynccontextmanager
async def simulator_process(slow_s: float = 3.0):  # type: ignore[no-untyped-def]
    """`gatewayd simulate` in its own process (dying with us); yields its port."""
    port = free_port()
    async with simulator_subprocess(port, slow_s=slow_s, preexec_fn=_die_with_parent):
        yield port


class DaemonSupervisor:
    """`gatewayd run` as a subprocess, restarted whenever it exits (systemd's Restart=always)."""

    def __init__(self, config: Path, socket_path: Path, log_path: Path, restart_delay_s: float = 0.5) -> None:
        self.config = config
        self.socket_path = socket_path
        self.log_path = log_path
        self.restart_delay_s = restart_delay_s
        self.proc: asyncio.subprocess.Process | None = None
        self.hold_until = 0.0  # no restart before this monotonic time (the nemesis keeps it down)
        self.stopped = True  # SIGSTOPped
        self.starts = 0
        self.exit_codes: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.final_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_FAILPOINTS"}
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - the child keeps its own copy of the fd
            out.write(f"--- chaos: daemon start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gatewayd",
                "run",
                "--config",
                str(self.config),
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        self.stopped = False

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        while not self._closing:
            proc = self.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.2)
                continue
            if proc is not None and proc.returncode is not None:
                self.exit_codes.append(proc.returncode)
                self.proc = None
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
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        return True

    def sigstop(self) -> bool:
        if self.pid is None:
            return False
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        return True

    def sigcont(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

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
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc is not None else None
        self.sigcont()
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), 40)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
