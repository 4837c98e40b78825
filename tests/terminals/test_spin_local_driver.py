"""SpinLocalDriver against the simulator over real HTTP: every magic amount, inquiries, voids,
settlement, the terminal shared with the REST dialect, secrets, and what Local cannot do."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gatewayd.errors import GatewayError, TerminalError
from gatewayd.terminals.driver import TerminalDriver
from gatewayd.terminals.outcomes import Approved, Busy, Declined, Misconfigured, NotFound, Offline, Unknown, Voided
from gatewayd.terminals.simulator import Simulator
from gatewayd.terminals.spin.driver import SpinDriver
from gatewayd.terminals.spin_local.driver import SpinLocalDriver

from .helpers import AUTHKEY, MARGIN_S, TIMEOUT_S, new_ref, new_tpn

MakeLocal = Callable[..., SpinLocalDriver]


@pytest.fixture
async def make_local(simulator: Simulator) -> AsyncIterator[MakeLocal]:
    drivers: list[SpinLocalDriver] = []

    def make(register_id: str | None = None, **kwargs: Any) -> SpinLocalDriver:
        register_id = register_id or new_tpn()
        settings: dict[str, Any] = {"http_margin_s": MARGIN_S, "status_timeout_s": 2.0, **kwargs}
        driver = SpinLocalDriver(f"t-{register_id}", simulator.url, register_id, AUTHKEY, TIMEOUT_S, **settings)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.aclose()


def rows(simulator: Simulator, ref: str) -> list[dict[str, object]]:
    return [t for t in simulator.ledger.transactions() if t["reference_id"] == ref]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_satisfies_the_protocol(make_local: MakeLocal) -> None:
    driver = make_local()
    assert isinstance(driver, TerminalDriver)
    assert driver.transaction_timeout_s == TIMEOUT_S + MARGIN_S > driver.timeout_s


async def test_approval_with_receipt_fields_and_nothing_else_of_the_card(
    simulator: Simulator, make_local: MakeLocal
) -> None:
    driver, ref = make_local(), new_ref()
    outcome = await driver.sale(ref, 1230)  # ..30: chip
    assert isinstance(outcome, Approved) and (outcome.amount, outcome.requested_amount) == (1230, 1230)
    assert len(outcome.auth_code) == 6 and len(outcome.last4) == 4 and outcome.card_brand
    assert outcome.receipt.entry_method == "chip" and outcome.receipt.aid and outcome.receipt.application_label
    assert outcome.receipt.host_reference and outcome.batch_number == "1"
    card = simulator.ledger.terminals[driver._cred.register_id].open[ref].card
    assert card is not None and card.bin not in repr(outcome) and card.name.split("/")[0] not in repr(outcome)
    assert [r["status"] for r in rows(simulator, ref)] == ["approved"]
    assert await driver.status(ref) == outcome


async def test_decline_cancel_busy_partial(simulator: Simulator, make_local: MakeLocal) -> None:
    driver = make_local()
    declined = await driver.sale(new_ref(), 1051)
    assert isinstance(declined, Declined) and declined.reason == "declined" and declined.host_code == "05"
    cancelled = await driver.sale(new_ref(), 1059)
    assert isinstance(cancelled, Declined) and cancelled.cancelled and cancelled.reason == "cancelled_by_customer"
    ref = new_ref()
    busy = await driver.sale(ref, 1054)
    assert isinstance(busy, Busy) and busy.retry_after_s == 2.0  # Local names no delay: the default
    assert rows(simulator, ref) == []
    assert isinstance(await driver.sale(ref, 1054), Approved)  # the same request, resent by its caller
    partial = await driver.sale(new_ref(), 1056)
    assert isinstance(partial, Approved) and partial.partial and partial.amount == 528


async def test_lost_answers_are_unknown_and_resolved_by_status(simulator: Simulator, make_local: MakeLocal) -> None:
    driver = make_local()
    for cents in (1052, 1053, 1058):
        ref = new_ref()
        started = time.monotonic()
        outcome = await driver.sale(ref, cents)
        assert isinstance(outcome, Unknown), (cents, outcome)
        if cents == 1052:
            assert time.monotonic() - started >= TIMEOUT_S + MARGIN_S - 0.05
        status = await driver.status(ref)
        assert isinstance(status, Approved) and status.amount == cents
        assert len(rows(simulator, ref)) == 1
    never = new_ref()
    assert isinstance(await driver.sale(never, 1057), Unknown)
    assert isinstance(await driver.status(never), NotFound)


async def test_status_is_busy_while_the_terminal_runs_a_transaction(make_local: MakeLocal) -> None:
    import asyncio

    driver, other = make_local(), None
    ref = new_ref()
    other = make_local(register_id=driver._cred.register_id)
    sale = asyncio.ensure_future(driver.sale(ref, 1055))  # slow: 0.2 s
    await asyncio.sleep(0.05)
    assert isinstance(await other.status(ref), Busy)  # a Local terminal is one device doing one thing
    assert isinstance(await sale, Approved)
    assert isinstance(await other.status(ref), Approved)


async def test_void_refund_auth_capture_settle(simulator: Simulator, make_local: MakeLocal) -> None:
    driver = make_local()
    sale, refund, auth = new_ref(), new_ref(), new_ref()
    assert isinstance(await driver.sale(sale, 700, payment_type="debit"), Approved)
    assert isinstance(await driver.void(sale), Declined)  # a void must name the sale's type (1016)
    assert isinstance(await driver.void(sale, payment_type="debit"), Voided)
    assert isinstance(await driver.void(sale, payment_type="debit"), Voided)  # idempotent
    assert isinstance(await driver.status(sale, payment_type="debit"), Voided)
    assert isinstance(await driver.void(new_ref()), NotFound)
    returned = await driver.refund(refund, 300, payment_type="debit", sale_ref=sale)
    assert isinstance(returned, Approved) and returned.transaction_type == "return"
    assert isinstance(await driver.auth(auth, 900), Approved)
    captured = await driver.capture(auth, 800)
    assert isinstance(captured, Approved) and captured.amount == 800 and captured.transaction_type == "capture"
    assert isinstance(await driver.capture(new_ref(), 100), NotFound)
    got = {r["reference_id"]: (r["type"], r["status"], r["amount"]) for r in simulator.ledger.transactions()}
    assert got == {
        sale: ("sale", "voided", 700),
        refund: ("return", "returned", 300),
        auth: ("capture", "captured", 800),
    }
    settled = await driver.settle()
    assert settled.ok and settled.batch == "1" and settled.count == 3 and settled.total == 800 - 300
    assert (await driver.settle()).ok  # nothing open: settled already
    assert isinstance(await driver.void(sale, payment_type="debit"), NotFound)  # open batch only
    assert isinstance(await driver.status(sale, payment_type="debit"), NotFound)


async def test_batch_is_not_available_over_local(make_local: MakeLocal) -> None:
    with pytest.raises(TerminalError, match="cannot list"):
        await make_local().batch()


async def test_one_terminal_both_dialects(simulator: Simulator, make_local: MakeLocal) -> None:
    """A register id equal to a Tpn is the same simulated terminal: a sale taken over Local is
    found by a REST Status and voided over REST, as a terminal switched between Local and Cloud."""
    tpn = new_tpn()
    local, ref = make_local(register_id=tpn), new_ref()
    rest = SpinDriver("rest", simulator.url, tpn, AUTHKEY, TIMEOUT_S, http_margin_s=MARGIN_S)
    try:
        assert isinstance(await local.sale(ref, 2000), Approved)
        assert isinstance(await rest.status(ref), Approved)
        assert isinstance(await rest.void(ref), Voided)
        assert isinstance(await local.status(ref), Voided)
        assert [r["tpn"] for r in rows(simulator, ref)] == [tpn]
    finally:
        await rest.aclose()


async def test_health_offline_busy_and_wrong_key(simulator: Simulator, make_local: MakeLocal) -> None:
    tpn = new_tpn()
    driver = make_local(register_id=tpn)
    assert (await driver.health()).state == "online"
    simulator.set_offline(tpn)
    assert (await driver.health()).state == "offline"
    offline = await driver.sale(new_ref(), 100)
    assert isinstance(offline, Offline) and "503" in offline.message
    assert isinstance(await driver.status(new_ref()), Offline)
    simulator.set_offline(tpn, False)
    simulator.ledger.terminals[tpn].busy_delay_s = 300
    assert (await driver.health()).state == "busy"
    assert isinstance(await driver.sale(new_ref(), 100), Busy)
    simulator.ledger.terminals[tpn].busy_delay_s = None
    impostor = SpinLocalDriver("bad", simulator.url, tpn, "WRONGKEY00", 1, http_margin_s=0.3)
    try:
        assert isinstance(await impostor.sale(new_ref(), 100), Misconfigured)
        health = await impostor.health()
        assert health.misconfigured and health.state == "offline"
    finally:
        await impostor.aclose()


async def test_connection_refused_is_offline_and_nothing_raises() -> None:
    driver = SpinLocalDriver("t", f"http://127.0.0.1:{_free_port()}", "1", AUTHKEY, 1, http_margin_s=0.2)
    try:
        assert isinstance(await driver.sale(new_ref(), 100), Offline)
        assert isinstance(await driver.status(new_ref()), Offline)
        assert (await driver.health()).state == "offline"
        assert not (await driver.settle()).ok
    finally:
        await driver.aclose()


async def test_a_dropped_connection_is_never_resent(make_local: MakeLocal) -> None:
    """aiohttp resends an idempotent request on its own when the connection drops; a Local Sale is
    a GET, so the driver turns that off: one request reaches the terminal, the outcome is Unknown."""
    hits: list[str] = []

    async def drop(request: web.Request) -> web.Response:
        hits.append(request.query_string)
        assert request.transport is not None
        request.transport.abort()
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/cgi.html", drop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as shared:
        driver = SpinLocalDriver("t", f"http://{host}:{port}", "1", AUTHKEY, 1, http_margin_s=0.5, session=shared)
        try:
            assert isinstance(await driver.sale(new_ref(), 100), Unknown)
            assert isinstance(await driver.sale(new_ref(), 100), Unknown)  # on a fresh and a reused session
            assert len(hits) == 2
        finally:
            await driver.aclose()
            await runner.cleanup()


async def test_authkey_never_printed(
    simulator: Simulator, make_local: MakeLocal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = make_local()
    assert AUTHKEY not in repr(driver)
    outcomes = [await driver.sale(new_ref(), cents) for cents in (100, 1051, 1053, 1058)]
    outcomes.append(await driver.status(new_ref()))
    texts = [repr(o) for o in outcomes] + [repr(await driver.health()), repr(await driver.settle())]
    dead = SpinLocalDriver("t-dead", f"http://127.0.0.1:{_free_port()}", "1", AUTHKEY, 1, http_margin_s=0.2)
    texts += [repr(await dead.health()), repr(await dead.sale(new_ref(), 1))]
    try:
        await dead.batch()
    except GatewayError as exc:
        texts += [str(exc), repr(exc), repr(exc.fields)]
    await dead.aclose()
    texts += [record.getMessage() for record in caplog.records]
    assert all(AUTHKEY not in text for text in texts)


async def test_oversized_answer_is_unknown() -> None:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b" " * (300 * 1024), content_type="text/html")

    app = web.Application()
    app.router.add_get("/cgi.html", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    driver = SpinLocalDriver("t", f"http://{host}:{port}", "1", AUTHKEY, 1, http_margin_s=0.5)
    try:
        outcome = await driver.sale(new_ref(), 100)
        assert isinstance(outcome, Unknown) and "too large" in outcome.reason
    finally:
        await driver.aclose()
        await runner.cleanup()


def test_timeouts_are_checked() -> None:
    with pytest.raises(ValueError):
        SpinLocalDriver("t", "http://x", "1", AUTHKEY, 0.5)
    driver = SpinLocalDriver("t", "http://x:9000/spin/", "1", AUTHKEY, 120, http_margin_s=10)
    assert (driver.timeout_s, driver.transaction_timeout_s) == (120, 130)
    assert "http://x:9000/spin/cgi.html" in repr(driver)


def test_the_demo_store_mixes_dialects(tmp_path: Any) -> None:
    from gatewayd.demo import LOCAL_LANE, demo_config

    config = demo_config(tmp_path, "postgresql://x@127.0.0.1/db", "http://127.0.0.1:8471", "127.0.0.1:0")
    drivers = {t.id: (t.driver, t.register_id, t.tpn) for t in config.terminals}
    assert drivers[LOCAL_LANE] == ("spin-local", "SIMLANE00004", None)
    assert {d for tid, (d, _, _) in drivers.items() if tid != LOCAL_LANE} == {"spin"}


def _essence(outcome: object) -> tuple[object, ...]:
    """What must not depend on the dialect: the outcome's kind, money, card and receipt fields
    (not the status codes or words, which each dialect spells its own way, nor the REST-only
    receipt copies)."""
    if isinstance(outcome, Approved):
        r = outcome.receipt
        return (
            "approved",
            outcome.amount,
            outcome.auth_code,
            outcome.card_brand,
            outcome.last4,
            outcome.batch_number,
            outcome.transaction_number,
            outcome.transaction_type,
            outcome.payment_type,
            r.entry_method,
            r.application_label,
            r.aid,
            r.host_reference,
        )
    if isinstance(outcome, Declined):
        return ("declined", outcome.cancelled, outcome.reason, outcome.host_code)
    if isinstance(outcome, Voided):
        return ("voided", outcome.amount)
    return (type(outcome).__name__,)


@pytest.mark.parametrize("payment_type", ["credit", "card"])
async def test_both_dialects_read_the_same_terminal_alike(simulator: Simulator, payment_type: Any) -> None:
    """A differential check of the two codecs: every transaction the simulator can record, taken
    over either dialect, is read by a Status over REST and over Local as the same outcome."""
    tpn = new_tpn()
    rest = SpinDriver("rest", simulator.url, tpn, AUTHKEY, TIMEOUT_S, http_margin_s=MARGIN_S)
    local = SpinLocalDriver("local", simulator.url, tpn, AUTHKEY, TIMEOUT_S, http_margin_s=MARGIN_S)
    try:
        refs: list[str] = []
        for i, cents in enumerate([*range(1000, 1010), 1051, 1056, 1059, 1151, 1234, 1567, 2099]):
            ref, driver = new_ref(), (rest if i % 2 else local)
            await driver.sale(ref, cents, payment_type=payment_type)
            refs.append(ref)
        voided, auth = new_ref(), new_ref()
        await local.sale(voided, 700, payment_type=payment_type)
        ran_as = simulator.ledger.terminals[tpn].open[voided].payment_type
        await rest.void(voided, payment_type=ran_as)  # type: ignore[arg-type]
        await local.auth(auth, 900, payment_type=payment_type)
        await rest.capture(auth, 800, payment_type=simulator.ledger.terminals[tpn].open[auth].payment_type)  # type: ignore[arg-type]
        for ref in [*refs, voided, auth, new_ref()]:
            seen = simulator.ledger.terminals[tpn].open.get(ref)
            asked: Any = seen.payment_type if seen is not None else payment_type
            by_rest, by_local = await rest.status(ref, payment_type=asked), await local.status(ref, payment_type=asked)
            assert _essence(by_rest) == _essence(by_local), (ref, by_rest, by_local)
    finally:
        await rest.aclose()
        await local.aclose()


async def test_the_simulator_names_a_local_terminal_by_register_id_else_tpn(simulator: Simulator) -> None:
    from gatewayd.terminals.spin_local import codec, xmlflat

    tpn, ref = new_tpn(), new_ref()
    fields = [("TransType", "Sale"), ("PaymentType", "Credit"), ("Amount", "5.00"), ("RefId", ref)]
    fields += [("TPN", tpn), ("AuthKey", AUTHKEY)]  # no RegisterId
    async with aiohttp.ClientSession() as session:
        url = f"{simulator.url}/cgi.html?{codec.query(xmlflat.element('request', fields))}"
        async with session.get(aiohttp.client.URL(url, encoded=True)) as resp:
            body = await resp.read()
    assert isinstance(codec.parse_payment(body, op="sale", ref=ref, requested=500), Approved)
    assert [r["tpn"] for r in rows(simulator, ref)] == [tpn]
