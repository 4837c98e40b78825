"""The `gatewayd` command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from gatewayd import __version__

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, each registered by its own module."""
    from gatewayd.cli import admin, openapi, operator, serve, status, tls

    parser = argparse.ArgumentParser(prog="gatewayd", description="All-or-nothing card payments for stores.")
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (admin, serve, status, operator, tls, openapi):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and `python -m gatewayd`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:  # the simulator parses its own options
        from gatewayd.terminals.simulator.server import main as simulate

        return simulate(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
