"""A deterministic asyncio event loop on virtual time.

`time()` is a number the loop owns. When no callback is ready the loop jumps the clock to the
next timer instead of sleeping, so a simulated hour of retries and timeouts takes as long as
its callbacks take to run. There is no I/O: a loop with nothing ready and no timer can never
make progress again, and says so (`SimulationStalled`) instead of hanging.

Tasks are attributed to an owner (a simulated daemon process) through a context variable, so
a crash can cancel exactly the tasks of one process, in creation order.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, Protocol


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is set: every task waits for something that cannot happen."""


class TaskOwner(Protocol):
    def adopt(self, task: asyncio.Task[Any]) -> None: ...


# The simulated process a task belongs to (None: the simulated world: POS clients, terminals).
OWNER: contextvars.ContextVar[TaskOwner | None] = contextvars.ContextVar("sim_owner", default=None)


class _VirtualSelector:
    """Stands in for the selector: 'waiting' for `timeout` seconds moves the clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise SimulationStalled(f"no callback ready and no timer at t={self._loop.time():.3f}")
        if timeout > 0:
            scheduled = self._loop._scheduled  # type: ignore[attr-defined]  # the next timer, exactly
            target = scheduled[0]._when if scheduled else self._loop._now + timeout
            self._loop._now = max(self._loop._now, target)
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """asyncio's own scheduling (ready queue, timer heap), with a clock that only the loop moves."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._now = start
        self._selector = _VirtualSelector(self)
        self.set_task_factory(_owned_task)  # type: ignore[arg-type]
        self.unhandled: list[str] = []
        self.set_exception_handler(self._keep_unhandled)

    def _keep_unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """'Task exception was never retrieved' and the like: kept, not printed (they arrive at
        garbage-collection time, so they are not part of the deterministic trace)."""
        exc = context.get("exception")
        self.unhandled.append(f"{context.get('message')}: {type(exc).__name__ if exc else ''} {exc or ''}")

    def time(self) -> float:
        return self._now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass  # no other thread ever wakes this loop


def _owned_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None = None
) -> asyncio.Task[Any]:
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    owner = context.get(OWNER) if context is not None else OWNER.get()
    if owner is not None:
        owner.adopt(task)
    return task


def run(main: Coroutine[Any, Any, Any], start: float = 0.0) -> Any:
    """Run `main` to completion on a fresh virtual-time loop; cancel what is left; close the loop."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
