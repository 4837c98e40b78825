"""`gatewayd demo` end to end: a real subprocess, the curl example it prints, a clean stop, data reused."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from gatewayd.api.client import GatewayClient

GATEWAYD = (sys.executable, "-m", "gatewayd")


async def start_demo(
    state: Path, gatewayd: Sequence[str] = GATEWAYD, **kw: Any
) -> tuple[asyncio.subprocess.Process, str]:
    """`gatewayd demo` until its ready text (`gatewayd`: the command; `kw`: cwd, env ...)."""
    proc = await asyncio.create_subprocess_exec(
        *gatewayd,
        "demo",
        "--state-dir",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        **kw,
    )
    assert proc.stdout is not None
    seen = ""
    while "Press Ctrl-C to stop." not in seen:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, f"demo exited early:\n{seen}"
        seen += line.decode()
    return proc, seen


async def stop_demo(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.read(), 60)
    return await asyncio.wait_for(proc.wait(), 60)


def _curl_example(output: str) -> str:
    match = re.search(r"(curl -s --unix-socket .*?http://gatewayd/v1/checkouts)", output, re.S)
    assert match, output
    return match.group(1).replace("\\\n", " ")


async def card_checkout(output: str, info: dict[str, Any]) -> dict[str, Any]:
    """The card payment the demo's ready text prints, with curl (or the client without curl)."""
    command = _curl_example(output)
    if shutil.which("curl"):
        result = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", command], capture_output=True, text=True, timeout=60
        )
        answer: dict[str, Any] = json.loads(result.stdout)
    else:  # the same request through the client
        body = json.loads(
            re.search(r'-d "(.*)"', command)
            .group(1)
            .replace('\\"', '"')  # type: ignore[union-attr]
            .replace("$(date +%s%N)", "1")
        )
        async with GatewayClient(info["socket"]) as client:
            answer = (await client.checkout(body)).body
    return answer


async def test_demo_runs_the_printed_curl_and_reuses_data(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    proc, output = await start_demo(state)
    try:
        info = json.loads((state / "demo.json").read_text())
        assert set(info) == {"socket", "dsn", "simulator_url", "metrics_url"}
        answer = await card_checkout(output, info)
        assert answer["status"] == "completed", answer
        assert answer["tenders"][0]["status"] == "approved"
    finally:
        assert await stop_demo(proc) == 0
    proc, _ = await start_demo(state)
    try:
        conn = await asyncpg.connect(json.loads((state / "demo.json").read_text())["dsn"])
        try:
            assert await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'completed'") == 1
        finally:
            await conn.close()
    finally:
        assert await stop_demo(proc) == 0
