"""Running seeds: one (in this process, patched for determinism), or a batch over worker
processes, with the batch's coverage and the vacuity verdict."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from tests.sim import loop
from tests.sim.daemon import failpoint_crashes
from tests.sim.determinism import owned
from tests.sim.faults import FAULT_KINDS, REQUIRED, format_kinds
from tests.sim.regressions import explain
from tests.sim.world import SeedResult, World


def replay_command(seed: int) -> str:
    """How to replay one seed, from the repository's root."""
    return f".venv/bin/python -m tests.sim --seed {seed} -v"


def run_seed(
    seed: int,
    *,
    verbose: bool = False,
    keep_trace: bool = False,
    keep_history: bool = False,
) -> SeedResult:
    """Simulate one seed; a pure function of the seed (the trace hash says so)."""
    world = World(seed, verbose=verbose)
    world.server.record_leases = keep_history  # for the differential replay (tests/sim/differential.py)
    with owned(seed, echo_logs=verbose) as logs, failpoint_crashes(world):
        world.log_lines = logs.lines
        try:
            loop.run(world.run())
        except loop.SimulationStalled as exc:
            world.checker.fail("I7", f"the simulation stalled: {exc}")
        return world.result(keep_trace, keep_history)


def _chunk(seeds: Sequence[int]) -> list[SeedResult]:
    return [run_seed(s) for s in seeds]


@dataclass
class Batch:
    """What a range of seeds showed."""

    results: list[SeedResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[SeedResult]:
        return [r for r in self.results if not r.ok]

    @property
    def unexplained(self) -> list[SeedResult]:
        """Failing seeds that no open known bug accounts for (tests/sim/regressions.py): new bugs."""
        return [r for r in self.failed if explain(r.violations) is None]

    @property
    def coverage(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.results:
            total.update(r.coverage)
        return total

    def kinds_missing(self) -> list[str]:
        """Named fault kinds that never happened over the batch."""
        cov = self.coverage
        return [kind for kind in FAULT_KINDS if cov[kind] == 0]

    def missing(self) -> list[str]:
        cov = self.coverage
        return [name for name in REQUIRED if cov[name] == 0]

    def summary(self) -> str:
        n = len(self.results)
        rate = n / self.seconds if self.seconds else 0.0
        failed, unexplained = self.failed, self.unexplained
        lines = [
            f"{n} seeds in {self.seconds:.1f}s ({rate:.1f} seeds/s), {len(failed)} failed"
            + (f" ({len(failed) - len(unexplained)} by open known bugs)" if len(failed) != len(unexplained) else "")
        ]
        anomalies = sum(len(r.anomalies) for r in self.results)
        if anomalies:
            lines.append(f"{anomalies} anomalies (unexpected errors, not invariant violations)")
        lines.append("fault kinds: " + format_kinds(self.coverage))
        missing = self.missing()
        lines.append("vacuous: never hit " + ", ".join(missing) if missing else "every fault and recovery branch hit")
        for r in unexplained[:20]:
            lines.append(f"seed {r.seed}: {r.violations[0]}")
            lines.append(f"  replay: {replay_command(r.seed)}")
        known: dict[str, list[int]] = {}
        for r in failed:
            for bug in explain(r.violations) or ():
                known.setdefault(bug, []).append(r.seed)
        for bug, seeds in sorted(known.items()):
            more = f" (+{len(seeds) - 10})" if len(seeds) > 10 else ""
            lines.append(f"open bug {bug}: seeds {', '.join(map(str, seeds[:10]))}{more}")
        return "\n".join(lines)


def run_batch(seeds: Iterable[int], jobs: int | None = None) -> Batch:
    """Run seeds over `jobs` worker processes (default: every core)."""
    seeds = list(seeds)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(seeds)))
    started = time.perf_counter()
    if jobs == 1:
        results = _chunk(seeds)
    else:
        chunks = [seeds[i : i + 25] for i in range(0, len(seeds), 25)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            results = [r for chunk in pool.map(_chunk, chunks) for r in chunk]
    return Batch(results, time.perf_counter() - started)
