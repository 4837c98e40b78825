"""An in-process gatewayd on a real unix socket, a real PostgreSQL and the SPIn simulator over HTTP.

Every store built here speaks the current SPIn dialect (`current_dialect()`): "rest" (SPIn Cloud)
unless a test runs under `using_dialect("local")`. tests/checkout and tests/recovery run each of
their database tests once per dialect through the `dialect` fixture (tests/dialects.py), so the
same checkout, recovery and invariant checks hold over both.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from gatewayd.api.client import Answer, GatewayClient
from gatewayd.config import parse
from gatewayd.daemon import Daemon
from gatewayd.observe.systemd import Notifier
from gatewayd.stack import Dialect, StoreSpec, TerminalSpec
from gatewayd.terminals.simulator.server import Simulator, running_simulator
from tests.invariants import check_money_invariants

STOCK = {"COFFEE-1KG": 50, "MUG": 10, "LAST-ONE": 1}

_dialect: list[Dialect] = ["rest"]


def current_dialect() -> Dialect:
    """The SPIn dialect the stores built now speak."""
    return _dialect[-1]


@contextlib.contextmanager
def using_dialect(value: Dialect) -> Iterator[Dialect]:
    """Build stores in this dialect for the duration of the block."""
    _dialect.append(value)
    try:
        yield value
    finally:
        _dialect.pop()


class StoreProbe:
    """One store's rows in PostgreSQL and its terminals' ledger in the simulator, for assertions."""

    dsn: str
    store_id: str
    tpns: dict[str, str]
    stock: dict[str, int]
    simulator_url: str

    async def _sim_state(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.simulator_url + "/_sim/ledger") as resp:
            data: dict[str, Any] = await resp.json()
        return data

    async def ledger(self) -> list[dict[str, Any]]:
        """This store's transactions in the simulator's own ledger."""
        data = await self._sim_state()
        return [t for t in data["transactions"] if t["tpn"] in set(self.tpns.values())]

    async def max_concurrency(self) -> dict[str, int]:
        data = await self._sim_state()
        return {k: v for k, v in data["max_concurrency"].items() if k in set(self.tpns.values())}

    async def simulator_post(self, path: str, body: dict[str, Any] | None = None) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.simulator_url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def fetchval(self, query: str, *args: Any) -> Any:
        rows = await self.fetch(query, *args)
        return rows[0][0] if rows else None

    async def check_invariants(self) -> dict[str, int]:
        """I1-I8 between the database and the simulator's ledger (raises InvariantViolation)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return await check_money_invariants(conn, self.store_id, await self.ledger(), self.tpns, self.stock)
        finally:
            await conn.close()


@dataclass
class Gateway(StoreProbe):
    daemon: Daemon
    client: GatewayClient
    simulator: Simulator
    store_id: str
    dsn: str
    tpns: dict[str, str]
    stock: dict[str, int] = field(default_factory=lambda: dict(STOCK))
    dialect: Dialect = "rest"

    @property  # type: ignore[override]
    def simulator_url(self) -> str:
        return self.simulator.url

    async def checkout(
        self,
        *tenders: dict[str, Any],
        lines: list[dict[str, Any]] | None = None,
        key: str | None = None,
        **extra: Any,
    ) -> Answer:
        return await self.client.checkout(order(*tenders, lines=lines, key=key, **extra))


def order(
    *tenders: dict[str, Any], lines: list[dict[str, Any]] | None = None, key: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A checkout body whose single line costs exactly the sum of the tenders."""
    total = sum(t["amount"] for t in tenders)
    return {
        "idempotency_key": key or uuid.uuid4().hex,
        "lines": lines or [{"sku": "SERVICE", "quantity": 1, "unit_price": total}],
        "tenders": list(tenders),
        **extra,
    }


def card(amount: int, terminal: str = "lane-1") -> dict[str, Any]:
    return {"type": "card", "amount": amount, "terminal_id": terminal}


def cash(amount: int, tendered: int | None = None) -> dict[str, Any]:
    return {"type": "cash", "amount": amount, **({"tendered": tendered} if tendered is not None else {})}


def store_spec(
    store_id: str,
    simulator_url: str,
    tpns: dict[str, str],
    *,
    timeout_s: int = 2,
    dialect: Dialect | None = None,
    **kw: Any,
) -> StoreSpec:
    """The tests' store: these terminals on the simulator at `simulator_url`, in `dialect` (the
    current one unless given)."""
    spoken = dialect or current_dialect()
    terminals = [
        TerminalSpec(tid, tpn, simulator_url, timeout_s=timeout_s, dialect=spoken) for tid, tpn in tpns.items()
    ]
    return StoreSpec(terminals, store_id=store_id, **kw)


def config_text(
    store_id: str,
    socket_path: Path,
    state_dir: Path,
    dsn: str,
    simulator_url: str,
    tpns: dict[str, str],
    *,
    timeout_s: int = 2,
    extra: str = "",
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    dialect: Dialect | None = None,
) -> str:
    """A test daemon's config (gatewayd.stack writes it): short timeouts, a fast health sweep;
    `sections` overrides settings by table ({"database": {"statement_cache": False}})."""
    return store_spec(store_id, simulator_url, tpns, timeout_s=timeout_s, dialect=dialect).config_text(
        state_dir=state_dir, socket_path=socket_path, dsn=dsn, extra=extra, sections=sections
    )


@contextlib.asynccontextmanager
async def running_gateway(
    dsn: str,
    tmp: Path,
    *,
    terminals: int = 4,
    timeout_s: int = 2,
    extra: str = "",
    stock: dict[str, int] | None = None,
    slow_s: float = 3.0,
    daemon_dsn: str | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[Gateway]:
    """A daemon with `terminals` lanes on a fresh simulator, its own store and stock.

    `daemon_dsn`: the daemon reaches the database this way (a pooler, a fault proxy), while the
    test seeds and checks it on `dsn`; `sections`: config settings by table, over the defaults.
    """
    store_id = "t" + uuid.uuid4().hex[:10]
    tpns = {f"lane-{i}": f"T{uuid.uuid4().hex[:11].upper()}" for i in range(1, terminals + 1)}
    stock = dict(STOCK if stock is None else stock)
    async with running_simulator(slow_s=slow_s) as simulator:
        await store_spec(store_id, simulator.url, tpns, stock=stock).seed(dsn)
        socket_path = tmp / f"{store_id}.sock"
        text = config_text(
            store_id,
            socket_path,
            tmp,
            daemon_dsn or dsn,
            simulator.url,
            tpns,
            timeout_s=timeout_s,
            extra=extra,
            sections=sections,
        )
        config_file = tmp / f"{store_id}.toml"
        config_file.write_text(text)
        daemon = Daemon(parse(text, str(config_file)), config_path=str(config_file), notifier=Notifier(""))
        await daemon.start()
        client = GatewayClient(str(socket_path), timeout_s=60)
        gw = Gateway(daemon, client, simulator, store_id, dsn, tpns, stock, current_dialect())
        try:
            async with client:
                yield gw
        finally:
            await daemon.stop()


def body_of(answer: Answer) -> dict[str, Any]:
    assert isinstance(answer.body, dict), answer
    return answer.body


def decode(data: bytes) -> Any:
    return msgspec.json.decode(data)
