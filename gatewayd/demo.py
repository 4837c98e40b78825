"""`gatewayd demo`: embedded PostgreSQL, the SPIn simulator with four lanes and the daemon, in one process."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

from gatewayd import daemon
from gatewayd.config import Config, parse
from gatewayd.store import migrate
from gatewayd.store.db import Database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.maintenance import MaintenanceStore
from gatewayd.terminals.simulator.server import running_simulator

log = logging.getLogger("gatewayd.demo")

CATALOG = [
    ("COFFEE-1KG", "Coffee beans 1 kg", 200),
    ("MUG", "Stoneware mug", 100),
    ("TEA-100G", "Green tea 100 g", 150),
    ("FILTER-100", "Paper filters x100", 300),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_config(state_dir: Path, dsn: str, sim_url: str, metrics_listen: str) -> Config:
    """The demo's configuration: config/demo.toml's values with this run's paths and ports."""
    terminals = "".join(
        f'[[terminals]]\nid = "lane-{i}"\nname = "Lane {i} (simulated)"\nbase_url = "{sim_url}"\n'
        f'tpn = "SIMLANE0000{i}"\nauthkey = "DEMOKEY00{i}"\ntimeout_s = 10\nhttp_margin_s = 2\nis_live = false\n'
        for i in range(1, 5)
    )
    text = (
        f'store_id = "demo-store"\nstate_dir = "{state_dir}"\n[database]\ndsn = "{dsn}"\n'
        f'[api]\nsocket = "{state_dir / "gatewayd.sock"}"\nsocket_mode = "0660"\ncheckout_wait_s = 30\n'
        f'[metrics]\nlisten = "{metrics_listen}"\n[health]\ninterval_s = 5\n[recovery]\ninterval_s = 10\n' + terminals
    )
    return parse(text, "<demo>")


async def _seed_catalog(dsn: str) -> None:
    db = Database(dsn, pool_min=1, pool_max=1)
    await db.open()
    try:
        await MaintenanceStore(db, "demo-store").seed_inventory(list(CATALOG))
    finally:
        await db.close()


def _ready_text(config: Config, sim_url: str, metrics_url: str) -> str:
    sock = config.api.socket
    body = (
        '{"idempotency_key": "demo-$(date +%s%N)", "register_id": "reg1", "customer_id": "cust-42", '
        '"lines": [{"sku": "COFFEE-1KG", "quantity": 2, "unit_price": 1599}], "tax": 250, '
        '"tenders": [{"type": "card", "amount": 3448, "terminal_id": "lane-1"}]}'
    )
    return "\n".join(
        [
            "",
            "gatewayd demo is ready.",
            f"  API socket:  {sock}",
            f"  simulator:   {sim_url}   (magic cents: 51 declined, 52/53/58 lost answer, 55 slow, 56 partial)",
            f"  metrics:     {metrics_url}/metrics   status page: {metrics_url}/",
            "",
            "Take a card payment:",
            f"  curl -s --unix-socket {sock} -H 'Content-Type: application/json' \\",
            f'       -d "{body.replace(chr(34), chr(92) + chr(34))}" \\',
            "       http://gatewayd/v1/checkouts",
            "",
            f"Terminals:  curl -s --unix-socket {sock} http://gatewayd/v1/terminals",
            "Press Ctrl-C to stop.",
            "",
        ]
    )


async def run_demo(state_dir: Path) -> int:
    """Start everything, serve until SIGINT/SIGTERM, stop everything."""
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    pg = EmbeddedPostgres(state_dir / "postgres")
    dsn = await asyncio.to_thread(pg.start)
    metrics_port = 9470 if _port_free(9470) else _free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        async with running_simulator(port=8471 if _port_free(8471) else 0) as sim:
            config = demo_config(state_dir, dsn, sim.url, f"127.0.0.1:{metrics_port}")
            info = {
                "socket": config.api.socket,
                "dsn": dsn,
                "simulator_url": sim.url,
                "metrics_url": metrics_url,
            }
            (state_dir / "demo.json").write_text(json.dumps(info, indent=2) + "\n")

            def ready(_: daemon.Daemon) -> None:
                print(_ready_text(config, sim.url, metrics_url), flush=True)

            await _migrate_and_seed(dsn)
            return await daemon.serve(config, on_ready=ready)
    finally:
        await asyncio.to_thread(pg.stop)


async def _migrate_and_seed(dsn: str) -> None:
    await migrate.apply_dsn(dsn)
    await _seed_catalog(dsn)
