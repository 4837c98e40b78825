"""`gatewayd demo`: embedded PostgreSQL, the SPIn simulator with four lanes and the daemon, in one process."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

from gatewayd import daemon
from gatewayd.config import Config, parse
from gatewayd.stack import StoreSpec, TerminalSpec
from gatewayd.store import migrate
from gatewayd.store.embedded import EmbeddedPostgres
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


def demo_store(simulator_url: str) -> StoreSpec:
    """The demo's store: four simulated lanes and the catalog (config/demo.toml's values)."""
    terminals = [
        TerminalSpec(
            f"lane-{i}",
            f"SIMLANE0000{i}",
            simulator_url,
            name=f"Lane {i} (simulated)",
            authkey=f"DEMOKEY00{i}",
            timeout_s=10,
            http_margin_s=2,
        )
        for i in range(1, 5)
    ]
    return StoreSpec(
        terminals,
        store_id="demo-store",
        stock={sku: n for sku, _, n in CATALOG},
        names={sku: name for sku, name, _ in CATALOG},
    )


def demo_config(state_dir: Path, dsn: str, simulator_url: str, metrics_listen: str) -> Config:
    """The demo's configuration: config/demo.toml's values with this run's paths and ports."""
    text = demo_store(simulator_url).config_text(
        state_dir=state_dir,
        socket_path=state_dir / "gatewayd.sock",
        dsn=dsn,
        sections={
            "database": {"pool_min": 2, "pool_max": 10},
            "api": {"socket_mode": "0660"},
            "metrics": {"listen": metrics_listen},
            "health": {"interval_s": 5, "failure_threshold": 2},
            "recovery": {"interval_s": 10},
        },
    )
    return parse(text, "<demo>")


def _ready_text(config: Config, simulator_url: str, metrics_url: str) -> str:
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
            f"  simulator:   {simulator_url}   (magic cents: 51 declined, 52/53/58 lost answer, 55 slow, 56 partial)",
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
        async with running_simulator(port=8471 if _port_free(8471) else 0) as simulator:
            config = demo_config(state_dir, dsn, simulator.url, f"127.0.0.1:{metrics_port}")
            info = {
                "socket": config.api.socket,
                "dsn": dsn,
                "simulator_url": simulator.url,
                "metrics_url": metrics_url,
            }
            (state_dir / "demo.json").write_text(json.dumps(info, indent=2) + "\n")

            def ready(_: daemon.Daemon) -> None:
                print(_ready_text(config, simulator.url, metrics_url), flush=True)

            await _migrate_and_seed(dsn, demo_store(simulator.url))
            return await daemon.serve(config, on_ready=ready)
    finally:
        await asyncio.to_thread(pg.stop)


async def _migrate_and_seed(dsn: str, store: StoreSpec) -> None:
    await migrate.apply_dsn(dsn)
    await store.seed(dsn)
