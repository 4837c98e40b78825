"""Every seed that ever found a bug, replayed on every run (tests/sim/regressions.py)."""

from __future__ import annotations

import pytest

from tests.sim.regressions import KNOWN_BUGS, KnownBug
from tests.sim.runner import replay_command, run_seed

CASES = [(bug, seed) for bug in KNOWN_BUGS for seed in bug.seeds]


@pytest.mark.parametrize(("bug", "seed"), CASES, ids=[f"{b.id}-{s}" for b, s in CASES])
def test_known_bug_seed(bug: KnownBug, seed: int) -> None:
    """A seed that once found a bug passes on today's gatewayd."""
    result = run_seed(seed)
    assert result.ok, (
        f"seed {seed} (once bug {bug.id}) fails: a regression, or a new bug:\n"
        + "\n".join(result.violations)
        + f"\nreplay: {replay_command(seed)}"
    )


def test_known_bug_ids_are_unique() -> None:
    assert len({bug.id for bug in KNOWN_BUGS}) == len(KNOWN_BUGS)
