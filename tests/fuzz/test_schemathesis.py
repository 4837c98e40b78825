"""The OpenAPI contract fuzzed with schemathesis over the unix socket: no 5xx, no harm done.

Schemathesis generates cases (schema-conforming and schema-violating) from the document the
daemon serves; each case is serialised the way schemathesis' own requests transport would do
it and the exact bytes are sent to a real in-process daemon over its unix socket. Half of the
conforming checkouts are steered onto the configured lanes with amounts that add up, so real
card charges, declines, voids and refunds happen; then the money invariants must hold.

A 503/504 is acceptable only with a documented "nothing charged / poll it" code; any other 5xx
fails. Every non-2xx answer must carry the documented error body.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from yarl import URL

from gatewayd.api.wire import CheckoutWithError, HealthView
from gatewayd.checkout.model import CheckoutView
from tests.harness import Gateway, running_gateway

BASE_URL = "http://gatewayd"
SEED = 20_240_607
ALLOWED_5XX = {
    (503, "terminal_offline"),
    (503, "terminal_busy"),
    (503, "database_unavailable"),
    (504, "outcome_pending"),
    (503, "terminal_misconfigured"),
}
SLOW_CENTS = {52, 53, 55, 57, 58}  # the simulator's slow or lost answers (seconds each)
# (positive, negative) cases per operation; an operation without parameters has one possible case
BUDGET: dict[str, tuple[int, int]] = {"POST /v1/checkouts": (450, 250)}
DEFAULT_BUDGET = (60, 40)
MIN_REQUESTS = 1_000
CONCURRENCY = 8
REVERSED = 6  # completed card checkouts that get generated refunds, then voids


@dataclass(frozen=True)
class Sent:
    """One request as it went over the socket, and its answer."""

    label: str
    method: str
    url: str
    body: bytes | None
    status: int
    content_type: str
    payload: bytes

    def describe(self) -> str:
        return (
            f"{self.label}: {self.method} {self.url[:300]} body={(self.body or b'')[:300]!r} -> "
            f"{self.status} {self.content_type} {self.payload[:300]!r}"
        )


# ------------------------------------------------------------------ generation


def _int(value: Any, default: int = 0) -> int:
    """Generated "integers" may be integral floats (JSON Schema allows 10.0); the API takes only ints."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _steer_amount(amount: Any, limit: int = 50_000) -> int:
    """A small positive amount whose cents the simulator answers at once."""
    value = _int(amount) % limit + 1
    return value + 10 if value % 100 in SLOW_CENTS else value


def steer_checkout(body: dict[str, Any], lanes: int) -> dict[str, Any]:
    """A conforming checkout made to add up on the real lanes (card amounts away from slow cents)."""
    tenders: list[dict[str, Any]] = []
    cash_seen = False
    for i, tender in enumerate(body.get("tenders", [])[:4]):
        if tender.get("type") == "cash" and not cash_seen:
            cash_seen = True
            tenders.append({"type": "cash", "amount": _steer_amount(tender.get("amount"))})
        else:
            tenders.append(
                {
                    "type": "card",
                    "amount": _steer_amount(tender.get("amount")),
                    "terminal_id": f"lane-{i % lanes + 1}",
                }
            )
    lines: list[dict[str, Any]] = [
        {
            "sku": line.get("sku") or "SKU",
            "quantity": _int(line.get("quantity")) % 3 + 1,
            "unit_price": _int(line.get("unit_price")) % 5_000,
        }
        for line in body.get("lines", [])[:5]
    ]
    paid = sum(t["amount"] for t in tenders)
    subtotal = sum(x["quantity"] * x["unit_price"] for x in lines)
    tax, discount = (paid - subtotal, 0) if subtotal <= paid else (0, subtotal - paid)
    return {**body, "lines": lines, "tenders": tenders, "tax": tax, "discount": discount}


def _steer_refund(body: Any) -> Any:
    if isinstance(body, dict) and "amount" in body:
        return {**body, "amount": _steer_amount(body["amount"], 3_000)}
    return body


def collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """Draw up to `count` examples, reproducibly (fixed seed, no database, no shrinking)."""
    found: list[Any] = []

    @seed(SEED)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: Any) -> None:
        found.append(value)

    try:
        draw()
    except Unsatisfiable:  # e.g. no schema-violating variant of an operation without parameters
        pass
    return found


