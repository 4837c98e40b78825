"""The simulation's reach: every mutant (tests/sim/mutants.py) is caught within the CI seed budget.

Each mutant re-introduces one bug the simulation once found (tests/sim/regressions.py) or one of
the state-machine issue's eight defects; a seed must fail on it. The mutants run in worker
processes (gatewayd's modules in this process are never patched), each stopped at its first
catching seed. GATEWAYD_SIM_MUTANT_SEEDS=1-5000 runs another budget.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.__main__ import _range
from tests.sim.mutants import MUTANT_SEEDS, MUTANTS, NO_MUTANT, check_applies, run_mutants
from tests.sim.regressions import KNOWN_BUGS

SEEDS = os.environ.get("GATEWAYD_SIM_MUTANT_SEEDS", f"{MUTANT_SEEDS.start}-{MUTANT_SEEDS.stop - 1}")


def test_every_mutant_applies_and_every_bug_has_one() -> None:
    assert not check_applies(), "a mutant no longer applies to the code (update tests/sim/mutants.py)"
    bugs = {m.bug for m in MUTANTS}
    for bug in KNOWN_BUGS:
        if bug.fixed:
            assert bug.id in bugs or bug.id in NO_MUTANT, f"fixed bug {bug.id} has no mutant in tests/sim/mutants.py"
    known = {bug.id for bug in KNOWN_BUGS}
    for bug_id in NO_MUTANT:
        assert bug_id in known and bug_id not in bugs, f"NO_MUTANT names {bug_id}: not a known bug, or it has a mutant"
    for n in range(1, 9):
        assert f"state-machine-{n}" in bugs, f"state-machine defect {n} has no mutant"


# One long job (every mutant over its seed budget, ~5 minutes on two idle cores): the suite's
# 300 s per-test limit would cut it on a busy machine.
@pytest.mark.timeout(1500)
def test_every_mutant_is_caught() -> None:
    report = run_mutants(_range(SEEDS))
    print(report.table())
    assert not report.survivors, "mutants survived the CI seeds (the world cannot see these bugs):\n" + report.table()
