"""Properties of the bad-input edges: the API request decoder and the config loader.

Whatever bytes a POS sends, the API's decoder (`decode_body`, then `validate`) either accepts a
request that adds up in integer money or refuses it as a 400 validation_error naming a field;
nothing else escapes. Whatever text a config file holds, `parse` returns a Config or raises
ConfigError, and the message never shows a secret. (The SPIn answer parser is fuzzed in
tests/terminals/test_spin_codec_fuzz.py.)
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gatewayd.api.app import decode_body
from gatewayd.checkout.errors import InvalidRequest
from gatewayd.checkout.model import CardTender, CashTender, CheckoutRequest
from gatewayd.checkout.validate import change_due, validate
from gatewayd.config import (
    ApiConfig,
    CheckoutConfig,
    Config,
    DatabaseConfig,
    HealthConfig,
    LogConfig,
    MetricsConfig,
    RecoveryConfig,
    TerminalConfig,
    parse,
)
from gatewayd.errors import ConfigError

T = TypeVar("T")
POLICY = CheckoutConfig()
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ------------------------------------------------------------------ the API request decoder


class _Request:
    """What decode_body reads of an aiohttp request: the content type and the body."""

    content_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body


def _finish(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (decode_body over an in-memory body)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise AssertionError("decode_body suspended on an in-memory body")


def decode_checkout(data: bytes) -> CheckoutRequest | None:
    """The API's decoder and checks; None when refused the documented way, anything else escapes."""
    try:
        request = _finish(decode_body(cast(web.Request, _Request(data)), CheckoutRequest))
    except web.HTTPException as refused:
        response = cast(web.Response, getattr(refused, "response", None))
        assert response is not None, refused
        assert response.status == 400, response.status
        assert isinstance(response.body, bytes)
        error = msgspec.json.decode(response.body)["error"]
        assert error["code"] == "validation_error", error
        assert isinstance(error["details"].get("field"), str) and error["details"]["field"], error
        return None
    try:
        validate(request, POLICY)
    except InvalidRequest as exc:
        assert exc.code == "validation_error" and exc.field, exc
        return None
    return request


def _is_money(value: object) -> bool:
    return type(value) is int and 0 <= value <= POLICY.max_amount


def check_accepted(request: CheckoutRequest) -> None:
    """An accepted request adds up in integer minor units and can be stored as it is."""
    assert all(_is_money(v) for v in (request.tax, request.discount, request.total)), request
    for line in request.lines:
        assert type(line.quantity) is int and line.quantity >= 1 and _is_money(line.unit_price), line
    for tender in request.tenders:
        assert _is_money(tender.amount), tender
        if isinstance(tender, CashTender) and tender.tendered is not None:
            assert type(tender.tendered) is int and tender.tendered >= tender.amount, tender
        if isinstance(tender, CardTender):
            assert tender.amount > 0, tender
    assert sum(t.amount for t in request.tenders) == request.total
    assert change_due(request) >= 0
    texts = [
        request.idempotency_key,
        request.currency,
        request.register_id,
        request.customer_id,
        *(line.sku for line in request.lines),
        *(t.terminal_id for t in request.tenders if isinstance(t, CardTender)),
    ]
    assert not any("\x00" in s for s in texts if s is not None), "PostgreSQL text cannot hold NUL"


def only_documented_outcomes(data: bytes) -> None:
    request = decode_checkout(data)
    if request is not None:
        check_accepted(request)


money: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-5, max_value=20_000),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(
        [
            0,
            1,
            2**53,
            2**53 + 1,
            POLICY.max_amount,
            POLICY.max_amount + 1,
            10.0,
            12.5,
            -0.0,
            "1000",
            True,
            None,
            [],
            {},
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
)
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "lane-1", "lane-2", "USD", "usd", "COFFEE-1KG", "a\x00b", "k" * 201, "réf", 7, None]),
)
line = st.fixed_dictionaries({}, optional={"sku": texts, "quantity": money, "unit_price": money, "colour": texts})
tender = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["cash", "card", "bitcoin", "", 1, None]),
        "amount": money,
        "tendered": money,
        "terminal_id": texts,
        "tip": money,
    },
)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
checkout_shaped = st.fixed_dictionaries(
    {},
    optional={
        "idempotency_key": texts,
        "lines": st.lists(line | any_json, max_size=4),
        "tenders": st.lists(tender | any_json, max_size=4),
        "currency": texts,
        "tax": money,
        "discount": money,
        "register_id": texts,
        "customer_id": texts,
        "surprise": any_json,
    },
)


