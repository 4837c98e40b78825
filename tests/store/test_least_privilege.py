"""Least privilege on a database set up as Supabase sets one up.

Supabase's roles (anon, authenticated, service_role behind the Data API's `authenticator`) and its
default privileges, which grant them everything the migrating role creates in public, exist
before gatewayd migrates, as on a Supabase project. The migrating role is, like Supabase's
`postgres`, no superuser: it owns the database and may create roles. `gatewayd migrate
--app-role` makes the daemon's role; a real daemon writes orders as that role; then the public
roles read, change and call nothing of gatewayd's, gatewayd_operator runs the guide's functions
and views, and the app role has no DDL. The rule sql/008 states for every later migration (RLS on
every table, a fixed search_path on every function, nothing for the public roles) is checked over
whatever the migrations create, so a later migration cannot regress it silently.
"""

from __future__ import annotations

import base64
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gatewayd.config import parse
from gatewayd.daemon import Daemon
from gatewayd.store import migrate, roles
from gatewayd.store.db import Database
from gatewayd.store.embedded import EmbeddedPostgres
from tests.harness import Gateway, card, cash, running_gateway
from tests.procs import run_cli
from tests.store import rows

PUBLIC_ROLES = ("anon", "authenticated", "service_role")
SUPABASE_ROLES = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
END;
$$;
GRANT anon, authenticated, service_role TO authenticator;
"""
APP_PASSWORD = "correct horse battery staple"


@dataclass
class Supabase:
    """One database set up like a Supabase project's, migrated, with orders written by the app role."""

    base: str  # postgresql://postgres@127.0.0.1:PORT (the superuser)
    name: str
    owner: str
    app: str
    migrate_output: str
    store_id: str
    privileged_metric: float | None

    def dsn(self, user: str = "postgres", database: str | None = None) -> str:
        return self.base.replace("postgres@", f"{user}@", 1) + "/" + (database or self.name)


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def supabase_database(base: str, name: str, owner: str) -> None:
    """A database owned by `owner`, with Supabase's roles, schema grant and default privileges."""
    admin = await _connect(base + "/gatewayd")
    try:
        await admin.execute(SUPABASE_ROLES)
        await admin.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE")
        # Supabase's postgres made gatewayd's group roles when it first migrated (PostgreSQL gives a
        # role's creator ADMIN on it). In this shared test cluster they may already exist, made by
        # the superuser for another database: hand the owner the same ADMIN option.
        for group in (roles.APP_GROUP, roles.OPERATOR_GROUP):
            if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", group):
                await admin.execute(f"GRANT {group} TO {owner} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
        await admin.execute(f"CREATE DATABASE {name} OWNER {owner}")
    finally:
        await admin.close()
    conn = await _connect(base + "/" + name)
    try:
        await conn.execute("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role")
        for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
            await conn.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public"
                f" GRANT ALL ON {kind} TO anon, authenticated, service_role"
            )
    finally:
        await conn.close()


async def drop(base: str, databases: list[str], role_names: list[str]) -> None:
    admin = await _connect(base + "/gatewayd")
    try:
        for name in databases:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for role in role_names:
            try:
                await admin.execute(f"DROP ROLE IF EXISTS {role}")
            except asyncpg.DependentObjectsStillExistError:
                pass  # a unique name: harmless if it stays in a reused test cluster
    finally:
        await admin.close()


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GATEWAYD_APP_PASSWORD"}


async def write_orders(gw: Gateway) -> None:
    """Orders of every kind through the daemon: card, cash, split, declined, with customer and register."""
    extra = {"customer_id": "cust-1", "register_id": "reg-1"}
    assert (await gw.checkout(card(1200), **extra)).status == 200
    assert (await gw.checkout(cash(800, tendered=1000), **extra)).status == 200
    assert (await gw.checkout(card(500), cash(300))).status == 200
    assert (await gw.checkout(card(1051))).status == 402  # the simulator declines ..51


