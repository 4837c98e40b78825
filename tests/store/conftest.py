"""The store tests' own fixtures: a real PgBouncer in transaction mode in front of the session's PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gatewayd.store.embedded import EmbeddedPostgres
from tests.pooler import POOLED_APP_ROLE, PgBouncer, pgbouncer_binary, running_pgbouncer


@pytest.fixture(scope="session")
def pgbouncer(pg_server: EmbeddedPostgres, dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """PgBouncer, pool_mode = transaction, three server connections per database and user (so a
    daemon's pool really shares them), in front of the migrated test database, for postgres and
    the daemon's app role; stopped at the end."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer; ./dev test installs it as root)")
    assert pg_server.port is not None
    folder = tmp_path_factory.mktemp("pgbouncer")
    with running_pgbouncer(pg_server.port, folder, pool_size=3, users=("postgres", POOLED_APP_ROLE)) as bouncer:
        yield bouncer
