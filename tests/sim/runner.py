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
from tests.sim.faults import REQUIRED
from tests.sim.fixes import FIXES, applied
from tests.sim.world import SeedResult, World


def replay_command(seed: int) -> str:
    return f"cd /work/main && .venv/bin/python -m tests.sim --seed {seed} -v"


def run_seed(
    seed: int,
    *,
    verbose: bool = False,
    keep_trace: bool = False,
    keep_history: bool = False,
    fixes: tuple[str, ...] = (),
) -> SeedResult:
    """Simulate one seed; a pure function of the seed (the trace hash says so)."""
    if "all" in fixes:
        fixes = tuple(FIXES)
    world = World(seed, verbose=verbose)
    with owned(seed, echo_logs=verbose) as logs, failpoint_crashes(world), applied(fixes):
        world.log_lines = logs.lines
        try:
            loop.run(world.run())
        except loop.SimulationStalled as exc:
            world.checker.fail("I7", f"the simulation stalled: {exc}")
        return world.result(keep_trace, keep_history)


def explain(seed: int) -> list[str] | None:
    """Which proposed fixes a failing seed needs: [] if it passes as it is, None if it still fails
    with every fix applied (an unknown bug), else the fixes without which it fails.

    Caveat: a fix changes the interleaving from its first effect on, so "passes with the fixes"
    is strong evidence, not proof, that the failure is one of the known bugs.
    """
    if run_seed(seed).ok:
        return []
    everything = tuple(FIXES)
    if not run_seed(seed, fixes=everything).ok:
        return None
    return [name for name in everything if not run_seed(seed, fixes=tuple(f for f in everything if f != name)).ok]


def _chunk(seeds: Sequence[int], fixes: tuple[str, ...] = ()) -> list[SeedResult]:
    return [run_seed(s, fixes=fixes) for s in seeds]


def _unexplained(seeds: Sequence[int]) -> list[int]:
    """Of these failing seeds, those that still fail with every proposed fix applied."""
    return [s for s in seeds if not run_seed(s, fixes=tuple(FIXES)).ok]


@dataclass
class Batch:
    """What a range of seeds showed."""

    results: list[SeedResult] = field(default_factory=list)
    seconds: float = 0.0
    unexplained: list[int] | None = None  # failing seeds no known bug accounts for (when asked)

    @property
    def failed(self) -> list[SeedResult]:
        return [r for r in self.results if not r.ok]

    @property
    def coverage(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.results:
            total.update(r.coverage)
        return total

    def missing(self) -> list[str]:
        cov = self.coverage
        return [name for name in REQUIRED if cov[name] == 0]

    def summary(self) -> str:
        n = len(self.results)
        rate = n / self.seconds if self.seconds else 0.0
        lines = [f"{n} seeds in {self.seconds:.1f}s ({rate:.1f} seeds/s), {len(self.failed)} failed"]
        anomalies = sum(len(r.anomalies) for r in self.results)
        if anomalies:
            lines.append(f"{anomalies} anomalies (unexpected errors, not invariant violations)")
        missing = self.missing()
        lines.append("vacuous: never hit " + ", ".join(missing) if missing else "every fault and recovery branch hit")
        if self.unexplained is not None:
            known = len(self.failed) - len(self.unexplained)
            lines.append(
                f"{known} failing seed(s) pass with the proposed fixes of known bugs (tests/sim/fixes.py); "
                f"{len(self.unexplained)} do not: {self.unexplained[:20]}"
            )
        for r in self.failed[:20]:
            lines.append(f"seed {r.seed}: {r.violations[0]}")
            lines.append(f"  replay: {replay_command(r.seed)}")
        return "\n".join(lines)


def run_batch(
    seeds: Iterable[int], jobs: int | None = None, *, fixes: tuple[str, ...] = (), explain_failures: bool = False
) -> Batch:
    """Run seeds over `jobs` worker processes (default: every core); with `explain_failures`,
    re-run the failing ones with every proposed fix to tell known bugs from unknown ones."""
    seeds = list(seeds)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(seeds)))
    started = time.perf_counter()
    if jobs == 1:
        results = _chunk(seeds, fixes)
        unexplained = _unexplained([r.seed for r in results if not r.ok]) if explain_failures else None
    else:
        chunks = [seeds[i : i + 25] for i in range(0, len(seeds), 25)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            results = [r for chunk in pool.map(_chunk, chunks, [fixes] * len(chunks)) for r in chunk]
            unexplained = None
            if explain_failures:
                failing = [r.seed for r in results if not r.ok]
                parts = [failing[i::jobs] for i in range(jobs)]
                unexplained = sorted(s for part in pool.map(_unexplained, parts) for s in part)
    return Batch(results, time.perf_counter() - started, unexplained)
