"""GET /v1/events: the live event stream, read over the daemon's real socket.

Every test runs its own daemon (a small ring buffer and queue, a short heartbeat) on the SPIn
simulator, opens the stream before it acts, and reads the events as a client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from gatewayd.api.events import SseEvent, read_events
from tests.harness import Gateway, card, cash, running_gateway
from tests.procs import free_port

BUFFER = 40
QUEUE = 16
EVENTS = {"events_buffer": BUFFER, "events_queue": QUEUE, "events_heartbeat_s": 0.3}
WAIT_S = 60.0  # generous: only ever a bound on waiting for an event that should come


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, terminals=3, sections={"api": EVENTS}) as gateway:
        yield gateway
        await gateway.check_invariants()


class Stream:
    """One open GET /v1/events, read event by event."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self._events = read_events(response, comments=self.comments)

    async def next(self) -> SseEvent:
        async with asyncio.timeout(WAIT_S):
            return await anext(self._events)

    async def until(self, done: Callable[[SseEvent], bool]) -> list[SseEvent]:
        """Every event up to and including the first one `done` accepts."""
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if done(event):
                return seen


@contextlib.asynccontextmanager
async def events(gw: Gateway, query: str = "", last_event_id: str | None = None) -> AsyncIterator[Stream]:
    connector = aiohttp.UnixConnector(path=gw.daemon.config.api.socket)
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"http://gatewayd/v1/events{query}", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        yield Stream(response)


def finished(checkout_id: str | None = None) -> Callable[[SseEvent], bool]:
    return lambda e: e.event == "checkout.finished" and checkout_id in (None, e.data["checkout_id"])


def phases(seen: list[SseEvent]) -> list[tuple[int | None, str]]:
    return [(e.data["tender_index"], e.data["phase"]) for e in seen if e.event == "checkout.progress"]


def numbers(seen: list[SseEvent]) -> list[int]:
    return [int(str(e.id).rpartition("-")[2]) for e in seen]


CHECKOUTS = "?types=checkout.progress,checkout.finished"


async def test_card_checkout_in_order(gw: Gateway) -> None:
    async with events(gw, CHECKOUTS) as stream:
        answer = await gw.checkout(card(2400, "lane-2"), key="events-card")
        assert answer.status == 200, answer.body
        seen = await stream.until(finished())
    checkout_id = answer.body["id"]
    assert phases(seen) == [(None, "intent_recorded"), (0, "sent_to_terminal"), (0, "approved")]
    end = seen[-1].data
    assert (end["type"], end["checkout_id"], end["status"]) == ("checkout.finished", checkout_id, "completed")
    assert {e.data["checkout_id"] for e in seen} == {checkout_id}
    assert {e.data["idempotency_key"] for e in seen[:-1]} == {"events-card"}
    assert [e.data["terminal_id"] for e in seen[1:-1]] == ["lane-2", "lane-2"]
    assert numbers(seen) == sorted(numbers(seen)) and len(set(numbers(seen))) == len(seen)
    assert len({str(e.id).rpartition("-")[0] for e in seen}) == 1  # one run


async def test_lost_answer_found_by_inquiry(gw: Gateway) -> None:
    async with events(gw, CHECKOUTS) as stream:
        answer = await gw.checkout(card(2052))
        assert answer.status == 200, answer.body
        seen = await stream.until(finished())
    assert phases(seen) == [
        (None, "intent_recorded"),
        (0, "sent_to_terminal"),
        (0, "unknown"),
        (0, "inquiring"),
        (0, "approved"),
    ]
    assert seen[-1].data["status"] == "completed"


