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

from gatewayd.terminals.outcomes import Approved, Health, Misconfigured, Voided
from gatewayd.terminals.simulator import Simulator, running_simulator
from gatewayd.terminals.simulator.server import _parse
from gatewayd.terminals.spin.driver import SpinDriver

from .conftest import MakeDriver
from .helpers import AUTHKEY, MARGIN_S, TIMEOUT_S, new_ref, new_tpn


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


async def test_raw_sale_status_void_and_ledger(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    tpn, ref = new_tpn(), new_ref()
    status, answer = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, ref, 12.3))
    assert status == 200 and code(answer) == "0000" and answer["GeneralResponse"]["ResultCode"] == "0"
    assert answer["Amounts"]["Amount"] == 12.3 and answer["ReferenceId"] == ref
    # everything a real terminal reads of the card (gatewayd keeps brand and last four only)
    assert set(answer["CardData"]) == {"CardType", "EntryType", "Last4", "First4", "BIN", "Name", "ExpirationDate"}
    _, again = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, ref))
    assert code(again) == "1011"
    _, found = await post(http, f"{simulator.url}/v2/Payment/Status", body(tpn, ref, None))
    assert found["AuthCode"] == answer["AuthCode"] and found["Voided"] is False
    _, void = await post(http, f"{simulator.url}/v2/Payment/Void", body(tpn, ref, None))
    assert code(void) == "0000" and void["Voided"] is True
    _, void_again = await post(http, f"{simulator.url}/v2/Payment/Void", body(tpn, ref, None))
    assert code(void_again) == "0000"
    _, missing = await post(http, f"{simulator.url}/v2/Payment/Void", body(tpn, new_ref(), None))
    assert code(missing) == "1001"
    async with http.get(f"{simulator.url}/_sim/ledger") as resp:
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
                "payment_type": "credit",
                "entry_method": "chip",
            }
        ],
        "max_concurrency": {tpn: 1},
    }


async def test_terminal_status_offline_online_and_reset(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    tpn = new_tpn()
    url = f"{simulator.url}/v2/Common/TerminalStatus"
    params = {"request.tpn": tpn, "request.authkey": AUTHKEY}
    async with http.get(url, params=params) as resp:
        assert (await resp.json())["TerminalStatus"] == "Online"
    assert (await post(http, f"{simulator.url}/_sim/terminals/{tpn}/offline"))[0] == 200
    async with http.get(url, params=params) as resp:
        assert (await resp.json())["TerminalStatus"] == "Offline"
    _, answer = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert code(answer) == "2001" and answer["GeneralResponse"]["ResultCode"] == "2"
    await post(http, f"{simulator.url}/_sim/terminals/{tpn}/online")
    _, answer = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert code(answer) == "0000"
    await post(http, f"{simulator.url}/_sim/reset")
    assert simulator.ledger.snapshot() == {"transactions": [], "max_concurrency": {}}


async def test_going_offline_drops_a_held_connection(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    tpn = new_tpn()
    held = asyncio.create_task(post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref(), "10.57")))
    await asyncio.sleep(0.05)
    await post(http, f"{simulator.url}/_sim/terminals/{tpn}/offline")
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(held, 2)


async def test_a_second_concurrent_transaction_is_busy_and_counted(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    tpn = new_tpn()
    slow = asyncio.create_task(post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref(), "10.55")))
    await asyncio.sleep(0.05)
    _, busy = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert code(busy) == "2008" and busy["GeneralResponse"]["DelayBeforeNextRequest"] == 1
    _, status = await post(http, f"{simulator.url}/v2/Payment/Status", body(tpn, new_ref(), None))
    assert code(status) == "1001"  # Status is answered while a transaction runs
    async with http.get(f"{simulator.url}/v2/Common/TerminalStatus", params={"request.tpn": tpn}) as resp:
        assert (await resp.json())["TerminalStatus"] == "Online"
    assert code((await slow)[1]) == "0000"
    assert simulator.ledger.max_concurrency()[tpn] == 2  # the simulator saw (and refused) the overlap


