"""Every seed that ever found a bug, replayed on every run (tests/sim/regressions.py)."""

from __future__ import annotations

import pytest

from tests.sim.regressions import KNOWN_BUGS, KnownBug, explain
from tests.sim.runner import replay_command, run_seed

CASES = [(bug, seed) for bug in KNOWN_BUGS for seed in bug.seeds]


@pytest.mark.parametrize(("bug", "seed"), CASES, ids=[f"{b.id}-{s}" for b, s in CASES])
def test_known_bug_seed(bug: KnownBug, seed: int) -> None:
    """A fixed bug's seed passes on today's gatewayd (or fails only with the symptoms of an open
    bug that its story now runs into). An open bug's seed fails, and only with the symptoms of
    open bugs (an expected failure until gatewayd is fixed)."""
    result = run_seed(seed)
    report = "\n".join(result.violations) + f"\nreplay: {replay_command(seed)}"
    if bug.fixed:
        if result.ok:
            return
        culprits = explain(result.violations)
        assert culprits is not None, f"seed {seed} (once bug {bug.id}) fails: a regression, or a new bug:\n{report}"
        pytest.xfail(f"open bug(s) {', '.join(culprits)} on the way: {result.violations[0]}")
    assert not result.ok, (
        f"open bug {bug.id} no longer shows on seed {seed}: fixed in gatewayd? Then set fixed=True "
        "and drop its symptoms in tests/sim/regressions.py (its seeds stay as regression tests)"
    )
    culprits = explain(result.violations)
    assert culprits is not None, f"seed {seed} fails in a way no open bug explains (a new bug?):\n{report}"
    pytest.xfail(f"open bug(s) {', '.join(culprits)}: {result.violations[0]} (replay: {replay_command(seed)})")


def test_known_bugs_are_well_formed() -> None:
    assert len({bug.id for bug in KNOWN_BUGS}) == len(KNOWN_BUGS)
    for bug in KNOWN_BUGS:
        assert bug.seeds, bug.id
        assert bool(bug.symptoms) != bug.fixed, f"{bug.id}: an open bug names its symptoms, a fixed one none"