@pytest.fixture(scope="module")
async def supa(pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Supabase]:
    tag = uuid.uuid4().hex[:8]
    base = pg_server.dsn.rsplit("/", 1)[0]
    name, owner, app = f"supa_{tag}", f"gw_owner_{tag}", f"gw_app_{tag}"
    await supabase_database(base, name, owner)
    tmp = tmp_path_factory.mktemp("lp")
    password_file = tmp / "app-password"
    password_file.write_text(APP_PASSWORD + "\n")
    try:
        code, out = await run_cli(
            "migrate",
            "--dsn",
            base.replace("postgres@", f"{owner}@", 1) + "/" + name,
            "--app-role",
            app,
            "--app-password-file",
            str(password_file),
            env=cli_env(),
        )
        assert code == 0, out
        db = Supabase(base, name, owner, app, out, "", None)
        async with running_gateway(db.dsn(app), tmp, terminals=2) as gw:
            await write_orders(gw)
            db.store_id = gw.store_id
            db.privileged_metric = gw.daemon.metrics.registry.get_sample_value("gatewayd_database_role_privileged")
            await gw.check_invariants()
        yield db
    finally:
        await drop(base, [name], [app, owner])


# ---------------------------------------------------------------------------- the rule, for every migration


async def rule_violations(conn: asyncpg.Connection) -> list[str]:
    """Everything in gatewayd's schema that breaks sql/008's rule (the database holds gatewayd alone)."""
    found: list[str] = []
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('orders')"
    )
    not_extension = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = x.oid AND d.deptype = 'e')"
    for r in await conn.fetch(
        f"""SELECT x.relname, x.relkind, x.relrowsecurity,
                   (SELECT array_agg(p.polname || ':' || array_to_string(p.polroles::regrole[], ','))
                      FROM pg_policy p WHERE p.polrelid = x.oid) AS policies
              FROM pg_class x WHERE x.relnamespace = $1::regnamespace AND x.relkind IN ('r', 'p')
               AND {not_extension}""",
        schema,
    ):
        if not r["relrowsecurity"]:
            found.append(f"table {r['relname']}: row-level security is off")
        if r["policies"] != ["gatewayd_app:gatewayd_app"]:
            found.append(f"table {r['relname']}: policies {r['policies']} (only gatewayd_app's expected)")
    for r in await conn.fetch(
        f"""SELECT x.oid::regprocedure::text AS sig, x.prosecdef, x.proconfig
              FROM pg_proc x WHERE x.pronamespace = $1::regnamespace AND {not_extension}""",
        schema,
    ):
        fixed = [c for c in r["proconfig"] or [] if c.startswith("search_path=")]
        if fixed != [f"search_path={schema}, pg_temp"]:
            found.append(f"function {r['sig']}: search_path {fixed or 'not fixed'}")
    # Nothing for PUBLIC (grantee 0) nor, where they exist, for Supabase's public roles.
    for r in await conn.fetch(
        f"""SELECT x.relname AS name, a.grantee FROM pg_class x, aclexplode(x.relacl) a
             WHERE x.relnamespace = $1::regnamespace AND {not_extension}
               AND (a.grantee = 0 OR a.grantee::regrole::text = ANY($2::text[]))
            UNION ALL
            SELECT x.oid::regprocedure::text, a.grantee
              FROM pg_proc x, aclexplode(coalesce(x.proacl, acldefault('f', x.proowner))) a
             WHERE x.pronamespace = $1::regnamespace AND {not_extension}
               AND (a.grantee = 0 OR a.grantee::regrole::text = ANY($2::text[]))""",
        schema,
        list(PUBLIC_ROLES),
    ):
        who = "PUBLIC" if r["grantee"] == 0 else await conn.fetchval("SELECT $1::oid::regrole::text", r["grantee"])
        found.append(f"{r['name']}: granted to {who}")
    return found


