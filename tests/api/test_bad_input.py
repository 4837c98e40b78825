"""Bad input through the real socket API: the documented status, error code and field, and no harm done.

One daemon serves the whole module; every case sends one bad request and checks the answer
against the contract in API.md. The last test then checks that the batch left no trace: the
daemon still serves, nothing was charged at the terminal, no order row exists and the money
invariants hold.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest

from gatewayd.api import openapi
from tests.harness import Gateway, card, cash, order, running_gateway

MAX_AMOUNT = 10_000_000  # checkout.max_amount default
MAX_BODY = 64 * 1024  # api.max_body_bytes default
NO_SUCH_ID = "0b6f0f7e-5d6a-4c1e-9a53-2f8f4c1d7e10"
LINE = {"sku": "COFFEE-1KG", "quantity": 1, "unit_price": 1000}


def good(**extra: Any) -> dict[str, Any]:
    """A valid card checkout of 10.00 (each case breaks one thing in it)."""
    return order(card(1000), lines=[dict(LINE)], **extra)


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def with_line(**changes: Any) -> dict[str, Any]:
    body = good()
    body["lines"][0].update(changes)
    return body


def with_tender(**changes: Any) -> dict[str, Any]:
    body = good()
    body["tenders"][0].update(changes)
    return body


def without(body: dict[str, Any], *path: str | int) -> dict[str, Any]:
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return body


@dataclass(frozen=True)
class Case:
    """One bad request and the answer the contract promises."""

    id: str
    method: str
    path: str
    body: bytes | None
    status: int
    code: str
    field: str | None = None  # error.details.field, where the contract says it names one
    content_type: str | None = "application/json"
    also: tuple[tuple[int, str], ...] = ()  # other (status, code) answers the contract allows
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # further details that must be present


def post(
    id_: str,
    body: Any,
    status: int,
    code: str,
    field_: str | None = None,
    *,
    path: str = "/v1/checkouts",
    **kw: Any,
) -> Case:
    raw = body if isinstance(body, bytes) else encode(body)
    return Case(id_, "POST", path, raw, status, code, field_, **kw)


def get(id_: str, path: str, status: int, code: str, field_: str | None = None, **kw: Any) -> Case:
    return Case(id_, "GET", path, None, status, code, field_, content_type=None, **kw)


def _too_deep() -> bytes:
    return b'{"idempotency_key": "deep", "lines": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"


CASES = [
    # --- not JSON, or not an object
    post("malformed-json", b'{"idempotency_key": "k1", "lines": [', 400, "validation_error", "(body)"),
    post("trailing-garbage", encode(good()) + b"}", 400, "validation_error", "(body)"),
    post("json-array", encode([good()]), 400, "validation_error", "(body)"),
    post("json-null", b"null", 400, "validation_error", "(body)"),
    post("json-string", b'"checkout"', 400, "validation_error", "(body)"),
    post("deeply-nested", _too_deep(), 400, "validation_error"),
    post(
        "invalid-utf8-in-string",
        encode(good(customer_id="cust-\x01")).replace(b"\\u0001", b"\xff\xfe"),
        400,
        "validation_error",
        "(body)",
    ),
    post("empty-body", b"", 400, "validation_error", "idempotency_key"),
    # --- money must be a non-negative int within the store's maximum
    post("float-unit-price", with_line(unit_price=12.5), 400, "validation_error", "lines[0].unit_price"),
    post("float-amount-integral", with_tender(amount=10.0), 400, "validation_error", "tenders[0].amount"),
    post("string-amount", with_tender(amount="1000"), 400, "validation_error", "tenders[0].amount"),
    post("negative-quantity", with_line(quantity=-1), 400, "validation_error", "lines[0].quantity"),
    post("zero-quantity", with_line(quantity=0), 400, "validation_error", "lines[0].quantity"),
    post("negative-unit-price", with_line(unit_price=-1000), 400, "validation_error", "lines[0].unit_price"),
    post(
        "negative-tender-amount",
        dict(good(), tenders=[cash(1500), cash(-500)]),
        400,
        "validation_error",
        "tenders[1].amount",
    ),
    post("negative-tax", good(tax=-1), 400, "validation_error", "tax"),
    post("negative-discount", good(discount=-1), 400, "validation_error", "discount"),
    post(
        "zero-card-amount",
        order(card(0), lines=[dict(LINE, unit_price=0)]),
        400,
        "validation_error",
        "tenders[0].amount",
    ),
    post("amount-over-2^53", with_tender(amount=2**53 + 1), 400, "validation_error", "tenders[0].amount"),
    post(
        "amount-1000-digits",
        encode(good()).replace(b'"amount":1000', b'"amount":' + b"9" * 1000),
        400,
        "validation_error",
        "tenders[0].amount",
    ),
    post(
        "unit-price-over-max",
        order(card(MAX_AMOUNT + 1), lines=[dict(LINE, unit_price=MAX_AMOUNT + 1)]),
        400,
        "validation_error",
        "lines[0].unit_price",
    ),
    post(
        "total-over-max",
        order(card(MAX_AMOUNT + 2), lines=[dict(LINE, quantity=2, unit_price=MAX_AMOUNT // 2 + 1)]),
        400,
        "validation_error",
        "lines",
    ),
    post(
        "tender-over-max",
        order(card(MAX_AMOUNT + 1), lines=[dict(LINE)]),
        400,
        "validation_error",
        "tenders[0].amount",
    ),
    post("tax-over-max", good(tax=MAX_AMOUNT + 1), 400, "validation_error", "tax"),
    # --- the request must add up
    post("tenders-short", dict(good(), tenders=[card(999)]), 400, "validation_error", "tenders"),
    post("tenders-over", dict(good(), tenders=[card(600), cash(600)]), 400, "validation_error", "tenders"),
    post("discount-over-subtotal", good(discount=1001), 400, "validation_error", "discount"),
    post("two-cash-tenders", dict(good(), tenders=[cash(500), cash(500)]), 400, "validation_error", "tenders"),
    post(
        "tendered-below-amount",
        dict(good(), tenders=[cash(1000, tendered=999)]),
        400,
        "validation_error",
        "tenders[0].tendered",
    ),
    # --- shape: unknown and missing fields, enums, lengths
    post("unknown-top-level-field", good(surprise=1), 400, "validation_error", "surprise"),
    post("unknown-line-field", with_line(colour="red"), 400, "validation_error", "lines[0].colour"),
    post("unknown-tender-field", with_tender(tip=100), 400, "validation_error", "tenders[0].tip"),
    post(
        "missing-idempotency-key",
        without(good(), "idempotency_key"),
        400,
        "validation_error",
        "idempotency_key",
    ),
    post("missing-lines", without(good(), "lines"), 400, "validation_error", "lines"),
    post("missing-line-sku", without(good(), "lines", 0, "sku"), 400, "validation_error", "lines[0].sku"),
    post("tender-type-bitcoin", with_tender(type="bitcoin"), 400, "validation_error", "tenders[0].type"),
    post(
        "tender-without-type",
        without(good(), "tenders", 0, "type"),
        400,
        "validation_error",
        "tenders[0].type",
    ),
    post(
        "card-without-terminal",
        without(good(), "tenders", 0, "terminal_id"),
        400,
        "validation_error",
        "tenders[0].terminal_id",
    ),
    post("empty-lines", good() | {"lines": []}, 400, "validation_error", "lines"),
    post("empty-tenders", good() | {"tenders": []}, 400, "validation_error", "tenders"),
    post("lines-not-a-list", good() | {"lines": LINE}, 400, "validation_error", "lines"),
    post("empty-sku", with_line(sku=""), 400, "validation_error", "lines[0].sku"),
    post("idempotency-key-201-chars", good(key="k" * 201), 400, "validation_error", "idempotency_key"),
    post("idempotency-key-10k-chars", good(key="k" * 10_000), 400, "validation_error", "idempotency_key"),
    post("idempotency-key-with-space", good(key="reg 1"), 400, "validation_error", "idempotency_key"),
    post("idempotency-key-non-ascii", good(key="réf-1"), 400, "validation_error", "idempotency_key"),
    post(
        "empty-idempotency-key",
        good(key="") | {"idempotency_key": ""},
        400,
        "validation_error",
        "idempotency_key",
    ),
    post("lowercase-currency", good(currency="usd"), 400, "validation_error", "currency"),
    post(
        "too-many-lines",
        good() | {"lines": [dict(LINE, unit_price=2)] * 501},
        400,
        "validation_error",
        "lines",
    ),
    # PostgreSQL text cannot hold NUL: refused at the edge, not a 500 from the database
    post("nul-in-sku", with_line(sku="COFFEE\x00-1KG"), 400, "validation_error", "lines[0].sku"),
    post("nul-in-register-id", good(register_id="reg\x001"), 400, "validation_error", "register_id"),
    post("nul-in-customer-id", good(customer_id="cust\x0042"), 400, "validation_error", "customer_id"),
    # --- transport: size, content type, path, method
    post(
        "one-megabyte-body",
        b'{"idempotency_key": "' + b"x" * (1 << 20) + b'"}',
        413,
        "payload_too_large",
        details={"max_bytes": MAX_BODY},
    ),
    post("text-plain", encode(good()), 415, "unsupported_media_type", content_type="text/plain"),
    post(
        "form-urlencoded",
        b"idempotency_key=k&amount=1000",
        415,
        "unsupported_media_type",
        content_type="application/x-www-form-urlencoded",
    ),
    get("unknown-path", "/v1/checkout", 404, "not_found"),
    get("unknown-version", "/v2/health", 404, "not_found"),
    Case("wrong-method-delete", "DELETE", "/v1/checkouts", None, 405, "method_not_allowed", content_type=None),
    Case("wrong-method-put", "PUT", "/v1/health", b"{}", 405, "method_not_allowed"),
    get("wrong-method-get-void", f"/v1/checkouts/{NO_SUCH_ID}/void", 405, "method_not_allowed"),
    # --- lookups
    get("find-without-key", "/v1/checkouts", 400, "validation_error", "idempotency_key"),
    get("find-with-empty-key", "/v1/checkouts?idempotency_key=", 400, "validation_error", "idempotency_key"),
    get("find-unknown-key", "/v1/checkouts?idempotency_key=never-used-1", 404, "not_found"),
    get(
        "find-with-nul-key",
        "/v1/checkouts?idempotency_key=reg%001",
        404,
        "not_found",
        also=((400, "validation_error"),),
    ),
    get(
        "find-with-4k-key",
        "/v1/checkouts?idempotency_key=" + "k" * 4_000,
        404,
        "not_found",
        also=((400, "validation_error"),),
    ),
    get("non-uuid-checkout", "/v1/checkouts/not-a-uuid", 404, "not_found"),
    get("uuid-ish-checkout", "/v1/checkouts/0b6f0f7e-5d6a-4c1e-9a53", 404, "not_found"),
    get("unknown-checkout", f"/v1/checkouts/{NO_SUCH_ID}", 404, "not_found"),
    post("void-non-uuid", b"", 404, "not_found", path="/v1/checkouts/not-a-uuid/void"),
    post("void-unknown", b"", 404, "not_found", path=f"/v1/checkouts/{NO_SUCH_ID}/void"),
    post(
        "refund-non-uuid",
        {"idempotency_key": "r1", "amount": 100},
        404,
        "not_found",
        path="/v1/checkouts/not-a-uuid/refunds",
    ),
    post(
        "refund-float-amount",
        {"idempotency_key": "r1", "amount": 10.5},
        400,
        "validation_error",
        "amount",
        path=f"/v1/checkouts/{NO_SUCH_ID}/refunds",
    ),
    post(
        "refund-zero-amount",
        {"idempotency_key": "r1", "amount": 0},
        400,
        "validation_error",
        "amount",
        path=f"/v1/checkouts/{NO_SUCH_ID}/refunds",
    ),
    post(
        "refund-unknown-field",
        {"idempotency_key": "r1", "amount": 1, "why": "x"},
        400,
        "validation_error",
        "why",
        path=f"/v1/checkouts/{NO_SUCH_ID}/refunds",
    ),
    get("unknown-terminal", "/v1/terminals/lane-99", 404, "not_found"),
    # --- operator endpoints
    post(
        "cleanup-zero-minutes",
        {"older_than_minutes": 0},
        400,
        "validation_error",
        "older_than_minutes",
        path="/v1/maintenance/cleanup",
    ),
    post(
        "cleanup-float-minutes",
        {"older_than_minutes": 1.5},
        400,
        "validation_error",
        "older_than_minutes",
        path="/v1/maintenance/cleanup",
    ),
    post(
        "cleanup-minutes-over-int32",
        {"older_than_minutes": 2**31},
        400,
        "validation_error",
        "older_than_minutes",
        path="/v1/maintenance/cleanup",
    ),
    post(
        "cleanup-unknown-field",
        {"older_than": 15},
        400,
        "validation_error",
        "older_than",
        path="/v1/maintenance/cleanup",
    ),
    post("reconcile-unknown-terminal", {"terminal_id": "lane-99"}, 404, "not_found", path="/v1/reconcile"),
    post(
        "reconcile-terminal-not-a-string",
        {"terminal_id": 5},
        400,
        "validation_error",
        "terminal_id",
        path="/v1/reconcile",
    ),
    post("settle-unknown-terminal", b"", 404, "not_found", path="/v1/terminals/lane-99/settle"),
]


@pytest.fixture(scope="module")
async def gw(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path_factory.mktemp("bad-input")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
async def session(gw: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw session on the daemon's unix socket: exact bytes and headers, nothing added."""
    connector = aiohttp.UnixConnector(path=gw.daemon.config.api.socket)
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