async def test_busy_terminal_resend_is_told(gw: Gateway) -> None:
    """..54: busy once; the lane sends the same reference again, and says so."""
    async with events(gw, "?types=checkout.progress,checkout.finished,terminal.status") as stream:
        answer = await gw.checkout(card(2454, "lane-2"))
        assert answer.status == 200, answer.body
        seen = await stream.until(finished())
    told = [(e.data["phase"] if e.event == "checkout.progress" else e.data["status"]) for e in seen[:-1]]
    told = told[told.index("intent_recorded") :]  # (a health check's news from before it, if any)
    assert told == ["intent_recorded", "sent_to_terminal", "busy", "sent_to_terminal", "online", "approved"]


async def test_decline(gw: Gateway) -> None:
    async with events(gw, CHECKOUTS) as stream:
        answer = await gw.checkout(card(1051))
        assert answer.status == 402, answer.body
        seen = await stream.until(finished())
    assert phases(seen) == [(None, "intent_recorded"), (0, "sent_to_terminal"), (0, "declined")]
    assert seen[-1].data["status"] == "payment_failed"


async def test_split_with_a_decline_voids_the_approved_card(gw: Gateway) -> None:
    async with events(gw, CHECKOUTS) as stream:
        answer = await gw.checkout(card(1000, "lane-1"), card(1051, "lane-2"))
        assert answer.status == 402, answer.body
        seen = await stream.until(finished())
    assert phases(seen) == [
        (None, "intent_recorded"),
        (0, "sent_to_terminal"),
        (0, "approved"),
        (1, "sent_to_terminal"),
        (1, "declined"),
        (0, "voiding"),
        (0, "voided"),
    ]
    assert seen[-1].data["status"] == "payment_failed"


async def test_terminal_offline_and_back(gw: Gateway) -> None:
    monitor = gw.daemon.fleet.monitor  # type: ignore[union-attr]
    async with events(gw, "?types=terminal.status") as stream:
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/offline")
        await monitor.check_now("lane-3")
        offline = await stream.until(lambda e: e.data["terminal_id"] == "lane-3")
        for _ in range(3):  # more health checks while it stays offline: no event for them
            await monitor.check_now("lane-3")
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/online")
        await monitor.check_now("lane-3")
        online = await stream.until(lambda e: e.data["terminal_id"] == "lane-3")
    assert {e.event for e in offline + online} == {"terminal.status"}
    assert offline[-1].data["status"] == "offline" and offline[-1].data["last_error"]
    assert online[-1].data["status"] == "online" and online[-1].data["last_error"] is None


async def test_checkout_and_types_filters(gw: Gateway) -> None:
    first = (await gw.checkout(card(1500, "lane-1"))).body["id"]
    second = (await gw.checkout(card(2500, "lane-2"))).body["id"]
    async with (
        events(gw, f"?checkout={first}") as only_first,
        events(gw, "?types=checkout.finished") as only_finished,
        events(gw, "?types=terminal.status,checkout.finished") as two_types,
    ):
        assert (await gw.client.void(second)).status == 200
        assert (await gw.client.void(first)).status == 200
        mine = await only_first.until(finished(first))
        ends = await only_finished.until(finished(first))
        both = await two_types.until(finished(first))
    assert {e.data["checkout_id"] for e in mine} == {first}
    assert phases(mine) == [(0, "voiding"), (0, "voided")]
    assert mine[-1].data["status"] == "voided"
    assert [(e.data["checkout_id"], e.data["status"]) for e in ends] == [(second, "voided"), (first, "voided")]
    assert {e.event for e in both} <= {"terminal.status", "checkout.finished"}
    assert [e.data["checkout_id"] for e in both if e.event == "checkout.finished"] == [second, first]


async def test_filters_are_checked(gw: Gateway) -> None:
    for query, field in [("?types=checkout.progress,bogus", "types"), ("?checkout=not-a-uuid", "checkout")]:
        answer = await gw.client.request("GET", "/v1/events" + query)
        assert answer.status == 400 and answer.error_code == "validation_error", answer.body
        assert answer.body["error"]["details"]["field"] == field