async def test_the_rule_holds_on_a_supabase_database(supa: Supabase) -> None:
    conn = await _connect(supa.dsn())
    try:
        assert await rule_violations(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relrowsecurity") >= 12
    finally:
        await conn.close()


@pytest.fixture
async def migrated_dsn(empty_dsn: str) -> str:
    """A fresh database migrated by the superuser, as the other tests' database is."""
    await migrate.apply_dsn(empty_dsn)
    return empty_dsn


async def test_the_rule_holds_on_a_plain_database(migrated_dsn: str) -> None:
    """Migrated by the superuser with no Supabase roles around (the tests', the demo's)."""
    conn = await _connect(migrated_dsn)
    try:
        assert await rule_violations(conn) == []
    finally:
        await conn.close()


async def test_the_rule_catches_a_regression(migrated_dsn: str) -> None:
    """What a careless later migration would do: a table without RLS, a replaced function that
    lost its search_path, a grant to PUBLIC. Each is named."""
    conn = await _connect(migrated_dsn)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("CREATE TABLE gw_careless (id int)")
        await conn.execute(
            "CREATE OR REPLACE FUNCTION gw_lease_held(p_store text, p_order uuid, p_owner text) RETURNS boolean"
            " LANGUAGE sql STABLE AS $$ SELECT false $$"
        )
        await conn.execute("GRANT SELECT ON orders TO PUBLIC")
        found = await rule_violations(conn)
    finally:
        await tx.rollback()
        await conn.close()
    assert "table gw_careless: row-level security is off" in found
    assert "function gw_lease_held(text,uuid,text): search_path not fixed" in found
    assert "orders: granted to PUBLIC" in found


# ---------------------------------------------------------------------------- the public roles


async def _as(conn: asyncpg.Connection, role: str, query: str) -> object:
    """`query` as `role` (as the Data API does: authenticator, then SET ROLE), in its own transaction."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        return await conn.fetch(query)


async def _refused(conn: asyncpg.Connection, role: str, query: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _as(conn, role, query)


async def gatewayd_objects(dsn: str) -> tuple[dict[str, str], list[str], list[str]]:
    """gatewayd's tables (with a column to write), views and sequences."""
    conn = await _connect(dsn)
    try:
        tables = {
            r["relname"]: r["col"]
            for r in await conn.fetch(
                """SELECT c.relname, (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = 1)
                          AS col
                     FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"""
            )
        }
        views = [
            r[0]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'v'"
            )
        ]
        seqs = [
            r[0]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'S'"
            )
        ]
    finally:
        await conn.close()
    return tables, views, seqs


@pytest.mark.parametrize("role", PUBLIC_ROLES)
async def test_public_roles_read_change_and_call_nothing(supa: Supabase, role: str) -> None:
    tables, views, seqs = await gatewayd_objects(supa.dsn())
    assert {"orders", "payment_transactions", "audit_events", "schema_migrations"} <= set(tables)
    assert len(views) == 5 and len(seqs) >= 3
    conn = await _connect(supa.dsn("authenticator"))
    try:
        for table, column in tables.items():
            await _refused(conn, role, f"SELECT * FROM {table}")
            await _refused(conn, role, f"INSERT INTO {table} DEFAULT VALUES")
            await _refused(conn, role, f"UPDATE {table} SET {column} = {column}")
            await _refused(conn, role, f"DELETE FROM {table}")
            await _refused(conn, role, f"TRUNCATE {table}")
        for view in views:
            await _refused(conn, role, f"SELECT * FROM {view}")
        for seq in seqs:
            await _refused(conn, role, f"SELECT nextval('{seq}')")
        await _refused(conn, role, "SELECT * FROM find_orphaned_payments()")
        await _refused(conn, role, "SELECT cleanup_stale_pending_orders(15)")
        await _refused(conn, role, "SELECT gw_prepare_checkout('x', '{}'::jsonb)")
        await _refused(conn, role, "SELECT gw_retire_key('x', gen_random_uuid(), 'h')")
    finally:
        await conn.close()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
