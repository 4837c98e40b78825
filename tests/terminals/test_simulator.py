"""The simulator as a POS developer sees it: raw SPIn JSON over HTTP, control endpoints, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gatewayd.terminals.simulator import Simulator, running_simulator

from .helpers import AUTHKEY, new_ref, new_tpn


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, json.loads(await resp.read())


def body(tpn: str, ref: str, amount: str | float | None = "10.00", **extra: Any) -> dict[str, Any]:
    payload = {"Tpn": tpn, "Authkey": AUTHKEY, "ReferenceId": ref, "PaymentType": "Credit", **extra}
    if amount is not None:
        payload["Amount"] = amount
    return payload


def code(answer: dict[str, Any]) -> str:
    return str(answer["GeneralResponse"]["StatusCode"])


async def test_raw_sale_status_void_and_ledger(sim: Simulator, http: aiohttp.ClientSession) -> None:
    tpn, ref = new_tpn(), new_ref()
    status, answer = await post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, ref, 12.3))
    assert status == 200 and code(answer) == "0000" and answer["GeneralResponse"]["ResultCode"] == "0"
    assert answer["Amounts"]["Amount"] == 12.3 and answer["ReferenceId"] == ref
    assert set(answer["CardData"]) == {"CardType", "EntryType", "Last4"}
    _, again = await post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, ref))
    assert code(again) == "1011"
    _, found = await post(http, f"{sim.url}/v2/Payment/Status", body(tpn, ref, None))
    assert found["AuthCode"] == answer["AuthCode"] and found["Voided"] is False
    _, void = await post(http, f"{sim.url}/v2/Payment/Void", body(tpn, ref, None))
    assert code(void) == "0000" and void["Voided"] is True
    _, void_again = await post(http, f"{sim.url}/v2/Payment/Void", body(tpn, ref, None))
    assert code(void_again) == "0000"
    _, missing = await post(http, f"{sim.url}/v2/Payment/Void", body(tpn, new_ref(), None))
    assert code(missing) == "1001"
    async with http.get(f"{sim.url}/_sim/ledger") as resp:
        ledger = await resp.json()
    assert ledger == {
        "transactions": [
            {
                "tpn": tpn,
                "reference_id": ref,
                "type": "sale",
                "amount": 1230,
                "status": "voided",
                "batch": 1,
                "status_code": "0000",
                "auth_code": answer["AuthCode"],
            }
        ],
        "max_concurrency": {tpn: 1},
    }


async def test_terminal_status_offline_online_and_reset(sim: Simulator, http: aiohttp.ClientSession) -> None:
    tpn = new_tpn()
    url = f"{sim.url}/v2/Common/TerminalStatus"
    params = {"request.tpn": tpn, "request.authkey": AUTHKEY}
    async with http.get(url, params=params) as resp:
        assert (await resp.json())["TerminalStatus"] == "Online"
    assert (await post(http, f"{sim.url}/_sim/terminals/{tpn}/offline"))[0] == 200
    async with http.get(url, params=params) as resp:
        assert (await resp.json())["TerminalStatus"] == "Offline"
    _, answer = await post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert code(answer) == "2001" and answer["GeneralResponse"]["ResultCode"] == "2"
    await post(http, f"{sim.url}/_sim/terminals/{tpn}/online")
    _, answer = await post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert code(answer) == "0000"
    await post(http, f"{sim.url}/_sim/reset")
    assert sim.ledger.snapshot() == {"transactions": [], "max_concurrency": {}}


async def test_going_offline_drops_a_held_connection(sim: Simulator, http: aiohttp.ClientSession) -> None:
    tpn = new_tpn()
    held = asyncio.create_task(post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, new_ref(), "10.57")))
    await asyncio.sleep(0.05)
    await post(http, f"{sim.url}/_sim/terminals/{tpn}/offline")
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(held, 2)


async def test_a_second_concurrent_transaction_is_busy_and_counted(sim: Simulator, http: aiohttp.ClientSession) -> None:
    tpn = new_tpn()
    slow = asyncio.create_task(post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, new_ref(), "10.55")))
    await asyncio.sleep(0.05)
    _, busy = await post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert code(busy) == "2008" and busy["GeneralResponse"]["DelayBeforeNextRequest"] == 1
    _, status = await post(http, f"{sim.url}/v2/Payment/Status", body(tpn, new_ref(), None))
    assert code(status) == "1001"  # Status is answered while a transaction runs
    async with http.get(f"{sim.url}/v2/Common/TerminalStatus", params={"request.tpn": tpn}) as resp:
        assert (await resp.json())["TerminalStatus"] == "Online"
    assert code((await slow)[1]) == "0000"
    assert sim.ledger.max_concurrency()[tpn] == 2  # the simulator saw (and refused) the overlap


async def test_auth_capture_return_settle(sim: Simulator, http: aiohttp.ClientSession) -> None:
    tpn, auth, ret = new_tpn(), new_ref(), new_ref()
    assert code((await post(http, f"{sim.url}/v2/Payment/Auth", body(tpn, auth, "20.00")))[1]) == "0000"
    _, captured = await post(http, f"{sim.url}/v2/Payment/Capture", body(tpn, auth, "15.00"))
    assert code(captured) == "0000" and captured["TransactionType"] == "Capture"
    assert code((await post(http, f"{sim.url}/v2/Payment/Return", body(tpn, ret, "5.00")))[1]) == "0000"
    _, listed = await post(http, f"{sim.url}/v2/Payment/StatusList", body(tpn, "", None))
    assert [t["ReferenceId"] for t in listed["Transactions"]] == [auth, ret]
    _, settled = await post(http, f"{sim.url}/v2/Payment/Settle", body(tpn, new_ref(), None))
    assert code(settled) == "0000" and settled["BatchNumber"] == "1"
    assert settled["SettleDetails"][0]["TransactionsReports"][0] == {"Count": 2, "Amount": 10.0}
    _, empty = await post(http, f"{sim.url}/v2/Payment/Settle", body(tpn, new_ref(), None))
    assert code(empty) == "1020"
    _, sale = await post(http, f"{sim.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert sale["BatchNumber"] == "2"


async def test_bad_requests(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/v2/Payment/Sale", data=b"{not json") as resp:
        assert resp.status == 400 and code(await resp.json()) == "2006"
    assert code((await post(http, f"{sim.url}/v2/Payment/Sale", {"Tpn": "X1"}))[1]) == "2002"
    assert code((await post(http, f"{sim.url}/v2/Payment/Sale", body(new_tpn(), new_ref(), "0")))[1]) == "1013"


async def test_allow_list(http: aiohttp.ClientSession) -> None:
    async with running_simulator(tpns={"TPNONLY00001"}) as sim:
        assert code((await post(http, f"{sim.url}/v2/Payment/Sale", body("TPNOTHER0001", new_ref())))[1]) == "2003"
        async with http.get(f"{sim.url}/v2/Common/TerminalStatus", params={"request.tpn": "TPNOTHER0001"}) as r:
            assert r.status == 404 and (await r.json())["TerminalStatus"] == "NotFound"
        assert code((await post(http, f"{sim.url}/v2/Payment/Sale", body("TPNONLY00001", new_ref())))[1]) == "0000"


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.terminals.simulator", "--port", "0", "--latency-ms", "1",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        url = line.rsplit(" ", 1)[-1]
        assert line.startswith("gatewayd simulator listening on http://127.0.0.1:")
        assert code((await post(http, f"{url}/v2/Payment/Sale", body(new_tpn(), new_ref())))[1]) == "0000"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
