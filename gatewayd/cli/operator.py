"""Operator commands: orphans, cleanup, reconcile, report.

Each asks the running daemon over its socket (found by `status.find_socket`); when it cannot be
reached, `--config` (or `--dsn` with `--store`) goes straight to the database (and, for
reconcile, to the terminals).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import msgspec

from gatewayd.api.client import Answer, GatewayClient
from gatewayd.checkout.reconcile import KINDS
from gatewayd.cli.output import Progress, api_error_text, emit_json, table
from gatewayd.cli.status import SocketChoice, add_socket_args, find_socket, unreachable
from gatewayd.config import Config, load
from gatewayd.errors import ConfigError, GatewayError
from gatewayd.store.connect import database_for, resolve_dsn
from gatewayd.store.db import Database
from gatewayd.store.maintenance import MaintenanceStore

DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")


MINUTES_RULE = "a whole number of minutes, at least 1 (e.g. 15m, 2h, 1d, 120s)"


def minutes(text: str) -> int:
    """'15m', '2h', '1d', '120s' or a bare number of minutes, as minutes. Anything under one
    minute or not a whole number of minutes is refused, never rounded."""
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give {MINUTES_RULE}")
    value, unit = int(match.group(1)), match.group(2) or "m"
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"{text!r} is under one minute: give {MINUTES_RULE}")
    if seconds % 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of minutes: give {MINUTES_RULE}")
    return seconds // 60


def register(sub: Any) -> None:
    p = sub.add_parser("orphans", help="approved charges with no completed order")
    _db_args(p)
    p.set_defaults(handler=cmd_orphans)
    p = sub.add_parser("cleanup", help="cancel stale pending orders and release their stock")
    p.add_argument(
        "--older-than",
        type=minutes,
        default=15,
        metavar="AGE",
        help=f"cancel pending orders older than this: {MINUTES_RULE} (default: 15m)",
    )
    _db_args(p)
    p.set_defaults(handler=cmd_cleanup)
    p = sub.add_parser("reconcile", help="terminal batches against the database")
    p.add_argument("--terminal", help="one terminal id (default: all)")
    _db_args(p)
    p.set_defaults(handler=cmd_reconcile)
    p = sub.add_parser("report", help="the deployment guide's hourly, daily and weekly reports")
    p.add_argument(
        "--period", choices=("hourly", "daily", "weekly", "all"), default="all", help="which reports (default: all)"
    )
    p.add_argument(
        "--targets",
        action="store_true",
        help="the guide's success metrics against its week-one, week-two and month-one targets instead"
        " (exit 3 when a measured target is not met)",
    )
    _db_args(p)
    p.set_defaults(handler=cmd_report)


def _db_args(p: argparse.ArgumentParser) -> None:
    add_socket_args(
        p,
        config_help="config file: its [api] socket is the daemon's; when the daemon cannot be reached, "
        "work on its database (and terminals) directly",
    )
    p.add_argument("--dsn", help="when the daemon cannot be reached, work on this database directly")
    p.add_argument("--store", help="store id, with --dsn")


class DaemonRefused(GatewayError):
    """The daemon answered with an API error: said as a sentence (output.api_error_text)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(api_error_text(answer.status, answer.body))
        self.answer = answer


class Unreachable(Exception):
    """Nobody answered at the chosen socket and there is no --config or --dsn to fall back on."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _via_daemon(
    args: argparse.Namespace,
    choice: SocketChoice,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any | None:
    """The daemon's answer, or None when it cannot be reached and --config/--dsn can stand in."""
    try:
        async with GatewayClient(choice.path, timeout_s=600) as client:
            answer = await client.request(method, path, body, params=params)
    except (aiohttp.ClientError, OSError) as exc:
        if args.dsn or args.config:
            print(
                f"note: {unreachable(choice, exc).splitlines()[0]}; working on the database directly", file=sys.stderr
            )
            return None
        raise Unreachable(exc) from exc
    if not answer.ok:
        raise DaemonRefused(answer)
    return answer.body