async def test_row_level_security_holds_even_if_someone_grants_everything_back(supa: Supabase, role: str) -> None:
    """A "fix the permissions" script (GRANT ALL ON ALL TABLES ... TO anon) undoes the revokes;
    row-level security with no policy for the public roles still shows them no row and refuses
    every write."""
    tables, _, _ = await gatewayd_objects(supa.dsn())
    conn = await _connect(supa.dsn())
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", supa.store_id) == 4
        for table, column in tables.items():
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(f"GRANT ALL ON {table} TO {role}")
                total = await conn.fetchval(f"SELECT count(*) FROM {table}")
                await conn.execute(f"SET LOCAL ROLE {role}")
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, (table, total)
                assert total > 0 or table == "refunds", f"{table}: no rows to hide, the test shows nothing"
                assert await conn.execute(f"UPDATE {table} SET {column} = {column}") == "UPDATE 0"
                assert await conn.execute(f"DELETE FROM {table}") == "DELETE 0"
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                    await conn.execute(f"INSERT INTO {table} DEFAULT VALUES")  # refused before any NOT NULL
            finally:
                await tx.rollback()
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- the operator


async def test_operator_runs_the_guides_functions_and_views_and_nothing_else(supa: Supabase) -> None:
    store = "ops-" + uuid.uuid4().hex[:6]
    admin = await _connect(supa.dsn())
    person = "gw_ops_" + uuid.uuid4().hex[:8]
    try:
        await rows.terminal(admin, store)
        orphan = await rows.tender(admin, store, await rows.order(admin, store, status="payment_failed"))
        stale = await rows.order(admin, store, minutes_old=60)
        await admin.execute(f"CREATE ROLE {person} LOGIN IN ROLE {roles.OPERATOR_GROUP}")
        ops = await _connect(supa.dsn(person))
        try:
            found = await ops.fetch("SELECT reference_id FROM find_orphaned_payments($1)", store)
            assert [r["reference_id"] for r in found] == [orphan]
            assert await ops.fetchval("SELECT cleanup_stale_pending_orders(15, $1)", store) == 1
            assert await ops.fetchval("SELECT cleanup_stale_pending_orders(15)") == 0  # the guide's one-argument call
            rates = await ops.fetch("SELECT * FROM payment_success_last_hour WHERE store_id = $1", supa.store_id)
            assert sum(r["count"] for r in rates) >= 4
            for view in (
                "order_completion_last_hour",
                "stuck_orders",
                "terminal_health_summary",
                "terminal_success_rate_7d",
            ):
                await ops.fetch(f"SELECT * FROM {view}")
            for query in (
                "SELECT * FROM orders",
                "SELECT * FROM payment_transactions",
                "UPDATE orders SET status = status",
                "SELECT gw_fail_checkout('x', gen_random_uuid(), 'c', 'r')",
                "SELECT gw_prepare_checkout('x', '{}'::jsonb)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await ops.fetch(query)
        finally:
            await ops.close()
        assert (
            await admin.fetchval("SELECT status FROM orders WHERE store_id = $1 AND id = $2", store, stale)
            == "cancelled"
        )
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {person}")
        await admin.close()


# ---------------------------------------------------------------------------- the app role


async def test_app_role_made_by_migrate(supa: Supabase) -> None:
    out = supa.migrate_output
    assert "applied 008_least_privilege" in out
    assert f"app role {supa.app}: created" in out and "password set" in out
    assert APP_PASSWORD not in out and "horse" not in out
    conn = await _connect(supa.dsn())
    try:
        r = await conn.fetchrow("SELECT * FROM pg_authid WHERE rolname = $1", supa.app)
        assert r["rolcanlogin"] and r["rolinherit"]
        assert not (r["rolsuper"] or r["rolcreatedb"] or r["rolcreaterole"] or r["rolreplication"] or r["rolbypassrls"])
        secret = r["rolpassword"]
        assert secret.startswith("SCRAM-SHA-256$") and APP_PASSWORD not in secret
        iterations, salt = secret.split("$")[1].split(":")
        assert roles.scram_verifier(APP_PASSWORD, salt=base64.b64decode(salt), iterations=int(iterations)) == secret
        groups = await conn.fetch(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1",
            supa.app,
        )
        assert [g["rolname"] for g in groups] == [roles.APP_GROUP]
        setting = await conn.fetchval(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = $1 AND s.setrole = $2::regrole",
            supa.name,
            supa.app,
        )
        assert setting == ["search_path=public, pg_temp"]
    finally:
        await conn.close()
    assert supa.privileged_metric == 0


async def test_app_role_has_no_ddl_and_no_deletes(supa: Supabase) -> None:
    conn = await _connect(supa.dsn(supa.app))
    try:
        assert not (await roles.identity(conn)).privileged
        for statement in (
            "CREATE TABLE public.mine (id int)",
            "CREATE SCHEMA mine",
            "CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE VIEW public.mine AS SELECT 1",
            "ALTER TABLE orders ADD COLUMN mine text",
            "ALTER TABLE orders DISABLE ROW LEVEL SECURITY",
            "CREATE POLICY mine ON orders TO anon USING (true)",
            "DROP TABLE audit_events",
            "ALTER FUNCTION gw_lease_held(text, uuid, text) RESET search_path",
            "CREATE OR REPLACE VIEW stuck_orders AS SELECT 1",
            "TRUNCATE orders",
            "DELETE FROM orders",
            "DELETE FROM inventory",
            "UPDATE audit_events SET kind = kind",
            "UPDATE schema_migrations SET name = name",
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'x', 'x')",
            "SET ROLE gatewayd_operator",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(statement)
        # what it does need, it has (and reads every row, past row-level security)
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE store_id = $1", supa.store_id) == 4
        assert await conn.fetchval("SELECT count(*) FROM audit_events WHERE store_id = $1", supa.store_id) > 4
    finally:
        await conn.close()


async def test_migrate_again_updates_the_role_and_refuses_privileged_names(supa: Supabase) -> None:
    owner_dsn = supa.dsn(supa.owner)
    code, out = await run_cli("migrate", "--dsn", owner_dsn, "--app-role", supa.app, env=cli_env())
    assert code == 0, out
    assert "database is up to date" in out and f"app role {supa.app}: updated" in out and "password unchanged" in out
    code, out = await run_cli(
        "migrate", "--dsn", owner_dsn, "--app-role", supa.app, env={**cli_env(), "GATEWAYD_APP_PASSWORD": "other-one"}
    )
    assert code == 0 and "password set" in out and "other-one" not in out, out
    for name, why in (
        (supa.owner, "the role migrating now"),
        ("postgres", "is a superuser"),
        ("anon", "not for a daemon"),
    ):
        code, out = await run_cli("migrate", "--dsn", owner_dsn, "--app-role", name, env=cli_env())
        assert code != 0 and why in out, out
    # refused means untouched: nobody demoted, nobody given a login
    conn = await _connect(supa.dsn())
    try:
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'") is True
        assert await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'anon'") is False
    finally:
        await conn.close()


async def test_password_sources(tmp_path: Path, supa: Supabase) -> None:
    owner_dsn = supa.dsn(supa.owner)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    given = tmp_path / "pw"
    given.write_text("x")
    cases = [
        (["--app-role", supa.app, "--app-password-file", str(empty)], {}, "the file is empty"),
        (["--app-role", supa.app, "--app-password-file", str(tmp_path / "none")], {}, "cannot read it"),
        (["--app-role", supa.app, "--app-password-file", str(given)], {"GATEWAYD_APP_PASSWORD": "y"}, "use one"),
        (["--app-password-file", str(given)], {}, "needs --app-role"),
        (["--app-role", supa.app], {"GATEWAYD_APP_PASSWORD": ""}, "set but empty"),
    ]
    for args, env, message in cases:
        code, out = await run_cli("migrate", "--dsn", owner_dsn, *args, env={**cli_env(), **env})
        assert code == 2 and message in out, (args, out)


@pytest.mark.parametrize(
    "password", ["plain", "sëcret", "ｆｕｌｌ", "a\u00a0b", "\u200bzero", "\u00adsoft", "ab\u0627"]
)
async def test_scram_verifier_is_what_postgresql_stores(dsn: str, password: str) -> None:
    """The same secret PostgreSQL makes from the password (SASLprep included), given its salt."""
    conn = await _connect(dsn)
    name = "gw_scram_" + uuid.uuid4().hex[:8]
    try:
        await conn.execute("SET password_encryption = 'scram-sha-256'")
        literal = password.replace("'", "''")
        await conn.execute(f"CREATE ROLE {name} PASSWORD '{literal}'")
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", name)
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {name}")
        await conn.close()
    iterations, salt = stored.split("$")[1].split(":")
    assert roles.scram_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations)) == stored


