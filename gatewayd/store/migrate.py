"""The migrations runner: ordered, additive, re-runnable SQL files, applied under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

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


def sql_dir() -> Path:
    """The folder holding the migrations (the repository's sql/)."""
    return Path(__file__).resolve().parents[2] / "sql"


def discover(folder: Path | None = None) -> list[Migration]:
    """Every migration file in order; refuses gaps and duplicate versions."""
    folder = folder or sql_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise PermanentStoreError(f"{path}: migration files are named NNN_name.sql")
        found.append(Migration(int(m.group("version")), m.group("name"), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise PermanentStoreError(f"migrations in {folder} must be numbered 001, 002 ... without gaps")
    return found


async def pending(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """The migrations this database has not applied yet."""
    migrations = migrations if migrations is not None else discover()
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: set[int] = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in migrations if m.version not in applied]


async def apply(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply what is pending, each file in its own transaction; safe when two processes race."""
    migrations = migrations if migrations is not None else discover()
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        done: list[Migration] = []
        for migration in await pending(conn, migrations):
            async with conn.transaction():
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
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


async def apply_dsn(dsn: str, timeout_s: float = 15.0) -> list[Migration]:
    """Connect to `dsn` and apply what is pending (the `migrate` command and the demo)."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        return await apply(conn)
    finally:
        await conn.close()
