"""What a database DSN says about the link to PostgreSQL: where it goes, and whether TLS guards it.

gatewayd passes the DSN to asyncpg as it is; asyncpg reads `sslmode`, `sslrootcert` (and the
other libpq TLS parameters) from the DSN's query, or from `PGSSLMODE` / `PGSSLROOTCERT`. These
helpers only read the DSN (and those variables) to decide, at start-up, whether the link may be
used; no function here puts the DSN itself in a message (it may hold a password).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# sslmodes under which asyncpg never sends a byte in the clear (verify-ca and verify-full also
# check the server's certificate; verify-full checks its name too).
ENCRYPTED = ("require", "verify-ca", "verify-full")
VERIFIED = ("verify-ca", "verify-full")


def _query(dsn: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(urlsplit(dsn).query, keep_blank_values=True))
    except ValueError:
        return {}


def hosts(dsn: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The hosts the DSN connects to, as asyncpg reads them (several for a multi-host DSN).

    An empty list means the default: a local unix socket or localhost.
    """
    env = os.environ if env is None else env
    query = _query(dsn)
    if query.get("host"):
        return [h for h in query["host"].split(",") if h]
    try:
        netloc = urlsplit(dsn).netloc
    except ValueError:
        return []
    found: list[str] = []
    for spec in netloc.rpartition("@")[2].split(","):
        if spec.startswith("["):  # [ipv6]:port
            found.append(spec[1 : spec.find("]")] if "]" in spec else spec[1:])
        elif spec:
            found.append(unquote(spec.partition(":")[0]))
    found = [h for h in found if h]
    if not found and env.get("PGHOST"):
        found = [h for h in env["PGHOST"].split(",") if h]
    return found


def is_loopback(host: str) -> bool:
    """A unix socket path, `localhost`, or a loopback address: the bytes never leave this machine.

    Any other name counts as remote, even one that resolves to 127.0.0.1 today: names change.
    """
    if host.startswith("/") or host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sslmode(dsn: str, env: Mapping[str, str] | None = None) -> str | None:
    """The sslmode asyncpg will use: the DSN's, else `PGSSLMODE`; None means asyncpg's default
    (`prefer`: TLS if the server offers it, else the clear, without a word)."""
    env = os.environ if env is None else env
    return _query(dsn).get("sslmode") or env.get("PGSSLMODE") or None


def with_root_cert(dsn: str, path: str) -> str:
    """The DSN with `sslrootcert=path`, and `sslmode=verify-full` unless it names a verifying mode."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    mode = dict(query).get("sslmode")
    kept = [(k, v) for k, v in query if k not in ("sslrootcert", "sslmode")]
    kept += [("sslmode", mode if mode in VERIFIED else "verify-full"), ("sslrootcert", path)]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def transport_problem(
    dsn: str, *, tls: str, ssl_root_cert: str | None, env: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """(key, sentence) when this DSN may not be used as configured; None when it may.

    The rule: nothing leaves the host unencrypted on a network that is not loopback. A DSN whose
    host is remote must ask for TLS (sslmode require, verify-ca or verify-full, or a CA file in
    `[database] ssl_root_cert`), unless `[database] tls = "off"` says the clear is meant.
    """
    mode = sslmode(dsn, env)
    if ssl_root_cert is not None:
        if tls == "off":
            return "database.ssl_root_cert", 'a CA file was given but database.tls = "off": remove one of them'
        if "sslrootcert" in _query(dsn):
            return "database.ssl_root_cert", "the DSN names sslrootcert too: give the CA file in one place"
        if mode is not None and mode not in VERIFIED and "sslmode" in _query(dsn):
            return (
                "database.ssl_root_cert",
                f"the DSN's sslmode={mode} would not check the server's certificate against it:"
                " remove sslmode from the DSN (gatewayd then uses verify-full) or set sslmode=verify-full",
            )
        return None
    if tls == "off":
        return None
    remote = [h for h in hosts(dsn, env) if not is_loopback(h)]
    if not remote or mode in ENCRYPTED:
        return None
    said = f"sslmode={mode}" if mode else "no sslmode: asyncpg falls back to the clear when TLS fails"
    return (
        "database.dsn",
        f"the database host {', '.join(remote)} is not on this machine and the DSN does not require TLS"
        f" ({said}): nothing leaves the host unencrypted. Add sslmode=verify-full to the DSN and name the"
        ' CA that signed the server\'s certificate in database.ssl_root_cert, or set database.tls = "off"'
        " to connect in the clear on purpose",
    )


def pooler_problem(dsn: str, *, statement_cache: bool) -> tuple[str, str] | None:
    """Supabase's pooler on port 6543 is transaction mode: asyncpg's statement cache breaks there."""
    if not statement_cache:
        return None
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError:
        return None
    if port == 6543 and any(h.lower().endswith(".pooler.supabase.com") for h in hosts(dsn, {})):
        return (
            "database.statement_cache",
            "port 6543 of Supabase's pooler runs in transaction mode, where prepared statements land on"
            " other server connections: set database.statement_cache = false",
        )
    return None
