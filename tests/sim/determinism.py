"""Owning every source of nondeterminism gatewayd reads, for the length of one seeded run.

* time: `time.monotonic` in the coordinator and recovery reads the virtual clock (lanes and the
  health monitor take `clock`/`now` injections instead; the executor and the state machine
  read only the database's clock, which is the fake server's virtual `now`);
* randomness: the global `random` (the store's retry jitter) is seeded per run and restored;
* ids: `uuid.uuid4` draws from the seed, so a replay mints the same order and reference ids;
* logs: gatewayd's records are kept (for the trace and the hygiene check), never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import gatewayd.checkout.coordinator as coordinator_module
import gatewayd.checkout.recovery as recovery_module

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


def vnow() -> datetime:
    """The virtual wall clock: the epoch plus the running loop's virtual seconds."""
    return EPOCH + timedelta(seconds=asyncio.get_running_loop().time())


def vmono() -> float:
    return asyncio.get_running_loop().time()


_virtual_time = types.SimpleNamespace(monotonic=vmono, time=lambda: vnow().timestamp())


class KeptLogs(logging.Handler):
    """Collects gatewayd's log lines (formatted lazily: only the hygiene check reads them all)."""

    def __init__(self, echo: bool) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.echo:
            try:
                t = asyncio.get_running_loop().time()
            except RuntimeError:
                t = -1.0
            print(f"  {t:10.3f} log {record.levelname.lower():7} {record.name}: {record.getMessage()}")

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@contextlib.contextmanager
def owned(seed: int, *, echo_logs: bool = False, log_level: int = logging.INFO) -> Iterator[KeptLogs]:
    """Patch the process for one run; everything is restored on exit (runs are sequential)."""
    ids = random.Random(f"uuid:{seed}")
    saved_random = random.getstate()
    patches: list[tuple[Any, str, Any]] = [
        (uuid, "uuid4", lambda: uuid.UUID(int=ids.getrandbits(128), version=4)),
        (coordinator_module, "time", _virtual_time),
        (recovery_module, "time", _virtual_time),
    ]
    saved = [(module, name, vars(module)[name]) for module, name, _ in patches]
    root = logging.getLogger("gatewayd")
    saved_log = (root.level, root.propagate, list(root.handlers))
    kept = KeptLogs(echo_logs)
    try:
        random.seed(f"global:{seed}")
        for module, name, value in patches:
            setattr(module, name, value)
        root.handlers = [kept]
        root.setLevel(logging.DEBUG if echo_logs else log_level)
        root.propagate = False
        yield kept
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        root.setLevel(saved_log[0])
        root.propagate = saved_log[1]
        root.handlers = saved_log[2]
        random.setstate(saved_random)
