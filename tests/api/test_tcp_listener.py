"""The optional TCP listener: every request needs the bearer token; the unix socket does not.

The harness appends `extra` after the `[health]` section, so `[api]` keys cannot be injected
through it; `tcp_gateway` below mirrors `running_gateway` with the TCP keys put into `[api]`.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from gatewayd.api.client import GatewayClient
from gatewayd.config import parse
from gatewayd.daemon import Daemon
from gatewayd.errors import ConfigError
from gatewayd.observe.systemd import Notifier
from gatewayd.terminals.simulator.server import running_simulator
from tests.harness import STOCK, Gateway, card, config_text, order

TOKEN = secrets.token_hex(16)  # 32 characters


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_tcp(text: str, listen: str, token: str | None) -> str:
    """Put tcp_listen (and tcp_token) into the harness config's [api] section."""
    keys = f'tcp_listen = "{listen}"\n' + (f'tcp_token = "{token}"\n' if token is not None else "")
    assert text.count("\n[metrics]\n") == 1
    return text.replace("\n[metrics]\n", f"\n{keys}[metrics]\n")


@contextlib.asynccontextmanager
async def tcp_gateway(dsn: str, tmp: Path, listen: str, token: str) -> AsyncIterator[Gateway]:
    """`running_gateway` with the TCP listener on: two lanes, its own store and stock."""
    store_id = "t" + uuid.uuid4().hex[:10]
    tpns = {f"lane-{i}": f"T{uuid.uuid4().hex[:11].upper()}" for i in (1, 2)}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)",
            [(store_id, sku, n) for sku, n in STOCK.items()],
        )
    finally:
        await conn.close()
    async with running_simulator() as simulator:
        socket_path = tmp / f"{store_id}.sock"
        text = with_tcp(config_text(store_id, socket_path, tmp, dsn, simulator.url, tpns), listen, token)
        config_file = tmp / f"{store_id}.toml"
        config_file.write_text(text)
        daemon = Daemon(parse(text, str(config_file)), config_path=str(config_file), notifier=Notifier(""))
        await daemon.start()
        client = GatewayClient(str(socket_path), timeout_s=60)
        gw = Gateway(daemon, client, simulator, store_id, dsn, tpns, dict(STOCK))
        try:
            async with client:
                yield gw
        finally:
            await daemon.stop()


@pytest.fixture(scope="module")
async def gw(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    listen = f"127.0.0.1:{free_port()}"
    async with tcp_gateway(dsn, tmp_path_factory.mktemp("tcp"), listen, TOKEN) as gateway:
        yield gateway
        await gateway.check_invariants()


def base_url(gw: Gateway) -> str:
    listen = gw.daemon.config.api.tcp_listen
    assert listen is not None
    return f"http://{listen}"


async def raw_tcp(gw: Gateway, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            base_url(gw) + path,
            headers=headers,
            data=None if body is None else msgspec.json.encode(body),
        ) as resp,
    ):
        payload = await resp.read()
        assert resp.content_type == "application/json", payload[:200]
        return resp.status, msgspec.json.decode(payload)


BAD_HEADERS = {
    "no-header": {},
    "wrong-token": {"Authorization": f"Bearer {secrets.token_hex(16)}"},
    "token-without-scheme": {"Authorization": TOKEN},
    "token-minus-last-char": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token-prefix": {"Authorization": f"Bearer {TOKEN[:16]}"},
    "token-plus-suffix": {"Authorization": f"Bearer {TOKEN}x"},
    "basic-auth": {"Authorization": "Basic dXNlcjpwYXNz"},
    "empty-bearer": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("path", ["/v1/health", "/v1/checkouts", "/v1/no-such-path", "/v1/openapi.json"])
@pytest.mark.parametrize("name", list(BAD_HEADERS))
async def test_tcp_without_a_valid_token_is_401(gw: Gateway, name: str, path: str) -> None:
    status, body = await raw_tcp(gw, "GET", path, BAD_HEADERS[name])
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized" and body["error"]["message"], body
    assert set(body["error"]) == {"code", "message", "retry", "details"} and body["error"]["retry"] == "no"
    assert TOKEN not in msgspec.json.encode(body).decode()


async def test_tcp_checkout_without_token_charges_nothing(gw: Gateway) -> None:
    before = await gw.ledger()
    status, body = await raw_tcp(gw, "POST", "/v1/checkouts", {"Content-Type": "application/json"}, order(card(1200)))
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    assert await gw.ledger() == before


async def test_tcp_with_the_token(gw: Gateway) -> None:
    async with GatewayClient(base_url=base_url(gw), token=TOKEN, timeout_s=60) as tcp:
        health = await tcp.health()
        assert health.status == 200 and health.body["database"] == "up", health.body
        answer = await tcp.checkout(order(card(2454, "lane-2")))
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body
        again = await tcp.get_checkout(answer.body["id"])
        assert again.status == 200 and again.body == answer.body
    ref = answer.body["tenders"][0]["reference_id"]
    assert [(t["reference_id"], t["amount"], t["status"]) for t in await gw.ledger() if t["reference_id"] == ref] == [
        (ref, 2454, "approved")
    ]


async def test_unix_socket_needs_no_token(gw: Gateway) -> None:
    health = await gw.client.health()
    assert health.status == 200, health.body
    answer = await gw.checkout(card(1300, "lane-1"))
    assert answer.status == 200 and answer.body["status"] == "completed", answer.body


MINIMAL = 'store_id = "s"\n[api]\nsocket = "/tmp/x.sock"\n'


def test_tcp_listen_without_token_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + 'tcp_listen = "127.0.0.1:9480"\n', "store.toml")
    assert "api.tcp_token" in str(info.value)
    assert info.value.fields.get("key") == "api.tcp_token"


def test_short_tcp_token_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + 'tcp_listen = "127.0.0.1:9480"\ntcp_token = "SHORTSECRET"\n', "store.toml")
    assert "api.tcp_token" in str(info.value)
    assert "SHORTSECRET" not in str(info.value)


def test_tcp_listen_with_token_parses_and_hides_it() -> None:
    config = parse(MINIMAL + f'tcp_listen = "127.0.0.1:9480"\ntcp_token = "{TOKEN}"\n', "store.toml")
    assert config.api.tcp_token is not None and config.api.tcp_token.reveal() == TOKEN
    assert TOKEN not in repr(config)
