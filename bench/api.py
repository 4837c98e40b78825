"""GET /v1/health (pings the database) and GET /v1/terminals (does not) requests/s over the unix
socket, beside a bare aiohttp app answering a trivial JSON on a unix socket, in the same run.

The load generator runs in its own process (a lean HTTP/1.1 client, many keep-alive connections)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import env

CONNECTIONS = 64

BARE_APP = """
import asyncio, sys, uvloop
from aiohttp import web
async def hello(request):
    return web.json_response({"status": "ok"})
async def main():
    app = web.Application(); app.router.add_get("/v1/health", hello)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    await web.UnixSite(runner, sys.argv[1]).start(); print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


async def _load(socket: str, path: str, connections: int, seconds: float) -> dict[str, Any]:
    conns = [await env.HttpConn.open(socket) for _ in range(connections)]
    end = time.perf_counter() + seconds
    counts = [0] * connections
    bad = [0]

    async def one(i: int) -> None:
        c = conns[i]
        while time.perf_counter() < end:
            status, _ = await c.request("GET", path)
            counts[i] += 1
            if status != 200:
                bad[0] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(connections)))
    took = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"requests": sum(counts), "rps": sum(counts) / took, "non_200": bad[0]}


def load_main() -> None:
    import uvloop

    socket, path, connections, seconds = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    print(json.dumps(uvloop.run(_load(socket, path, connections, seconds))))


def measure(socket: str, path: str, pid: int | None, seconds: float) -> dict[str, Any]:
    """Run the load generator as a separate process; the server's CPU share meanwhile."""
    c0, t0 = env.cpu_seconds(pid), time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "bench.api", "load", socket, path, str(CONNECTIONS), str(seconds)],
        cwd=Path(__file__).resolve().parents[1],
        env=env.child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = (env.cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "server_cpu_pct": cpu, "path": path}


async def run(quick: bool) -> dict[str, Any]:
    seconds = 4.0 if quick else 10.0
    rows = []
    tmp = env.WORK / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    bare_sock = str(tmp / "bare.sock")
    Path(bare_sock).unlink(missing_ok=True)  # noqa: ASYNC240 - once, before anything runs
    bare = subprocess.Popen(  # noqa: ASYNC220 - started before the measurement
        [sys.executable, "-c", BARE_APP, bare_sock], stdout=subprocess.PIPE, env=env.child_env()
    )
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        async with env.world(64) as (_server, store, daemon, _sim):
            for label, sock, path, pid in (
                ("bare aiohttp app, trivial JSON", bare_sock, "/v1/health", bare.pid),
                ("gatewayd GET /v1/terminals (64, no DB)", store.socket, "/v1/terminals", daemon.pid),
                ("gatewayd GET /v1/health (DB ping)", store.socket, "/v1/health", daemon.pid),
            ):
                r = await asyncio.to_thread(measure, sock, path, pid, seconds)
                r["label"] = label
                rows.append(r)
                print(f"  {label}: {r['rps']:.0f} req/s (server cpu {r['server_cpu_pct']:.0f}%)", flush=True)
    finally:
        bare.terminate()
        bare.wait()
    base = rows[0]["rps"]
    for r in rows:
        r["vs_bare"] = r["rps"] / base
        r["us_per_request_cpu"] = r["server_cpu_pct"] / 100 / r["rps"] * 1e6 if r["rps"] else None
    return {"benchmark": "api", "rows": rows, "connections": CONNECTIONS, "seconds": seconds}


def table(r: dict[str, Any]) -> list[list[str]]:
    out = [["endpoint", "req/s", "vs bare", "server CPU", "server CPU us/req"]]
    for row in r["rows"]:
        out.append(
            [
                row["label"],
                f"{row['rps']:.0f}",
                f"{row['vs_bare']:.2f}",
                f"{row['server_cpu_pct']:.0f}%",
                f"{row['us_per_request_cpu']:.0f}",
            ]
        )
    return out


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "load":
    load_main()


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    return [
        (f"{row['label']}: server CPU us/request", f"{row['us_per_request_cpu']:.0f}", "", None) for row in r["rows"]
    ]