async def test_auth_capture_return_settle(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    tpn, auth, ret = new_tpn(), new_ref(), new_ref()
    assert code((await post(http, f"{simulator.url}/v2/Payment/Auth", body(tpn, auth, "20.00")))[1]) == "0000"
    _, captured = await post(http, f"{simulator.url}/v2/Payment/Capture", body(tpn, auth, "15.00"))
    assert code(captured) == "0000" and captured["TransactionType"] == "Capture"
    assert code((await post(http, f"{simulator.url}/v2/Payment/Return", body(tpn, ret, "5.00")))[1]) == "0000"
    _, listed = await post(http, f"{simulator.url}/v2/Payment/StatusList", body(tpn, "", None))
    assert [t["ReferenceId"] for t in listed["Transactions"]] == [auth, ret]
    _, settled = await post(http, f"{simulator.url}/v2/Payment/Settle", body(tpn, new_ref(), None))
    assert code(settled) == "0000" and settled["BatchNumber"] == "1"
    assert settled["SettleDetails"][0]["TransactionsReports"][0] == {"Count": 2, "Amount": 10.0}
    _, empty = await post(http, f"{simulator.url}/v2/Payment/Settle", body(tpn, new_ref(), None))
    assert code(empty) == "1020"
    _, sale = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert sale["BatchNumber"] == "2"


async def test_bad_requests(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{simulator.url}/v2/Payment/Sale", data=b"{not json") as resp:
        assert resp.status == 400 and code(await resp.json()) == "2006"
    assert code((await post(http, f"{simulator.url}/v2/Payment/Sale", {"Tpn": "X1"}))[1]) == "2002"
    assert code((await post(http, f"{simulator.url}/v2/Payment/Sale", body(new_tpn(), new_ref(), "0")))[1]) == "1013"


async def test_allow_list(http: aiohttp.ClientSession) -> None:
    async with running_simulator(tpns={"TPNONLY00001"}) as simulator:
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Sale", body("TPNOTHER0001", new_ref())))[1]) == "2003"
        )
        async with http.get(f"{simulator.url}/v2/Common/TerminalStatus", params={"request.tpn": "TPNOTHER0001"}) as r:
            assert r.status == 404 and (await r.json())["TerminalStatus"] == "NotFound"
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Sale", body("TPNONLY00001", new_ref())))[1]) == "0000"
        )


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


# ------------------------------------------------------------------ control: the clerk, the terminal, the keys


async def test_keypad_void_then_status_shows_voided(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    tpn, ref, declined = new_tpn(), new_ref(), new_ref()
    _, sale = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, ref, "12.30"))
    await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, declined, "10.51"))
    status, row = await post(http, f"{simulator.url}/_sim/terminals/{tpn}/void/{ref}")
    assert status == 200
    assert row == {
        "tpn": tpn,
        "reference_id": ref,
        "type": "sale",
        "amount": 1230,
        "status": "voided",
        "batch": 1,
        "status_code": "0000",
        "auth_code": sale["AuthCode"],
        "payment_type": "credit",
        "entry_method": "chip",
    }
    _, found = await post(http, f"{simulator.url}/v2/Payment/Status", body(tpn, ref, None))
    assert code(found) == "0000" and found["Voided"] is True and found["AuthCode"] == sale["AuthCode"]
    assert (await post(http, f"{simulator.url}/_sim/terminals/{tpn}/void/{ref}"))[0] == 409  # already voided
    assert (await post(http, f"{simulator.url}/_sim/terminals/{tpn}/void/{declined}"))[0] == 409
    status, missing = await post(http, f"{simulator.url}/_sim/terminals/{tpn}/void/{new_ref()}")
    assert status == 404 and "error" in missing
    assert code((await post(http, f"{simulator.url}/v2/Payment/Void", body(tpn, ref, None)))[1]) == "0000"  # as before
    assert [t["status"] for t in simulator.ledger.transactions(tpn)] == ["voided", "declined"]


async def test_keypad_void_of_an_auth_and_unknown_tpn(http: aiohttp.ClientSession) -> None:
    async with running_simulator(tpns={"TPNONLY00001"}) as simulator:
        ref = new_ref()
        await post(http, f"{simulator.url}/v2/Payment/Auth", body("TPNONLY00001", ref, "20.00"))
        status, row = await post(http, f"{simulator.url}/_sim/terminals/TPNONLY00001/void/{ref}")
        assert status == 200 and (row["type"], row["status"]) == ("auth", "voided")
        _, capture = await post(http, f"{simulator.url}/v2/Payment/Capture", body("TPNONLY00001", ref, "20.00"))
        assert code(capture) == "1001"  # a voided auth cannot be captured
        status, answer = await post(http, f"{simulator.url}/_sim/terminals/TPNOTHER0001/void/{ref}")
        assert status == 404 and answer["error"] == "unknown tpn"


