"""The migrations runner: ordered, additive, re-runnable SQL files, applied under a transaction-scoped advisory lock."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from gatewayd.errors import PermanentStoreError

log = logging.getLogger(__name__)

# Any constant will do as long as it is ours alone: "gatewayd" as an int64.
ADVISORY_LOCK_KEY = int.from_bytes(b"gatewayd", "big") & 0x7FFF_FFFF_FFFF_FFFF
_NAME = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


# The repository's top-level sql/ folder, installed as this package (setup.py maps it): package
# data in a wheel, the folder itself in an editable install.
SQL_PACKAGE = "gatewayd.sql"


def sql_dir() -> Traversable:
    """The folder holding the migrations (the repository's sql/, installed as gatewayd.sql)."""
    try:
        return resources.files(SQL_PACKAGE)
    except ModuleNotFoundError as exc:
        raise PermanentStoreError(
            f"the migrations are not installed (no package {SQL_PACKAGE}): install gatewayd from its wheel,"
            " or from a source checkout with `pip install -e .`"
        ) from exc


def discover(folder: Traversable | None = None) -> list[Migration]:
    """Every migration file in order; refuses none at all, gaps and duplicate versions."""
    folder = folder if folder is not None else sql_dir()
    found: list[Migration] = []
    for entry in sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name):
        m = _NAME.match(entry.name)
        if not m:
            raise PermanentStoreError(f"{entry}: migration files are named NNN_name.sql")
        found.append(Migration(int(m.group("version")), m.group("name"), entry.read_text(encoding="utf-8")))
    if not found:
        raise PermanentStoreError(
            f"no migration files (NNN_name.sql) found in {folder}: this gatewayd was installed without its SQL"
        )
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise PermanentStoreError(f"migrations in {folder} must be numbered 001, 002 ... without gaps")
    return found


async def recorded(conn: asyncpg.Connection) -> dict[int, str] | None:
    """The migrations this database records as applied (version: name); None without the ledger."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return None
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations")
    except asyncpg.UndefinedTableError:  # dropped between the two statements
        return None
    return {r["version"]: r["name"] for r in rows}


async def pending(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """The migrations this database has not applied yet."""
    migrations = migrations if migrations is not None else discover()
    applied = await recorded(conn) or {}
    return [m for m in migrations if m.version not in applied]


def unknown(applied: dict[int, str], migrations: list[Migration]) -> list[str]:
    """What the database records that these migrations do not know (a newer gatewayd migrated it)."""
    known = {m.version for m in migrations}
    return [f"{version:03d}_{name}" for version, name in sorted(applied.items()) if version not in known]


async def apply(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply what is pending, each file in its own transaction; safe when two processes race.

    The advisory lock is transaction-scoped (taken again in each file's transaction, which then
    looks again whether the file is still pending), so no session state outlives a transaction
    and migrating works through a transaction-mode pooler as well as on a direct connection.
    """
    migrations = migrations if migrations is not None else discover()
    done: list[Migration] = []
    for migration in await pending(conn, migrations):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
            await conn.execute(_LEDGER)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version):
                continue  # another process applied it while we waited for the lock
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        log.info("applied migration %03d_%s", migration.version, migration.name)
        done.append(migration)
    return done


async def apply_dsn(dsn: str, timeout_s: float = 15.0) -> list[Migration]:
    """Connect to `dsn` and apply what is pending (the `migrate` command and the demo)."""
    migrations = discover()  # before connecting: no migration files is refused whatever the database
    # No named prepared statements: `migrate --dsn` may be given a transaction-mode pooler.
    conn = await asyncpg.connect(dsn, timeout=timeout_s, statement_cache_size=0)
    try:
        return await apply(conn, migrations)
    finally:
        await conn.close()
