"""The checkout's database policy: when an outage fails a request, and when it is waited out.

Before the intent is recorded, a database outage fails the request at once with nothing charged
(`before_intent`). After it, an outage must never read as "nothing charged": the work is retried
until it succeeds or the task is cancelled (`after_intent`), and a shutdown leaves the rows to
recovery. `best_effort` is for bookkeeping whose loss costs nothing (a lease released early).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gatewayd.checkout.errors import DatabaseUnavailable
from gatewayd.errors import StoreError, TransientStoreError
from gatewayd.retry import PERSIST_BACKOFF, backoff_s

log = logging.getLogger(__name__)

T = TypeVar("T")


async def before_intent(work: Awaitable[T]) -> T:
    """One try: a transient failure becomes a 503 `database_unavailable` (nothing was started)."""
    try:
        return await work
    except TransientStoreError as exc:
        raise DatabaseUnavailable("the database is unavailable", details={"reason": exc.message}) from exc


async def after_intent(work: Callable[[], Awaitable[T]]) -> T:
    """Retried until it succeeds (or the task is cancelled): the money is already in motion."""
    attempt = 0
    while True:
        try:
            return await work()
        except TransientStoreError as exc:
            log.warning("database unavailable (%s); retrying", exc.message)
            await asyncio.sleep(backoff_s(attempt, *PERSIST_BACKOFF))
            attempt += 1


async def best_effort(work: Awaitable[T]) -> T | None:
    """None when the database refused: for work whose loss recovery makes good."""
    try:
        return await work
    except StoreError:
        return None
