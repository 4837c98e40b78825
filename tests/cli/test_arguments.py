"""Arguments refused or honoured, never silently changed; `gatewayd simulate --help` documents
every option."""

from __future__ import annotations

import argparse
import uuid

import pytest

from gatewayd.cli.operator import minutes
from gatewayd.terminals.simulator.server import _parser
from tests.harness import Gateway
from tests.procs import run_cli


@pytest.mark.parametrize(
    ("value", "rule"),
    [("0m", "under one minute"), ("0", "under one minute"), ("30s", "under one minute"),
     ("90s", "not a whole number of minutes"), ("15x", "not a duration")],
)  # fmt: skip
async def test_cleanup_refuses_what_is_not_whole_minutes(value: str, rule: str) -> None:
    code, out = await run_cli("cleanup", "--older-than", value, "--socket", "/nonexistent.sock")
    assert code == 2, out
    assert f"argument --older-than: {value!r} is {rule}" in out, out
    assert "a whole number of minutes, at least 1" in out


def test_minutes_honoured_exactly() -> None:
    assert [minutes(v) for v in ("1m", "15", "120s", "2h", "1d")] == [1, 15, 2, 120, 1440]
    with pytest.raises(argparse.ArgumentTypeError):
        minutes("61s")


async def test_simulate_help_documents_every_option() -> None:
    code, out = await run_cli("simulate", "--help")
    assert code == 0, out
    options = [a for a in _parser()._actions if a.option_strings and a.dest != "help"]
    assert {o for a in options for o in a.option_strings} >= {
        "--port", "--host", "--latency-ms", "--slow-s", "--tpns", "--auto-settle-s"
    }  # fmt: skip
    for action in options:
        assert action.help, action.option_strings
        assert "default" in action.help or action.required, action.option_strings
        assert all(o in out for o in action.option_strings)
    flat = " ".join(out.split())
    assert "SPIn REST simulator" in flat and "magic cents" in flat and "docs/api.md" in flat


async def test_cleanup_over_the_socket_honours_whole_minutes(gw: Gateway) -> None:
    await gw.fetch(
        """INSERT INTO orders (store_id, id, order_number, status, idempotency_key, request_hash, subtotal,
                               total, currency, created_at)
           VALUES ($1, $2, 'OLD2', 'pending_payment', 'old-2', 'h', 0, 0, 'USD', now() - interval '1 hour')""",
        gw.store_id,
        uuid.uuid4(),
    )
    code, out = await run_cli("cleanup", "--older-than", "120s", "--socket", gw.daemon.config.api.socket)
    assert code == 0 and "cancelled 1 stale pending order(s) older than 2 min" in out, out
