"""Start-up: a stale socket file is replaced, a live one refused; migrations checked; terminals
upserted and their health written to payment_processors."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.harness import running_gateway
from tests.procs import DaemonProcess, Store, run_cli, simulator_process


async def test_stale_socket_replaced_live_one_refused(dsn: str, tmp_path: Path) -> None:
    async with simulator_process() as simulator_url:
        store = Store(dsn, simulator_url, tmp_path)
        await store.seed()
        config = store.config()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(config).replace(".toml", ".sock"))  # a dead daemon's leftover file
        stale.close()
        first = await DaemonProcess(config).start()
        try:
            code, out = await run_cli("run", "--config", str(config), timeout_s=60)
            assert code == 2, out
            assert "another gatewayd is already serving this socket" in out
            async with first.client() as client:
                assert (await client.health()).status == 200
        finally:
            assert await first.stop() == 0


async def test_missing_migrations_refused_unless_asked(empty_dsn: str, tmp_path: Path) -> None:
    async with simulator_process() as simulator_url:
        store = Store(empty_dsn, simulator_url, tmp_path)
        config = store.config()
        code, out = await run_cli("run", "--config", str(config), timeout_s=60)
        assert code == 2 and "gatewayd migrate" in out
        daemon = await DaemonProcess(config, args=("--migrate",)).start(wait=False)
        try:
            await daemon.ready()
        finally:
            assert await daemon.stop() == 0


@pytest.mark.parametrize("terminals", [3])
async def test_health_sweep_writes_payment_processors(dsn: str, tmp_path: Path, terminals: int) -> None:
    async with running_gateway(dsn, tmp_path, terminals=terminals) as gw:
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/offline")
        await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
        await asyncio.sleep(0.6)  # one interval: the sweeper has written every terminal
        rows = {r["id"]: r for r in await gw.fetch("SELECT * FROM payment_processors WHERE store_id = $1", gw.store_id)}
        assert set(rows) == {"lane-1", "lane-2", "lane-3"}
        assert rows["lane-1"]["health_status"] == "online" and rows["lane-1"]["last_health_check"] is not None
        assert rows["lane-2"]["health_status"] == "offline" and rows["lane-2"]["last_health_error"]
        assert rows["lane-1"]["processor_name"] == "Lane lane-1" and rows["lane-1"]["is_live"] is False
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/online")
