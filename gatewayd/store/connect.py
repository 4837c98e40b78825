"""From configuration to a live database: a configured DSN, or the embedded server under state_dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gatewayd.config import Config
from gatewayd.config import dsn as dsn_rules
from gatewayd.errors import ConfigError
from gatewayd.store.db import Database
from gatewayd.store.embedded import EmbeddedPostgres


def embedded_for(config: Config) -> EmbeddedPostgres | None:
    """The embedded server this config asks for (no DSN given), or None."""
    if config.database.dsn is not None:
        return None
    return EmbeddedPostgres(Path(config.state_dir) / "postgres", durable=config.database.durable)


async def resolve_dsn(config: Config) -> str:
    """The DSN to use, starting the embedded server when the config names none."""
    if config.database.dsn is not None:
        return config.database.dsn.reveal()
    server = embedded_for(config)
    assert server is not None
    return await asyncio.to_thread(server.start)


def database_for(config: Config, dsn: str) -> Database:
    """A Database sized and tuned by the config, on a link the config allows.

    A DSN to a host that is not loopback without TLS is refused (ConfigError) unless
    `[database] tls = "off"`; `[database] ssl_root_cert` makes it verify-full against that CA.
    """
    db = config.database
    problem = dsn_rules.transport_problem(dsn, tls=db.tls, ssl_root_cert=db.ssl_root_cert)
    problem = problem or dsn_rules.pooler_problem(dsn, statement_cache=db.statement_cache)
    if problem is not None:
        key, message = problem
        raise ConfigError(f"{key}: {message}", key=key)
    if db.ssl_root_cert is not None:
        dsn = dsn_rules.with_root_cert(dsn, db.ssl_root_cert)
    return Database(
        dsn,
        statement_cache=db.statement_cache,
        pool_min=db.pool_min,
        pool_max=db.pool_max,
        connect_timeout_s=db.connect_timeout_s,
        command_timeout_s=db.command_timeout_s,
    )