@st.composite
def adding_up(draw: st.DrawFn) -> dict[str, Any]:
    """A checkout built to be valid: lines, tax and discount, tenders that sum to the total."""
    sku = st.text(alphabet=string.ascii_uppercase + string.digits + "-", min_size=1, max_size=20)
    lines: list[dict[str, Any]] = [
        {"sku": draw(sku), "quantity": draw(st.integers(1, 5)), "unit_price": draw(st.integers(0, 100_000))}
        for _ in range(draw(st.integers(1, 5)))
    ]
    subtotal = sum(x["quantity"] * x["unit_price"] for x in lines)
    tax = draw(st.integers(0, 10_000))
    discount = draw(st.integers(0, subtotal + tax))
    total = subtotal + tax - discount
    cash_part = draw(st.integers(0, total)) if draw(st.booleans()) or total == 0 else 0
    card_parts: list[int] = []
    rest = total - cash_part
    while rest > 0:
        part = draw(st.integers(1, rest)) if len(card_parts) < 3 else rest
        card_parts.append(part)
        rest -= part
    tenders: list[dict[str, Any]] = [
        {"type": "card", "amount": a, "terminal_id": f"lane-{i + 1}"} for i, a in enumerate(card_parts)
    ]
    if cash_part or not tenders:
        tendered = draw(st.none() | st.integers(cash_part, cash_part + 10_000))
        tenders.insert(0, {"type": "cash", "amount": cash_part} | ({} if tendered is None else {"tendered": tendered}))
    return {
        "idempotency_key": draw(
            st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=200)
        ),
        "lines": lines,
        "tenders": tenders,
        "tax": tax,
        "discount": discount,
        **draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "register_id": sku,
                    "customer_id": sku,
                    "currency": st.just(POLICY.currency),  # another is refused (test_first_hour)
                },
            )
        ),
    }


@FUZZ
@given(st.binary(max_size=512))
@example(b'{"idempotency_key": "\xff\xfe"}')  # invalid UTF-8 inside a JSON string
@example(b'{"idempotency_key": "k", "lines": [{"sku": "\xc3", "quantity": 1, "unit_price": 1}]}')
@example(b"")
@example(b"[" * 10_000)
def test_decoder_on_arbitrary_bytes(data: bytes) -> None:
    only_documented_outcomes(data)


