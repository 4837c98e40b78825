"""TLS to the database: verify-full against a CA file, and no clear text off the host.

A TLS endpoint for the test database (PgBouncer with a certificate for `localhost` signed by a
CA made here with the openssl CLI): the right CA and the right name connect over TLS, a wrong
CA or a name not in the certificate is refused with a sentence that says so, and a daemon with
`[database] ssl_root_cert` takes a card payment over it. A DSN to a host that is not loopback
without TLS is refused at start-up (and by check-config).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gatewayd.config import parse
from gatewayd.config.dsn import transport_problem, with_root_cert
from gatewayd.daemon import Daemon
from gatewayd.errors import ConfigError, PermanentStoreError
from gatewayd.observe.systemd import Notifier
from gatewayd.store.connect import database_for
from gatewayd.store.embedded import EmbeddedPostgres
from tests.harness import card, running_gateway
from tests.pooler import PgBouncer, pgbouncer_binary, running_pgbouncer

OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> Path:
    """A self-signed CA: `name`.key and `name`.crt."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=gatewayd test {name}",
        cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.crt"


def _server_cert(folder: Path, ca: str, dns_name: str) -> None:
    """server.key and server.crt for `dns_name` (and no address), signed by `ca`."""
    (folder / "server.ext").write_text(
        f"subjectAltName = DNS:{dns_name}\nbasicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={dns_name}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip


@dataclass
class TlsServer:
    bouncer: PgBouncer
    ca: Path  # signed the server's certificate (for the name localhost)
    wrong_ca: Path  # signed nothing the server shows

    def dsn(self, host: str = "localhost", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@{host}:{self.bouncer.port}/gatewayd" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def tls_server(pg_server: EmbeddedPostgres, dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """The test database behind a TLS endpoint: PgBouncer (session mode) with `client_tls_sslmode =
    require` and a certificate for localhost. The embedded PostgreSQL is built without OpenSSL
    ("SSL is not supported by this build"); the TLS a client sees is the same PostgreSQL protocol
    negotiation either way, and a TLS-terminating pooler is what Supabase puts in front too."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (it makes the test CA and certificate)")
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer; ./dev test installs it as root)")
    certs = tmp_path_factory.mktemp("certs")
    ca = _ca(certs, "ca")
    wrong_ca = _ca(certs, "wrong-ca")
    _server_cert(certs, "ca", "localhost")
    tls = {
        "client_tls_sslmode": "require",
        "client_tls_cert_file": str(certs / "server.crt"),
        "client_tls_key_file": str(certs / "server.key"),
    }
    assert pg_server.port is not None
    with running_pgbouncer(
        pg_server.port, tmp_path_factory.mktemp("tls-bouncer"), pool_mode="session", pool_size=10, settings=tls
    ) as bouncer:
        yield TlsServer(bouncer, ca, wrong_ca)


def _config(dsn: str, **database: str) -> str:
    keys = "".join(f'{k} = "{v}"\n' for k, v in database.items())
    return f'store_id = "tls"\n[database]\ndsn = "{dsn}"\n{keys}'


def _tls_version(conn: asyncpg.Connection) -> str | None:
    """The TLS version the connection speaks, None in the clear (asyncpg's transport, as asyncio has it)."""
    ssl_object = conn._transport.get_extra_info("ssl_object")  # asyncpg has no public accessor for it
    return None if ssl_object is None else str(ssl_object.version())


async def _open(text: str) -> str | None:
    """Open the daemon's pool as the config says; the TLS version of its connection."""
    config = parse(text)
    assert config.database.dsn is not None
    db = database_for(config, config.database.dsn.reveal())
    await db.open()
    try:
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            return _tls_version(conn)
    finally:
        await db.close()


async def test_verify_full_with_the_right_ca(tls_server: TlsServer) -> None:
    assert str(await _open(_config(tls_server.dsn(), ssl_root_cert=str(tls_server.ca)))).startswith("TLSv1.")
    # The same through the DSN alone (asyncpg reads sslmode and sslrootcert there).
    conn = await asyncpg.connect(tls_server.dsn(sslmode="verify-full", sslrootcert=str(tls_server.ca)))
    try:
        assert str(_tls_version(conn)).startswith("TLSv1.")
    finally:
        await conn.close()
    # The endpoint takes nothing in the clear: what connects above is TLS.
    with pytest.raises(asyncpg.PostgresError, match="SSL required"):
        await asyncpg.connect(tls_server.dsn(sslmode="disable"))


async def test_a_wrong_ca_is_refused(tls_server: TlsServer) -> None:
    with pytest.raises(PermanentStoreError) as info:
        await _open(_config(tls_server.dsn(), ssl_root_cert=str(tls_server.wrong_ca)))
    message = info.value.message
    assert message.startswith("the database server's certificate was refused (unable to get local issuer")
    assert "[database] ssl_root_cert" in message


async def test_a_name_not_in_the_certificate_is_refused(tls_server: TlsServer) -> None:
    """verify-full checks the name: the certificate is for localhost, not 127.0.0.1."""
    with pytest.raises(PermanentStoreError) as info:
        await _open(_config(tls_server.dsn(host="127.0.0.1"), ssl_root_cert=str(tls_server.ca)))
    message = info.value.message
    assert message.startswith("the database server's certificate was refused (IP address mismatch, certificate")
    assert "is not valid for '127.0.0.1'): " in message and "must be a name in it" in message


