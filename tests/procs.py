"""Real processes for crash tests: the simulator and the daemon (gatewayd.stack.DaemonProcess) as
subprocesses, over one store."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from gatewayd.stack import DaemonProcess, Dialect
from gatewayd.terminals.simulator.server import simulator_subprocess
from tests.harness import STOCK, StoreProbe, config_text, current_dialect, store_spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_cli(
    *args: str, timeout_s: float = 120, cwd: str | Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """`python -m gatewayd ARGS` to its end: (exit code, stdout and stderr together). `cwd` and
    `env` (the whole environment) default to this process's."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatewayd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=None if env is None else dict(env),
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
    """One store's config, database and simulator terminals, shared by its daemon processes, in
    the current SPIn dialect (tests/harness.py)."""

    dsn: str
    simulator_url: str
    tmp: Path
    store_id: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:10])
    tpns: dict[str, str] = field(
        default_factory=lambda: {f"lane-{i}": f"C{uuid.uuid4().hex[:11].upper()}" for i in (1, 2)}
    )
    stock: dict[str, int] = field(default_factory=lambda: dict(STOCK))
    dialect: Dialect = field(default_factory=current_dialect)

    async def seed(self) -> None:
        spec = store_spec(self.store_id, self.simulator_url, self.tpns, stock=self.stock, dialect=self.dialect)
        await spec.seed(self.dsn)

    def config(self, name: str = "a", extra: str = "") -> Path:
        """Write a config for daemon `name` (its own socket, so its own instance id)."""
        sock = self.tmp / f"{self.store_id}-{name}.sock"
        text = config_text(
            self.store_id,
            sock,
            self.tmp / name,
            self.dsn,
            self.simulator_url,
            self.tpns,
            timeout_s=1,
            extra=extra,
            dialect=self.dialect,
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


__all__ = ["DaemonProcess", "Store", "free_port", "run_cli", "simulator_process"]
