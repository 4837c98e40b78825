"""`python -m bench [throughput|latency|scale|recovery|api|all] [--quick]`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import time
from typing import Any

import uvloop

from bench import env

NAMES = ["throughput", "latency", "scale", "recovery", "api"]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", nargs="?", default="all", choices=[*NAMES, "all"])
    parser.add_argument("--quick", action="store_true", help="short variants (a couple of minutes in all)")
    parser.add_argument("--tag", default="", help="suffix for the result files (e.g. before/after)")
    args = parser.parse_args()
    names = NAMES if args.which == "all" else [args.which]
    info = env.machine()
    print(f"machine: {info['nproc']} cores, {info['mem_gib']} GiB, {info['cpu']}; {info['versions']}")
    env.RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        module: Any = importlib.import_module(f"bench.{name}")
        print(f"\n== {name}{' (quick)' if args.quick else ''}", flush=True)
        started = time.monotonic()
        load_before = env.loadavg()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(module.run(args.quick))
        result.update(
            machine=info,
            quick=args.quick,
            wall_s=round(time.monotonic() - started, 1),
            loadavg_before=load_before,
            loadavg_after=env.loadavg(),
            at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        print(render(module.table(result)), flush=True)
        suffix = f"-{args.tag}" if args.tag else ""
        path = env.RESULTS / f"{name}{'-quick' if args.quick else ''}{suffix}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"-> {path}")
    return 0


raise SystemExit(main())
