"""Start-up: a stale socket file is replaced, a live one refused; migrations checked (none, some
missing: refused, naming the fix; a database newer than the code: a warning); terminals upserted and their
health written to payment_processors."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import asyncpg
import pytest

from gatewayd.store import migrate
from tests.harness import card, running_gateway
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
        assert code == 2, out
        assert "the database has no gatewayd schema" in out
        assert f"gatewayd migrate --config {config}" in out and "gatewayd run --migrate" in out
        daemon = await DaemonProcess(config, args=("--migrate",)).start(wait=False)
        try:
            await daemon.ready()
        finally:
            assert await daemon.stop() == 0


# The daemon refuses before it talks to any terminal: no simulator needed.
NO_SIMULATOR = "http://127.0.0.1:9"


async def _prepare(dsn: str, state: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if state == "ledger only":  # what `migrate` from a wheel without its SQL used to leave
            await conn.execute(migrate._LEDGER)
        elif state == "three of them":
            await migrate.apply(conn, migrate.discover()[:3])
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("state", "expected"),
    [("ledger only", "the database has no gatewayd schema"), ("three of them", "the database lacks migrations 004_")],
)
async def test_unmigrated_database_refused_naming_the_command(
    empty_dsn: str, tmp_path: Path, state: str, expected: str
) -> None:
    await _prepare(empty_dsn, state)
    config = Store(empty_dsn, NO_SIMULATOR, tmp_path).config()
    code, out = await run_cli("run", "--config", str(config), timeout_s=60)
    assert code == 2, out
    assert expected in out
    assert f"gatewayd migrate --config {config}" in out and "gatewayd run --migrate" in out
    assert "UndefinedTable" not in out


async def test_database_newer_than_the_code_is_served_with_a_warning(
    empty_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A migration recorded that this gatewayd does not know (a newer gatewayd migrated the
    shared database first): this one still starts, and says so."""
    future = len(migrate.discover()) + 1
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrate.apply(conn)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, 'from_the_future', 'x')", future
        )
    finally:
        await conn.close()
    with caplog.at_level(logging.WARNING, logger="gatewayd.daemon"):
        async with running_gateway(empty_dsn, tmp_path, terminals=1) as gw:
            assert gw.daemon.ready and (await gw.checkout(card(500))).status == 200
    log = caplog.text
    assert f"migration(s) {future:03d}_from_the_future that gatewayd" in log and "upgrade this store" in log, log


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