def generate(
    schema: Any, lanes: int, *, path_parameters: dict[str, Any] | None = None, only: set[str] | None = None
) -> list[tuple[str, Any]]:
    """(label, case) for every operation and generation mode, within the budget."""
    cases: list[tuple[str, Any]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        if only is not None and name not in only:
            continue
        for mode, count in zip(
            (GenerationMode.POSITIVE, GenerationMode.NEGATIVE), BUDGET.get(name, DEFAULT_BUDGET), strict=True
        ):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            if mode is GenerationMode.POSITIVE and name == "POST /v1/checkouts":
                strategy = st.tuples(strategy, st.booleans()).map(lambda pair: _steered(*pair, lanes))
            elif mode is GenerationMode.POSITIVE and name.endswith("/refunds"):
                strategy = strategy.map(_with_body(_steer_refund))
            cases.extend((f"{name} [{mode.value}]", case) for case in collect(strategy, count))
    return cases


def _steered(case: Any, steer: bool, lanes: int) -> Any:
    if steer and isinstance(case.body, dict):
        case.body = steer_checkout(case.body, lanes)
    return case


def _with_body(change: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(case: Any) -> Any:
        case.body = change(case.body)
        return case

    return apply


def wire_request(case: Any) -> tuple[str, str, dict[str, Any], Any]:
    """The exact request schemathesis' requests transport would send: method, URL, headers, body."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=kwargs["headers"],
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        data=kwargs.get("data"),
    ).prepare()
    headers = {
        k: v
        for k, v in prepared.headers.items()
        if k.lower() not in ("connection", "content-length", "accept-encoding")
    }
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    assert prepared.url is not None and prepared.method is not None
    return prepared.method, prepared.url, headers, body


# ------------------------------------------------------------------ sending and judging


async def send_all(session: aiohttp.ClientSession, cases: list[tuple[str, Any]]) -> list[Sent]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(label: str, case: Any) -> Sent:
        method, url, headers, body = wire_request(case)
        async with gate, session.request(method, URL(url, encoded=True), headers=headers, data=body) as resp:
            # GET /v1/events never ends: its status and headers are the answer (the stream is closed)
            payload = b"" if resp.content_type == "text/event-stream" else await resp.read()
            return Sent(label, method, url, body, resp.status, resp.content_type, payload)

    return list(await asyncio.gather(*(one(label, case) for label, case in cases)))


def _answer_shape(sent: Sent) -> type[Any] | None:
    path = URL(sent.url, encoded=True).path
    if sent.method == "POST" and path == "/v1/checkouts":
        return CheckoutView if sent.status == 200 else CheckoutWithError if sent.status == 402 else None
    if sent.status == 200 and (
        re.fullmatch(r"/v1/checkouts/[^/]+(/void|/refunds)?", path)
        or (sent.method == "GET" and path == "/v1/checkouts")
    ):
        return CheckoutView
    if sent.status == 200 and path == "/v1/health":
        return HealthView
    return None


def problems(sent: Sent) -> list[str]:
    """What is wrong with one answer under the contract."""
    if sent.content_type == "text/event-stream":
        return [] if sent.status == 200 else [f"an error answered as an event stream: {sent.describe()}"]
    if sent.status >= 400 and sent.content_type != "application/json":
        # aiohttp's HTTP parser refuses a request line over 8190 bytes before any handler runs
        too_long = sent.status == 400 and len(sent.url) > 8_000
        return [] if too_long else [f"non-JSON error answer: {sent.describe()}"]
    try:
        body = msgspec.json.decode(sent.payload)
    except msgspec.DecodeError:
        return [f"answer is not JSON: {sent.describe()}"]
    found: list[str] = []
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if sent.status >= 500 and (sent.status, code) not in ALLOWED_5XX:
        found.append(f"server error: {sent.describe()}")
    elif sent.status >= 400 and code is None:
        found.append(f"error answer without the error body: {sent.describe()}")
    shape = _answer_shape(sent)
    if shape is not None:
        try:
            msgspec.json.decode(sent.payload, type=shape)
        except msgspec.ValidationError as exc:
            found.append(f"answer does not match {shape.__name__} ({exc}): {sent.describe()}")
    return found


# ------------------------------------------------------------------ the test


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, terminals=2) as gateway:
        yield gateway


@pytest.fixture
async def session(gw: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=gw.daemon.config.api.socket, limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.mark.timeout(240)
async def test_openapi_contract_over_the_unix_socket(gw: Gateway, session: aiohttp.ClientSession) -> None:
    fetched = await gw.client.request("GET", "/v1/openapi.json")
    assert fetched.status == 200
    schema = schemathesis.openapi.from_dict(fetched.body)
    lanes = len(gw.tpns)

    sent = await send_all(session, generate(schema, lanes))
    # then refunds, and after them voids, on checkouts that really completed with a card
    completed = [
        body["id"]
        for body in (
            msgspec.json.decode(s.payload)
            for s in sent
            if s.label.startswith("POST /v1/checkouts [") and s.status == 200
        )
        if any(t["type"] == "card" for t in body["tenders"])
    ][:REVERSED]
    assert len(completed) == REVERSED, "too few generated card checkouts completed: is the steering broken?"
    # half of them get refunds, the other half voids (a refunded checkout cannot be voided)
    half = len(completed) // 2
    for targets, operations in (
        (completed[:half], {"POST /v1/checkouts/{id}/refunds", "GET /v1/checkouts/{id}"}),
        (completed[half:], {"POST /v1/checkouts/{id}/void"}),
    ):
        cases = [
            c
            for checkout_id in targets
            for c in generate(schema, lanes, path_parameters={"id": checkout_id}, only=operations)
        ]
        sent += await send_all(session, cases)

    assert len(sent) >= MIN_REQUESTS, len(sent)
    found = [p for s in sent for p in problems(s)]
    assert not found, f"{len(found)} problem(s) in {len(sent)} requests:\n" + "\n".join(found[:15])

    statuses = {s.status for s in sent}
    assert {200, 400, 404} <= statuses, statuses  # the run reached both the happy and the refusing paths
    reversals = {
        s.url.rsplit("/", 1)[1]
        for s in sent
        if s.status == 200 and s.method == "POST" and s.url.endswith(("/refunds", "/void"))
    }
    assert reversals == {"refunds", "void"}, "no generated refund or void went through"

    health = await gw.client.health()
    assert health.status == 200, health.body
    await gw.check_invariants()
