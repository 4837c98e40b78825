"""The benchmark's world: a durable embedded PostgreSQL, the SPIn simulator and gatewayd as real
processes, plus /proc readings and a lean HTTP/1.1 client for unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gatewayd.stack import DaemonProcess, StoreSpec, TerminalSpec
from gatewayd.store.migrate import apply_dsn
from gatewayd.terminals.simulator.server import simulator_subprocess

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose gatewayd is measured
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(os.environ.get("GATEWAYD_BENCH_DIR", "/var/tmp/gatewayd-bench"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def child_env(**extra: str) -> dict[str, str]:
    """Children import gatewayd from ROOT (the repo or a scratch copy), never from elsewhere."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("GATEWAYD_FAILPOINTS", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ machine


def nproc() -> int:
    """The cores this process may run on (what every process of a benchmark shares)."""
    return len(os.sched_getaffinity(0))


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1) if m else "?"
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("uvloop", "asyncpg", "aiohttp", "msgspec"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    with contextlib.suppress(Exception):
        from gatewayd.store.embedded import bin_dir

        out = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True)
        versions["postgresql"] = out.stdout.strip().rsplit(" ", 1)[-1]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "versions": versions,
        "gatewayd_root": str(ROOT),
    }


# ------------------------------------------------------------------ /proc


