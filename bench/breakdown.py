"""Where the time of one checkout goes, at one client: from the request's first byte to the answer's last.

The daemon runs as `python -m bench.traced` (this tree's gatewayd with timestamps at the edges of
each phase, see bench/traced.py); the POS client stamps its first byte out and the answer's last
byte in on the same monotonic clock. PostgreSQL logs every statement's duration
(`log_min_duration_statement = 0`, reset afterwards), times its functions (`track_functions`) and
its WAL writes and fsyncs (`track_wal_io_timing`, pg_stat_io); py-spy samples the daemon while
the card checkouts run, when it is installed (`pip install py-spy`), to tell its busy time from
its waits. The embedded PostgreSQL has no pg_stat_statements (the wheel ships no contrib).

A phase is the median over the checkouts of (its end - its start); a gap is the median time
between two consecutive edges that no wrapper covers (the event loop, task switches, code
between the wrapped calls).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from bench import env
from bench.checkouts import body
from gatewayd.stack import DaemonProcess

SETTINGS = {
    "log_min_duration_statement": "0",
    "log_line_prefix": "'%m [%p] '",
    "track_functions": "'all'",
    "track_wal_io_timing": "on",
    "track_io_timing": "on",
}


class TracedDaemon(DaemonProcess):
    """`python -m bench.traced run --config FILE` instead of `python -m gatewayd run ...`."""

    async def start(self, wait: bool = True) -> DaemonProcess:
        environ = {**os.environ, **self.env, "GATEWAYD_FAILPOINTS": ""}
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - the child keeps its own copy of the fd
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.traced",
                "run",
                "--config",
                str(self.config),
                env=environ,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd=str(env.ROOT),
            )
        if wait:
            await self.ready(timeout_s=120.0)
        return self


async def _configure(dsn: str, settings: dict[str, str] | None) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for key, value in SETTINGS.items():
            await conn.execute(f"ALTER SYSTEM SET {key} = {value}" if settings else f"ALTER SYSTEM RESET {key}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def _stats(dsn: str, reset: bool) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        if reset:
            await conn.execute(
                "SELECT pg_stat_reset(); SELECT pg_stat_reset_shared('io'); SELECT pg_stat_reset_shared('wal')"
            )
            return {}
        await conn.execute("SELECT pg_stat_force_next_flush()")
        functions = [
            dict(r)
            for r in await conn.fetch(
                "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions ORDER BY total_time DESC"
            )
        ]
        wal = [
            dict(r)
            for r in await conn.fetch(
                "SELECT context, writes, write_time, fsyncs, fsync_time FROM pg_stat_io WHERE object = 'wal'"
            )
        ]
        db = dict(
            await conn.fetchrow(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
        )
        return {"functions": functions, "wal": wal, "database": db}
    finally:
        await conn.close()


def _size(path: Path) -> int:
    return path.stat().st_size


def _tail(path: Path, start: int) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace")


async def _checkouts(socket: str, kind: str, n: int, seed: int) -> list[tuple[int, int]]:
    conn = await env.HttpConn.open(socket)
    rng = random.Random(seed)
    out = []
    try:
        for _ in range(n):
            payload = body(kind, "lane-1", "SKU-0", rng)
            t0 = time.perf_counter_ns()
            status, answer = await conn.request("POST", "/v1/checkouts", payload)
            t1 = time.perf_counter_ns()
            if status != 200:
                raise RuntimeError(f"checkout answered {status}: {answer[:300]!r}")
            out.append((t0, t1))
    finally:
        conn.close()
    return out


def _pg_statements(log: str) -> dict[str, list[float]]:
    """Server-side durations (ms) by statement, from log_min_duration_statement lines."""
    found: dict[str, list[float]] = defaultdict(list)
    for m in re.finditer(r"duration: ([\d.]+) ms\s+(?:statement|execute [^:]*|bind [^:]*|parse [^:]*):\s*(.*)", log):
        text = " ".join(m.group(2).split())
        if "gw_prepare_checkout" in text or "gw_checkout_intent" in text:
            key = "intent (function)"
        elif "gw_record_tender_and" in text:
            key = "answer and completion (function)"
        elif "gw_commit_checkout" in text:
            key = "commit (function)"
        elif "status = 'processing', sent_at" in text:
            key = "mark_sent"
        elif "SET status = $4" in text:
            key = "record_tender"
        elif "array_agg(t ORDER BY" in text:
            key = "load"
        else:
            key = "other: " + text[:50]
        found[key].append(float(m.group(1)))
    return found


def _spans(events: list[tuple[int, str, str]], t0: int, t1: int) -> list[tuple[str, int, int]]:
    """(name, start, end) of every wrapped call that ran inside [t0, t1]."""
    open_: dict[str, list[int]] = defaultdict(list)
    out = []
    for t, name, edge in events:
        if t < t0 or t > t1:
            continue
        if edge == "start":
            open_[name].append(t)
        elif open_[name]:
            out.append((name, open_[name].pop(), t))
    return sorted(out, key=lambda s: s[1])


def _phases(events: list[tuple[int, str, str]], samples: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per checkout, its timeline as consecutive segments between the edges seen."""
    rows = []
    for t0, t1 in samples:
        spans = _spans(events, t0, t1)
        edges = sorted(
            [(t0, "client: first byte out")]
            + [(s, f"{n} start") for n, s, _ in spans]
            + [(e, f"{n} end") for n, _, e in spans]
            + [(t1, "client: last byte in")]
        )
        rows.append({"edges": edges, "spans": spans, "total": t1 - t0})
    return rows


