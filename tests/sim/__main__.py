"""Command line: replay one seed, or run a range.

    .venv/bin/python -m tests.sim --seed 1234 -v        # replay one seed with its full trace
    .venv/bin/python -m tests.sim --seeds 1-1000         # a range over every core; coverage verdict
    .venv/bin/python -m tests.sim --mutants              # every mutant over the CI seeds: who caught it
    .venv/bin/python -m tests.sim --mutants --only lease-unfenced --seeds 1-200

Exit status 1 when a seed fails (for a range: a seed that no open known bug of
tests/sim/regressions.py explains, unless --strict; or when the run is vacuous: a fault kind or
branch never happened); with --mutants, when a mutant survived.
"""

from __future__ import annotations

import argparse
import sys

from tests.sim.faults import format_kinds
from tests.sim.regressions import explain
from tests.sim.runner import replay_command, run_batch, run_seed


def _range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run one seed")
    which.add_argument("--seeds", type=_range, help="run a range of seeds, e.g. 1-1000 (with --mutants: their budget)")
    parser.add_argument("--mutants", action="store_true", help="run every mutant (tests/sim/mutants.py) over the seeds")
    parser.add_argument("--only", action="append", help="--mutants: only this mutant (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step of the trace (--seed)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes for --seeds (default: cores)")
    parser.add_argument("--strict", action="store_true", help="--seeds: fail on seeds of open known bugs too")
    args = parser.parse_args(argv)
    if args.mutants:
        from tests.sim.mutants import MUTANT_SEEDS, run_mutants

        report = run_mutants(args.seeds or MUTANT_SEEDS, args.only, args.jobs, progress=print)
        print(report.table())
        return 1 if report.survivors else 0
    if args.seed is None and args.seeds is None:
        parser.error("one of --seed, --seeds or --mutants is required")

    if args.seed is not None:
        result = run_seed(args.seed, verbose=args.verbose)
        print(
            f"seed {result.seed}: {'ok' if result.ok else 'FAILED'}  trace {result.trace_hash[:16]}  "
            + " ".join(f"{k}={v}" for k, v in result.stats.items())
        )
        print("  fault kinds: " + format_kinds(result.coverage))
        for line in result.violations:
            print(f"  {line}")
        for line in result.anomalies:
            print(f"  anomaly {line}")
        if not result.ok:
            culprits = explain(result.violations)
            print("open known bug(s): " + (", ".join(culprits) if culprits else "none (a new bug?)"))
            print(f"replay: {replay_command(result.seed)}")
        return 0 if result.ok else 1

    batch = run_batch(args.seeds, args.jobs)
    print(batch.summary())
    failed = batch.failed if args.strict else batch.unexplained
    return 0 if not failed and not batch.missing() else 1


if __name__ == "__main__":
    sys.exit(main())