async def test_last_event_id_resumes_with_exactly_the_missed_events(gw: Gateway) -> None:
    async with events(gw) as reference:
        async with events(gw) as first:
            await gw.checkout(card(1100, "lane-1"))
            seen = await first.until(finished())
        last = seen[-1].id
        assert last is not None
        missed = [(await gw.checkout(cash(700))).body["id"], (await gw.checkout(card(1200, "lane-2"))).body["id"]]
        # what the reference stream saw after `last`, up to the second missed checkout's end
        before = await reference.until(lambda e: e.id == last)
        expected = await reference.until(finished(missed[1]))
        assert before[-1] == seen[-1]
        async with events(gw, last_event_id=last) as resumed:
            again = [await resumed.next() for _ in expected]
            await gw.checkout(cash(300))  # and it goes on live
            live = await resumed.until(finished())
    assert again == expected
    assert [e.data["checkout_id"] for e in again if e.event == "checkout.finished"] == missed
    assert numbers(live)[0] > numbers(again)[-1]


async def test_overrun_and_another_run_start_with_stream_reset(gw: Gateway) -> None:
    async with events(gw, CHECKOUTS) as stream:
        await gw.checkout(cash(100))
        early = (await stream.until(finished()))[0].id
        assert early is not None
        for i in range(BUFFER // 2 + 1):  # two events each: more than the buffer holds
            last = (await gw.checkout(cash(200 + i))).body["id"]
        newest = (await stream.until(finished(last)))[-1]
    run = early.rpartition("-")[0]
    for last_event_id, reason in [(early, "overrun"), ("0badc0de-3", "restarted"), ("nonsense", "invalid")]:
        async with events(gw, CHECKOUTS, last_event_id=last_event_id) as resumed:
            reset = await resumed.next()
            assert reset.event == "stream.reset", reset
            assert reset.data["reason"] == reason and reset.data["last_event_id"] == last_event_id
            assert reset.data["run"] == run
            # numbered as the newest event: resuming from it later misses nothing after it
            assert str(reset.id).rpartition("-")[0] == run and numbers([reset]) >= numbers([newest])
            answer = await gw.checkout(cash(999))  # then it goes on live
            seen = await resumed.until(finished())
            assert seen[-1].data["checkout_id"] == answer.body["id"]
            assert numbers(seen)[0] > numbers([reset])[0]


async def _dropped_total(gw: Gateway) -> float:
    value = gw.daemon.metrics.registry.get_sample_value("gatewayd_event_subscribers_dropped_total")
    return value or 0.0


async def test_slow_reader_is_dropped_and_the_daemon_keeps_serving(gw: Gateway) -> None:
    hub = gw.daemon.events
    assert hub is not None
    registry = gw.daemon.metrics.registry
    connector = aiohttp.UnixConnector(path=gw.daemon.config.api.socket)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        slow = await session.get("http://gatewayd/v1/events?types=terminal.status")
        assert slow.status == 200
        async with events(gw, "?types=terminal.status") as fast:
            assert registry.get_sample_value("gatewayd_event_subscribers") == 2
            produced = 0
            async with asyncio.timeout(WAIT_S):
                # Many events, one at a time: the fast reader takes each, the slow one reads
                # nothing until its socket is full and its queue runs over.
                while await _dropped_total(gw) == 0:
                    hub.terminal_status(f"fake-{produced % 7}", "offline", "x" * 200)
                    produced += 1
                    event = await fast.next()
                    assert event.data["terminal_id"] == f"fake-{(produced - 1) % 7}"
            assert registry.get_sample_value("gatewayd_event_subscribers") == 1
            # the slow reader's stream ends (what its socket held, then the end)
            with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                async with asyncio.timeout(WAIT_S):
                    while await slow.content.read(65536):
                        pass
            slow.release()
            # the daemon goes on serving, the fast reader included
            assert (await gw.client.health()).status == 200
            answer = await gw.checkout(card(1300))
            assert answer.status == 200, answer.body
            hub.terminal_status("fake-last", "online", None)
            assert (await fast.until(lambda e: e.data["terminal_id"] == "fake-last"))[-1].data["status"] == "online"
    assert await _dropped_total(gw) == 1
    assert produced > QUEUE, produced


async def test_heartbeat(gw: Gateway) -> None:
    async with events(gw, "?types=checkout.finished") as stream:
        async with asyncio.timeout(WAIT_S):
            while (line := await stream.response.content.readline()) != b": heartbeat\n":
                assert line, "the stream ended"


async def test_streams_end_cleanly_at_shutdown(dsn: str, tmp_path: Path) -> None:
    """The daemon's stop ends open streams itself (a clean end of the chunked body), so its
    listeners close at once rather than after their shutdown timeout."""
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(tmp_path / "x")), timeout=aiohttp.ClientTimeout(total=None)
    )
    try:
        async with running_gateway(dsn, tmp_path, terminals=1, sections={"api": EVENTS}) as gw:
            await session.close()
            connector = aiohttp.UnixConnector(path=gw.daemon.config.api.socket)
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
            response = await session.get("http://gatewayd/v1/events")
            assert response.status == 200

            async def to_the_end() -> bytes:
                return await response.content.read()  # raises ClientPayloadError on a cut-off body

            reader = asyncio.ensure_future(to_the_end())
            await asyncio.sleep(0.1)
        body = await asyncio.wait_for(reader, WAIT_S)
        assert body.startswith(b"retry:")
    finally:
        await session.close()


