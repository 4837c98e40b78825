"""The seeded simulation in CI: five thousand seeds, determinism, and the fakes' own contracts.

GATEWAYD_SIM_SEEDS=1-20000 runs another range (nightly, or on demand);
GATEWAYD_SIM_STRICT=1 fails on the seeds of open known bugs too (tests/sim/regressions.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim import loop
from tests.sim.__main__ import _range
from tests.sim.runner import run_batch, run_seed

ROOT = Path(__file__).resolve().parents[2]
# 5,000 seeds take ~90 s on two idle cores; seeds 1062 and 1125 (a lost approval, a freeze sprung
# after the heal) were past the thousand CI ran before.
SEEDS = os.environ.get("GATEWAYD_SIM_SEEDS", "1-5000")


def test_seeds_keep_the_money_invariants() -> None:
    """Every seed keeps I1-I9, or fails only with the symptoms of an open known bug; every fault and
    recovery branch fires somewhere in the batch (else the run proves nothing and fails as vacuous)."""
    batch = run_batch(_range(SEEDS))
    report = batch.summary()
    print(report)
    assert len(batch.results) >= 5000 or "GATEWAYD_SIM_SEEDS" in os.environ
    assert not batch.kinds_missing(), "fault kinds that never happened: " + ", ".join(batch.kinds_missing())
    assert not batch.missing(), "vacuous run:\n" + report
    assert not batch.unexplained, "a failure no known bug explains (a new bug?):\n" + report
    if os.environ.get("GATEWAYD_SIM_STRICT"):
        assert not batch.failed, report


def test_a_seed_is_a_pure_function_of_itself() -> None:
    """Same seed, same trace - in this process, and in another with another hash seed."""
    first, second = run_seed(77), run_seed(77)
    assert first.trace_hash == second.trace_hash
    assert first.stats["events"] > 100 and first.stats["orders"] > 3
    code = "from tests.sim.runner import run_seed; print(run_seed(77).trace_hash)"
    for hash_seed in ("1", "4242"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout.strip()
        assert out == first.trace_hash, f"PYTHONHASHSEED={hash_seed} changed the run"


def test_different_seeds_tell_different_stories() -> None:
    assert len({run_seed(s).trace_hash for s in range(200, 205)}) == 5


def test_virtual_time_jumps_and_a_stalled_world_says_so() -> None:
    async def sleepy() -> float:
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(3600)
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 30)
        except TimeoutError:
            pass
        return asyncio.get_running_loop().time() - started

    assert loop.run(sleepy()) == pytest.approx(3630)

    async def stuck() -> None:
        await asyncio.Event().wait()

    with pytest.raises(loop.SimulationStalled):
        loop.run(stuck())


def test_the_fakes_keep_up_with_the_real_store() -> None:
    """The simulation drives gatewayd's own code over the fake store: every method of the real
    CheckoutStore, and every MaintenanceStore query the scheduled code runs, exists on the fakes
    with the same parameters (a missing or different one shows up in a run later and vaguer)."""
    import inspect
    import re
    from typing import Any

    from gatewayd.checkout.operations import Operations
    from gatewayd.store.checkouts import CheckoutStore
    from gatewayd.store.maintenance import MaintenanceStore
    from tests.sim.store import SimCheckoutStore, SimMaintenanceStore

    def params(cls: type, name: str) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(getattr(cls, name)).parameters.values()]

    methods = [n for n, _ in inspect.getmembers(CheckoutStore, inspect.iscoroutinefunction) if not n.startswith("_")]
    assert "record_tender" in methods
    for name in methods:
        assert hasattr(SimCheckoutStore, name), f"SimCheckoutStore lacks {name} (tests/sim/store.py, tables.py)"
        assert params(SimCheckoutStore, name) == params(CheckoutStore, name), f"SimCheckoutStore.{name} differs"
    scheduled = (ROOT / "gatewayd" / "checkout" / "recovery.py").read_text()
    for method in (Operations.maintain_once, Operations.cleanup, Operations.settle):
        scheduled += inspect.getsource(method)
    for name in sorted(set(re.findall(r"self\.maintenance\.(\w+)\b", scheduled))):
        assert hasattr(SimMaintenanceStore, name), f"SimMaintenanceStore lacks {name} (tests/sim/store.py)"
        assert params(SimMaintenanceStore, name) == params(MaintenanceStore, name), f"SimMaintenanceStore.{name}"
