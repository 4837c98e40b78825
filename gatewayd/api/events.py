"""Live events (`GET /v1/events`): Server-Sent Events from one in-memory hub per daemon run.

Hooks feed the hub: the terminal lanes (`terminal.status`, on a change of state only) and the
checkout (`checkout.progress`, `checkout.finished`, through the `CheckoutEvents` hooks of
gatewayd/checkout/executor.py). The hub numbers every event `<run>-<n>` (`run` is new each time
the daemon starts, `n` counts from 1), keeps the last `buffer` of them so that a client that
reconnects with `Last-Event-ID` gets exactly what it missed, and hands each to every open stream
whose filters match.

Memory stays bounded whatever the readers do: a stream whose queue holds `queue` undelivered
events is dropped (its connection ends; the client reconnects with `Last-Event-ID` and resumes
from the buffer, or gets `stream.reset`). A resume the buffer cannot serve (overrun, another
run, an id never given) starts with `stream.reset`: re-read the state, then carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, cast, get_args

import msgspec
from aiohttp import ClientResponse, web

from gatewayd.checkout.executor import Phase
from gatewayd.checkout.machine import Tender

log = logging.getLogger(__name__)

EventType = Literal["terminal.status", "checkout.progress", "checkout.finished"]
TYPES: frozenset[str] = frozenset(get_args(EventType))
FinishedStatus = Literal["completed", "payment_failed", "cancelled", "voided", "refunded", "partially_refunded"]
RETRY_MS = 2000  # what a browser's EventSource waits before it reconnects
HEARTBEAT = b": heartbeat\n\n"


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class TerminalStatusEvent(_Event, frozen=True, kw_only=True, tag="terminal.status"):
    """`terminal.status`: a terminal changed state (sent on a change only, never per health check)."""

    terminal_id: str
    status: Literal["online", "offline", "busy", "unknown"]
    last_error: str | None  # null while online
    at: str  # when the daemon saw it: ISO 8601, UTC


class CheckoutProgressEvent(_Event, frozen=True, kw_only=True, tag="checkout.progress"):
    """`checkout.progress`: a step of a checkout (tender_index null for intent_recorded)."""

    checkout_id: str
    idempotency_key: str | None  # null only for an orphan's void that recovery does on its own
    tender_index: int | None  # the tender's index in the checkout's tenders; null for intent_recorded
    terminal_id: str | None
    phase: Phase
    at: str


class CheckoutFinishedEvent(_Event, frozen=True, kw_only=True, tag="checkout.finished"):
    """`checkout.finished`: a checkout reached a final state, or a void or refund of it finished."""

    checkout_id: str
    status: FinishedStatus
    at: str


class StreamResetEvent(_Event, frozen=True, kw_only=True, tag="stream.reset"):
    """`stream.reset`: the Last-Event-ID could not be resumed from; events were missed. Re-read
    the state (GET /v1/terminals, GET /v1/checkouts/{id}), then carry on with this stream."""

    reason: Literal["overrun", "restarted", "invalid"]
    last_event_id: str
    run: str
    at: str


StreamEvent = TerminalStatusEvent | CheckoutProgressEvent | CheckoutFinishedEvent | StreamResetEvent
EVENT_STRUCTS: tuple[type[_Event], ...] = get_args(StreamEvent)


class SubscriberMetrics(Protocol):
    def event_subscribers_changed(self, count: int) -> None: ...
    def event_subscriber_dropped(self) -> None: ...


class _NoMetrics:
    def event_subscribers_changed(self, count: int) -> None:
        pass

    def event_subscriber_dropped(self) -> None:
        pass


class EventsClosed(Exception):
    """The hub is closed: the daemon is stopping."""


@dataclass(frozen=True, slots=True)
class _Stored:
    n: int
    type: str
    checkout_id: str | None
    frame: bytes


def _frame(event_id: str, type_: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), type_.encode(), data)


class Subscriber:
    """One open stream: its filters, its bounded queue, and what it is to be sent first."""

    def __init__(self, types: frozenset[str], checkout: str | None, limit: int) -> None:
        self.types = types
        self.checkout = checkout
        self.replay: list[bytes] = []
        self.dropped = False
        self.on_drop: Callable[[], None] = lambda: None
        self._limit = limit
        self._frames: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def wants(self, type_: str, checkout_id: str | None) -> bool:
        return type_ in self.types and (self.checkout is None or checkout_id == self.checkout)

    def _push(self, frame: bytes) -> bool:
        """Queue a frame; False when the queue is full (the subscriber is too slow)."""
        if len(self._frames) >= self._limit:
            return False
        self._frames.append(frame)
        self._wake.set()
        return True

    def _close(self, dropped: bool) -> None:
        self._closed = True
        self.dropped = dropped
        if dropped:
            self._frames.clear()  # it resumes from the buffer when it comes back
        self._wake.set()

    async def next(self, timeout_s: float) -> list[bytes] | None:
        """The frames queued since the last call; [] after `timeout_s` with none (time for a
        heartbeat); None once the stream is to end (dropped, or the daemon stopping)."""
        if not self._frames and not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
        self._wake.clear()
        if self._frames:
            frames = list(self._frames)
            self._frames.clear()
            return frames
        return None if self._closed else []


class EventHub:
    """Numbers, buffers and fans out the daemon's events; also the lanes' and checkout's hooks."""

    def __init__(
        self,
        *,
        buffer: int = 1000,
        queue: int = 256,
        heartbeat_s: float = 15.0,
        metrics: SubscriberMetrics | None = None,
        run: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.run = run or secrets.token_hex(4)
        self.heartbeat_s = heartbeat_s
        self._queue = max(1, queue)
        self._ring: deque[_Stored] = deque(maxlen=max(1, buffer))
        self._n = 0
        self._subs: set[Subscriber] = set()
        self._metrics: SubscriberMetrics = metrics or _NoMetrics()
        self._now = now
        self._closed = False

    @property
    def last_id(self) -> str:
        return f"{self.run}-{self._n}"

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def _at(self) -> str:
        return self._now().isoformat().replace("+00:00", "Z")

    # ------------------------------------------------------------ producing

    def publish(self, event: TerminalStatusEvent | CheckoutProgressEvent | CheckoutFinishedEvent) -> str:
        """Number the event, keep it in the buffer and queue it for every matching stream; its id."""
        self._n += 1
        event_id = f"{self.run}-{self._n}"
        type_ = cast(str, event.__struct_config__.tag)
        checkout_id = getattr(event, "checkout_id", None)
        frame = _frame(event_id, type_, msgspec.json.encode(event))
        self._ring.append(_Stored(self._n, type_, checkout_id, frame))
        for sub in [s for s in self._subs if s.wants(type_, checkout_id)]:
            if not sub._push(frame):
                self._drop(sub)
        return event_id

    def _safely(self, make: Callable[[], TerminalStatusEvent | CheckoutProgressEvent | CheckoutFinishedEvent]) -> None:
        """Events never get in the way of the money: a failure here is logged, not raised."""
        try:
            self.publish(make())
        except Exception:
            log.exception("event not published")

    def terminal_status(self, terminal_id: str, status: str, last_error: str | None) -> None:
        """The lanes' hook: a terminal's state changed."""
        self._safely(
            lambda: TerminalStatusEvent(
                terminal_id=terminal_id,
                status=cast(Literal["online", "offline", "busy", "unknown"], status),
                last_error=last_error if status != "online" else None,
                at=self._at(),
            )
        )

    def progress(self, order_id: uuid.UUID, key: str | None, phase: Phase, tender: Tender | None = None) -> None:
        """The checkout's hook (CheckoutEvents): a step of a checkout."""
        self._safely(
            lambda: CheckoutProgressEvent(
                checkout_id=str(order_id),
                idempotency_key=key,
                tender_index=tender.tender_index if tender is not None else None,
                terminal_id=tender.terminal_id if tender is not None else None,
                phase=phase,
                at=self._at(),
            )
        )

    def finished(self, order_id: uuid.UUID, status: str) -> None:
        """The checkout's hook (CheckoutEvents): a checkout reached a final state."""
        self._safely(
            lambda: CheckoutFinishedEvent(checkout_id=str(order_id), status=cast(FinishedStatus, status), at=self._at())
        )

    # ------------------------------------------------------------ consuming

    def subscribe(
        self, *, types: frozenset[str] = TYPES, checkout: str | None = None, last_event_id: str | None = None
    ) -> Subscriber:
        """A new stream; with `last_event_id`, `replay` holds what it missed (or a stream.reset)."""
        if self._closed:
            raise EventsClosed("the daemon is stopping")
        sub = Subscriber(types, checkout, self._queue)
        if last_event_id is not None:
            sub.replay = self._since(last_event_id, sub)
        self._subs.add(sub)
        self._metrics.event_subscribers_changed(len(self._subs))
        return sub

    def _since(self, last_event_id: str, sub: Subscriber) -> list[bytes]:
        run, _, number = last_event_id.strip().rpartition("-")
        n = int(number) if number.isdigit() else -1
        if not run or n < 0:
            return [self._reset("invalid", last_event_id)]
        if run != self.run:
            return [self._reset("restarted", last_event_id)]
        if n > self._n:
            return [self._reset("invalid", last_event_id)]
        first = self._ring[0].n if self._ring else self._n + 1
        if n + 1 < first:
            return [self._reset("overrun", last_event_id)]
        return [s.frame for s in self._ring if s.n > n and sub.wants(s.type, s.checkout_id)]

    def _reset(self, reason: Literal["overrun", "restarted", "invalid"], last_event_id: str) -> bytes:
        """A stream.reset, numbered as the newest event: a client that resumes from it next time
        (having re-read the state) misses nothing after it."""
        event = StreamResetEvent(reason=reason, last_event_id=last_event_id[:100], run=self.run, at=self._at())
        return _frame(self.last_id, "stream.reset", msgspec.json.encode(event))

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            self._metrics.event_subscribers_changed(len(self._subs))

    def _drop(self, sub: Subscriber) -> None:
        log.warning("event stream dropped: its reader fell %d events behind", self._queue)
        self.unsubscribe(sub)
        sub._close(dropped=True)
        self._metrics.event_subscriber_dropped()
        try:
            sub.on_drop()
        except Exception:
            log.exception("event stream drop")

    def close(self) -> None:
        """The daemon is stopping: every stream ends (after what is queued for it); no new ones."""
        self._closed = True
        for sub in list(self._subs):
            sub._close(dropped=False)


# ---------------------------------------------------------------- the HTTP side


def parse_types(text: str | None) -> frozenset[str] | None:
    """`?types=a,b`: the event types asked for; None when one is unknown."""
    if not text:
        return TYPES
    wanted = frozenset(t.strip() for t in text.split(",") if t.strip())
    return wanted if wanted and wanted <= TYPES else None


async def stream(request: web.Request, hub: EventHub, sub: Subscriber) -> web.StreamResponse:
    """Serve one subscription as text/event-stream until it ends or the client goes away."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    writing = False

    def cut() -> None:
        # A reader too slow to keep up may have left this handler waiting on its socket: close it.
        if writing and request.transport is not None:
            request.transport.abort()

    sub.on_drop = cut

    async def send(data: bytes) -> None:
        nonlocal writing
        writing = True
        try:
            await response.write(data)
        finally:
            writing = False

    try:
        await response.prepare(request)
        await send(b"retry: %d\n\n" % RETRY_MS + b"".join(sub.replay))
        sub.replay = []
        while (frames := await sub.next(hub.heartbeat_s)) is not None:
            await send(b"".join(frames) if frames else HEARTBEAT)
        async with asyncio.timeout(5):
            await response.write_eof()
    except (ConnectionError, TimeoutError):
        pass  # the client went away, or would not take the end of the stream
    finally:
        hub.unsubscribe(sub)
    return response


# ---------------------------------------------------------------- reading a stream (the CLI, tests)


class SseEvent(msgspec.Struct, frozen=True):
    """One event as received: its id, type and decoded data."""

    id: str | None
    event: str
    data: dict[str, object]


async def read_events(response: ClientResponse, *, comments: list[str] | None = None) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream answer, as they arrive (comments, such as heartbeats,
    are appended to `comments` when given)."""
    event_id: str | None = None
    event_type = "message"
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event_id, event_type, msgspec.json.decode("\n".join(data)))
            event_type, data = "message", []
            continue
        if line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "event":
            event_type = value
        elif field == "data":
            data.append(value)