async def send(session: aiohttp.ClientSession, case: Case) -> tuple[int, Any]:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    data = io.BytesIO(case.body) if case.body is not None and len(case.body) > MAX_BODY else case.body
    async with session.request(case.method, "http://gatewayd" + case.path, data=data, headers=headers) as resp:
        payload = await resp.read()
        assert resp.content_type == "application/json", (resp.content_type, payload[:200])
        return resp.status, msgspec.json.decode(payload)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_request(session: aiohttp.ClientSession, case: Case) -> None:
    status, body = await send(session, case)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(error) == {"code", "message", "retry", "details"}, (status, body)
    assert isinstance(error["message"], str) and error["message"], body
    # bad input is never worth sending again as it is (a shutdown or an outage would be)
    assert error["retry"] == "no" or error["code"] in ("shutting_down", "database_unavailable"), body
    assert isinstance(error["details"], dict), body
    allowed = {(case.status, case.code), *case.also}
    assert (status, error["code"]) in allowed, (status, body)
    if case.field is not None and (status, error["code"]) == (case.status, case.code):
        assert error["details"].get("field") == case.field, body
    for key, value in case.details.items():
        assert error["details"].get(key) == value, body


async def test_request_line_over_the_parser_limit(session: aiohttp.ClientSession) -> None:
    """aiohttp's HTTP parser refuses a request line over 8190 bytes before any handler runs: a 4xx."""
    url = "http://gatewayd/v1/checkouts?idempotency_key=" + "k" * 10_000
    async with session.get(url) as resp:
        assert 400 <= resp.status < 500, resp.status