def loadavg() -> str:
    """The 1/5/15-minute load averages: other work on the machine shows here."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _live(pid: int | None) -> int:
    if pid is None:
        raise RuntimeError("the measured process is not running")
    return pid


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, in seconds."""
    pid = _live(pid)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, CPU seconds, CPU seconds of its children that exited) of a process, None when
    it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK, (int(fields[13]) + int(fields[14])) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and of every process below it, live or exited (PostgreSQL: the
    postmaster, its live backends, and the backends it has reaped, such as pgbench's)."""
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    wanted, total, frontier = {root}, 0.0, [root]
    while frontier:
        pid = frontier.pop()
        _, own, reaped = stats.get(pid, (0, 0.0, 0.0))
        total += own + reaped
        for child, (parent, _, _) in stats.items():
            if parent == pid and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return total


def postmaster_pid() -> int:
    return int((WORK / "pg" / "postmaster.pid").read_text().split()[0])


def pid_of(fragment: str) -> int | None:
    """The first process whose command line holds `fragment` (the simulator, by its port)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmd and "python" in cmd:
                return int(entry.name)
    return None


def rss_bytes(pid: int | None) -> int:
    pid = _live(pid)
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


# ------------------------------------------------------------------ PostgreSQL


def postgres() -> Any:
    """The benchmark's durable embedded server (fsync on), started once and reused."""
    from gatewayd.store.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(WORK / "pg", durable=True)
    server.start()
    conf = (WORK / "pg" / "postgresql.conf").read_text()
    assert "fsync = on" in conf, "the benchmark database must be durable"
    return server


async def migrate(dsn: str) -> None:
    await apply_dsn(dsn)


def pgbench(server: Any, clients: int, seconds: float, scale: int) -> dict[str, Any]:
    """pgbench's built-in TPC-B-like script against its own database on the same server."""
    tool = str(server.pg_tool("pgbench"))
    base = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    psql = str(server.pg_tool("psql"))
    have = subprocess.run(
        [psql, *base, "-d", "postgres", "-Atc", "SELECT 1 FROM pg_database WHERE datname = 'pgbench'"],
        capture_output=True,
        text=True,
    )
    current = ""
    if have.stdout.strip() == "1":
        current = subprocess.run(
            [psql, *base, "-d", "pgbench", "-Atc", "SELECT count(*) FROM pgbench_branches"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    else:
        subprocess.run(
            [psql, *base, "-d", "postgres", "-c", "CREATE DATABASE pgbench"], check=True, capture_output=True
        )
    if current != str(scale):
        print(f"  (initialising pgbench at scale {scale}, once)", flush=True)
        subprocess.run([tool, *base, "-i", "-q", "-s", str(scale), "pgbench"], check=True, capture_output=True)
    out = subprocess.run(
        [tool, *base, "-c", str(clients), "-j", str(min(2, clients)), "-T", str(int(seconds)), "-n", "pgbench"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    return {
        "tps": tps,
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "clients": clients,
        "scale": scale,
        "seconds": seconds,
    }


def vacuum(server: Any, database: str) -> None:
    """VACUUM (ANALYZE) a whole database, waiting for it (between measured windows)."""
    psql = str(server.pg_tool("psql"))
    base = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    subprocess.run([psql, *base, "-d", database, "-qc", "VACUUM (ANALYZE)"], check=True, capture_output=True)


# ------------------------------------------------------------------ the simulator and the daemon
# (built by gatewayd.stack, as the demo, the tests and the chaos run build them)


@contextlib.asynccontextmanager
async def simulator(latency_ms: int = 0) -> AsyncIterator[str]:
    """`gatewayd simulate` in its own process; yields its URL."""
    async with simulator_subprocess(free_port(), args=("--latency-ms", str(latency_ms))) as url:
        yield url


@dataclass
class Store:
    """One store: its terminals (Tpns on the simulator), config file, socket."""

    dsn: str
    simulator_url: str
    tmp: Path
    terminals: int
    store_id: str = field(default_factory=lambda: "b" + uuid.uuid4().hex[:10])
    health_interval_s: float = 30.0
    pool_max: int = 10
    log_level: str = "INFO"
    extra: str = ""

    @property
    def socket(self) -> str:
        return str(self.tmp / f"{self.store_id}.sock")

    @property
    def config_path(self) -> Path:
        return self.tmp / f"{self.store_id}.toml"

    def terminal_ids(self) -> list[str]:
        return [f"lane-{i}" for i in range(1, self.terminals + 1)]

    def spec(self, stock: dict[str, int] | None = None) -> StoreSpec:
        terminals = [
            TerminalSpec(f"lane-{i}", f"{self.store_id.upper()}{i:06d}", self.simulator_url, timeout_s=30)
            for i in range(1, self.terminals + 1)
        ]
        return StoreSpec(terminals, store_id=self.store_id, stock=stock or {})

    def write_config(self) -> Path:
        return self.spec().write_config(
            self.config_path,
            state_dir=self.tmp / self.store_id,
            socket_path=self.socket,
            dsn=self.dsn,
            sections={
                "database": {"pool_min": 2, "pool_max": self.pool_max},
                "api": {"checkout_wait_s": 60},
                "health": {"interval_s": self.health_interval_s, "failure_threshold": 2},
                "log": {"level": self.log_level},
            },
            extra=self.extra,
        )

    async def seed(self, skus: dict[str, int]) -> None:
        await self.spec(skus).seed(self.dsn)


async def start_daemon(store: Store, *, failpoints: str = "", name: str = "daemon", wait: bool = True) -> DaemonProcess:
    """The store's daemon as a real process (children import gatewayd from ROOT)."""
    daemon = DaemonProcess(store.config_path, failpoints=failpoints, name=name, env=child_env())
    await daemon.start(wait=False)
    if wait:
        await daemon.ready(timeout_s=120.0)
    return daemon


@contextlib.asynccontextmanager
async def world(terminals: int, **store_kw: Any) -> AsyncIterator[tuple[Any, Store, DaemonProcess, str]]:
    """PostgreSQL (shared, durable), a simulator and a ready daemon holding `terminals` lanes."""
    server = postgres()
    await migrate(server.dsn)
    tmp = WORK / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    async with simulator() as url:
        store = Store(server.dsn, url, tmp, terminals, **store_kw)
        store.write_config()
        await store.seed({f"SKU-{i}": 10**9 for i in range(64)})
        daemon = await start_daemon(store)
        try:
            yield server, store, daemon, url
        finally:
            await daemon.stop()


# ------------------------------------------------------------------ a lean HTTP/1.1 client


class HttpConn:
    """One keep-alive HTTP/1.1 connection over a unix socket: a request at a time, no frills.

    Cheaper per request than aiohttp's client, so the load generator is not what is measured.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> HttpConn:
        for _ in range(200):  # a full listen backlog answers EAGAIN: wait for the server to accept
            try:
                reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
                return cls(reader, writer)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        raise ConnectionError(f"cannot connect to {path}: backlog full")

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: gatewayd\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        return await self.read_response()

    async def read_response(self) -> tuple[int, bytes]:
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", header)
        if m is None:
            raise ValueError("no content-length")
        return status, await self.reader.readexactly(int(m.group(1)))

    def close(self) -> None:
        self.writer.close()


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    t = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t)
