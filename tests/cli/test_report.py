"""`gatewayd report` over the socket (GET /v1/report), with the database as the fallback; the same
table and the same JSON either way."""

from __future__ import annotations

import json
from typing import Any

from tests.harness import Gateway, card
from tests.procs import run_cli


def _shape(body: dict[str, Any]) -> list[tuple[str, str, list[str], int]]:
    return [(s["title"], s["period"], s["columns"], len(s["rows"])) for s in body["sections"]]


async def test_report_over_the_socket_and_the_same_json_from_the_database(gw: Gateway) -> None:
    assert (await gw.checkout(card(2100))).status == 200
    sock = gw.daemon.config.api.socket
    code, out = await run_cli("report", "--socket", sock)
    assert code == 0, out
    assert "Payment success rate, last hour" in out and "Lane lane-1" in out
    assert "note:" not in out  # the daemon answered: nothing fell back to the database
    code, out = await run_cli("report", "--socket", sock, "--json")
    assert code == 0, out
    over_socket = json.loads(out)
    assert {s["period"] for s in over_socket["sections"]} == {"hourly", "daily", "weekly"}
    code, out = await run_cli(
        "report", "--socket", "/nonexistent.sock", "--dsn", gw.dsn, "--store", gw.store_id, "--json"
    )
    assert code == 0, out
    direct = json.loads(out[out.index("{") :])  # after the note that the daemon was not reached
    assert "working on the database directly" in out
    assert _shape(direct) == _shape(over_socket)
    assert set(direct) == set(over_socket) == {"sections"}


async def test_report_of_one_period(gw: Gateway) -> None:
    code, out = await run_cli("report", "--socket", gw.daemon.config.api.socket, "--period", "weekly", "--json")
    assert code == 0, out
    assert {s["period"] for s in json.loads(out)["sections"]} == {"weekly"}
