"""One way to stand up "PostgreSQL + SPIn simulator + gatewayd": the demo, the tests, the chaos run
and the benchmarks all build their stores, configs and daemon processes here.

- `StoreSpec`: one store (its terminals on a simulator, its stock) and the daemon config for it;
- `DaemonProcess`: `gatewayd run` as a real subprocess (start, ready, kill -9, SIGSTOP, stop);
- `postgres`: the embedded server, started and migrated.

What differs between the users is only what they pass: the demo runs the daemon in-process on
embedded defaults, the tests put daemons in subprocesses to kill them, the chaos run routes the
links through fault proxies, the benchmarks use bigger pools and longer timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from gatewayd.api.client import GatewayClient
from gatewayd.store import migrate
from gatewayd.store.db import Database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.maintenance import MaintenanceStore


def authkey_for(tpn: str) -> str:
    """The auth key a stack configures for a simulated terminal (the simulator binds each Tpn to
    the first key it sees, so the key must be the same every time)."""
    return f"KEY{tpn[-7:]}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


Dialect = Literal["rest", "local"]
DIALECTS: tuple[Dialect, ...] = ("rest", "local")


@dataclass
class TerminalSpec:
    """One simulated terminal as the daemon's config names it. `dialect`: "rest" (SPIn Cloud,
    `driver = "spin"`, named by `tpn`) or "local" (SPIn Local, `driver = "spin-local"`, the same
    number as its `register_id`: the simulator serves both dialects on one port and takes a
    register id equal to a Tpn for the same terminal)."""

    id: str
    tpn: str
    base_url: str
    name: str = ""
    authkey: str = ""
    timeout_s: int = 2
    http_margin_s: float = 1.0
    dialect: Dialect = "rest"

    def toml(self) -> str:
        number = f"tpn = {_toml(self.tpn)}\n"
        if self.dialect == "local":
            number = f'driver = "spin-local"\nregister_id = {_toml(self.tpn)}\n'
        return (
            f"[[terminals]]\nid = {_toml(self.id)}\nname = {_toml(self.name or 'Lane ' + self.id)}\n"
            f"base_url = {_toml(self.base_url)}\n{number}"
            f"authkey = {_toml(self.authkey or authkey_for(self.tpn))}\ntimeout_s = {self.timeout_s}\n"
            f"http_margin_s = {self.http_margin_s}\nis_live = false\n"
        )


@dataclass
class StoreSpec:
    """One store: its id, its terminals and its stock; writes the daemon's config and seeds the stock."""

    terminals: list[TerminalSpec]
    store_id: str = field(default_factory=lambda: "s" + uuid.uuid4().hex[:10])
    stock: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # a SKU's display name, where it has one

    @classmethod
    def simulated(
        cls,
        base_url: str,
        count: int,
        *,
        store_id: str | None = None,
        prefix: str = "T",
        stock: Mapping[str, int] | None = None,
        **terminal: Any,
    ) -> StoreSpec:
        """`count` terminals lane-1 … lane-N on one simulator, each with a Tpn of its own."""
        terminals = [
            TerminalSpec(f"lane-{i}", f"{prefix}{uuid.uuid4().hex[:11].upper()}", base_url, **terminal)
            for i in range(1, count + 1)
        ]
        spec = cls(terminals, stock=dict(stock or {}))
        if store_id is not None:
            spec.store_id = store_id
        return spec

    @property
    def tpns(self) -> dict[str, str]:
        return {t.id: t.tpn for t in self.terminals}

    def config_text(
        self,
        *,
        state_dir: Path,
        socket_path: Path | str,
        dsn: str,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        extra: str = "",
    ) -> str:
        """The daemon's TOML config. `sections`: settings by table ([database], [api], ...) over
        the defaults below; `extra`: raw TOML appended before the terminals."""
        tables: dict[str, dict[str, Any]] = {
            "database": {"dsn": dsn, "pool_min": 1, "pool_max": 8},
            "api": {"socket": str(socket_path), "checkout_wait_s": 30},
            "metrics": {"listen": "127.0.0.1:0"},
            "health": {"interval_s": 0.5, "failure_threshold": 1},
        }
        for name, values in (sections or {}).items():
            tables.setdefault(name, {}).update(values)
        text = f"store_id = {_toml(self.store_id)}\nstate_dir = {_toml(state_dir)}\n"
        for name, values in tables.items():
            text += f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
        return text + (extra.rstrip() + "\n" if extra else "") + "".join(t.toml() for t in self.terminals)

    def write_config(self, path: Path, **kw: Any) -> Path:
        path.write_text(self.config_text(**kw))
        return path

    async def seed(self, dsn: str) -> None:
        """Put the store's stock on the shelf."""
        if not self.stock:
            return
        db = Database(dsn, pool_min=1, pool_max=1)
        await db.open()
        try:
            await MaintenanceStore(db, self.store_id).seed_inventory([(sku, sku, n) for sku, n in self.stock.items()])
        finally:
            await db.close()


async def postgres(data_dir: Path, *, durable: bool = True) -> EmbeddedPostgres:
    """The embedded PostgreSQL under `data_dir`, started (or reused) and migrated."""
    server = EmbeddedPostgres(data_dir, durable=durable)
    dsn = await asyncio.to_thread(server.start)
    await migrate.apply_dsn(dsn)
    return server


class DaemonProcess:
    """`gatewayd run --config FILE` as a real subprocess, its output appended to a log file."""

    def __init__(
        self,
        config: Path,
        *,
        failpoints: str = "",
        name: str = "a",
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.failpoints = failpoints
        self.args = args
        self.env = dict(env or {})
        self.preexec_fn = preexec_fn
        self.socket = str(config).replace(".toml", ".sock")
        self.proc: asyncio.subprocess.Process | None = None
        self.log = config.with_suffix(f".{name}.log")
        self.stopped = False  # SIGSTOPped

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self, wait: bool = True) -> DaemonProcess:
        env = {**os.environ, **self.env, "GATEWAYD_FAILPOINTS": self.failpoints}
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
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        self.stopped = False
        if wait:
            await self.ready()
        return self

    async def ready(self, timeout_s: float = 30.0) -> None:
        """Until GET /v1/health answers 200 on the socket; raises with the log's tail if it exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with GatewayClient(self.socket, timeout_s=2) as client:
                    if (await client.health()).status == 200:
                        return
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

    def signal(self, sig: int) -> bool:
        if self.pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
            return True
        return False

    async def kill(self) -> None:
        """kill -9 (a stopped process is continued first, so that it dies at once)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            self.sigcont()
            await self.proc.wait()

    def sigstop(self) -> bool:
        self.stopped = self.signal(signal.SIGSTOP)
        return self.stopped

    def sigcont(self) -> None:
        if self.stopped:
            self.signal(signal.SIGCONT)
            self.stopped = False

    async def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: the daemon drains, then exits (0 when all went well)."""
        assert self.proc is not None
        self.sigcont()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)
