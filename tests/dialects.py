"""Run a suite's database tests once per SPIn dialect: REST (Cloud) and Local.

A conftest imports `dialect` and `pytest_generate_tests` from here: every test of its folder that
uses the database (the `dsn` fixture, which every gateway and daemon test needs) runs twice,
`[rest]` and `[local]`, and every store it builds through tests/harness.py or tests/procs.py speaks
that dialect. A test that cannot hold over one of them says why with `rest_only(reason)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gatewayd.stack import DIALECTS, Dialect
from tests.harness import current_dialect, using_dialect


@pytest.fixture(autouse=True)
def dialect(request: pytest.FixtureRequest) -> Iterator[Dialect]:
    """The dialect of this run of the test ("rest" for a test that is not run per dialect)."""
    value: Dialect = getattr(request, "param", "rest")
    with using_dialect(value):
        yield value


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dsn" in metafunc.fixturenames and "dialect" in metafunc.fixturenames:
        metafunc.parametrize("dialect", DIALECTS, indirect=True)


def rest_only(reason: str) -> None:
    """Skip the Local run of the calling test, saying why it does not apply to SPIn Local."""
    if current_dialect() == "local":
        pytest.skip(f"SPIn Local: {reason}")


def reconcile_listed(report: dict[str, Any], terminal_id: str) -> bool:
    """Whether POST /v1/reconcile compared this terminal's batch. Over SPIn Local it cannot (the
    XML dialect lists no batch): then the report must say so for the terminal, and the caller
    skips what only the batch comparison finds."""
    if current_dialect() == "local":
        assert "cannot list" in report["errors"].get(terminal_id, ""), report
        return False
    return True
