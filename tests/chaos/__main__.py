"""`python -m tests.chaos --seconds S --seed N [--clients 8] [--lanes 4] [--dialect D] [--json out.json]`.

Exit status: 0 when every invariant held, 1 on any violation, 2 when the run itself could not
be carried out (the stack did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from tests.chaos.report import render
from tests.chaos.run import DIALECT_CHOICES, run


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, required=True, help="length of the fault window (the heal comes after)")
    p.add_argument("--seed", type=int, required=True, help="seeds the fault schedule and the workload")
    p.add_argument("--clients", type=int, default=8, help="POS clients per flow (default 8)")
    p.add_argument("--lanes", type=int, default=4, choices=(2, 3, 4), help="card terminals per flow (default 4)")
    p.add_argument(
        "--heal-timeout", type=float, default=60.0, help="bound on each step of the healed window (default 60 s)"
    )
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--workdir", type=Path, help="keep everything (database, logs) in this folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder even when all is well")
    p.add_argument("--no-oldflow", action="store_true", help="run gatewayd alone")
    p.add_argument(
        "--strict", action="store_true", help="also fail on API contract breaches (500 internal_error answers)"
    )
    p.add_argument(
        "--auto-settle-anytime",
        action="store_true",
        help="let the terminal settle on its own even while gatewayd has a tender in doubt on it (an open bug)",
    )
    p.add_argument(
        "--dialect",
        choices=DIALECT_CHOICES,
        default="rest",
        help="the lanes' SPIn dialect: rest (Cloud), local, or mixed (odd lanes REST, even Local); default rest",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    async def main_task() -> dict[str, Any]:
        # SIGTERM (a CI timeout) cancels the run like Ctrl-C does, so every process is stopped.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
        return await run(
            seed=args.seed,
            seconds=args.seconds,
            clients=args.clients,
            lanes=args.lanes,
            heal_timeout_s=args.heal_timeout,
            workdir=args.workdir,
            keep=args.keep,
            with_oldflow=not args.no_oldflow,
            strict=args.strict,
            auto_settle_anytime=args.auto_settle_anytime,
            dialect=args.dialect,
        )

    try:
        report = asyncio.run(main_task())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("chaos: the run could not be carried out", file=sys.stderr)
        return 2
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