async def test_terminal_settles_on_its_own(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    tpn, sale, ret, auth, declined = new_tpn(), new_ref(), new_ref(), new_ref(), new_ref()
    await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, sale, "10.00"))
    await post(http, f"{simulator.url}/v2/Payment/Return", body(tpn, ret, "3.00"))
    await post(http, f"{simulator.url}/v2/Payment/Auth", body(tpn, auth, "20.00"))  # a hold moves no money
    await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, declined, "10.51"))
    status, settled = await post(http, f"{simulator.url}/_sim/terminals/{tpn}/settle")
    assert status == 200 and settled == {"tpn": tpn, "batch": 1, "count": 4, "amount": 700}
    _, gone = await post(http, f"{simulator.url}/v2/Payment/Status", body(tpn, sale, None))
    assert code(gone) == "1001"
    status, empty = await post(http, f"{simulator.url}/_sim/terminals/{tpn}/settle")
    assert status == 409 and empty["error"] == "no open batch"
    assert code((await post(http, f"{simulator.url}/v2/Payment/Settle", body(tpn, new_ref(), None)))[1]) == "1020"
    _, later = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref()))
    assert later["BatchNumber"] == "2"
    assert [t["batch"] for t in simulator.ledger.transactions(tpn)] == [1, 1, 1, 1, 2]


async def test_auto_settle(http: aiohttp.ClientSession) -> None:
    tpn, ref = new_tpn(), new_ref()
    async with running_simulator(auto_settle_s=0.2) as simulator:
        assert code((await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, ref)))[1]) == "0000"
        for _ in range(50):
            _, found = await post(http, f"{simulator.url}/v2/Payment/Status", body(tpn, ref, None))
            if code(found) == "1001":
                break
            await asyncio.sleep(0.05)
        assert code(found) == "1001"
        _, later = await post(http, f"{simulator.url}/v2/Payment/Sale", body(tpn, new_ref()))
        assert int(later["BatchNumber"]) >= 2
        assert any(t.get_name() == "simulator-auto-settle" for t in asyncio.all_tasks())
    assert not any(t.get_name() == "simulator-auto-settle" for t in asyncio.all_tasks())  # stopped with the app


async def test_wrong_authkey_is_refused_and_nothing_recorded(http: aiohttp.ClientSession) -> None:
    given, learned = "TPNGIVEN0001", "TPNLEARN0001"
    async with running_simulator(tpns={given, learned}, authkeys={given: "KEYAAAAAAA"}) as simulator:
        wrong = {"Authkey": "WRONGKEY00"}
        for op, ref, amount in [("Sale", new_ref(), "10.00"), ("Auth", new_ref(), "10.00"), ("Status", "R", None)]:
            status, answer = await post(http, f"{simulator.url}/v2/Payment/{op}", {**body(given, ref, amount), **wrong})
            assert status == 200 and code(answer) == "2002" and answer["GeneralResponse"]["ResultCode"] == "2"
        assert simulator.ledger.snapshot() == {"transactions": [], "max_concurrency": {}}
        ref = new_ref()
        good = {"Authkey": "KEYAAAAAAA"}
        assert code((await post(http, f"{simulator.url}/v2/Payment/Sale", {**body(given, ref), **good}))[1]) == "0000"

        # A Tpn without a given key binds to the first key it is sent.
        assert code((await post(http, f"{simulator.url}/v2/Payment/Sale", body(learned, new_ref())))[1]) == "0000"
        before = simulator.ledger.snapshot()
        for op in ("Sale", "Return", "Void", "Capture", "Status", "StatusList", "Settle"):
            _, answer = await post(http, f"{simulator.url}/v2/Payment/{op}", {**body(learned, new_ref()), **wrong})
            assert code(answer) == "2002", op
        await post(http, f"{simulator.url}/_sim/terminals/{learned}/offline")
        _, answer = await post(http, f"{simulator.url}/v2/Payment/Sale", {**body(learned, new_ref()), **wrong})
        assert code(answer) == "2002"  # the key is checked before the terminal is reached
        await post(http, f"{simulator.url}/_sim/terminals/{learned}/online")
        params = {"request.tpn": learned, "request.authkey": "WRONGKEY00"}
        async with http.get(f"{simulator.url}/v2/Common/TerminalStatus", params=params) as resp:
            assert resp.status == 200 and (await resp.json())["TerminalStatus"] == "NotFound"
        assert simulator.ledger.snapshot() == before

        # Key rotation: the old key is refused, the new one works; no answer ever shows a key.
        status, rebound = await post(http, f"{simulator.url}/_sim/terminals/{given}/authkey", {"authkey": "NEWKEY0001"})
        assert status == 200 and "NEWKEY0001" not in json.dumps(rebound)
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Status", {**body(given, ref, None), **good}))[1])
            == "2002"
        )
        new = {"Authkey": "NEWKEY0001"}
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Status", {**body(given, ref, None), **new}))[1])
            == "0000"
        )
        assert (await post(http, f"{simulator.url}/_sim/terminals/{given}/authkey", {"key": "X"}))[0] == 400
        assert (await post(http, f"{simulator.url}/_sim/terminals/TPNOTHER0001/authkey", {"authkey": "X"}))[0] == 404
        async with http.get(f"{simulator.url}/_sim/ledger") as resp:
            text = await resp.text()
        assert len(json.loads(text)["transactions"]) == 2
        assert not any(k in text for k in ("KEYAAAAAAA", "NEWKEY0001", AUTHKEY, "uthkey"))

        # A reset keeps the given binding (not the rotated one) and forgets the learned one.
        await post(http, f"{simulator.url}/_sim/reset")
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Sale", {**body(given, new_ref()), **new}))[1]) == "2002"
        )
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Sale", {**body(given, new_ref()), **good}))[1])
            == "0000"
        )
        assert (
            code((await post(http, f"{simulator.url}/v2/Payment/Sale", {**body(learned, new_ref()), **wrong}))[1])
            == "0000"
        )


