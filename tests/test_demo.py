"""`gatewayd demo` end to end: a real subprocess, the curl example it prints, a clean stop, data reused."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from gatewayd.api.client import GatewayClient

GATEWAYD = (sys.executable, "-m", "gatewayd")


async def start_demo(
    state: Path, gatewayd: Sequence[str] = GATEWAYD, *, args: Sequence[str] = (), **kw: Any
) -> tuple[asyncio.subprocess.Process, str]:
    """`gatewayd demo` until its ready text (`gatewayd`: the command; `args`: more options; `kw`: cwd, env ...)."""
    proc = await asyncio.create_subprocess_exec(
        *gatewayd,
        "demo",
        "--state-dir",
        str(state),
        *args,
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
        assert set(info) == {"socket", "dsn", "simulator_url", "metrics_url", "tpns"}
        assert info["tpns"] == {f"lane-{i}": f"SIMLANE0000{i}" for i in range(1, 5)}
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_demo_tcp_takes_a_card_over_https_with_the_ca_and_token_of_demo_json(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    port = _free_port()
    proc, output = await start_demo(state, args=("--tcp", f"127.0.0.1:{port}"))
    try:
        info = json.loads((state / "demo.json").read_text())
        assert set(info) == {"socket", "dsn", "simulator_url", "metrics_url", "tpns", "tcp_url", "token", "ca_file"}
        assert info["tcp_url"] == f"https://127.0.0.1:{port}"
        assert Path(info["ca_file"]) == state / "tls" / "ca.pem"
        assert ((state / "tls" / "server.key").stat().st_mode & 0o777) == 0o600
        curl = (
            f'curl -s --cacert {info["ca_file"]} -H "Authorization: Bearer {info["token"]}" {info["tcp_url"]}/v1/health'
        )
        assert curl in output, output
        if shutil.which("curl"):
            result = await asyncio.to_thread(
                subprocess.run, ["bash", "-c", curl], capture_output=True, text=True, timeout=60
            )
            assert json.loads(result.stdout)["status"] == "ok", result
        body = {
            "idempotency_key": "demo-tcp-1",
            "lines": [{"sku": "MUG", "quantity": 1, "unit_price": 1250}],
            "tenders": [{"type": "card", "amount": 1250, "terminal_id": "lane-2"}],
        }
        async with GatewayClient(
            base_url=info["tcp_url"], token=info["token"], ca_file=info["ca_file"], timeout_s=60
        ) as client:
            answer = await client.checkout(body)
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body
        async with GatewayClient(base_url=info["tcp_url"], ca_file=info["ca_file"], timeout_s=60) as client:
            assert (await client.health()).status == 401  # the token is required
    finally:
        assert await stop_demo(proc) == 0
    ca, token = (state / "tls" / "ca.pem").read_bytes(), info["token"]
    proc, _ = await start_demo(state, args=("--tcp", f"localhost:{port}"))
    try:  # the next run keeps the CA and the token; the certificate now names localhost
        again = json.loads((state / "demo.json").read_text())
        assert again["token"] == token and (state / "tls" / "ca.pem").read_bytes() == ca
        async with GatewayClient(
            base_url=again["tcp_url"], token=token, ca_file=again["ca_file"], timeout_s=60
        ) as client:
            assert again["tcp_url"] == f"https://localhost:{port}"
            assert (await client.get_checkout(answer.body["id"])).body["status"] == "completed"
    finally:
        assert await stop_demo(proc) == 0
