"""`gatewayd run`, `gatewayd demo` and `gatewayd simulate`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gatewayd.config import load
from gatewayd.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", required=True, help="config file")
    p.add_argument("--migrate", action="store_true", help="apply pending migrations at start")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("demo", help="embedded PostgreSQL + SPIn simulator + the daemon, in the foreground")
    p.add_argument("--state-dir", default="./state", help="where the demo keeps its data (default ./state)")
    p.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        help="also serve the API over TLS on HOST:PORT (an address or name the tablets use), with a generated"
        " token and a certificate naming HOST; tcp_url, token and ca_file go into demo.json",
    )
    p.set_defaults(handler=cmd_demo)

    sub.add_parser(
        "simulate",
        help="serve simulated SPIn terminals (--port P [--host H] [--latency-ms N] [--slow-s S]"
        " [--tpns A[:KEY],B] [--auto-settle-s S])",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd import daemon

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return daemon.run(config, config_path=args.config, apply_migrations=args.migrate)


def cmd_demo(args: argparse.Namespace) -> int:
    import uvloop

    from gatewayd.demo import parse_tcp, run_demo
    from gatewayd.observe import logs

    try:
        tcp = None if args.tcp is None else parse_tcp(args.tcp)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.setup("INFO", "plain")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_demo(Path(args.state_dir).absolute(), tcp))