async def test_daemon_takes_a_card_payment_over_verified_tls(tls_server: TlsServer, dsn: str, tmp_path: Path) -> None:
    sections = {"database": {"ssl_root_cert": str(tls_server.ca)}}
    async with running_gateway(dsn, tmp_path, daemon_dsn=tls_server.dsn(), sections=sections) as gw:
        answer = await gw.checkout(card(2500))
        assert answer.status == 200, answer.body
        assert gw.daemon.db is not None
        async with gw.daemon.db.connection() as conn:
            assert str(_tls_version(conn)).startswith("TLSv1.")
        await gw.check_invariants()


async def test_daemon_with_a_wrong_ca_does_not_start(tls_server: TlsServer) -> None:
    config = parse(_config(tls_server.dsn(), ssl_root_cert=str(tls_server.wrong_ca)))
    daemon = Daemon(config, notifier=Notifier(""))
    with pytest.raises(PermanentStoreError, match="certificate was refused"):
        await daemon.start()
    await daemon.stop()


# ---------------------------------------------------------------- the rule, without a server


@pytest.fixture
def no_pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGSSLMODE", "PGHOST", "PGSSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://gatewayd@db.example.com:5432/gatewayd",
        "postgresql://gatewayd@db.example.com/gatewayd?sslmode=prefer",
        "postgresql://gatewayd@192.0.2.10:5432/gatewayd?sslmode=disable",
        "postgresql://gatewayd@[2001:db8::1]:5432/gatewayd",
        "postgresql://gatewayd@127.0.0.1:5432,db.example.com:5432/gatewayd?sslmode=allow",
        "postgresql://gatewayd@/gatewayd?host=db.example.com",
    ],
)
def test_no_clear_text_off_the_host(dsn: str, no_pg_env: None) -> None:
    with pytest.raises(ConfigError) as info:
        parse(_config(dsn), "store.toml")
    message = str(info.value)
    assert message.startswith("store.toml: database.dsn: the database host ")
    assert "is not on this machine and the DSN does not require TLS" in message
    assert 'database.tls = "off"' in message and "database.ssl_root_cert" in message
    assert "gatewayd@" not in message  # the DSN itself (it may hold a password) is never shown
    parse(_config(dsn, tls="off"))  # said on purpose: allowed


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://gatewayd@127.0.0.1:5432/gatewayd",
        "postgresql://gatewayd@localhost/gatewayd",
        "postgresql://gatewayd@[::1]:5432/gatewayd",
        "postgresql://gatewayd@/gatewayd?host=/var/run/postgresql",
        "postgresql://gatewayd@db.example.com/gatewayd?sslmode=require",
        "postgresql://gatewayd@db.example.com/gatewayd?sslmode=verify-ca&sslrootcert=/etc/ca.crt",
        "postgresql://gatewayd@db.example.com/gatewayd?sslmode=verify-full&sslrootcert=/etc/ca.crt",
    ],
)
def test_loopback_or_tls_is_accepted(dsn: str, no_pg_env: None) -> None:
    parse(_config(dsn))


def test_pgsslmode_counts(monkeypatch: pytest.MonkeyPatch, no_pg_env: None) -> None:
    dsn = "postgresql://gatewayd@db.example.com/gatewayd"
    assert transport_problem(dsn, tls="required", ssl_root_cert=None) is not None
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert transport_problem(dsn, tls="required", ssl_root_cert=None) is None


def test_ssl_root_cert_makes_it_verify_full(tmp_path: Path, no_pg_env: None) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here\n")
    dsn = "postgresql://gatewayd@db.example.com:5432/gatewayd?application_name=gw"
    parse(_config(dsn, ssl_root_cert=str(ca)))
    assert with_root_cert(dsn, str(ca)) == (
        "postgresql://gatewayd@db.example.com:5432/gatewayd?application_name=gw"
        f"&sslmode=verify-full&sslrootcert={str(ca).replace('/', '%2F')}"
    )
    assert "sslmode=verify-ca" in with_root_cert(dsn + "&sslmode=verify-ca", str(ca))
    missing = _config(dsn, ssl_root_cert=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match=r"database\.ssl_root_cert: cannot read .*nope\.crt"):
        parse(missing)
    parse(missing, resolve_secrets=False)  # check-config from an operator's shell does not read it
    with pytest.raises(ConfigError, match=r'database\.ssl_root_cert: a CA file was given but database\.tls = "off"'):
        parse(_config(dsn, ssl_root_cert=str(ca), tls="off"))
    with pytest.raises(ConfigError, match=r"sslmode=require would not check the server's certificate"):
        parse(_config(dsn + "&sslmode=require", ssl_root_cert=str(ca)))
    with pytest.raises(ConfigError, match="give the CA file in one place"):
        parse(_config(dsn + "&sslrootcert=/etc/other.crt", ssl_root_cert=str(ca)))


def test_supabase_transaction_pooler_needs_the_cache_off(no_pg_env: None) -> None:
    dsn = "postgresql://gatewayd.abcdefgh@aws-0-eu-central-1.pooler.supabase.com:6543/postgres?sslmode=require"
    with pytest.raises(ConfigError, match=r"database\.statement_cache: port 6543 of Supabase's pooler"):
        parse(_config(dsn))
    parse(_config(dsn) + "statement_cache = false\n")
    parse(_config(dsn.replace(":6543", ":5432")))  # session mode keeps a server connection per client


def test_check_config_refuses_clear_text_off_the_host(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.toml"
    path.write_text(_config("postgresql://gatewayd:hunter2@db.example.com:5432/gatewayd"))
    env = {k: v for k, v in os.environ.items() if k not in ("PGSSLMODE", "PGHOST")}
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2, result
    assert f"{path}: database.dsn: the database host db.example.com is not on this machine" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