# ---------------------------------------------------------------------------- the start-up warning


def _privileged(gw: Gateway) -> float | None:
    return gw.daemon.metrics.registry.get_sample_value("gatewayd_database_role_privileged")


async def test_daemon_as_superuser_or_owner_says_so(
    supa: Supabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for user, why in (("postgres", "which is a superuser"), (supa.owner, "which owns gatewayd's tables")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gatewayd"):
            async with running_gateway(supa.dsn(user), tmp_path, terminals=1) as gw:
                assert _privileged(gw) == 1
                assert (await gw.checkout(card(700))).status == 200
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        said = [w for w in warnings if f"database role {user}," in w]
        assert len(said) == 1, warnings
        assert why in said[0] and "gatewayd migrate --dsn OWNER_DSN --app-role NAME" in said[0]


async def test_daemon_as_app_role_says_nothing(
    supa: Supabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gatewayd"):
        async with running_gateway(supa.dsn(supa.app), tmp_path, terminals=1) as gw:
            assert _privileged(gw) == 0
    assert not [r for r in caplog.records if "--app-role" in r.getMessage()]


async def test_own_embedded_database_is_not_warned_about(
    pg_server: EmbeddedPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No [database] dsn: the daemon started (or reused) its embedded server itself, whose only
    role is the superuser. The same server named by a DSN is warned about (above)."""
    config = parse(f'store_id = "s"\nstate_dir = "{tmp_path}"\n', str(tmp_path / "g.toml"))
    daemon = Daemon(config)
    daemon.db = Database(pg_server.dsn, pool_min=1, pool_max=1)
    await daemon.db.open()
    try:
        with caplog.at_level(logging.WARNING, logger="gatewayd"):
            await daemon._check_role()
    finally:
        await daemon.db.close()
    assert daemon.metrics.registry.get_sample_value("gatewayd_database_role_privileged") == 0
    assert not caplog.records


# ---------------------------------------------------------------------------- a schema of its own


async def test_gatewayd_in_a_schema_of_its_own(pg_server: EmbeddedPostgres, tmp_path: Path) -> None:
    """Beside the guide's own `orders` in public (docs/deploy-supabase.md): migrate with
    ?search_path=gatewayd; the app role finds its tables through the search_path --app-role set."""
    tag = uuid.uuid4().hex[:8]
    base = pg_server.dsn.rsplit("/", 1)[0]
    name, owner, app = f"supa_{tag}", f"gw_owner_{tag}", f"gw_app_{tag}"
    await supabase_database(base, name, owner)
    try:
        owner_dsn = base.replace("postgres@", f"{owner}@", 1) + "/" + name
        conn = await _connect(owner_dsn)
        try:
            await conn.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, note text)")  # the guide's table
            await conn.execute("CREATE SCHEMA gatewayd")
        finally:
            await conn.close()
        code, out = await run_cli(
            "migrate", "--dsn", owner_dsn + "?search_path=gatewayd", "--app-role", app, env=cli_env()
        )
        assert code == 0 and "search_path gatewayd, pg_temp" in out, out
        app_dsn = base.replace("postgres@", f"{app}@", 1) + "/" + name
        async with running_gateway(app_dsn, tmp_path, terminals=1) as gw:
            assert (await gw.checkout(card(900))).status == 200
        conn = await _connect(base + "/" + name)
        try:
            await conn.execute("SET search_path = gatewayd")
            assert await rule_violations(conn) == []
            assert await conn.fetchval("SELECT count(*) FROM gatewayd.orders") == 1
            assert await conn.fetchval("SELECT count(*) FROM public.orders") == 0
            assert not await conn.fetchval("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.orders'::regclass")
            assert await conn.fetchval("SELECT has_table_privilege('anon', 'public.orders', 'SELECT')")  # not ours
        finally:
            await conn.close()
    finally:
        await drop(base, [name], [app, owner])