def _median_ms(values: list[int]) -> float:
    return statistics.median(values) / 1e6 if values else float("nan")


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median duration of each wrapped call (by name, in order of first appearance), and the
    timeline of the most common sequence of edges: the median of each segment between two
    consecutive edges, so that the segments add up to (about) the whole checkout."""
    durations: dict[str, list[int]] = defaultdict(list)
    order: list[str] = []
    shapes: Counter[tuple[str, ...]] = Counter()
    for r in rows:
        seen: Counter[str] = Counter()
        for name, s, e in r["spans"]:
            seen[name] += 1
            key = name if seen[name] == 1 else f"{name} #{seen[name]}"
            durations[key].append(e - s)
            if key not in order:
                order.append(key)
        shapes[tuple(label for _, label in r["edges"])] += 1
    shape, count = shapes.most_common(1)[0]
    segments: list[list[int]] = [[] for _ in range(len(shape) - 1)]
    for r in rows:
        if tuple(label for _, label in r["edges"]) != shape:
            continue
        times = [t for t, _ in r["edges"]]
        for i, (a, b) in enumerate(itertools.pairwise(times)):
            segments[i].append(b - a)
    totals = sorted(r["total"] for r in rows)
    return {
        "total_ms": _median_ms(totals),
        "p99_ms": totals[int(0.99 * (len(totals) - 1))] / 1e6,
        "calls_ms": {k: round(_median_ms(durations[k]), 3) for k in order},
        "timeline_checkouts": count,
        "timeline_ms": [
            {"from": a, "to": b, "ms": round(_median_ms(seg), 3)}
            for (a, b), seg in zip(itertools.pairwise(shape), segments, strict=True)
        ],
    }


def _pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    tool = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(tool).exists():
        return None
    return subprocess.Popen(
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "1000",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


_AREAS = (
    ("asyncpg", "asyncpg (protocol, records)"),
    ("aiohttp/web", "aiohttp server (parse, respond)"),
    ("aiohttp", "aiohttp client (terminal HTTP)"),
    ("msgspec", "msgspec"),
    ("logging", "logging"),
    ("gatewayd/terminals", "gatewayd lanes and SPIn codec"),
    ("gatewayd/store", "gatewayd store"),
    ("gatewayd/checkout", "gatewayd checkout"),
    ("gatewayd/api", "gatewayd API"),
    ("gatewayd", "gatewayd other"),
    ("asyncio", "asyncio"),
)


def _profile(path: Path, seconds: float, rate: int = 1000) -> dict[str, Any]:
    """Busy share of the daemon's main thread (the event loop; other threads are left out) and
    where its busy samples were (innermost frame of a known library or of gatewayd)."""
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("Thread._bootstrap"):
            continue  # another thread (the log writer waits on its queue): only the event loop's counts
        n = int(count)
        total += n
        area = "other (interpreter, uvloop callbacks)"
        for frame in reversed(frames):
            where = frame.replace("\\", "/")
            hit = next(
                (label for key, label in _AREAS if f"/{key}/" in where or f"{key}/" in where.split("(", 1)[-1]), None
            )
            if hit:
                area = hit
                break
        areas[area] += n
    expected = seconds * rate
    return {
        "samples_busy": total,
        "busy_pct": round(100 * total / expected, 1) if expected else None,
        "areas_pct_of_busy": {k: round(100 * v / total, 1) for k, v in areas.most_common()} if total else {},
    }


async def run(quick: bool) -> dict[str, Any]:
    n = 200 if quick else 1000
    server = env.postgres()
    await env.migrate(server.dsn)
    tmp = env.WORK / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    trace_out = tmp / "breakdown-trace.json"
    spy_out = tmp / "breakdown-pyspy.txt"
    log_path = Path(env.WORK / "pg" / "server.log")
    await _configure(server.dsn, SETTINGS)
    try:
        async with env.simulator() as url:
            store = env.Store(server.dsn, url, tmp, 4)
            store.write_config()
            await store.seed({f"SKU-{i}": 10**9 for i in range(64)})
            daemon = TracedDaemon(store.config_path, name="traced", env=env.child_env(BENCH_TRACE_OUT=str(trace_out)))
            await daemon.start()
            try:
                await _checkouts(store.socket, "card", 50, 1)  # warm: every statement prepared, pool full
                await _checkouts(store.socket, "cash", 20, 2)
                await _stats(server.dsn, reset=True)
                log_from = await asyncio.to_thread(_size, log_path)
                spy_s = max(5.0, n * 0.004)
                spy = _pyspy(daemon.pid or 0, spy_s, spy_out)
                started = time.monotonic()
                card = await _checkouts(store.socket, "card", n, 3)
                card_s = time.monotonic() - started
                measured = len(card)
                if spy is not None:
                    # keep the daemon busy with the same work until the profiler's window closes
                    while time.monotonic() - started < spy_s + 0.5:
                        measured += len(await _checkouts(store.socket, "card", 20, 5))
                    spy.wait(timeout=60)
                stats = await _stats(server.dsn, reset=False)
                cash = await _checkouts(store.socket, "cash", n, 4)
                pg_log = await asyncio.to_thread(_tail, log_path, log_from)
            finally:
                await daemon.stop()
    finally:
        await _configure(server.dsn, None)
    trace = json.loads(trace_out.read_text())
    events = [tuple(e) for e in trace["events"]]
    statements = _pg_statements(pg_log)
    wal = {k: sum(w[k] or 0 for w in stats["wal"]) for k in ("writes", "write_time", "fsyncs", "fsync_time")}
    commits = stats["database"]["xact_commit"]
    result: dict[str, Any] = {
        "benchmark": "breakdown",
        "checkouts": n,
        "card": _summary(_phases(events, card)),
        "cash": _summary(_phases(events, cash)),
        "card_checkouts_per_s_one_client": round(n / card_s, 1),
        "postgresql": {
            "statement_ms_median": {
                k: round(statistics.median(v), 3) for k, v in statements.items() if len(v) >= n // 2
            },
            "statement_counts": {k: len(v) for k, v in statements.items() if len(v) >= n // 2},
            "functions": stats["functions"],
            "wal_fsyncs_per_card_checkout": round(wal["fsyncs"] / max(1, measured), 2),
            "wal_fsync_ms_avg": round(wal["fsync_time"] / max(1, wal["fsyncs"]), 3),
            "commits_per_card_checkout": round(commits / max(1, measured), 2),
        },
        "nodelay": {k: sorted(set(v)) for k, v in trace["nodelay"].items()},
    }
    if spy_out.exists():
        result["daemon_profile"] = _profile(spy_out, spy_s)
    return result


def table(r: dict[str, Any]) -> list[list[str]]:
    out = [["one checkout at 1 client, from the request's first byte to the answer's last", "median ms"]]
    for kind in ("card", "cash"):
        out.append([f"{kind} checkout, whole", f"{r[kind]['total_ms']:.3f}"])
        for seg in r[kind]["timeline_ms"]:
            out.append([f"  {seg['from']}  ->  {seg['to']}", f"{seg['ms']:.3f}"])
    for k, v in r["postgresql"]["statement_ms_median"].items():
        out.append([f"server-side: {k}", f"{v:.3f}"])
    out.append(["WAL fsyncs per card checkout", f"{r['postgresql']['wal_fsyncs_per_card_checkout']}"])
    out.append(["WAL fsync, average ms", f"{r['postgresql']['wal_fsync_ms_avg']}"])
    prof = r.get("daemon_profile")
    if prof:
        out.append(["daemon main thread busy, % of the card run", f"{prof['busy_pct']}"])
        for k, v in list(prof["areas_pct_of_busy"].items())[:8]:
            out.append([f"  {k}, % of busy", f"{v}"])
    out.append(
        ["TCP_NODELAY on postgresql / terminal sockets", f"{r['nodelay']['postgresql']} / {r['nodelay']['terminal']}"]
    )
    return out


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    pg = r["postgresql"]
    return [
        (
            "breakdown (traced daemon): card / cash checkout, 1 client, median ms",
            f"{r['card']['total_ms']:.2f} / {r['cash']['total_ms']:.2f}",
            "",
            None,
        ),
        (
            "breakdown: WAL fsyncs / commits per card checkout",
            f"{pg['wal_fsyncs_per_card_checkout']} / {pg['commits_per_card_checkout']}",
            "",
            None,
        ),
    ]
