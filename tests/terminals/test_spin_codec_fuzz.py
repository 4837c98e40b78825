"""Property: whatever bytes a terminal sends, the parser returns an outcome or raises ProtocolError only."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.errors import ProtocolError
from gatewayd.terminals.spin import codec

REF = "abc123"

PARSERS: list[Callable[[bytes], object]] = [
    lambda b: codec.parse_payment(b, op="sale", ref=REF, requested=1000),
    lambda b: codec.parse_payment(b, op="void", ref=REF, requested=None),
    lambda b: codec.parse_status(b, REF),
    codec.parse_terminal_status,
    codec.parse_status_list,
    codec.parse_settle,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["0", "1", "2", "Ok", "ApiError", "0000", "0001", "2008", "1.5", "12.345", "1e999", "-0"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
KEYS = [
    *("ResultCode", "StatusCode", "Message", "DelayBeforeNextRequest", "Amounts", "Amount", "TotalAmount"),
    *("ReferenceId", "Voided", "CardData", "CardType", "Last4", "AuthCode", "BatchNumber", "Transactions"),
    *(
        "TransactionType",
        "SettleDetails",
        "TransactionsReports",
        "Count",
        "TerminalStatus",
        "GeneralResponse",
    ),
]
keys = st.sampled_from(KEYS)
shaped = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=6),
    max_leaves=30,
)
answers = st.builds(
    lambda general, rest: {"GeneralResponse": general, **rest},
    st.dictionaries(keys, shaped, max_size=5),
    st.dictionaries(keys, shaped, max_size=6),
)


def only_protocol_errors(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except ProtocolError:
            pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    only_protocol_errors(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    only_protocol_errors(json.dumps(value).encode())


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(answers)
def test_answer_shaped_json(value: dict[str, Any]) -> None:
    data = json.dumps(value).encode()
    only_protocol_errors(data)
    if len(data) > 1:
        only_protocol_errors(data[: len(data) // 2])  # truncated


def test_deep_nesting_and_huge_numbers() -> None:
    only_protocol_errors(b"[" * 100_000)
    only_protocol_errors(b'{"GeneralResponse":' * 5000)
    only_protocol_errors(b'{"GeneralResponse":{"ResultCode":"0","StatusCode":"0001"},"Amounts":{"Amount":1e999999}}')
    only_protocol_errors(b'{"GeneralResponse":{"ResultCode":0,"StatusCode":' + b"9" * 5000 + b"}}")
