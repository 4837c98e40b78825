"""The benchmark's world: a durable embedded PostgreSQL, the SPIn simulator and gatewayd as real
processes, plus /proc readings and a lean HTTP/1.1 client for unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

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
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "versions": versions, "gatewayd_root": str(ROOT)}


# ------------------------------------------------------------------ /proc


def loadavg() -> str:
    """The 1/5/15-minute load averages: other work on the machine shows here."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
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
    from gatewayd.store import migrate as m

    conn = await asyncpg.connect(dsn)
    try:
        await m.apply(conn)
    finally:
        await conn.close()


def pgbench(server: Any, clients: int, seconds: float, scale: int) -> dict[str, Any]:
    """pgbench's built-in TPC-B-like script against its own database on the same server."""
    tool = str(server.pg_tool("pgbench"))
    base = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    psql = str(server.pg_tool("psql"))
    have = subprocess.run([psql, *base, "-d", "postgres", "-Atc",
                           "SELECT 1 FROM pg_database WHERE datname = 'pgbench'"], capture_output=True, text=True)
    current = ""
    if have.stdout.strip() == "1":
        current = subprocess.run([psql, *base, "-d", "pgbench", "-Atc", "SELECT count(*) FROM pgbench_branches"],
                                 capture_output=True, text=True).stdout.strip()
    else:
        subprocess.run([psql, *base, "-d", "postgres", "-c", "CREATE DATABASE pgbench"], check=True,
                       capture_output=True)
    if current != str(scale):
        print(f"  (initialising pgbench at scale {scale}, once)", flush=True)
        subprocess.run([tool, *base, "-i", "-q", "-s", str(scale), "pgbench"], check=True, capture_output=True)
    out = subprocess.run([tool, *base, "-c", str(clients), "-j", str(min(2, clients)), "-T", str(int(seconds)),
                          "-n", "pgbench"], capture_output=True, text=True, check=True).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    return {"tps": tps, "latency_avg_ms": float(lat.group(1)) if lat else None, "clients": clients,
            "scale": scale, "seconds": seconds}


# ------------------------------------------------------------------ the simulator and the daemon


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_simulator(tmp: Path, latency_ms: int = 0) -> tuple[Proc, str]:
    port = free_port()
    log = tmp / f"sim-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gatewayd", "simulate", "--port", str(port),
                                 "--latency-ms", str(latency_ms)], cwd=ROOT, env=child_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return Proc(proc, log), url
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError("simulator did not start")


@dataclass
class Store:
    """One store: its terminals (Tpns on the simulator), config file, socket."""

    dsn: str
    sim_url: str
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

    def write_config(self) -> Path:
        parts = [f'store_id = "{self.store_id}"\nstate_dir = "{self.tmp / self.store_id}"\n',
                 f'[database]\ndsn = "{self.dsn}"\npool_max = {self.pool_max}\n',
                 f'[api]\nsocket = "{self.socket}"\ncheckout_wait_s = 60\n',
                 '[metrics]\nlisten = "127.0.0.1:0"\n',
                 f'[health]\ninterval_s = {self.health_interval_s}\n',
                 f'[log]\nlevel = "{self.log_level}"\n', self.extra, "\n"]
        for i in range(1, self.terminals + 1):
            tpn = f"{self.store_id.upper()}{i:06d}"
            parts.append(f'[[terminals]]\nid = "lane-{i}"\nbase_url = "{self.sim_url}"\ntpn = "{tpn}"\n'
                         f'authkey = "K{tpn}"\ntimeout_s = 30\nis_live = false\n')
        self.config_path.write_text("".join(parts))
        return self.config_path

    async def seed(self, skus: dict[str, int]) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.executemany("INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)",
                                   [(self.store_id, sku, n) for sku, n in skus.items()])
        finally:
            await conn.close()


def start_daemon(store: Store, *, failpoints: str = "", name: str = "daemon") -> Proc:
    log = store.tmp / f"{store.store_id}-{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gatewayd", "run", "--config", str(store.config_path)],
                                cwd=ROOT, env=child_env(GATEWAYD_FAILPOINTS=failpoints), stdout=out,
                                stderr=subprocess.STDOUT)
    return Proc(proc, log)


async def wait_ready(store: Store, proc: Proc, timeout_s: float = 120.0) -> float:
    """Until GET /v1/health answers 200 over the socket; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.proc.returncode}: {proc.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            conn = await HttpConn.open(store.socket)
            try:
                status, _ = await conn.request("GET", "/v1/health")
            finally:
                conn.close()
            if status in (200, 503) or status < 600:
                return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise RuntimeError(f"daemon not ready: {proc.log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def world(terminals: int, **store_kw: Any) -> AsyncIterator[tuple[Any, Store, Proc, Proc]]:
    """PostgreSQL (shared, durable), a simulator and a ready daemon holding `terminals` lanes."""
    server = postgres()
    await migrate(server.dsn)
    tmp = WORK / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    sim, url = start_simulator(tmp)
    daemon: Proc | None = None
    try:
        store = Store(server.dsn, url, tmp, terminals, **store_kw)
        store.write_config()
        await store.seed({f"SKU-{i}": 10**9 for i in range(64)})
        daemon = start_daemon(store)
        await wait_ready(store, daemon)
        yield server, store, daemon, sim
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()


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
