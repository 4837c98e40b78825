"""`gatewayd tls-init`: a store CA and the store server's certificate for the TCP listener's TLS.

The CA (ca.pem, ca.key) is made once and trusted once on every tablet; the server certificate
(server.pem, server.key) names every address and name the tablets use, and is renewed from the
same CA (`--force` replaces it, the CA is reused), so the tablets never need to trust anew.
`gatewayd demo --tcp` runs the same code into its state directory.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_DAYS = 3650
# Apple's TLS policy (iOS 13 / macOS 10.15 on) refuses server certificates valid for more than
# 825 days, whoever issued them; the 398-day limit applies only to CAs that Apple ships.
SERVER_DAYS = 825
# Clocks on tablets run a little behind: a certificate is valid from an hour before it is made.
BACKDATE = timedelta(hours=1)
# The demo makes a new server certificate when its own has less than this left.
RENEW_BEFORE = timedelta(days=30)

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class TlsInitError(Exception):
    """tls-init refuses: the message says why and what to do."""


@dataclass(frozen=True)
class StoreTls:
    """The four files of a store's TLS, in one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


@dataclass(frozen=True)
class Issued:
    """What `init_store_tls` did."""

    files: StoreTls
    hosts: tuple[str, ...]
    new_ca: bool
    ca_not_after: datetime
    server_not_after: datetime


def parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """An IP address (an IP SAN) or a DNS name (a DNS SAN, lower case); TlsInitError otherwise."""
    text = host.strip().strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if address.is_unspecified:
            raise TlsInitError(
                f"--host {host}: a certificate cannot name the unspecified address; give the address or"
                " name the tablets connect to (e.g. 192.168.1.20 or store-1.local)"
            )
        return address
    name = text.lower().rstrip(".")
    if not name.isascii():
        raise TlsInitError(f"--host {host}: give an international name in its xn-- (punycode) form")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]  # a wildcard covers one label
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise TlsInitError(f"--host {host}: not an IP address or a DNS name")
    return name


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in hosts:
        parsed = parse_host(host)
        name: x509.GeneralName = x509.DNSName(parsed) if isinstance(parsed, str) else x509.IPAddress(parsed)
        if name not in names:
            names.append(name)
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    # ECDSA P-256: accepted by iOS, Android, browsers and curl alike, and small.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(now: datetime, label: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gatewayd"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"gatewayd store CA {label} {now:%Y-%m-%d}"[:64]),
        ]
    )
    start = now - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server(
    now: datetime,
    hosts: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    start = now - BACKDATE
    # 825 days from notBefore to notAfter, both ends included (RFC 5280), so one second less.
    end = min(start + timedelta(days=SERVER_DAYS) - timedelta(seconds=1), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gatewayd"),
                    x509.NameAttribute(NameOID.COMMON_NAME, str(parse_host(hosts[0]))[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_ca(files: StoreTls, now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The existing CA, checked: its key matches, it is a CA, it has not expired."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except OSError as exc:
        raise TlsInitError(f"cannot read the store CA: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise TlsInitError(f"{files.ca_cert} / {files.ca_key}: not a usable PEM certificate and key: {exc}") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw)
    ):
        raise TlsInitError(f"{files.ca_key} is not the key of {files.ca_cert} (or not an EC key tls-init made)")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise TlsInitError(f"{files.ca_cert} is not a CA certificate")
    if cert.not_valid_after_utc <= now:
        raise TlsInitError(
            f"the store CA {files.ca_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}: make a new one with"
            " --new-ca --force (every tablet must then trust the new ca.pem)"
        )
    return key, cert


def _listing(paths: Sequence[Path]) -> str:
    return f"{paths[0]} exists" if len(paths) == 1 else f"{', '.join(map(str, paths))} exist"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write beside the target with its mode from the start, then rename over it (atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def init_store_tls(
    directory: Path,
    hosts: Sequence[str],
    *,
    force: bool = False,
    new_ca: bool = False,
    now: datetime | None = None,
) -> Issued:
    """Make (or reuse) the store CA and issue a server certificate for `hosts` into `directory`.

    An existing CA is reused unless `new_ca`; existing files are replaced only with `force`.
    """
    if not hosts:
        raise TlsInitError("give at least one --host: the address or name the tablets connect to")
    now = now or datetime.now(UTC)
    _sans(hosts)  # every host checked before anything is written
    files = StoreTls(directory)
    ca_files = [p for p in (files.ca_cert, files.ca_key) if p.exists()]
    server_files = [p for p in (files.server_cert, files.server_key) if p.exists()]
    make_ca = new_ca or not ca_files
    if new_ca and ca_files and not force:
        raise TlsInitError(
            f"{_listing(ca_files)}: --new-ca replaces the store CA only with --force"
            " (every tablet must then trust the new ca.pem)"
        )
    if not make_ca and len(ca_files) == 1:
        other = files.ca_key if ca_files[0] == files.ca_cert else files.ca_cert
        raise TlsInitError(
            f"{ca_files[0]} exists without its pair {other}: restore it, or make a new CA with --new-ca --force"
        )
    if server_files and not force:
        raise TlsInitError(
            f"{_listing(server_files)}: not overwritten without --force"
            " (--force issues a new server certificate from the same CA)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    if make_ca:
        ca_key, ca_cert = _make_ca(now, str(parse_host(hosts[0])))
        _write(files.ca_key, _key_pem(ca_key), 0o600)
        _write(files.ca_cert, _cert_pem(ca_cert), 0o644)
    else:
        ca_key, ca_cert = _load_ca(files, now)
    key, cert = _make_server(now, hosts, ca_key, ca_cert)
    _write(files.server_key, _key_pem(key), 0o600)
    _write(files.server_cert, _cert_pem(cert), 0o644)
    return Issued(
        files=files,
        hosts=tuple(hosts),
        new_ca=make_ca,
        ca_not_after=ca_cert.not_valid_after_utc,
        server_not_after=cert.not_valid_after_utc,
    )


def server_certificate_fits(files: StoreTls, hosts: Sequence[str], now: datetime | None = None) -> bool:
    """True when server.pem and server.key exist, were issued by ca.pem, name every host and have
    more than RENEW_BEFORE left (the demo reuses them then)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    now = now or datetime.now(UTC)
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not files.server_key.exists():
            return False
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return all(name in sans for name in _sans(hosts)) and cert.not_valid_after_utc - now > RENEW_BEFORE


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tls-init",
        help="make a store CA and a server certificate for the TCP listener's TLS",
        description="Make a store CA (ca.pem, ca.key) and a server certificate (server.pem, server.key) signed by"
        " it, naming every --host. An existing CA is reused, so a renewal needs nothing new on the tablets.",
    )
    p.add_argument("--dir", required=True, type=Path, help="where the files go (created if missing)")
    p.add_argument(
        "--host",
        required=True,
        action="append",
        metavar="NAME",
        nargs="+",
        help="an IP address or DNS name the tablets connect to (repeat, or give several)",
    )
    p.add_argument("--force", action="store_true", help="replace existing server files (and the CA with --new-ca)")
    p.add_argument("--new-ca", action="store_true", help="make a new CA even if DIR has one (tablets must trust anew)")
    p.add_argument("--port", type=int, default=8470, help="the port in the printed tcp_listen line (default 8470)")
    p.set_defaults(handler=cmd_tls_init)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def instructions(issued: Issued, port: int) -> str:
    """What to put in the config and how a tablet trusts the CA, after tls-init."""
    f = issued.files
    first = str(parse_host(issued.hosts[0]))
    url_host = f"[{first}]" if ":" in first else first
    hosts = ", ".join(str(parse_host(h)) for h in issued.hosts)
    ca = f"made a new store CA {f.ca_cert}" if issued.new_ca else f"reused the store CA {f.ca_cert}"
    lines = [
        f"{ca} (valid until {issued.ca_not_after:%Y-%m-%d}; its key {f.ca_key}, mode 0600)",
        f"issued {f.server_cert} for {hosts} (valid until {issued.server_not_after:%Y-%m-%d};"
        f" its key {f.server_key}, mode 0600)",
        "",
        "Add to [api] in the daemon's config, then restart it (a renewal later needs only a reload):",
        f"  tcp_listen = {_toml_string(f'{url_host}:{port}')}     # or 0.0.0.0:{port}",
        f"  tls_cert = {_toml_string(str(f.server_cert.absolute()))}",
        f"  tls_key = {_toml_string(str(f.server_key.absolute()))}",
        "The daemon's user must be able to read server.key (e.g. `chown gatewayd "
        f"{f.server_key.absolute()}`), or give both as systemd credentials (tls_cert_credential, tls_key_credential).",
        "",
        f"Trust the CA once on every tablet: copy {f.ca_cert.name} (never {f.ca_key.name}) to it.",
        "  iOS/iPadOS: open the file (AirDrop, mail or MDM), install the profile in Settings > General >"
        " VPN & Device Management, then turn on full trust in Settings > General > About > Certificate Trust Settings.",
        "  Android: Settings > Security > Encryption & credentials > Install a certificate > CA certificate; an app"
        ' trusts user-installed CAs only if its network_security_config says <certificates src="user"/>.',
        f"Check from a machine on the store network:  curl --cacert {f.ca_cert.absolute()}"
        f' -H "Authorization: Bearer $TOKEN" https://{url_host}:{port}/v1/health',
        "",
        f"Renew before {issued.server_not_after:%Y-%m-%d}: the same command with --force (the CA is reused, the"
        " tablets need nothing new), then `systemctl reload gatewayd`. ca.key signs certificates every tablet"
        " trusts: keep it root-only, or offline and bring it back to renew.",
    ]
    return "\n".join(lines)


def cmd_tls_init(args: argparse.Namespace) -> int:
    hosts = [h for group in args.host for h in group]
    try:
        issued = init_store_tls(args.dir, hosts, force=args.force, new_ca=args.new_ca)
    except TlsInitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(instructions(issued, args.port))
    return 0