async def _direct(args: argparse.Namespace) -> tuple[Database, MaintenanceStore, Config | None]:
    config = load(args.config, resolve_secrets=bool(getattr(args, "need_terminals", False))) if args.config else None
    store_id = args.store or (config.store_id if config else None)
    if store_id is None:
        raise ConfigError("--store is required with --dsn")
    dsn = args.dsn or await resolve_dsn(config)  # type: ignore[arg-type]
    db = database_for(config, dsn) if config else Database(dsn, pool_min=1, pool_max=2)
    await db.open()
    return db, MaintenanceStore(db, store_id), config


def _run(args: argparse.Namespace, work: Callable[[SocketChoice], Coroutine[Any, Any, int]]) -> int:
    """Find the socket, run the command, and say any failure as a sentence."""
    try:
        choice = find_socket(args)
        try:
            return asyncio.run(work(choice))
        except Unreachable as exc:
            hint = (
                "give --config to reconcile the database with the terminals directly"
                if args.command == "reconcile"
                else "give --config or --dsn (with --store) to work on the database directly"
            )
            print(f"error: {unreachable(choice, exc.cause, hint)}", file=sys.stderr)
            return 1
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except OSError as exc:  # working on the database directly: starting the embedded server, say
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_orphans(args: argparse.Namespace) -> int:
    async def work(choice: SocketChoice) -> int:
        body = await _via_daemon(args, choice, "GET", "/v1/orphans")
        if body is None:
            from gatewayd.checkout.operations import Operations

            db, maintenance, _ = await _direct(args)
            try:
                body = msgspec.to_builtins(await Operations(maintenance, {}).orphans())
            finally:
                await db.close()
        if args.json:
            emit_json(body)
        elif not body["orphans"]:
            print("no orphaned payments")
        else:
            rows = [
                [
                    o["reference_id"],
                    o["terminal_id"],
                    o["amount"],
                    o["order_number"],
                    o["order_status"],
                    f"{o['age_s'] / 60:.0f} min",
                ]
                for o in body["orphans"]
            ]
            print(table(["REFERENCE", "TERMINAL", "AMOUNT", "ORDER", "ORDER STATUS", "AGE"], rows))
        return 0 if body["count"] == 0 else 3

    return _run(args, work)


def cmd_cleanup(args: argparse.Namespace) -> int:
    async def work(choice: SocketChoice) -> int:
        body = await _via_daemon(
            args, choice, "POST", "/v1/maintenance/cleanup", {"older_than_minutes": args.older_than}
        )
        if body is None:
            db, maintenance, _ = await _direct(args)
            try:
                body = {"cancelled": await maintenance.cleanup(args.older_than)}
            finally:
                await db.close()
        if args.json:
            emit_json(body)
        else:
            print(f"cancelled {body['cancelled']} stale pending order(s) older than {args.older_than} min")
        return 0

    return _run(args, work)


DISCREPANCIES = KINDS  # every list a reconcile report can carry


def _print_reconcile(body: dict[str, Any]) -> None:
    print(f"terminals: {', '.join(body['terminals']) or '-'}   matched: {body['matched']}")
    for tid, error in body.get("errors", {}).items():
        print(f"  {tid}: could not read the batch: {error}")
    for kind in DISCREPANCIES:
        items = body.get(kind, [])
        if not items:
            continue
        print(f"\n{kind.replace('_', ' ')} ({len(items)}):")
        rows = [
            [
                i["terminal_id"],
                i["reference_id"],
                i.get("amount", ""),
                i.get("terminal_amount", ""),
                i.get("order_status", ""),
                i["suggested_action"],
            ]
            for i in items
        ]
        print(table(["TERMINAL", "REFERENCE", "AMOUNT", "AT TERMINAL", "ORDER", "SUGGESTED ACTION"], rows))
    if all(not body.get(k) for k in DISCREPANCIES):
        print("nothing to do: the batches agree with the database")


