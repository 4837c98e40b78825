"""TLS on the TCP listener: the store CA from `gatewayd tls-init`, the loopback rule, reloads.

A TLS listener refuses plain HTTP and keeps serving; a client that trusts another CA is refused;
the right CA works and the bearer token is still required. A listener off loopback does not start
in clear text unless the config says tls = "off"; a certificate renewed on disk is served after a
reload. `tls-init` writes the CA and the server certificate with the right modes and names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import secrets
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gatewayd.api.client import GatewayClient
from gatewayd.api.listen import is_loopback, server_tls_context
from gatewayd.cli import main
from gatewayd.cli.tls import CA_DAYS, SERVER_DAYS, StoreTls, init_store_tls, server_certificate_fits
from gatewayd.config import parse
from gatewayd.daemon import Daemon
from gatewayd.errors import ConfigError
from gatewayd.observe.systemd import Notifier
from gatewayd.terminals.simulator.server import running_simulator
from tests.harness import STOCK, Gateway, card, config_text, order

TOKEN = secrets.token_hex(16)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def lan_address() -> str | None:
    """A non-loopback IPv4 address of this host that can be bound, or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback:
            try:
                free_port(word)
            except OSError:
                continue
            return word
    return None


LAN = lan_address()
needs_lan = pytest.mark.skipif(LAN is None, reason="this host has no non-loopback IPv4 address to bind (hostname -I)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> StoreTls:
    """The store CA and a server certificate for loopback (and this host's LAN address)."""
    directory = tmp_path_factory.mktemp("pki")
    hosts = ["127.0.0.1", "localhost", *([LAN] if LAN else [])]
    return init_store_tls(directory, hosts).files


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> StoreTls:
    """Another store's CA, with a certificate for the same names."""
    return init_store_tls(tmp_path_factory.mktemp("other"), ["127.0.0.1", "localhost"]).files


def with_api(text: str, **keys: str) -> str:
    """Put keys into the harness config's [api] section (the harness writes [metrics] right after it)."""
    lines = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    assert text.count("\n[metrics]\n") == 1
    return text.replace("\n[metrics]\n", f"\n{lines}[metrics]\n")


@contextlib.asynccontextmanager
async def api_gateway(dsn: str, tmp: Path, **api: str) -> AsyncIterator[Gateway]:
    """A daemon with these [api] keys (tcp_listen, tls_cert ...), one lane, its own store and stock."""
    store_id = "t" + uuid.uuid4().hex[:10]
    tpns = {"lane-1": f"T{uuid.uuid4().hex[:11].upper()}"}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)",
            [(store_id, sku, n) for sku, n in STOCK.items()],
        )
    finally:
        await conn.close()
    async with running_simulator() as simulator:
        socket_path = tmp / f"{store_id}.sock"
        text = with_api(config_text(store_id, socket_path, tmp, dsn, simulator.url, tpns), **api)
        config_file = tmp / f"{store_id}.toml"
        config_file.write_text(text)
        daemon = Daemon(parse(text, str(config_file)), config_path=str(config_file), notifier=Notifier(""))
        try:
            await daemon.start()
            client = GatewayClient(str(socket_path), timeout_s=60)
            async with client:
                yield Gateway(daemon, client, simulator, store_id, dsn, tpns, dict(STOCK))
        finally:
            await daemon.stop()


def tls_keys(pki: StoreTls, listen: str) -> dict[str, str]:
    return {
        "tcp_listen": listen,
        "tcp_token": TOKEN,
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
    }


