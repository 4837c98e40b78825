"""The status page rendered by a real browser (headless Chromium) at a phone's size."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import card, running_gateway
from tests.procs import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=390,844",
]


async def _chromium(profile: Path, *args: str) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
async def test_status_page_in_chromium(dsn: str, tmp_path: Path) -> None:
    async with running_gateway(dsn, tmp_path, terminals=2) as gw:
        assert (await gw.checkout(card(4321), key="browser-1")).status == 200
        assert (await gw.checkout(card(1051))).status == 402
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/offline")
        await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
        runner = gw.daemon.metrics_runner
        assert runner is not None
        url = "http://{}:{}/".format(*runner.addresses[0][:2])
        dom = await _chromium(tmp_path / "profile", "--dump-dom", url)
        shot = tmp_path / "status.png"
        await _chromium(tmp_path / "profile2", f"--screenshot={shot}", url)
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/online")
    assert 'data-terminal="lane-1" data-status="online"' in dom
    assert 'data-terminal="lane-2" data-status="offline"' in dom
    assert "43.21 USD" in dom and "payment_failed" in dom
    assert "orphaned payments: 0" in dom
    assert shot.stat().st_size > 5_000  # a rendered page, not an error stub


class _Page:
    """A page open in headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0

    async def eval(self, expression: str) -> Any:
        self.n += 1
        await self.ws.send_json(
            {"id": self.n, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": True}}
        )
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.n:
                return message["result"]["result"].get("value")

    async def until(self, expression: str, expected: Any) -> None:
        async with asyncio.timeout(60):
            while await self.eval(expression) != expected:  # noqa: ASYNC110 - polling the page is the point
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _open_page(profile: Path, url: str) -> AsyncIterator[_Page]:
    assert CHROMIUM is not None
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--remote-debugging-port={port}",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                            pages = [t for t in await resp.json() if t.get("type") == "page" and t["url"] == url]
                            if pages:
                                break
                    await asyncio.sleep(0.2)
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield _Page(ws)
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
async def test_status_page_follows_the_event_stream(dsn: str, tmp_path: Path) -> None:
    """The page does not poll: a terminal going offline and back, and a finished checkout, show
    on the page already open, from its EventSource."""
    async with running_gateway(dsn, tmp_path, terminals=2) as gw:
        runner = gw.daemon.metrics_runner
        assert runner is not None
        url = "http://{}:{}/".format(*runner.addresses[0][:2])
        lane2 = "document.querySelector('[data-terminal=\"lane-2\"]')"
        async with _open_page(tmp_path / "profile", url) as page:
            await page.until("document.body.dataset.live", "1")
            assert await page.eval("document.querySelector('meta[http-equiv=refresh]:not(noscript *)')") is None
            await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/offline")
            await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
            await page.until(f"{lane2}.dataset.status", "offline")
            await page.until(f"{lane2}.querySelector('.dot').className", "dot offline")
            await page.until("document.getElementById('online').textContent", "1/2")
            await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/online")
            await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
            await page.until(f"{lane2}.dataset.status", "online")
            assert (await gw.checkout(card(5678))).status == 200
            await page.until("document.getElementById('checkouts').textContent.includes('56.78 USD')", True)