async def test_the_bad_batch_did_no_harm(gw: Gateway, session: aiohttp.ClientSession) -> None:
    """After every bad request: the daemon serves, nothing was charged, no order exists."""
    assert {c.id for c in CASES} and len({c.id for c in CASES}) == len(CASES)
    health = await gw.client.health()
    assert health.status == 200, health.body
    assert await gw.ledger() == []
    assert await gw.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", gw.store_id) == 0
    await gw.check_invariants()
    # and a good checkout still goes through on the same daemon
    answer = await gw.client.checkout(good())
    assert answer.status == 200 and answer.body["status"] == "completed", answer.body
    assert [(t["amount"], t["status"]) for t in await gw.ledger()] == [(1000, "approved")]
    await gw.check_invariants()


async def test_openapi_document(gw: Gateway) -> None:
    answer = await gw.client.request("GET", "/v1/openapi.json")
    assert answer.status == 200
    doc = answer.body
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    assert {"CheckoutRequest", "CheckoutView", "ErrorBody"} <= set(schemas)
    assert set(schemas["CheckoutRequest"]["required"]) == {"idempotency_key", "lines", "tenders"}
    assert doc == msgspec.json.decode(msgspec.json.encode(openapi.document()))
    assert "/v1/checkouts" in doc["paths"] and "post" in doc["paths"]["/v1/checkouts"]
