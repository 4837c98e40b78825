"""Named places where a test can make the process die, raise or stall.

Enabled by the environment only: GATEWAYD_FAILPOINTS="after_intent_commit=kill,during_void=raise,
after_sale_sent=stall:5". An action may carry a hit count: "before_commit=kill@2" acts on the
second hit, "=stall:60@*" on every hit. With the variable unset, `hit` is one dict lookup on an empty dict.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from gatewayd.errors import GatewayError

log = logging.getLogger(__name__)

NAMES = frozenset(
    {
        "after_intent_commit",  # the intent is durable, nothing sent yet
        "after_sale_sent",  # the request left for the terminal, no answer read yet
        "after_sale_answer",  # the answer is in memory, not yet stored
        "before_commit",  # every tender approved, the commit about to be sent (a kill here aborts it)
        "after_commit",  # committed, the POS not yet answered
        "during_void",  # a void is about to be sent during rollback
        "during_recovery",  # recovery has claimed an order and is driving it
    }
)


class FailpointError(GatewayError):
    """Raised by a failpoint set to `raise`."""


def _parse(spec: str) -> dict[str, tuple[str, float, int]]:
    points: dict[str, tuple[str, float, int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        kind, _, arg = action.partition(":")
        if name not in NAMES or kind not in ("kill", "raise", "stall"):
            raise ValueError(f"GATEWAYD_FAILPOINTS: bad failpoint {item!r}")
        points[name] = (kind, float(arg or 3600), 0 if nth == "*" else int(nth or 1))
    return points


_points = _parse(os.environ.get("GATEWAYD_FAILPOINTS", ""))
_hits: dict[str, int] = {}


def configure(spec: str) -> None:
    """Replace the active failpoints (tests in-process)."""
    global _points
    _points = _parse(spec)
    _hits.clear()


async def hit(name: str) -> None:
    """Act if failpoint `name` is armed; otherwise do nothing."""
    if not _points:
        return
    await _act(name)


async def _act(name: str) -> None:
    armed = _points.get(name)
    if armed is None:
        return
    kind, arg, nth = armed
    _hits[name] = _hits.get(name, 0) + 1
    if nth and _hits[name] != nth:
        return
    log.warning("failpoint %s: %s", name, kind)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "raise":
        raise FailpointError(f"failpoint {name}")
    else:
        await asyncio.sleep(arg)


_later: set[asyncio.Task[None]] = set()


def soon(name: str, delay_s: float) -> asyncio.Task[None] | None:
    """Act on failpoint `name` `delay_s` from now, beside the caller (which goes on at once): for a
    moment no await marks, such as a request on the wire. Unarmed: one dict lookup, None."""
    if not _points or name not in _points:
        return None

    async def later() -> None:
        await asyncio.sleep(delay_s)
        await _act(name)

    task = asyncio.ensure_future(later())
    _later.add(task)
    task.add_done_callback(_later.discard)
    return task


async def join(scheduled: asyncio.Task[None] | None) -> None:
    """Wait for a failpoint `soon` scheduled, so that the flow never outruns its own crash (None:
    nothing was scheduled, returns at once)."""
    if scheduled is not None:
        await scheduled
