"""`python -m bench.traced run --config FILE`: gatewayd, with a timestamp at the edges of each phase.

For `python -m bench breakdown` only: the daemon it measures is this tree's gatewayd, unchanged,
with thin wrappers (monkeypatched here, never in gatewayd itself) that append
(perf_counter_ns, name, "start"|"end") to a list. perf_counter is CLOCK_MONOTONIC on Linux, the
same clock in every process, so the POS client's own timestamps line up with these. At exit
(SIGTERM: the daemon drains and returns) the list goes to $BENCH_TRACE_OUT as JSON, with
TCP_NODELAY as found on the daemon's sockets to PostgreSQL and to the terminals.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

EVENTS: list[tuple[int, str, str]] = []
SOCKETS: dict[str, list[int]] = {"postgresql": [], "terminal": []}


def _mark(name: str, edge: str) -> None:
    EVENTS.append((time.perf_counter_ns(), name, edge))


def _timed(name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        label = name(*args, **kwargs) if callable(name) else name
        _mark(label, "start")
        try:
            return await fn(*args, **kwargs)
        finally:
            _mark(label, "end")

    return wrapper


def _timed_sync(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(name, "start")
        try:
            return fn(*args, **kwargs)
        finally:
            _mark(name, "end")

    return wrapper


def _nodelay(sock: Any) -> int:
    try:
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return -1  # a unix socket: no Nagle
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
    except OSError:
        return -2


def install() -> None:
    from gatewayd.api import app as api_app
    from gatewayd.checkout import coordinator, executor
    from gatewayd.store import db
    from gatewayd.terminals import lane
    from gatewayd.terminals.spin import driver

    api_app.create_checkout = _timed("handler", api_app.create_checkout)  # type: ignore[assignment]
    api_app.decode_body = _timed("decode", api_app.decode_body)  # type: ignore[assignment]
    api_app._checkout_response = _timed_sync("encode", api_app._checkout_response)  # type: ignore[assignment]
    coordinator.checkout_view = _timed_sync("view", coordinator.checkout_view)  # type: ignore[attr-defined]
    executor.Executor.drive = _timed("drive", executor.Executor.drive)  # type: ignore[method-assign]

    run = db.Database.run

    async def traced_run(self: Any, work: Any, *, attempts: int = 5, what: str = "database work") -> Any:
        _mark(f"db:{what}", "start")
        try:
            return await run(self, work, attempts=attempts, what=what)
        finally:
            _mark(f"db:{what}", "end")

    db.Database.run = traced_run  # type: ignore[method-assign]

    connection = db.Database.connection.__wrapped__  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def traced_connection(self: Any) -> AsyncIterator[Any]:
        _mark("db:acquire", "start")
        inner = contextlib.asynccontextmanager(connection)(self)
        conn = await inner.__aenter__()
        _mark("db:acquire", "end")
        if len(SOCKETS["postgresql"]) < 50:
            transport = getattr(getattr(conn, "_con", conn), "_transport", None)
            SOCKETS["postgresql"].append(_nodelay(transport.get_extra_info("socket") if transport else None))
        try:
            yield conn
        except BaseException:
            if not await inner.__aexit__(*sys.exc_info()):
                raise
        else:
            await inner.__aexit__(None, None, None)

    db.Database.connection = traced_connection  # type: ignore[method-assign]

    post = driver.SpinDriver._post

    async def traced_post(self: Any, op: str, body: bytes, http_timeout_s: float) -> bytes:
        _mark(f"terminal:{op}", "start")
        try:
            return await post(self, op, body, http_timeout_s)
        finally:
            _mark(f"terminal:{op}", "end")
            session = self._session
            if session is not None and len(SOCKETS["terminal"]) < 50:
                for protos in getattr(session.connector, "_conns", {}).values():
                    for proto, *_ in protos:
                        tr = getattr(proto, "transport", None)
                        SOCKETS["terminal"].append(_nodelay(tr.get_extra_info("socket") if tr else None))

    driver.SpinDriver._post = traced_post  # type: ignore[method-assign]
    lane.Lane.execute = _timed(lambda self, op, **kw: f"lane:{type(op).__name__}", lane.Lane.execute)  # type: ignore[method-assign]
    lane.Lane._perform = _timed(lambda self, op: f"perform:{type(op).__name__}", lane.Lane._perform)  # type: ignore[method-assign]

    def dump() -> None:
        out = os.environ.get("BENCH_TRACE_OUT")
        if out:
            with open(out, "w") as f:
                json.dump({"events": EVENTS, "nodelay": SOCKETS}, f)

    atexit.register(dump)


if __name__ == "__main__":
    install()
    from gatewayd.cli import main

    sys.argv[0] = "gatewayd"
    raise SystemExit(main())