async def test_driver_wrong_key_is_misconfigured_and_keypad_void_reads_voided(
    simulator: Simulator, make_driver: MakeDriver, http: aiohttp.ClientSession
) -> None:
    driver, ref = make_driver(), new_ref()
    sale = await driver.sale(ref, 1500)
    assert isinstance(sale, Approved)
    tpn = simulator.ledger.transactions()[0]["tpn"]
    assert (await post(http, f"{simulator.url}/_sim/terminals/{tpn}/void/{ref}"))[0] == 200
    status = await driver.status(ref)
    assert isinstance(status, Voided) and status.amount == 1500

    impostor = SpinDriver("t-wrong", simulator.url, str(tpn), "WRONGKEY00", TIMEOUT_S, http_margin_s=MARGIN_S)
    try:
        for outcome in (await impostor.sale(new_ref(), 1000), await impostor.status(ref)):
            assert isinstance(outcome, Misconfigured) and outcome.status_code == "2002"
        assert await impostor.health() == Health(
            state="offline", message="Active AuthKey not found", misconfigured=True
        )
    finally:
        await impostor.aclose()
    assert [t["status"] for t in simulator.ledger.transactions()] == ["voided"]  # nothing recorded for the impostor


def test_cli_options() -> None:
    args = _parse(["--port", "0", "--tpns", " Z1:KEYA , Z2 ,", "--auto-settle-s", "0.5"])
    assert args.tpns == {"Z1": "KEYA", "Z2": None} and args.auto_settle_s == 0.5
    assert _parse(["--port", "0"]).auto_settle_s is None
    for bad in (["--tpns", "Z1:"], ["--tpns", ":KEY"], ["--tpns", "Z1,Z1:K"], ["--auto-settle-s", "0"]):
        with pytest.raises(SystemExit):
            _parse(["--port", "0", *bad])


async def test_cli_binds_keys_and_settles_on_its_own(http: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "simulate", "--port", "0",
        "--tpns", "Z1:KEYA000001,Z2", "--auto-settle-s", "0.2",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip().rsplit(" ", 1)[-1]
        ref = new_ref()
        assert code((await post(http, f"{url}/v2/Payment/Sale", body("Z1", ref)))[1]) == "2002"
        z1 = {**body("Z1", ref), "Authkey": "KEYA000001"}
        assert code((await post(http, f"{url}/v2/Payment/Sale", z1))[1]) == "0000"
        assert code((await post(http, f"{url}/v2/Payment/Sale", body("Z2", new_ref())))[1]) == "0000"
        assert code((await post(http, f"{url}/v2/Payment/Sale", body("Z3", new_ref())))[1]) == "2003"
        await asyncio.sleep(0.5)
        assert code((await post(http, f"{url}/v2/Payment/Status", {**z1, "Amount": None}))[1]) == "1001"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