@FUZZ
@given(checkout_shaped)
def test_decoder_on_checkout_shaped_json(value: dict[str, Any]) -> None:
    data = json.dumps(value).encode()
    only_documented_outcomes(data)
    only_documented_outcomes(data[: len(data) // 2])  # truncated


@FUZZ
@given(adding_up(), st.sampled_from(["sku", "register_id", "customer_id", "terminal_id"]))
def test_decoder_on_checkouts_that_add_up(value: dict[str, Any], spoil: str) -> None:
    """Well-formed checkouts are accepted as sent; the same with a NUL in a text field is refused."""
    request = decode_checkout(json.dumps(value).encode())
    assert request is not None, value
    check_accepted(request)
    assert request.total == sum(t["amount"] for t in value["tenders"])
    assert msgspec.to_builtins(request)["lines"] == value["lines"]
    if spoil == "sku":
        value["lines"][0]["sku"] += "\x00"
    elif spoil == "terminal_id" and value["tenders"][-1]["type"] == "card":
        value["tenders"][-1]["terminal_id"] = "lane\x001"
    else:
        value[spoil if spoil != "terminal_id" else "register_id"] = "x\x00y"
    only_documented_outcomes(json.dumps(value).encode())


# ------------------------------------------------------------------ the config loader

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "database": DatabaseConfig,
    "api": ApiConfig,
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "checkout": CheckoutConfig,
    "recovery": RecoveryConfig,
    "log": LogConfig,
}
TOP_KEYS = [f.name for f in msgspec.structs.fields(Config) if f.name not in (*SECTIONS, "terminals")]
TERMINAL_KEYS = [f.name for f in msgspec.structs.fields(TerminalConfig)]
SECRET_PREFIX = "SeCrEtVaLuE"
STORE_IDS = ['"store-1"', '""', '"bad id"', "7"]


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON escapes are TOML basic-string escapes


toml_scalar = st.one_of(
    st.text(max_size=16).map(_toml_string),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.floats().map(repr),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.sampled_from(
        [
            '"127.0.0.1:9470"',
            '"127.0.0.1:²"',
            '"[::1]:0"',
            '":80"',
            '"host:99999"',
            '"0660"',
            '"sale"',
            '"json"',
            '"DEBUG"',
            '"http://127.0.0.1:1"',
            '"lane-1"',
            '"a\\u0000b"',
            '"/nonexistent/key"',
            '"NO_SUCH_ENV_VAR_X"',
            "1979-05-27T07:32:00Z",
            "[]",
            "{}",
            "[1, 2]",
            "{a = 1}",
            "0.5",
            "1e999",
            "-1",
            "0",
            "720",
            "721",
            "nan",
        ]
    ),
)
toml_value = st.one_of(toml_scalar, st.text(max_size=8))  # sometimes not TOML at all


@st.composite
def toml_documents(draw: st.DrawFn) -> tuple[str, str]:
    """A config made of real keys with random values; the authkey is a recognisable secret."""
    secret = SECRET_PREFIX + draw(st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=16))
    out: list[str] = []
    if draw(st.booleans()):
        out.append(f"store_id = {draw(st.sampled_from(STORE_IDS))}")
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=2, unique=True)):
        out.append(f"{key} = {draw(toml_value)}")
    for name in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=4, unique=True)):
        out.append(f"[{name}]")
        fields = [f.name for f in msgspec.structs.fields(SECTIONS[name])]
        for key in draw(st.lists(st.sampled_from([*fields, "misspelt_key"]), max_size=4, unique=True)):
            value = f'"{secret}"' if key in ("tcp_token", "dsn") and draw(st.booleans()) else draw(toml_value)
            out.append(f"{key} = {value}")
    for _ in range(draw(st.integers(0, 2))):
        out.append("[[terminals]]")
        keys = draw(st.lists(st.sampled_from([*TERMINAL_KEYS, "auth_key"]), max_size=6, unique=True))
        for key in ("id", "base_url", "tpn", "authkey"):
            if key not in keys and draw(st.integers(0, 3)):
                keys.append(key)
        for key in keys:
            if key == "authkey":
                out.append(f'authkey = "{secret}"')
            elif key in ("id", "tpn") and draw(st.booleans()):
                out.append(f'{key} = "lane-1"')
            elif key == "base_url" and draw(st.booleans()):
                out.append('base_url = "http://127.0.0.1:1"')
            else:
                out.append(f"{key} = {draw(toml_value)}")
    return "\n".join(out) + "\n", secret


def only_config_errors(data: str | bytes, secret: str | None = None) -> None:
    for resolve in (True, False):
        try:
            parse(data, "store.toml", resolve_secrets=resolve)
        except ConfigError as exc:
            assert str(exc).startswith("store.toml: "), str(exc)
            if secret is not None:
                assert secret not in str(exc) and secret not in repr(exc.fields), str(exc)


@FUZZ
@given(st.text(max_size=300))
@example('store_id = "s"\n[metrics]\nlisten = "127.0.0.1:²"\n')  # a digit int() does not take
def test_config_on_arbitrary_text(text: str) -> None:
    only_config_errors(text)


@FUZZ
@given(st.binary(max_size=200))
def test_config_on_arbitrary_bytes(data: bytes) -> None:
    only_config_errors(data)


@FUZZ
@given(toml_documents())
@example(
    (
        'store_id = "s"\n[[terminals]]\nid = "lane-1"\nbase_url = "http://x"\ntpn = "T1"\nauthkey_file = "a\\u0000b"\n',
        "unused-" + secrets.token_hex(4),
    )
)  # NUL in a path
@example(('store_id = "s"\n[api]\ntcp_listen = "127.0.0.1:1"\ntcp_token = "SeCrEtVaLuE123"\n', "SeCrEtVaLuE123"))
def test_config_on_real_keys_with_random_values(document: tuple[str, str]) -> None:
    text, secret = document
    only_config_errors(text, secret)


def test_config_secret_file_that_is_not_text(tmp_path: Path) -> None:
    """A key file holding binary junk is a ConfigError naming the key, and shows none of its bytes."""
    key_file = tmp_path / "lane-1.key"
    key_file.write_bytes(b"\xffSeCrEt\xfe\x00")
    text = (
        'store_id = "s"\n[[terminals]]\nid = "lane-1"\nbase_url = "http://127.0.0.1:1"\ntpn = "T1"\n'
        f'authkey_file = "{key_file}"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse(text, "store.toml")
    assert "terminals[0].authkey_file" in str(info.value)
    assert "SeCrEt" not in str(info.value) and "0xff" not in str(info.value)