async def _reconcile_direct(args: argparse.Namespace) -> dict[str, Any]:
    from gatewayd.checkout.operations import Operations
    from gatewayd.checkout.reconcile import ReconcileReport
    from gatewayd.store.terminals import TerminalStore
    from gatewayd.terminals.drivers import make_driver

    if not args.config:
        raise ConfigError("reconcile without the daemon needs --config (to reach the terminals)")
    args.need_terminals = True
    db, maintenance, config = await _direct(args)
    assert config is not None
    ops = Operations(maintenance, {})
    terminals = [t for t in config.terminals if args.terminal in (None, t.id)]
    if not terminals and args.terminal is not None:
        await db.close()
        raise GatewayError(f"no terminal {args.terminal!r} in {args.config}")
    owners = await TerminalStore(db, config.store_id).live_owners([t.id for t in terminals])
    if owners:
        await db.close()
        tid, owner = sorted(owners.items())[0]
        raise GatewayError(
            f"terminal {tid} is driven by a running gatewayd ({owner}); reconcile through it"
            f" (--socket), never behind its back"
        )
    report = ReconcileReport(terminals=[t.id for t in terminals])
    progress = Progress("reconciling")
    try:
        for done, t in enumerate(terminals):
            progress.update(done, len(terminals))
            driver = make_driver(t)
            try:
                await ops.fold(t.id, await driver.batch(), report)
            except GatewayError as exc:
                report.errors[t.id] = exc.message
            finally:
                await driver.aclose()
            await ops.record_reconciliation(t.id, report)
    finally:
        progress.finish()
        await db.close()
    return msgspec.to_builtins(report)  # type: ignore[no-any-return]


def cmd_reconcile(args: argparse.Namespace) -> int:
    async def work(choice: SocketChoice) -> int:
        request = {"terminal_id": args.terminal} if args.terminal else {}
        body = await _via_daemon(args, choice, "POST", "/v1/reconcile", request)
        if body is None:
            body = await _reconcile_direct(args)
        if args.json:
            emit_json(body)
        else:
            _print_reconcile(body)
        clean = not any(body.get(k) for k in DISCREPANCIES) and not body.get("errors")
        return 0 if clean else 3

    return _run(args, work)


def _print_report(body: dict[str, Any]) -> None:
    for section in body["sections"]:
        print(f"\n== {section['title']} ({section['period']})")
        print(table(section["columns"], section["rows"]) if section["rows"] else "(none)")


_STAGES = {"week_1": "week 1", "week_2": "week 2", "month_1": "month 1"}
_MET = {True: "met", False: "NOT MET", None: "not measured"}


def _print_targets(body: dict[str, Any]) -> None:
    rows = [
        [_STAGES.get(t["stage"], t["stage"]), t["metric"].replace("_", " "), t["target"], _MET[t["met"]], t["measured"]]
        for t in body["targets"]
    ]
    print(table(["STAGE", "METRIC", "TARGET", "", "MEASURED"], rows))
    missed = [t for t in body["targets"] if t["met"] is False]
    print(f"\n{len(missed)} target(s) not met" if missed else "\nevery measured target is met")


async def _targets(args: argparse.Namespace, choice: SocketChoice) -> int:
    body = await _via_daemon(args, choice, "GET", "/v1/report/targets")
    if body is None:
        from gatewayd.checkout.operations import Operations

        db, maintenance, _ = await _direct(args)
        try:
            body = msgspec.to_builtins(await Operations(maintenance, {}).targets())
        finally:
            await db.close()
    if args.json:
        emit_json(body)
    else:
        _print_targets(body)
    return 3 if any(t["met"] is False for t in body["targets"]) else 0


def cmd_report(args: argparse.Namespace) -> int:
    async def work(choice: SocketChoice) -> int:
        if args.targets:
            return await _targets(args, choice)
        period = None if args.period == "all" else args.period
        body = await _via_daemon(args, choice, "GET", "/v1/report", params={"period": period} if period else None)
        if body is None:
            from gatewayd.checkout.operations import Operations

            db, maintenance, _ = await _direct(args)
            try:
                body = {"sections": await Operations(maintenance, {}).report(period)}
            finally:
                await db.close()
        if args.json:
            emit_json(body)
        else:
            _print_report(body)
        return 0

    return _run(args, work)
