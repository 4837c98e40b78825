"""Every seed that ever found a bug, replayed on every run (tests/sim/regressions.py)."""

from __future__ import annotations

import pytest

from tests.sim.fixes import FIXES
from tests.sim.regressions import KNOWN_BUGS, KnownBug
from tests.sim.runner import replay_command, run_seed

CASES = [(bug, seed, False) for bug in KNOWN_BUGS for seed in bug.seeds]
CASES += [(bug, seed, True) for bug in KNOWN_BUGS for seed in bug.seeds_with_other_fixes]


OPEN = tuple(bug.id for bug in KNOWN_BUGS if not bug.fixed)


@pytest.mark.parametrize(
    ("bug", "seed", "others_fixed"), CASES, ids=[f"{b.id}-{s}{'-others-fixed' if o else ''}" for b, s, o in CASES]
)
def test_known_bug_seed(bug: KnownBug, seed: int, others_fixed: bool) -> None:
    """A fixed bug's seed passes; an open bug's seed passes, or fails only in the way the
    proposed fixes of the open bugs remove (an expected failure until gatewayd is fixed)."""
    background = tuple(f for f in FIXES if f != bug.id) if others_fixed else ()
    result = run_seed(seed, fixes=background)
    if result.ok:
        return
    replay = replay_command(seed) + "".join(f" --fix {f}" for f in background)
    explained = run_seed(seed, fixes=tuple(dict.fromkeys((*background, *OPEN))))
    assert explained.ok, (
        f"seed {seed} fails, and no open known bug explains it"
        f"{' (its own bug ' + bug.id + ' is marked fixed: a regression?)' if bug.fixed else ''}:\n"
        + "\n".join(result.violations)
        + f"\nreplay: {replay}"
    )
    culprit = "another open bug" if bug.fixed else f"known bug {bug.id}"
    pytest.xfail(f"{culprit}: {result.violations[0]} (replay: {replay})")


def test_every_known_bug_has_a_proposed_fix() -> None:
    assert {bug.id for bug in KNOWN_BUGS} <= set(FIXES)
