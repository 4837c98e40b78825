"""`gatewayd demo`: embedded PostgreSQL, the SPIn simulator with four lanes (three in SPIn Cloud, one
in SPIn Local) and the daemon, in one process.

With `--tcp HOST:PORT` the API is also served over TLS on HOST:PORT, with a bearer token and a
certificate naming HOST from the demo's own store CA (made by tls-init's code under state/tls,
reused on the next run), for a POS developer's tablet or script.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from gatewayd import daemon
from gatewayd.cli.tls import StoreTls, TlsInitError, init_store_tls, parse_host, server_certificate_fits
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


LOCAL_LANE = "lane-4"  # the demo's lane in SPIn Local (XML on the LAN); the others are SPIn Cloud (REST)


def demo_store(simulator_url: str) -> StoreSpec:
    """The demo's store: four simulated lanes and the catalog (config/demo.toml's values). Three
    lanes speak SPIn Cloud (REST), `lane-4` SPIn Local: a store may mix them."""
    terminals = [
        TerminalSpec(
            f"lane-{i}",
            f"SIMLANE0000{i}",
            simulator_url,
            name=f"Lane {i} (simulated{', SPIn Local' if f'lane-{i}' == LOCAL_LANE else ''})",
            authkey=f"DEMOKEY00{i}",
            timeout_s=10,
            http_margin_s=2,
            dialect="local" if f"lane-{i}" == LOCAL_LANE else "rest",
        )
        for i in range(1, 5)
    ]
    return StoreSpec(
        terminals,
        store_id="demo-store",
        stock={sku: n for sku, _, n in CATALOG},
        names={sku: name for sku, name, _ in CATALOG},
    )


@dataclass(frozen=True)
class DemoTcp:
    """The demo's TLS listener: where, the token file and the store CA's files."""

    host: str
    port: int
    token_file: Path
    tls: StoreTls

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.listen}"

    def token(self) -> str:
        return self.token_file.read_text().strip()


def parse_tcp(value: str) -> tuple[str, int]:
    """HOST:PORT of `demo --tcp` (an IP address, [IPv6] or a name); ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tcp {value}: expected HOST:PORT, e.g. 192.168.1.20:8470")
    try:
        parsed = parse_host(host)
    except TlsInitError as exc:
        raise ValueError(str(exc).replace("--host", "--tcp")) from None
    return str(parsed), int(port)


def prepare_tcp(state_dir: Path, host: str, port: int) -> DemoTcp:
    """The token (made once) and a server certificate naming `host` (made when missing, naming
    another host or near its end; the store CA is kept, so a tablet that trusts it still does)."""
    token_file = state_dir / "tcp-token"
    if not token_file.exists():
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
    tls = StoreTls(state_dir / "tls")
    if not server_certificate_fits(tls, [host]):
        try:
            init_store_tls(tls.directory, [host], force=True)
        except TlsInitError as exc:  # a broken or expired CA of an earlier run: the demo makes a new one
            log.warning("demo: a new store CA (%s); tablets must trust the new %s", exc, tls.ca_cert)
            init_store_tls(tls.directory, [host], force=True, new_ca=True)
    return DemoTcp(host, port, token_file, tls)


def demo_config(
    state_dir: Path, dsn: str, simulator_url: str, metrics_listen: str, tcp: DemoTcp | None = None
) -> Config:
    """The demo's configuration: config/demo.toml's values with this run's paths and ports."""
    api: dict[str, str] = {"socket_mode": "0660"}
    if tcp is not None:
        api |= {
            "tcp_listen": tcp.listen,
            "tcp_token_file": str(tcp.token_file),
            "tls_cert": str(tcp.tls.server_cert),
            "tls_key": str(tcp.tls.server_key),
        }
    text = demo_store(simulator_url).config_text(
        state_dir=state_dir,
        socket_path=state_dir / "gatewayd.sock",
        dsn=dsn,
        sections={
            "database": {"pool_min": 2, "pool_max": 10},
            "api": api,
            "metrics": {"listen": metrics_listen},
            "health": {"interval_s": 5, "failure_threshold": 2},
            "recovery": {"interval_s": 10},
        },
    )
    return parse(text, "<demo>")


def _ready_text(config: Config, simulator_url: str, metrics_url: str, tcp: DemoTcp | None = None) -> str:
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
            f"  simulator:   {simulator_url}   (magic cents: 51 declined, 52/53/58 lost answer, 55 slow, 56 partial,",
            "               57 no card presented, 59 cancelled; the last digit: 0-3 chip, 4-6 tap, 7-8 swipe, 9 keyed)",
            f"  metrics:     {metrics_url}/metrics   status page: {metrics_url}/",
            "",
            "Take a card payment:",
            f"  curl -s --unix-socket {sock} -H 'Content-Type: application/json' \\",
            f'       -d "{body.replace(chr(34), chr(92) + chr(34))}" \\',
            "       http://gatewayd/v1/checkouts",
            "",
            f"Terminals:  curl -s --unix-socket {sock} http://gatewayd/v1/terminals"
            f"   ({LOCAL_LANE} speaks SPIn Local, the others SPIn Cloud)",
            f"Receipt:    curl -s --unix-socket {sock} 'http://gatewayd/v1/checkouts/ID/receipt?width=40'",
            *_tcp_text(tcp),
            "Press Ctrl-C to stop.",
            "",
        ]
    )


def _tcp_text(tcp: DemoTcp | None) -> list[str]:
    if tcp is None:
        return []
    return [
        "",
        f"Over the network (TLS, bearer token; tcp_url, token and ca_file are in demo.json): {tcp.url}",
        f'  curl -s --cacert {tcp.tls.ca_cert} -H "Authorization: Bearer {tcp.token()}" {tcp.url}/v1/health',
        f"A tablet trusts {tcp.tls.ca_cert} once (docs/operations.md, TLS on the TCP listener).",
    ]


async def run_demo(state_dir: Path, tcp_listen: tuple[str, int] | None = None) -> int:
    """Start everything, serve until SIGINT/SIGTERM, stop everything (`tcp_listen`: demo --tcp)."""
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    tcp = None if tcp_listen is None else await asyncio.to_thread(prepare_tcp, state_dir, *tcp_listen)
    pg = EmbeddedPostgres(state_dir / "postgres")
    dsn = await asyncio.to_thread(pg.start)
    metrics_port = 9470 if _port_free(9470) else _free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        async with running_simulator(port=8471 if _port_free(8471) else 0) as simulator:
            config = demo_config(state_dir, dsn, simulator.url, f"127.0.0.1:{metrics_port}", tcp)
            info = {
                "socket": config.api.socket,
                "dsn": dsn,
                "simulator_url": simulator.url,
                "metrics_url": metrics_url,
                # Each lane's simulated terminal, for the simulator's /_sim/terminals/{tpn}/… controls.
                "tpns": {t.id: t.tpn for t in demo_store(simulator.url).terminals},
            }
            if tcp is not None:
                info |= {"tcp_url": tcp.url, "token": tcp.token(), "ca_file": str(tcp.tls.ca_cert)}
            (state_dir / "demo.json").write_text(json.dumps(info, indent=2) + "\n")

            def ready(_: daemon.Daemon) -> None:
                print(_ready_text(config, simulator.url, metrics_url, tcp), flush=True)

            await _migrate_and_seed(dsn, demo_store(simulator.url))
            return await daemon.serve(config, on_ready=ready)
    finally:
        await asyncio.to_thread(pg.stop)


async def _migrate_and_seed(dsn: str, store: StoreSpec) -> None:
    await migrate.apply_dsn(dsn)
    await store.seed(dsn)
