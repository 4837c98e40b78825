"""The fake store against PostgreSQL: a sample of seeds replayed through the real SQL."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.sim.differential import replay
from tests.sim.runner import run_seed

SAMPLE = range(1, 1 + int(os.environ.get("GATEWAYD_SIM_DIFF_SEEDS", "20")))


@pytest.mark.parametrize("seed", SAMPLE)
async def test_fake_store_agrees_with_postgresql(dsn: str, seed: int) -> None:
    result = await asyncio.to_thread(run_seed, seed, keep_history=True)
    assert len(result.history) > 20
    problems = await replay(dsn, result)
    assert not problems, f"seed {seed}: the fake store and PostgreSQL disagree:\n" + "\n".join(problems)
