"""Small helpers shared by the terminal tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gatewayd.terminals.outcomes import BatchEntry, Health, Outcome, SettleResult

AUTHKEY = "SeCrEtK3y9"
TIMEOUT_S = 1.0
MARGIN_S = 0.3


async def fast_sleep(seconds: float) -> None:
    """Stands in for asyncio.sleep in lanes: never waits through real backoff."""
    await asyncio.sleep(min(seconds, 0.005))


def new_ref() -> str:
    """A fresh reference id (32 hex chars, as the SPIn SDK does)."""
    return uuid.uuid4().hex


def new_tpn() -> str:
    """A fresh terminal profile number."""
    return f"TPN{uuid.uuid4().hex[:9].upper()}"


class FakeClock:
    """A virtual clock: `sleep` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(*owners: Any) -> AsyncIterator[None]:
    """Run each owner's `run()` (lanes, monitors) as a task for the duration of the block."""
    tasks = [asyncio.create_task(owner.run()) for owner in owners]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


Answer = Any  # an outcome (or Health, SettleResult ...) or a callable producing one


class ScriptedDriver:
    """Answers from per-method scripts; the last answer repeats. Records every call."""

    terminal_id = "fake-1"
    timeout_s = 1.0
    transaction_timeout_s = 1.3

    def __init__(self, clock: FakeClock, **scripts: list[Answer]) -> None:
        self.clock = clock
        self.scripts = scripts
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None

    async def _answer(self, method: str, ref: str = "") -> Any:
        self.calls.append((method, ref))
        if self.gate is not None:
            await self.gate.wait()
        script = self.scripts[method]
        answer = script.pop(0) if len(script) > 1 else script[0]
        return answer() if callable(answer) else answer

    async def sale(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._answer("sale", ref)  # type: ignore[no-any-return]

    async def auth(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._answer("auth", ref)  # type: ignore[no-any-return]

    async def capture(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._answer("capture", ref)  # type: ignore[no-any-return]

    async def void(self, ref: str, amount: int | None = None, **_: Any) -> Outcome:
        return await self._answer("void", ref)  # type: ignore[no-any-return]

    async def refund(self, ref: str, amount: int, **_: Any) -> Outcome:
        return await self._answer("refund", ref)  # type: ignore[no-any-return]

    async def status(self, ref: str, **_: Any) -> Outcome:
        return await self._answer("status", ref)  # type: ignore[no-any-return]

    async def health(self) -> Health:
        return await self._answer("health")  # type: ignore[no-any-return]

    async def settle(self) -> SettleResult:
        return await self._answer("settle")  # type: ignore[no-any-return]

    async def batch(self) -> list[BatchEntry]:
        return await self._answer("batch")  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        return None

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)
