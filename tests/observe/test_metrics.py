"""Metric values after known traffic, a real scrape, the status page and the probes."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Gateway, card, running_gateway


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, terminals=3) as gateway:
        yield gateway


def _url(gw: Gateway) -> str:
    runner = gw.daemon.metrics_runner
    assert runner is not None
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metric_values_after_known_traffic(gw: Gateway) -> None:
    assert (await gw.checkout(card(1000))).status == 200
    assert (await gw.checkout(card(1051))).status == 402  # declined
    assert (await gw.checkout(card(1052, "lane-2"))).status == 200  # lost answer, found by inquiry
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/offline")
    await gw.daemon.fleet.monitor.check_now("lane-3")  # type: ignore[union-attr]
    assert (await gw.checkout(card(1000, "lane-3"))).status == 503
    status, text = await _get(_url(gw) + "/metrics")
    assert status == 200
    m = _samples(text)
    assert m[("gatewayd_checkouts_total", (("outcome", "completed"),))] == 2
    assert m[("gatewayd_checkouts_total", (("outcome", "payment_failed"),))] == 1
    assert m[("gatewayd_checkouts_total", (("outcome", "terminal_offline"),))] == 1
    assert m[("gatewayd_tenders_total", (("outcome", "declined"), ("type", "card")))] == 1
    assert m[("gatewayd_tenders_total", (("outcome", "approved"), ("type", "card")))] == 2
    assert m[("gatewayd_unknown_outcomes_total", (("terminal", "lane-2"),))] == 1
    assert m[("gatewayd_inquiries_total", (("terminal", "lane-2"),))] >= 1
    assert m[("gatewayd_terminal_up", (("terminal", "lane-3"),))] == 0
    assert m[("gatewayd_terminal_up", (("terminal", "lane-1"),))] == 1
    assert m[("gatewayd_terminal_status", (("status", "offline"), ("terminal", "lane-3")))] == 1
    assert m[("gatewayd_checkout_duration_seconds_count", ())] == 3
    assert m[("gatewayd_database_up", ())] == 1
    assert m[("gatewayd_build_info", (("version", "0.1.0"),))] == 1
    sale = (("operation", "sale"), ("outcome", "approved"), ("terminal", "lane-1"))
    assert m[("gatewayd_terminal_request_duration_seconds_count", sale)] == 1
    assert any(name.startswith("process_") for name, _ in m)
    for secret in ("KEY", *gw.tpns.values()):
        assert f'"{secret}' not in text
    labels = {k for _, labels in m for k, _ in labels}
    assert labels <= {"terminal", "status", "operation", "outcome", "type", "action", "step", "version", "le"}
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/online")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
async def test_promtool_accepts_a_real_scrape(gw: Gateway) -> None:
    assert (await gw.checkout(card(1000))).status == 200
    _, text = await _get(_url(gw) + "/metrics")
    result = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_probes_and_status_page(gw: Gateway) -> None:
    assert (await gw.checkout(card(1234), key="page-1")).status == 200
    assert await _get(_url(gw) + "/healthz") == (200, "ok\n")
    assert (await _get(_url(gw) + "/readyz"))[0] == 200
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/offline")
    await gw.daemon.fleet.monitor.check_now("lane-2")  # type: ignore[union-attr]
    status, page = await _get(_url(gw) + "/")
    assert status == 200
    assert 'data-terminal="lane-2" data-status="offline"' in page
    assert 'data-terminal="lane-1" data-status="online"' in page
    assert 'http-equiv="refresh"' in page and "http://" not in page.split("<body>")[1]
    assert "12.34 USD" in page and "completed" in page
    await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-2']}/online")


async def test_voids_and_refunds_count_as_reversals_not_checkouts(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A void or refund of a completed sale is not a failed checkout: it must not move the
    failure-rate alert. Each writes a log line, as a checkout does."""
    sold = [await gw.checkout(card(1000 + i)) for i in range(2)]
    assert all(a.status == 200 for a in sold)
    with caplog.at_level(logging.INFO, logger="gatewayd.checkout.reversals"):
        assert (await gw.client.void(sold[0].body["id"])).status == 200
        refund = {"idempotency_key": "m-r1", "amount": 500}
        assert (await gw.client.request("POST", f"/v1/checkouts/{sold[1].body['id']}/refunds", refund)).status == 200
    assert f"checkout {sold[0].body['id']}: voided" in caplog.text
    assert f"checkout {sold[1].body['id']}: refund" in caplog.text and "completed (500 card on lane-1)" in caplog.text
    status, text = await _get(_url(gw) + "/metrics")
    assert status == 200
    m = _samples(text)
    assert m[("gatewayd_checkouts_total", (("outcome", "completed"),))] == 2
    assert not any(name == "gatewayd_checkouts_total" and labels != (("outcome", "completed"),) and value
                   for (name, labels), value in m.items())  # fmt: skip
    assert m[("gatewayd_reversals_total", (("kind", "void"), ("outcome", "completed")))] == 1
    assert m[("gatewayd_reversals_total", (("kind", "refund"), ("outcome", "completed")))] == 1
