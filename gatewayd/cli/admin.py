"""`gatewayd version`, `check-config` and `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from gatewayd import __version__
from gatewayd.config import Config, load
from gatewayd.errors import ConfigError, StoreError
from gatewayd.store import migrate as migrations
from gatewayd.store import roles
from gatewayd.store.connect import resolve_dsn
from gatewayd.store.roles import AppRole

APP_PASSWORD_ENV = "GATEWAYD_APP_PASSWORD"


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
    p.add_argument(
        "--app-role",
        metavar="NAME",
        help="then create or update the daemon's LOGIN role NAME with only what it needs (member of gatewayd_app);"
        " migrate as the tables' owner, run the daemon as NAME",
    )
    p.add_argument(
        "--app-password-file",
        metavar="FILE",
        help=f"the app role's password, read from FILE (or ${APP_PASSWORD_ENV}); without either, an existing role"
        " keeps its password and a new one gets none (peer or certificate authentication)",
    )
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


def app_password(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The app role's password from --app-password-file or $GATEWAYD_APP_PASSWORD (never both), or None."""
    from_env = environ.get(APP_PASSWORD_ENV)
    if args.app_password_file is None:
        if from_env is not None and not from_env:
            raise ConfigError(f"${APP_PASSWORD_ENV} is set but empty")
        return from_env
    if from_env is not None:
        raise ConfigError(f"--app-password-file and ${APP_PASSWORD_ENV} are both given: use one")
    try:
        password = Path(args.app_password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"--app-password-file {args.app_password_file}: cannot read it: {reason}") from None
    if not password:
        raise ConfigError(f"--app-password-file {args.app_password_file}: the file is empty")
    return password


async def _app_role(dsn: str, name: str, password: str | None) -> AppRole:
    """Create or update the app role, connected as the owner who just migrated."""
    conn = await asyncpg.connect(dsn, timeout=15.0, statement_cache_size=0)
    try:
        return await roles.ensure_app_role(conn, name, password)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        migrations.discover()  # before any database: without migration files there is nothing to do
    except StoreError as exc:
        print(f"error: cannot migrate: {exc.message}", file=sys.stderr)
        return 1
    try:
        if args.app_password_file is not None and args.app_role is None:
            raise ConfigError("--app-password-file needs --app-role")
        password = app_password(args, os.environ) if args.app_role else None
        if args.dsn:
            dsn = args.dsn
        else:
            dsn = asyncio.run(resolve_dsn(load(args.config, resolve_secrets=False)))
        applied = asyncio.run(migrations.apply_dsn(dsn))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (StoreError, OSError, asyncpg.PostgresError) as exc:
        message = exc.message if isinstance(exc, StoreError) else str(exc)
        print(f"error: migration failed: {message}", file=sys.stderr)
        return 1
    if applied:
        for m in applied:
            print(f"applied {m.version:03d}_{m.name}")
    else:
        print("database is up to date")
    if args.app_role is None:
        return 0
    try:
        role = asyncio.run(_app_role(dsn, args.app_role, password))
    except (StoreError, OSError, asyncpg.PostgresError) as exc:
        message = exc.message if isinstance(exc, StoreError) else str(exc)
        print(
            f"error: --app-role {args.app_role}: {message.removeprefix(f'--app-role {args.app_role}: ')}"
            " (the migrations stand)",
            file=sys.stderr,
        )
        return 1
    print(describe_app_role(role))
    for warning in role.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def describe_app_role(role: AppRole) -> str:
    """One line on what `--app-role` did; never the password."""
    password = {
        "set": "password set (sent as a SCRAM verifier)",
        "unchanged": "password unchanged",
        "none": "no password (peer or certificate authentication, or set one with --app-password-file)",
    }[role.password]
    return (
        f"app role {role.name}: {'created' if role.created else 'updated'}: LOGIN, member of {roles.APP_GROUP} only"
        f" (no superuser, no DDL), search_path {role.search_path}; {password}"
    )
