"""The status page rendered by a real browser (headless Chromium) at a phone's size."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.harness import card, running_gateway

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
