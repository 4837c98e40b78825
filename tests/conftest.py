"""Shared fixtures: one real PostgreSQL (embedded) per test session, isolated per test by store_id."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from gatewayd.store import migrate
from gatewayd.store.db import Database
from gatewayd.store.embedded import EmbeddedPostgres


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL server for the whole session (GATEWAYD_TEST_PGDATA reuses one)."""
    data = os.environ.get("GATEWAYD_TEST_PGDATA")
    server = EmbeddedPostgres(Path(data) if data else tmp_path_factory.mktemp("pg") / "data", durable=False)
    server.start()
    yield server
    if not data:
        server.stop("immediate")


@pytest.fixture(scope="session")
async def dsn(pg_server: EmbeddedPostgres) -> str:
    """The migrated test database."""
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    return pg_server.dsn


@pytest.fixture
async def empty_dsn(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A brand-new empty database, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_server.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_server.dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
def store_id() -> str:
    """A store of its own for each test: every row and key is scoped by it."""
    return "test-" + uuid.uuid4().hex[:10]


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Database]:
    database = Database(dsn, pool_min=1, pool_max=5)
    await database.open()
    yield database
    await database.close()
