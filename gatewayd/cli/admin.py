"""`gatewayd version`, `check-config` and `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from gatewayd import __version__
from gatewayd.config import Config, load
from gatewayd.errors import ConfigError, StoreError
from gatewayd.store import migrate as migrations
from gatewayd.store.connect import resolve_dsn


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(handler=cmd_version)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file")
    p.add_argument(
        "--strict",
        action="store_true",
        help="also read every secret (env, file, systemd credential) as the daemon would",
    )
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser("migrate", help="apply the database migrations")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help="config file (its DSN, or its embedded PostgreSQL)")
    group.add_argument("--dsn", help="PostgreSQL DSN")
    p.set_defaults(handler=cmd_migrate)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"gatewayd {__version__}")
    return 0


def summary(config: Config) -> str:
    """A few lines that say what a config will do."""
    db = "embedded PostgreSQL under " + config.state_dir if config.database.dsn is None else "configured DSN"
    lines = [
        f"store {config.store_id}: {len(config.terminals)} terminal(s), card mode {config.checkout.card_mode}",
        f"  database: {db}",
        f"  api: {config.api.socket} (mode {config.api.socket_mode})"
        + (f", tcp {config.api.tcp_listen}" if config.api.tcp_listen else ""),
        f"  metrics: {config.metrics.listen or 'off'}",
    ]
    lines += [f"  terminal {t.id}: {t.display_name} via {t.driver} at {t.base_url}" for t in config.terminals]
    return "\n".join(lines)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load(args.file, resolve_secrets=args.strict)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok" + ("" if args.strict else " (secrets not read; --strict reads them)"))
    print(summary(config))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        migrations.discover()  # before any database: without migration files there is nothing to do
    except StoreError as exc:
        print(f"error: cannot migrate: {exc.message}", file=sys.stderr)
        return 1
    try:
        if args.dsn:
            dsn = args.dsn
        else:
            dsn = asyncio.run(resolve_dsn(load(args.config, resolve_secrets=False)))
        applied = asyncio.run(migrations.apply_dsn(dsn))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (StoreError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: migration failed: {exc}", file=sys.stderr)
        return 1
    if applied:
        for m in applied:
            print(f"applied {m.version:03d}_{m.name}")
    else:
        print("database is up to date")
    return 0
