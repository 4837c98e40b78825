"""`python -m bench [throughput|latency|scale|recovery|api|breakdown|dbcost|all] [--quick] [--tag NAME]`.

Each benchmark prints its own table and writes `bench/results/<name>[-quick][-TAG].json`. `all`
runs them in one go (throughput and latency side by side in the same run, on the same machine
state) and ends with one table: every figure with a goal, its limit, and whether it is met; it is
written to `all[-quick][-TAG].json` with every benchmark's result and the load average before and
after each (the machine is shared: a high load makes every figure worse, so it is shown).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import time
from typing import Any

import uvloop

from bench import env

NAMES = ["throughput", "latency", "scale", "recovery", "api", "breakdown", "dbcost"]
# Figure: (what, measured, limit, met: True / False / None when it has no goal).
Figure = tuple[str, str, str, bool | None]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(results: dict[str, dict[str, Any]]) -> list[Figure]:
    """Every figure that has a goal (and a few beside them), from each benchmark's own `figures`."""
    out: list[Figure] = []
    for name in NAMES:
        result = results.get(name)
        if result is None:
            continue
        module: Any = importlib.import_module(f"bench.{name}")
        figures = getattr(module, "figures", None)
        if figures is not None:
            out += figures(result)
    return out


def summary_table(figures: list[Figure], loads: dict[str, tuple[str, str]]) -> list[list[str]]:
    rows = [["figure", "measured", "limit", "met"]]
    for what, value, limit, met in figures:
        rows.append([what, value, limit, "-" if met is None else "yes" if met else "NO"])
    for name, (before, after) in loads.items():
        rows.append([f"load average during {name} (1/5/15 min)", f"{before} -> {after}", "", ""])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", nargs="?", default="all", choices=[*NAMES, "all"])
    parser.add_argument("--quick", action="store_true", help="short variants (a few minutes in all)")
    parser.add_argument("--tag", default="", help="suffix for the result files (e.g. before/after)")
    args = parser.parse_args()
    names = NAMES if args.which == "all" else [args.which]
    info = env.machine()
    print(f"machine: {info['nproc']} cores, {info['mem_gib']} GiB, {info['cpu']}; {info['versions']}")
    env.RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"{'-quick' if args.quick else ''}{f'-{args.tag}' if args.tag else ''}"
    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, tuple[str, str]] = {}
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
        results[name] = result
        loads[name] = (result["loadavg_before"], result["loadavg_after"])
        print(render(module.table(result)), flush=True)
        path = env.RESULTS / f"{name}{suffix}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"-> {path}")
    if args.which == "all":
        figures = summary(results)
        print("\n== every figure beside its limit", flush=True)
        print(render(summary_table(figures, loads)))
        path = env.RESULTS / f"all{suffix}.json"
        path.write_text(
            json.dumps(
                {
                    "machine": info,
                    "quick": args.quick,
                    "summary": [{"figure": f[0], "measured": f[1], "limit": f[2], "met": f[3]} for f in figures],
                    "loadavg": {k: {"before": b, "after": a} for k, (b, a) in loads.items()},
                    "results": results,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
        print(f"-> {path}")
    return 0


raise SystemExit(main())
