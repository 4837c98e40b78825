"""`gatewayd demo` end to end: a real subprocess, the curl example it prints, a clean stop, data reused."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg

from gatewayd.api.client import GatewayClient


async def _start(state: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatewayd",
        "demo",
        "--state-dir",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = ""
    while "Press Ctrl-C to stop." not in seen:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, f"demo exited early:\n{seen}"
        seen += line.decode()
    return proc, seen


async def _stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.read(), 60)
    return await asyncio.wait_for(proc.wait(), 60)


def _curl_example(output: str) -> str:
    match = re.search(r"(curl -s --unix-socket .*?http://gatewayd/v1/checkouts)", output, re.S)
    assert match, output
    return match.group(1).replace("\\\n", " ")


async def test_demo_runs_the_printed_curl_and_reuses_data(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    proc, output = await _start(state)
    try:
        info = json.loads((state / "demo.json").read_text())
        assert set(info) == {"socket", "dsn", "simulator_url", "metrics_url"}
        command = _curl_example(output)
        if shutil.which("curl"):
            result = await asyncio.to_thread(
                subprocess.run, ["bash", "-c", command], capture_output=True, text=True, timeout=60
            )
            answer = json.loads(result.stdout)
        else:  # the same request through the client
            body = json.loads(
                re.search(r'-d "(.*)"', command)
                .group(1)
                .replace('\\"', '"')  # type: ignore[union-attr]
                .replace("$(date +%s%N)", "1")
            )
            async with GatewayClient(info["socket"]) as client:
                answer = (await client.checkout(body)).body
        assert answer["status"] == "completed", answer
        assert answer["tenders"][0]["status"] == "approved"
    finally:
        assert await _stop(proc) == 0
    proc, _ = await _start(state)
    try:
        conn = await asyncpg.connect(json.loads((state / "demo.json").read_text())["dsn"])
        try:
            assert await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'completed'") == 1
        finally:
            await conn.close()
    finally:
        assert await _stop(proc) == 0
