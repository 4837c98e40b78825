"""Database roles: the daemon's own login role (`gatewayd migrate --app-role`) and who a daemon runs as.

sql/008 gives the group role `gatewayd_app` exactly what the daemon does (row access through a
row-level-security policy, EXECUTE on its functions) and `gatewayd_operator` the guide's
reconciliation functions and views. A login role made here is a member of `gatewayd_app` and
nothing else: no superuser, no CREATEDB/CREATEROLE/REPLICATION/BYPASSRLS, not the tables' owner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from dataclasses import dataclass

import asyncpg

from gatewayd.errors import PermanentStoreError

APP_GROUP = "gatewayd_app"
OPERATOR_GROUP = "gatewayd_operator"
PUBLIC_ROLES = ("anon", "authenticated", "service_role")  # Supabase's roles behind the Data API
# Tables every gatewayd database has: whoever owns them ran the migrations.
_OWNED_TABLES = ["schema_migrations", "orders", "payment_transactions"]
# Attributes an app role must not have, as pg_roles spells them and as ALTER ROLE unsets them.
_FORBIDDEN = {
    "rolcreatedb": "NOCREATEDB",
    "rolcreaterole": "NOCREATEROLE",
    "rolreplication": "NOREPLICATION",
    "rolbypassrls": "NOBYPASSRLS",
}
_ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


@dataclass(frozen=True)
class Identity:
    """Who a connection is, as far as privilege goes."""

    role: str
    superuser: bool
    owns: tuple[str, ...]  # gatewayd tables this role owns (or may act as the owner of)

    @property
    def privileged(self) -> bool:
        return self.superuser or bool(self.owns)

    def describe(self) -> str:
        if self.superuser:
            return "is a superuser"
        return f"owns gatewayd's tables ({', '.join(self.owns)})"


async def identity(conn: asyncpg.Connection) -> Identity:
    """The connection's role: superuser, and which of gatewayd's tables it owns."""
    row = await conn.fetchrow(
        """SELECT r.rolname, r.rolsuper,
                  coalesce((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM unnest($1::text[]) AS t(name)
                              JOIN pg_class c ON c.oid = to_regclass(t.name)
                             WHERE pg_has_role(c.relowner, 'MEMBER')), '{}') AS owns
             FROM pg_roles r WHERE r.rolname = current_user""",
        _OWNED_TABLES,
    )
    assert row is not None  # current_user is always in pg_roles
    return Identity(row["rolname"], row["rolsuper"], tuple(row["owns"]))


@dataclass(frozen=True)
class AppRole:
    """What `ensure_app_role` did."""

    name: str
    created: bool
    password: str  # "set", "unchanged" or "none"
    search_path: str
    warnings: tuple[str, ...]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _saslprep(password: str) -> str:
    """RFC 4013 as PostgreSQL applies it to SCRAM passwords; the password itself where it does not apply."""
    if password.isascii():
        return password
    # Non-ASCII spaces become a space (first: U+200B is in both tables), "mapped to nothing" goes.
    mapped = "".join(" " if stringprep.in_table_c12(c) else "" if stringprep.in_table_b1(c) else c for c in password)
    out = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_a1,
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if not out or any(test(c) for c in out for test in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in out) and (
        any(stringprep.in_table_d2(c) for c in out)
        or not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1]))
    ):
        return password
    return out


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for `password` (what psql's \\password sends):
    the server never sees the password itself, nor does its statement log."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password).encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


async def ensure_app_role(conn: asyncpg.Connection, name: str, password: str | None) -> AppRole:
    """Create or update the daemon's login role `name` with only what it needs (one transaction).

    Refuses a superuser, the tables' owner (or a member of it) and the migrating role itself:
    those are demoted by nobody but a person. `password` None leaves an existing role's password
    as it is (a new role gets none: peer or certificate authentication).
    """
    if not _ROLE_NAME.match(name) or name.startswith("pg_"):
        raise PermanentStoreError(
            f"--app-role {name!r}: a role name is a letter or _ then letters, digits, _ $ or - (63 at most),"
            " and not pg_*"
        )
    if name in (APP_GROUP, OPERATOR_GROUP, *PUBLIC_ROLES, "public"):
        raise PermanentStoreError(f"--app-role {name}: that role is not for a daemon to log in as; choose another name")
    async with conn.transaction():
        return await _ensure(conn, name, password)


async def _ensure(conn: asyncpg.Connection, name: str, password: str | None) -> AppRole:
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('orders')"
    )
    if schema is None or not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_GROUP):
        raise PermanentStoreError("the database has no gatewayd schema or no role gatewayd_app: migrate it first")
    if name == await conn.fetchval("SELECT current_user"):
        raise PermanentStoreError(
            f"--app-role {name}: that is the role migrating now, the tables' owner; the daemon needs a role of its own"
        )
    existing = await conn.fetchrow(
        """SELECT r.*, EXISTS (SELECT 1 FROM unnest($2::text[]) AS t(name)
                                  JOIN pg_class c ON c.oid = to_regclass(t.name)
                                 WHERE pg_has_role(r.oid, c.relowner, 'MEMBER')) AS owns
             FROM pg_roles r WHERE r.rolname = $1""",
        name,
        _OWNED_TABLES,
    )
    role = quote_ident(name)
    if existing is None:
        await conn.execute(f"CREATE ROLE {role} LOGIN INHERIT")
    elif existing["rolsuper"]:
        raise PermanentStoreError(
            f"--app-role {name}: that role is a superuser; gatewayd demotes nobody. Choose another name"
            f" (or run ALTER ROLE {role} NOSUPERUSER yourself)"
        )
    elif existing["owns"]:
        raise PermanentStoreError(
            f"--app-role {name}: that role owns gatewayd's tables (or may act as their owner); choose another name"
        )
    else:
        unset = [clause for attr, clause in _FORBIDDEN.items() if existing[attr]]
        await conn.execute(f"ALTER ROLE {role} LOGIN INHERIT {' '.join(unset)}")
    if password is not None:
        # The verifier is base64, digits, '$' and ':' only: nothing to escape in the literal.
        await conn.execute(f"ALTER ROLE {role} PASSWORD '{scram_verifier(password)}'")
    inherit = " WITH INHERIT TRUE" if conn.get_server_version().major >= 16 else ""
    await conn.execute(f"GRANT {APP_GROUP} TO {role}{inherit}")
    database = quote_ident(await conn.fetchval("SELECT current_database()"))
    await conn.execute(f"ALTER ROLE {role} IN DATABASE {database} SET search_path = {quote_ident(schema)}, pg_temp")
    search_path = await conn.fetchval(
        """SELECT substr(c, length('search_path=') + 1) FROM pg_db_role_setting s, unnest(s.setconfig) AS c
            WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)
              AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND c LIKE 'search\\_path=%'""",
        name,
    )
    return AppRole(
        name=name,
        created=existing is None,
        password="set" if password is not None else ("none" if existing is None else "unchanged"),
        search_path=search_path,
        warnings=tuple(await _excess(conn, name, schema)),
    )


async def _excess(conn: asyncpg.Connection, name: str, schema: str) -> list[str]:
    """What the role may still do beyond the daemon's needs, through PUBLIC or other memberships."""
    row = await conn.fetchrow(
        """SELECT current_database() AS database, has_schema_privilege($1, $2, 'CREATE') AS schema_create,
                  has_database_privilege($1, current_database(), 'CREATE') AS database_create,
                  coalesce((SELECT array_agg(g.rolname::text ORDER BY g.rolname) FROM pg_auth_members m
                              JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                             WHERE u.rolname = $1 AND g.rolname <> $3), '{}') AS other_groups""",
        name,
        schema,
        APP_GROUP,
    )
    assert row is not None
    warnings = []
    database = row["database"]
    if row["schema_create"]:
        warnings.append(
            f"{name} may create objects in schema {schema} (PostgreSQL 14 and older grant CREATE on public to"
            f" everyone): REVOKE CREATE ON SCHEMA {quote_ident(schema)} FROM PUBLIC"
        )
    if row["database_create"]:
        warnings.append(
            f"{name} may create schemas in this database: REVOKE CREATE ON DATABASE {quote_ident(database)} FROM it"
            " (or from PUBLIC)"
        )
    if row["other_groups"]:
        warnings.append(
            f"{name} is also a member of {', '.join(row['other_groups'])} and has their privileges too:"
            f" REVOKE them unless the daemon needs them"
        )
    return warnings