async def test_events_over_tcp_need_the_token(dsn: str, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    listen = f"127.0.0.1:{free_port()}"
    api = {**EVENTS, "tcp_listen": listen, "tcp_token": token}
    async with running_gateway(dsn, tmp_path, terminals=1, sections={"api": api}) as gw:
        url = f"http://{listen}/v1/events?types=checkout.finished"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as refused:
                assert refused.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(url, headers=headers) as response:
                assert response.status == 200 and response.content_type == "text/event-stream"
                answer = await gw.checkout(cash(450))
                stream = Stream(response)
                assert (await stream.next()).data["checkout_id"] == answer.body["id"]


async def test_status_watch_prints_a_terminal_going_offline(gw: Gateway) -> None:
    async with asyncio.timeout(WAIT_S):  # every lane checked online first (a busy machine is slow to)
        while True:
            if (await gw.client.health()).body["terminals"]["online"] == len(gw.tpns):
                break
            await asyncio.sleep(0.1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatewayd",
        "status",
        "--watch",
        "--socket",
        gw.daemon.config.api.socket,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Ctrl-C as at a terminal: a child inherits an ignored SIGINT, and Python then leaves it
        # ignored (in the full suite the watcher outlived every SIGINT with its output all there).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def line_with(*words: str) -> str:
        async with asyncio.timeout(WAIT_S):
            while True:
                raw = await proc.stdout.readline()  # type: ignore[union-attr]
                assert raw, f"gatewayd status --watch ended: {lines}"
                lines.append(raw.decode().rstrip())
                if all(w in lines[-1] for w in words):
                    return lines[-1]

    try:
        await line_with("lane-3", "online")  # the status table: subscribed by then
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/offline")
        await gw.daemon.fleet.monitor.check_now("lane-3")  # type: ignore[union-attr]
        line = await line_with("terminal lane-3", "OFFLINE")
        answer = await gw.checkout(card(1700, "lane-1"))
        done = await line_with("checkout", answer.body["id"], "completed")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), WAIT_S)
        except TimeoutError:  # never left hanging, and never hiding the failure that got us here
            proc.kill()
            await proc.wait()
            code = None
        await gw.simulator_post(f"/_sim/terminals/{gw.tpns['lane-3']}/online")
    assert code == 0, f"status --watch did not end on Ctrl-C (exit {code}): {lines}"
    assert line.split()[1:3] == ["terminal", "lane-3"], line
    assert done.endswith(" completed")
