"""`gatewayd status` and `gatewayd terminals`: readable tables from a running daemon."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import aiohttp

from gatewayd.api.client import Answer, GatewayClient
from gatewayd.cli.output import emit_json, table

DEFAULT_SOCKET = "/run/gatewayd/gatewayd.sock"


def add_socket_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", help=f"API socket (default: $GATEWAYD_SOCKET, the config's, or {DEFAULT_SOCKET})")
    p.add_argument("--config", help="read the socket path from this config file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if getattr(args, "config", None):
        from gatewayd.config import load

        return load(args.config, resolve_secrets=False).api.socket
    return os.environ.get("GATEWAYD_SOCKET", DEFAULT_SOCKET)


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="daemon health and terminals, from the running daemon")
    add_socket_args(p)
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("terminals", help="the terminals and their state")
    add_socket_args(p)
    p.set_defaults(handler=cmd_terminals)


async def ask(path_: str, *calls: tuple[str, str, Any]) -> list[Answer]:
    """Send requests to the daemon; raises OSError-like errors when it does not answer."""
    async with GatewayClient(path_, timeout_s=30) as client:
        return [await client.request(method, path, body) for method, path, body in calls]


def run_requests(args: argparse.Namespace, *calls: tuple[str, str, Any]) -> list[Answer] | None:
    path = socket_path(args)
    try:
        return asyncio.run(ask(path, *calls))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: cannot reach gatewayd at {path}: {exc}", file=sys.stderr)
        return None


def terminal_rows(terminals: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            t["id"],
            t["name"],
            t["status"].upper() if t["status"] != "online" else "online",
            t["queue_depth"],
            "yes" if t.get("in_flight") else "",
            (t.get("last_health_check") or "")[:19],
            t.get("last_health_error") or "",
        ]
        for t in terminals
    ]


TERMINAL_HEADERS = ["ID", "NAME", "STATUS", "QUEUE", "BUSY", "LAST CHECK (UTC)", "LAST ERROR"]


def cmd_status(args: argparse.Namespace) -> int:
    answers = run_requests(args, ("GET", "/v1/health", None), ("GET", "/v1/terminals", None))
    if answers is None:
        return 1
    health, terminals = answers
    if args.json:
        emit_json({"health": health.body, "terminals": terminals.body.get("terminals", [])})
        return 0 if health.ok else 1
    h = health.body
    print(
        f"gatewayd {h['version']}: {h['status']}  database {h['database']}  "
        f"terminals {h['terminals']['online']}/{h['terminals']['total']} online  "
        f"checkouts in flight {h.get('checkouts_in_flight', 0)}"
    )
    print()
    print(table(TERMINAL_HEADERS, terminal_rows(terminals.body["terminals"])))
    return 0 if h["status"] == "ok" else 3


def cmd_terminals(args: argparse.Namespace) -> int:
    answers = run_requests(args, ("GET", "/v1/terminals", None))
    if answers is None:
        return 1
    terminals = answers[0].body["terminals"]
    if args.json:
        emit_json(terminals)
    else:
        print(table(TERMINAL_HEADERS, terminal_rows(terminals)))
    return 0