@pytest.fixture(scope="module")
async def gw(dsn: str, pki: StoreTls, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    listen = f"127.0.0.1:{free_port()}"
    async with api_gateway(dsn, tmp_path_factory.mktemp("tls"), **tls_keys(pki, listen)) as gateway:
        yield gateway
        await gateway.check_invariants()


def url(gw: Gateway, scheme: str = "https") -> str:
    return f"{scheme}://{gw.daemon.config.api.tcp_listen}"


def client_context(ca: Path, **kw: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    for name, value in kw.items():
        setattr(context, name, value)
    return context


async def handshake(host: str, port: int, context: ssl.SSLContext, server_hostname: str | None = None) -> ssl.SSLObject:
    """Connect with TLS only (no request); the connection's TLS object, closed after reading it."""
    _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_hostname or host)
    try:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        return tls
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def served_fingerprint(tls: ssl.SSLObject) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


# --- the listener ----------------------------------------------------------------------------


async def test_right_ca_and_token_take_a_card_payment(gw: Gateway, pki: StoreTls) -> None:
    async with GatewayClient(base_url=url(gw), token=TOKEN, ca_file=str(pki.ca_cert), timeout_s=60) as tcp:
        health = await tcp.health()
        assert health.status == 200 and health.body["database"] == "up", health.body
        answer = await tcp.checkout(order(card(3100)))
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body
    ref = answer.body["tenders"][0]["reference_id"]
    assert [t["status"] for t in await gw.ledger() if t["reference_id"] == ref] == ["approved"]


async def test_the_name_localhost_is_verified_too(gw: Gateway, pki: StoreTls) -> None:
    port = int(url(gw).rpartition(":")[2])
    async with GatewayClient(
        base_url=f"https://localhost:{port}", token=TOKEN, ca_file=str(pki.ca_cert), timeout_s=30
    ) as tcp:
        assert (await tcp.health()).status == 200


async def test_token_still_required_over_tls(gw: Gateway, pki: StoreTls) -> None:
    for token in (None, secrets.token_hex(16)):
        async with GatewayClient(base_url=url(gw), token=token, ca_file=str(pki.ca_cert), timeout_s=30) as tcp:
            before = await gw.ledger()
            health = await tcp.health()
            charge = await tcp.checkout(order(card(1200)))
        assert health.status == 401 and health.error_code == "unauthorized", health.body
        assert charge.status == 401 and charge.error_code == "unauthorized", charge.body
        assert await gw.ledger() == before


async def test_plain_http_is_refused_and_the_daemon_keeps_serving(gw: Gateway, pki: StoreTls) -> None:
    host, _, port = gw.daemon.config.api.tcp_listen.rpartition(":")  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    assert b"HTTP/1." not in answer and b"database" not in answer, answer
    with pytest.raises(aiohttp.ClientError):
        async with GatewayClient(base_url=url(gw, "http"), token=TOKEN, timeout_s=10) as plain:
            await plain.health()
    async with GatewayClient(base_url=url(gw), token=TOKEN, ca_file=str(pki.ca_cert), timeout_s=30) as tcp:
        assert (await tcp.health()).status == 200
    assert (await gw.client.health()).status == 200


async def test_a_client_trusting_another_ca_is_refused(gw: Gateway, pki: StoreTls, other_ca: StoreTls) -> None:
    before = await gw.ledger()
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with GatewayClient(base_url=url(gw), token=TOKEN, ca_file=str(other_ca.ca_cert), timeout_s=10) as tcp:
            await tcp.checkout(order(card(1300)))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):  # the system's CAs know no store CA
        async with GatewayClient(base_url=url(gw), token=TOKEN, timeout_s=10) as tcp:
            await tcp.health()
    assert await gw.ledger() == before


