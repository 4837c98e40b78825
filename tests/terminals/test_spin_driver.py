"""SpinDriver against the in-process simulator: every magic amount, inquiries, voids, batches, secrets."""

from __future__ import annotations

import logging
import socket
import time

import aiohttp
import pytest

from gatewayd.errors import GatewayError, ProtocolError, TerminalError
from gatewayd.terminals.driver import TerminalDriver
from gatewayd.terminals.outcomes import Approved, Busy, Declined, Misconfigured, NotFound, Offline, Unknown, Voided
from gatewayd.terminals.simulator import Simulator
from gatewayd.terminals.spin.driver import SpinDriver

from .conftest import MakeDriver
from .helpers import AUTHKEY, MARGIN_S, TIMEOUT_S, new_ref


def ledger_rows(simulator: Simulator, ref: str) -> list[dict[str, object]]:
    return [t for t in simulator.ledger.transactions() if t["reference_id"] == ref]


async def test_driver_satisfies_the_protocol(make_driver: MakeDriver) -> None:
    driver = make_driver()
    assert isinstance(driver, TerminalDriver)
    assert driver.transaction_timeout_s == TIMEOUT_S + MARGIN_S > driver.timeout_s


async def test_plain_approval(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    outcome = await driver.sale(ref, 1234)
    assert isinstance(outcome, Approved)
    assert (outcome.reference_id, outcome.amount, outcome.requested_amount) == (ref, 1234, 1234)
    assert len(outcome.auth_code) == 6 and len(outcome.last4) == 4 and outcome.card_brand
    assert ledger_rows(simulator, ref) == [
        {
            "tpn": simulator.ledger.transactions()[0]["tpn"],
            "reference_id": ref,
            "type": "sale",
            "amount": 1234,
            "status": "approved",
            "batch": 1,
            "status_code": "0000",
            "auth_code": outcome.auth_code,
            "payment_type": "credit",
            "entry_method": "contactless",  # cents ..34: tapped
        }
    ]
    assert await driver.status(ref) == outcome


async def test_51_declined(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    outcome = await driver.sale(ref, 1051)
    assert outcome == Declined(
        reference_id=ref, status_code="1015", message="Declined", host_code="05", host_message="DO NOT HONOR"
    )
    assert [r["status"] for r in ledger_rows(simulator, ref)] == ["declined"]
    assert isinstance(await driver.status(ref), Declined)


async def test_52_response_never_comes(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    started = time.monotonic()
    outcome = await driver.sale(ref, 1052)
    assert isinstance(outcome, Unknown)
    assert time.monotonic() - started >= TIMEOUT_S + MARGIN_S - 0.05  # waited the full HTTP timeout
    assert [r["status"] for r in ledger_rows(simulator, ref)] == ["approved"]
    assert isinstance(await driver.status(ref), Approved)


async def test_53_connection_reset_after_approval(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    assert isinstance(await driver.sale(ref, 1053), Unknown)
    status = await driver.status(ref)
    assert isinstance(status, Approved) and status.amount == 1053


async def test_54_busy_first_then_approved_with_same_ref(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    assert await driver.sale(ref, 1054) == Busy(retry_after_s=1.0, status_code="2008", message="Terminal in use")
    assert ledger_rows(simulator, ref) == []
    assert isinstance(await driver.sale(ref, 1054), Approved)
    assert len(ledger_rows(simulator, ref)) == 1


async def test_55_slow_approval(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver = make_driver()
    started = time.monotonic()
    assert isinstance(await driver.sale(new_ref(), 1055), Approved)
    assert time.monotonic() - started >= 0.2


async def test_56_partial_approval_for_half(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    outcome = await driver.sale(ref, 1056)
    assert isinstance(outcome, Approved) and outcome.partial
    assert (outcome.amount, outcome.requested_amount, outcome.status_code) == (528, 1056, "0001")
    assert [r["amount"] for r in ledger_rows(simulator, ref)] == [528]


async def test_57_nothing_recorded_and_no_answer(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    assert isinstance(await driver.sale(ref, 1057), Unknown)
    assert ledger_rows(simulator, ref) == []
    assert isinstance(await driver.status(ref), NotFound)


async def test_58_approved_but_answered_2007(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    outcome = await driver.sale(ref, 1058)
    assert isinstance(outcome, Unknown) and outcome.status_code == "2007"
    assert isinstance(await driver.status(ref), Approved)


async def test_59_cancelled(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    outcome = await driver.sale(ref, 1059)
    assert isinstance(outcome, Declined) and outcome.status_code == "1012"


async def test_duplicate_reference_is_unknown(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver, ref = make_driver(), new_ref()
    assert isinstance(await driver.sale(ref, 100), Approved)
    again = await driver.sale(ref, 100)
    assert isinstance(again, Unknown) and again.status_code == "1011"
    assert len(ledger_rows(simulator, ref)) == 1


async def test_void_refund_auth_capture(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver = make_driver()
    sale, refund, auth = new_ref(), new_ref(), new_ref()
    assert isinstance(await driver.sale(sale, 700), Approved)
    voided = await driver.void(sale)
    assert isinstance(voided, Voided)
    assert isinstance(await driver.void(sale), Voided)  # idempotent
    status = await driver.status(sale)
    assert isinstance(status, Voided)
    assert isinstance(await driver.void(new_ref()), NotFound)
    assert isinstance(await driver.refund(refund, 300), Approved)
    assert isinstance(await driver.auth(auth, 900), Approved)
    captured = await driver.capture(auth, 800)
    assert isinstance(captured, Approved) and captured.amount == 800 and captured.transaction_type == "capture"
    assert isinstance(await driver.capture(new_ref(), 100), NotFound)
    rows = {r["reference_id"]: (r["type"], r["status"], r["amount"]) for r in simulator.ledger.transactions()}
    assert rows == {
        sale: ("sale", "voided", 700),
        refund: ("return", "returned", 300),
        auth: ("capture", "captured", 800),
    }
    batch = await driver.batch()
    assert sorted((e.type, e.status, e.amount) for e in batch) == [
        ("capture", "captured", 800),
        ("return", "returned", 300),
        ("sale", "voided", 700),
    ]
    settled = await driver.settle()
    assert settled.ok and settled.batch == "1" and settled.count == 3
    assert await driver.batch() == []
    assert isinstance(await driver.void(sale), NotFound)  # void works in the open batch only
    assert isinstance(await driver.status(sale), NotFound)


async def test_health_and_offline(simulator: Simulator, make_driver: MakeDriver) -> None:
    driver = make_driver(tpn="TPNHEALTH001")
    assert (await driver.health()).state == "online"
    simulator.set_offline("TPNHEALTH001")
    assert (await driver.health()).state == "offline"
    outcome = await driver.sale(new_ref(), 100)
    assert isinstance(outcome, Offline) and outcome.status_code == "2001"
    assert isinstance(await driver.status(new_ref()), Offline)
    simulator.set_offline("TPNHEALTH001", False)
    assert (await driver.health()).state == "online"


async def test_connection_refused_is_offline_and_nothing_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = SpinDriver("t-refused", f"http://127.0.0.1:{port}", "TPN000000001", AUTHKEY, 1, http_margin_s=0.2)
    try:
        assert isinstance(await driver.sale(new_ref(), 100), Offline)
        assert isinstance(await driver.status(new_ref()), Offline)
        assert (await driver.health()).state == "offline"
        assert not (await driver.settle()).ok
        with pytest.raises(TerminalError):
            await driver.batch()
    finally:
        await driver.aclose()


async def test_unlisted_tpn_is_misconfigured() -> None:
    from gatewayd.terminals.simulator import running_simulator

    async with running_simulator(tpns={"TPNALLOWED01"}) as simulator:
        async with aiohttp.ClientSession() as session:
            good = SpinDriver("a", simulator.url, "TPNALLOWED01", AUTHKEY, 1, session=session)
            bad = SpinDriver("b", simulator.url, "TPNSTRANGER1", AUTHKEY, 1, session=session)
            assert isinstance(await good.sale(new_ref(), 100), Approved)
            assert isinstance(await bad.sale(new_ref(), 100), Misconfigured)
            health = await bad.health()
            assert health.misconfigured and health.state == "offline"
            await good.aclose()  # a shared session is not closed by the driver
            assert not session.closed


async def test_http_timeout_is_longer_than_proxy_timeout() -> None:
    with pytest.raises(ValueError):
        SpinDriver("t", "http://x", "TPN1", AUTHKEY, 0.5)
    driver = SpinDriver("t", "http://x", "TPN1", AUTHKEY, 120, http_margin_s=10)
    assert (driver.timeout_s, driver.transaction_timeout_s) == (120, 130)


async def test_authkey_never_printed(
    simulator: Simulator, make_driver: MakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = make_driver()
    assert AUTHKEY not in repr(driver)
    outcomes = [await driver.sale(new_ref(), cents) for cents in (100, 1051, 1053, 1058)]
    outcomes.append(await driver.status(new_ref()))
    texts = [repr(o) for o in outcomes] + [repr(await driver.health()), repr(await driver.settle())]
    # A key that leaks into an exception message would show here: the URL of TerminalStatus carries it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = SpinDriver("t-dead", f"http://127.0.0.1:{port}", "TPN000000002", AUTHKEY, 1, http_margin_s=0.2)
    texts.append(repr(await dead.health()))
    try:
        await dead.batch()
    except GatewayError as exc:
        texts += [str(exc), repr(exc), repr(exc.fields), str(exc.__cause__)]
    await dead.aclose()
    try:
        SpinDriver("t", simulator.url, "TPN1", AUTHKEY, 0)
    except ValueError as exc:
        texts.append(str(exc))
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records, "the driver should log something at DEBUG"
    assert all(AUTHKEY not in text for text in texts)


async def test_oversized_answer_is_unknown() -> None:
    from aiohttp import web

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b" " * (300 * 1024), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/Payment/{op}", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    driver = SpinDriver("t-huge", f"http://{host}:{port}", "TPN1", AUTHKEY, 1, http_margin_s=0.5)
    try:
        outcome = await driver.sale(new_ref(), 100)
        assert isinstance(outcome, Unknown) and "too large" in outcome.reason
        with pytest.raises(ProtocolError):
            await driver.batch()
    finally:
        await driver.aclose()
        await runner.cleanup()
