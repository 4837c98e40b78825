"""Real processes for crash tests: the simulator and the daemon as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from gatewayd.api.client import GatewayClient
from gatewayd.terminals.simulator.server import simulator_subprocess
from tests.harness import STOCK, StoreProbe, config_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_cli(*args: str, timeout_s: float = 120) -> tuple[int, str]:
    """`python -m gatewayd ARGS` to its end: (exit code, stdout and stderr together)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode or 0, out.decode()


@contextlib.asynccontextmanager
async def simulator_process(slow_s: float = 3.0) -> AsyncIterator[str]:
    """`gatewayd simulate` in its own process; yields its URL."""
    async with simulator_subprocess(free_port(), slow_s=slow_s) as url:
        yield url


@dataclass
class Store(StoreProbe):
    """One store's config, database and simulator terminals, shared by its daemon processes."""

    dsn: str
    sim_url: str
    tmp: Path
    store_id: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:10])
    tpns: dict[str, str] = field(
        default_factory=lambda: {f"lane-{i}": f"C{uuid.uuid4().hex[:11].upper()}" for i in (1, 2)}
    )
    stock: dict[str, int] = field(default_factory=lambda: dict(STOCK))

    async def seed(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.executemany(
                "INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)",
                [(self.store_id, sku, n) for sku, n in self.stock.items()],
            )
        finally:
            await conn.close()

    def config(self, name: str = "a", extra: str = "") -> Path:
        """Write a config for daemon `name` (its own socket, so its own instance id)."""
        sock = self.tmp / f"{self.store_id}-{name}.sock"
        text = config_text(
            self.store_id, sock, self.tmp / name, self.dsn, self.sim_url, self.tpns, timeout_s=1, extra=extra
        )
        path = self.tmp / f"{self.store_id}-{name}.toml"
        path.write_text(text)
        return path

    async def quiescent(self, timeout_s: float = 30.0) -> float:
        """Wait until nothing is unfinished; returns how long it took."""
        started = time.monotonic()
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                open_orders = await conn.fetchval(
                    "SELECT count(*) FROM orders WHERE store_id = $1 AND status IN"
                    " ('pending_payment', 'payment_processing', 'payment_authorized')",
                    self.store_id,
                )
                open_tx = await conn.fetchval(
                    "SELECT count(*) FROM payment_transactions WHERE store_id = $1"
                    " AND status IN ('pending', 'processing', 'unknown')",
                    self.store_id,
                )
                if open_orders == 0 and open_tx == 0:
                    return time.monotonic() - started
                if time.monotonic() - started > timeout_s:
                    raise AssertionError(f"not quiescent after {timeout_s}s: {open_orders} orders, {open_tx} tenders")
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    check = StoreProbe.check_invariants


class DaemonProcess:
    """`gatewayd run` as a real subprocess."""

    def __init__(self, config: Path, *, failpoints: str = "", name: str = "a", args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.failpoints = failpoints
        self.args = args
        self.socket = str(config).replace(".toml", ".sock")
        self.proc: asyncio.subprocess.Process | None = None
        self.log = config.with_suffix(f".{name}.log")

    async def start(self, wait: bool = True) -> DaemonProcess:
        env = {**os.environ, "GATEWAYD_FAILPOINTS": self.failpoints}
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - the child keeps its own copy of the fd
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gatewayd",
                "run",
                "--config",
                str(self.config),
                *self.args,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        if wait:
            await self.ready()
        return self

    async def ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                async with GatewayClient(self.socket, timeout_s=2) as client:
                    if (await client.health()).status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"daemon not ready:\n{self.log.read_text()[-3000:]}")

    def client(self, timeout_s: float = 60.0) -> GatewayClient:
        return GatewayClient(self.socket, timeout_s=timeout_s)

    async def exited(self, timeout_s: float) -> int | None:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            return None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 60)
        return code