async def test_tls_versions(gw: Gateway, pki: StoreTls) -> None:
    host, _, port = gw.daemon.config.api.tcp_listen.rpartition(":")  # type: ignore[union-attr]
    modern = await handshake(host, int(port), client_context(pki.ca_cert))
    assert modern.version() == "TLSv1.3"
    old = await handshake(host, int(port), client_context(pki.ca_cert, maximum_version=ssl.TLSVersion.TLSv1_2))
    cipher = old.cipher()
    assert old.version() == "TLSv1.2" and cipher is not None
    assert cipher[0].startswith("ECDHE-") and ("GCM" in cipher[0] or "CHACHA20" in cipher[0]), cipher
    context = server_tls_context(str(pki.server_cert), str(pki.server_key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_NONE


async def test_a_renewed_certificate_is_served_after_reload(dsn: str, tmp_path: Path) -> None:
    pki = init_store_tls(tmp_path / "pki", ["127.0.0.1"]).files
    first = fingerprint(pki.server_cert)
    port = free_port()
    async with api_gateway(dsn, tmp_path, **tls_keys(pki, f"127.0.0.1:{port}")) as gw:
        context = client_context(pki.ca_cert)
        assert served_fingerprint(await handshake("127.0.0.1", port, context)) == first
        # the CA is kept: a client that trusts it needs nothing new
        init_store_tls(pki.directory, ["127.0.0.1", "localhost"], force=True)
        renewed = fingerprint(pki.server_cert)
        assert renewed != first
        assert served_fingerprint(await handshake("127.0.0.1", port, context)) == first  # until the reload
        assert await gw.daemon.reload()
        assert served_fingerprint(await handshake("127.0.0.1", port, context)) == renewed
        assert served_fingerprint(await handshake("127.0.0.1", port, context, "localhost")) == renewed
        # a broken key on disk: the reload is refused and the renewed certificate goes on serving
        pki.server_key.write_text("not a key\n")
        assert not await gw.daemon.reload()
        assert served_fingerprint(await handshake("127.0.0.1", port, context)) == renewed
        async with GatewayClient(
            base_url=f"https://127.0.0.1:{port}", token=TOKEN, ca_file=str(pki.ca_cert), timeout_s=30
        ) as tcp:
            assert (await tcp.health()).status == 200


# --- off loopback -----------------------------------------------------------------------------


@needs_lan
async def test_tls_on_a_lan_address(dsn: str, pki: StoreTls, tmp_path: Path) -> None:
    port = free_port(LAN or "")
    async with api_gateway(dsn, tmp_path, **tls_keys(pki, f"{LAN}:{port}")) as gw:
        async with GatewayClient(base_url=url(gw), token=TOKEN, ca_file=str(pki.ca_cert), timeout_s=60) as tcp:
            answer = await tcp.checkout(order(card(1400)))
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body


def passed_socket(host: str) -> socket.socket:
    """A listening socket as systemd would pass it (FileDescriptorName=api-tcp)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


@needs_lan
async def test_a_plain_socket_from_systemd_off_loopback_is_refused(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tcp_listen says loopback, but the socket systemd hands over is bound to the LAN: it decides
    sock = passed_socket(LAN or "")
    monkeypatch.setattr("gatewayd.daemon.systemd_sockets", lambda: {"api-tcp": sock})
    with pytest.raises(ConfigError) as info:
        async with api_gateway(dsn, tmp_path, tcp_listen=f"127.0.0.1:{free_port()}", tcp_token=TOKEN):
            pass
    message = info.value.message
    assert f"{LAN}:" in message and "not a loopback address" in message, message
    assert "api.tls_cert" in message and "api.tls_key" in message and 'api.tls = "off"' in message, message
    assert sock.fileno() == -1, "the refused socket is closed"


@needs_lan
async def test_tls_off_said_in_so_many_words_serves_plain_off_loopback(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = passed_socket(LAN or "")
    port = sock.getsockname()[1]
    monkeypatch.setattr("gatewayd.daemon.systemd_sockets", lambda: {"api-tcp": sock})
    async with (
        api_gateway(dsn, tmp_path, tcp_listen=f"{LAN}:{port}", tcp_token=TOKEN, tls="off"),
        GatewayClient(base_url=f"http://{LAN}:{port}", token=TOKEN, timeout_s=30) as tcp,
    ):
        assert (await tcp.health()).status == 200


async def test_a_socket_from_systemd_gets_tls(
    dsn: str, pki: StoreTls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = passed_socket("127.0.0.1")
    port = sock.getsockname()[1]
    monkeypatch.setattr("gatewayd.daemon.systemd_sockets", lambda: {"api-tcp": sock})
    async with api_gateway(dsn, tmp_path, **tls_keys(pki, f"127.0.0.1:{free_port()}")) as gw:
        async with GatewayClient(
            base_url=f"https://127.0.0.1:{port}", token=TOKEN, ca_file=str(pki.ca_cert), timeout_s=60
        ) as tcp:
            answer = await tcp.checkout(order(card(1500)))
        assert answer.status == 200 and answer.body["status"] == "completed", answer.body
        assert gw.daemon.api_tls is not None


# --- the configuration (no socket bound) ------------------------------------------------------

MINIMAL = f'store_id = "s"\n[api]\nsocket = "/tmp/x.sock"\ntcp_token = "{TOKEN}"\n'


def refusal(text: str, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + text, "store.toml", **kw)
    return info.value


@pytest.mark.parametrize("listen", ["0.0.0.0:8470", "192.168.1.20:8470", "[::]:8470", "store-1.local:8470"])
def test_plain_tcp_off_loopback_is_refused_with_a_sentence(listen: str) -> None:
    error = refusal(f'tcp_listen = "{listen}"\n', resolve_secrets=False)
    assert error.fields["key"] == "api.tcp_listen"
    assert error.message.startswith(f"store.toml: api.tcp_listen: the TCP listener on {listen} is not a loopback")
    for named in ("api.tls_cert", "api.tls_key", 'api.tls = "off"', "gatewayd tls-init", "clear text"):
        assert named in error.message, error.message


@pytest.mark.parametrize("listen", ["0.0.0.0:8470", "192.168.1.20:8470", "[::]:8470"])
def test_tls_off_allows_plain_tcp_off_loopback(listen: str) -> None:
    config = parse(MINIMAL + f'tcp_listen = "{listen}"\ntls = "off"\n', "store.toml")
    assert config.api.tcp_listen == listen and not config.api.tls_enabled


@pytest.mark.parametrize("listen", ["127.0.0.1:8470", "127.0.0.53:8470", "[::1]:8470", "localhost:8470"])
def test_loopback_may_run_plain(listen: str) -> None:
    config = parse(MINIMAL + f'tcp_listen = "{listen}"\n', "store.toml")
    assert not config.api.tls_enabled


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.20", "fd00::2", "store.local", "localhost.com"]))


def test_cert_and_key_turn_tls_on_and_are_read(pki: StoreTls) -> None:
    config = parse(
        MINIMAL + f'tcp_listen = "0.0.0.0:8470"\ntls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n',
        "store.toml",
    )
    assert config.api.tls_enabled and config.api.tls_cert == str(pki.server_cert)


def test_tls_key_mismatch(pki: StoreTls, other_ca: StoreTls) -> None:
    text = f'tcp_listen = "0.0.0.0:8470"\ntls_cert = "{pki.server_cert}"\ntls_key = "{other_ca.server_key}"\n'
    error = refusal(text)
    assert error.fields["key"] == "api.tls_key" and "is not the private key of the certificate" in error.message
    assert parse(MINIMAL + text, "store.toml", resolve_secrets=False).api.tls_enabled  # files not read


def test_tls_files_unreadable_or_not_pem(pki: StoreTls, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    error = refusal(f'tcp_listen = "0.0.0.0:1"\ntls_cert = "{missing}"\ntls_key = "{pki.server_key}"\n')
    assert error.fields["key"] == "api.tls_cert" and f"cannot read {missing}" in error.message
    error = refusal(f'tcp_listen = "0.0.0.0:1"\ntls_cert = "{pki.server_key}"\ntls_key = "{pki.server_key}"\n')
    assert error.fields["key"] == "api.tls_cert" and "PEM certificate" in error.message
    error = refusal(f'tcp_listen = "0.0.0.0:1"\ntls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_cert}"\n')
    assert error.fields["key"] == "api.tls_key" and "not a PEM private key" in error.message


def test_tls_keys_that_do_not_fit_together(pki: StoreTls) -> None:
    error = refusal('tcp_listen = "0.0.0.0:1"\ntls = "on"\n', resolve_secrets=False)
    assert error.fields["key"] == "api.tls" and "api.tls_cert" in error.message and "api.tls_key" in error.message
    error = refusal(f'tcp_listen = "0.0.0.0:1"\ntls_cert = "{pki.server_cert}"\n', resolve_secrets=False)
    assert error.fields["key"] == "api.tls_key" and "required with api.tls_cert" in error.message
    error = refusal(
        f'tcp_listen = "0.0.0.0:1"\ntls_cert = "{pki.server_cert}"\ntls_cert_credential = "c"\ntls_key = "k"\n',
        resolve_secrets=False,
    )
    assert error.fields["key"] == "api.tls_cert" and "give only one" in error.message
    error = refusal(f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n')
    assert error.fields["key"] == "api.tls_cert" and "only used with api.tcp_listen" in error.message


def test_tls_from_systemd_credentials(pki: StoreTls, monkeypatch: pytest.MonkeyPatch) -> None:
    text = 'tcp_listen = "0.0.0.0:8470"\ntls_cert_credential = "api-cert"\ntls_key_credential = "api-key"\n'
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    error = refusal(text)
    assert error.fields["key"] == "api.tls_cert_credential" and "CREDENTIALS_DIRECTORY" in error.message
    assert parse(MINIMAL + text, "store.toml", resolve_secrets=False).api.tls_enabled
    credentials = pki.directory.parent / f"credentials-{uuid.uuid4().hex[:6]}"
    credentials.mkdir()
    (credentials / "api-cert").write_bytes(pki.server_cert.read_bytes())
    (credentials / "api-key").write_bytes(pki.server_key.read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    api = parse(MINIMAL + text, "store.toml").api
    assert api.tls_enabled and api.tls_cert == str(credentials / "api-cert")
    assert api.tls_key == str(credentials / "api-key") and api.tls_cert_credential is None
    (credentials / "api-key").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    assert refusal(text).fields["key"] == "api.tls_key_credential"


# --- tls-init ---------------------------------------------------------------------------------


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_tls_init_files_modes_and_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "tls"
    assert (
        main(["tls-init", "--dir", str(directory), "--host", "192.168.1.20", "Store-1.Local.", "--host", "fd00::2"])
        == 0
    )
    out = capsys.readouterr().out
    files = StoreTls(directory)
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {"ca.pem": 0o644, "ca.key": 0o600, "server.pem": 0o644, "server.key": 0o600}
    ca, server = certificate(files.ca_cert), certificate(files.server_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.168.1.20"),
        ipaddress.ip_address("fd00::2"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["store-1.local"]
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=CA_DAYS)
    # Apple's limit for TLS server certificates, counted inclusively as RFC 5280 does
    assert server.not_valid_after_utc - server.not_valid_before_utc == timedelta(days=SERVER_DAYS, seconds=-1)
    for line in (f'tls_cert = "{files.server_cert}"', f'tls_key = "{files.server_key}"', 'tcp_listen = "'):
        assert line in out, out
    assert "Certificate Trust Settings" in out and "network_security_config" in out and "--force" in out
    assert server_certificate_fits(files, ["192.168.1.20", "store-1.local"])
    assert not server_certificate_fits(files, ["192.168.1.21"])
    # the files serve: a TLS server context loads them
    server_tls_context(str(files.server_cert), str(files.server_key))


def test_tls_init_refuses_to_overwrite_and_renews_from_the_same_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "tls"
    files = init_store_tls(directory, ["10.0.0.5"]).files
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert main(["tls-init", "--dir", str(directory), "--host", "10.0.0.5"]) == 2
    err = capsys.readouterr().err
    assert "server.pem" in err and "server.key" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert main(["tls-init", "--dir", str(directory), "--host", "10.0.0.5", "--new-ca"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["tls-init", "--dir", str(directory), "--host", "10.0.0.5", "10.0.0.6", "--force"]) == 0
    assert "reused the store CA" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert after["server.pem"] != before["server.pem"] and after["server.key"] != before["server.key"]
    certificate(files.server_cert).verify_directly_issued_by(certificate(files.ca_cert))
    assert (files.server_key.stat().st_mode & 0o777) == 0o600
    assert main(["tls-init", "--dir", str(directory), "--host", "10.0.0.5", "--new-ca", "--force"]) == 0
    assert "made a new store CA" in capsys.readouterr().out
    assert files.ca_cert.read_bytes() != before["ca.pem"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "bad_name", "-x.local", "héllo.local"])
def test_tls_init_refuses_hosts_a_certificate_cannot_name(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tls-init", "--dir", str(tmp_path / "tls"), f"--host={host}"]) == 2
    assert host in capsys.readouterr().err
    assert not (tmp_path / "tls").exists()


def test_tls_init_as_a_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "tls-init", "--dir", str(tmp_path), "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]
