"""Operator commands: orphans, cleanup, reconcile, report.

Each asks the running daemon over its socket; when it is down, `--config` (or `--dsn` with
`--store`) goes straight to the database (and, for reconcile, to the terminals).
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

from gatewayd.api.client import GatewayClient
from gatewayd.checkout.reconcile import KINDS
from gatewayd.cli.output import Progress, emit_json, table
from gatewayd.cli.status import add_socket_args, socket_path
from gatewayd.config import Config, load
from gatewayd.errors import ConfigError, GatewayError
from gatewayd.store.connect import database_for, resolve_dsn
from gatewayd.store.db import Database
from gatewayd.store.maintenance import MaintenanceStore

DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")


def minutes(text: str) -> int:
    """'15m', '2h', '900s', '1d' or a bare number of minutes, as whole minutes (at least 1)."""
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15m, 2h)")
    value, unit = int(match.group(1)), match.group(2) or "m"
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return max(1, -(-seconds // 60))


def register(sub: Any) -> None:
    p = sub.add_parser("orphans", help="approved charges with no completed order")
    _db_args(p)
    p.set_defaults(handler=cmd_orphans)
    p = sub.add_parser("cleanup", help="cancel stale pending orders and release their stock")
    p.add_argument("--older-than", type=minutes, default=15, help="age, e.g. 15m (default), 2h")
    _db_args(p)
    p.set_defaults(handler=cmd_cleanup)
    p = sub.add_parser("reconcile", help="terminal batches against the database")
    p.add_argument("--terminal", help="one terminal id (default: all)")
    _db_args(p)
    p.set_defaults(handler=cmd_reconcile)
    p = sub.add_parser("report", help="the deployment guide's hourly, daily and weekly reports")
    p.add_argument("--period", choices=("hourly", "daily", "weekly", "all"), default="all")
    _db_args(p)
    p.set_defaults(handler=cmd_report)


def _db_args(p: argparse.ArgumentParser) -> None:
    add_socket_args(p)
    p.add_argument("--dsn", help="go straight to this database (the daemon may be down)")
    p.add_argument("--store", help="store id, with --dsn")


async def _via_daemon(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any | None:
    """The daemon's answer, or None when it cannot be reached (and a fallback is possible)."""
    try:
        async with GatewayClient(socket_path(args), timeout_s=600) as client:
            answer = await client.request(method, path, body)
    except (aiohttp.ClientError, OSError):
        if args.dsn or args.config:
            return None
        raise
    if not answer.ok:
        raise GatewayError(f"{answer.status}: {answer.body}")
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


def _run(args: argparse.Namespace, work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(work())
    except (aiohttp.ClientError, OSError) as exc:
        print(
            f"error: cannot reach gatewayd at {socket_path(args)} ({exc}); "
            "give --config or --dsn to work on the database directly",
            file=sys.stderr,
        )
        return 1
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def cmd_orphans(args: argparse.Namespace) -> int:
    async def work() -> int:
        body = await _via_daemon(args, "GET", "/v1/orphans")
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
    async def work() -> int:
        body = await _via_daemon(args, "POST", "/v1/maintenance/cleanup", {"older_than_minutes": args.older_than})
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
    from gatewayd.terminals.spin.driver import SpinDriver

    if not args.config:
        raise ConfigError("reconcile without the daemon needs --config (to reach the terminals)")
    args.need_terminals = True
    db, maintenance, config = await _direct(args)
    assert config is not None
    ops = Operations(maintenance, {})
    terminals = [t for t in config.terminals if args.terminal in (None, t.id)]
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
            assert t.authkey is not None
            driver = SpinDriver(t.id, t.base_url, t.tpn, t.authkey.reveal(), t.timeout_s)
            try:
                await ops.fold(t.id, await driver.batch(), report)
            except GatewayError as exc:
                report.errors[t.id] = exc.message
            finally:
                await driver.aclose()
    finally:
        progress.finish()
        await db.close()
    return msgspec.to_builtins(report)  # type: ignore[no-any-return]


def cmd_reconcile(args: argparse.Namespace) -> int:
    async def work() -> int:
        body = await _via_daemon(args, "POST", "/v1/reconcile", {"terminal_id": args.terminal} if args.terminal else {})
        if body is None:
            body = await _reconcile_direct(args)
        if args.json:
            emit_json(body)
        else:
            _print_reconcile(body)
        clean = not any(body.get(k) for k in DISCREPANCIES) and not body.get("errors")
        return 0 if clean else 3

    return _run(args, work)


def cmd_report(args: argparse.Namespace) -> int:
    async def work() -> int:
        if not (args.dsn or args.config):
            raise ConfigError("report reads the database: give --config or --dsn with --store")
        db, maintenance, _ = await _direct(args)
        out: dict[str, Any] = {}
        try:
            periods = ["hourly", "daily", "weekly"] if args.period == "all" else [args.period]
            for period in periods:
                for title, headers, records in await maintenance.report(period):
                    rows = [list(r.values()) for r in records]
                    out[title] = [dict(zip(headers, r, strict=True)) for r in rows]
                    if not args.json:
                        print(f"\n== {title} ({period})")
                        print(table(headers, rows) if rows else "(none)")
        finally:
            await db.close()
        if args.json:
            emit_json(
                {
                    k: [{h: str(v) if v is not None else None for h, v in row.items()} for row in rows]
                    for k, rows in out.items()
                }
            )
        return 0

    return _run(args, work)
