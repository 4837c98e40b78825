"""Listening sockets for the API: the unix socket (stale one replaced, live one refused) or systemd's,
and the TCP listener's TLS (the loopback rule, a server context whose certificate a reload replaces)."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gatewayd.errors import ConfigError

SD_LISTEN_FDS_START = 3


def systemd_sockets(environ: dict[str, str] | None = None) -> dict[str, socket.socket]:
    """Sockets passed by systemd (LISTEN_FDS), by FileDescriptorName; empty outside socket activation."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") not in (None, str(os.getpid())):
        return {}
    count = int(env.get("LISTEN_FDS", "0") or 0)
    names = (env.get("LISTEN_FDNAMES") or "").split(":")
    found: dict[str, socket.socket] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        found[name] = sock
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return found


def _live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return False
    finally:
        probe.close()
    return True


def unix_socket(path: str, mode: str = "0660", group: str | None = None) -> socket.socket:
    """Bind the API's unix socket; a stale file from a dead daemon is replaced, a live one refused."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if _live(target):
            raise ConfigError(f"{path}: another gatewayd is already serving this socket", key="api.socket")
        target.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(target))
        os.chmod(target, int(mode, 8))
        if group:
            os.chown(target, -1, grp.getgrnam(group).gr_gid)
        sock.listen(128)
    except (OSError, KeyError) as exc:
        sock.close()
        with contextlib.suppress(OSError):
            target.unlink()
        raise ConfigError(f"{path}: cannot listen: {exc}", key="api.socket") from exc
    sock.setblocking(False)
    return sock


def tcp_socket(listen: str) -> socket.socket:
    """Bind host:port for TCP."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc}", key="listen") from exc
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (IPv4-mapped too) and `localhost`; a name or 0.0.0.0 is the LAN."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def plain_tcp_refusal(where: str) -> str:
    """Why a TCP listener off loopback does not start in clear text, and the keys that fix it."""
    return (
        f"the TCP listener on {where} is not a loopback address, and without TLS the bearer token and card"
        " data would cross the store network in clear text: set api.tls_cert and api.tls_key (PEM files;"
        ' `gatewayd tls-init` makes a store CA and a server certificate), or api.tls = "off" to serve'
        " plain HTTP on purpose"
    )


def check_tcp_transport(sock: socket.socket, *, tls: bool, tls_setting: str | None) -> None:
    """Refuse a plain listener bound off loopback (a socket from systemd may differ from tcp_listen)."""
    if tls or tls_setting == "off" or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host, port = sock.getsockname()[:2]
    if not is_loopback(host):
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError(plain_tcp_refusal(where), key="api.tcp_listen")


class TlsFileError(ValueError):
    """A certificate or key file that cannot serve: `key` is "tls_cert" or "tls_key"."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class CertificateInfo:
    """What the logs say about the listener's certificate."""

    subject: str
    names: tuple[str, ...]
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER, hex

    def describe(self) -> str:
        return (
            f"certificate {self.subject} for {', '.join(self.names) or '(no SubjectAltName)'},"
            f" valid until {self.not_after:%Y-%m-%d %H:%M} UTC, sha256 {self.fingerprint[:16]}…"
        )


def _no_password() -> bytes:
    raise TlsFileError("tls_key", "the private key is encrypted: give it unencrypted (readable by the daemon only)")


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(key, f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # a NUL in the path
        raise TlsFileError(key, f"cannot read {path}: {exc}") from None


def read_certificate_pair(cert_path: str, key_path: str) -> CertificateInfo:
    """Check that `cert_path` holds a PEM certificate and `key_path` its unencrypted private key."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_pem, key_pem = _read("tls_cert", cert_path), _read("tls_key", key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TlsFileError("tls_cert", f"{cert_path} does not start with a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError(
            "tls_key", f"{key_path} is encrypted: give it unencrypted (readable by the daemon only)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError("tls_key", f"{key_path} is not a PEM private key") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise TlsFileError("tls_key", f"{key_path} is not the private key of the certificate in {cert_path}")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n.value) for n in sans if isinstance(n, x509.DNSName | x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string() or "(no subject)",
        names=names,
        not_after=cert.not_valid_after_utc,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def server_tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 at least (1.3 chosen whenever the client has it), no client certificate.

    TLS 1.2 is limited to ECDHE key exchange with AEAD ciphers (forward secrecy, what iOS's App
    Transport Security asks for); TLS 1.3's suites are all of that kind already.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_NONE  # clients prove themselves with the bearer token
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_password)
    except OSError as exc:  # ssl.SSLError is an OSError too
        which = "tls_key" if "KEY" in str(exc).upper() else "tls_cert"
        raise TlsFileError(which, f"cannot load {cert_path} and {key_path}: {exc}") from None
    return context


class ServerTls:
    """The TCP listener's TLS. `context` goes to the listening site once; `replace` swaps the
    certificate under it for new connections (each handshake picks the current one), so a renewed
    certificate is served after a reload while open connections finish on the old one."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.info = read_certificate_pair(cert_path, key_path)
        self.context = server_tls_context(cert_path, key_path)
        self._current = self.context
        self.context.sni_callback = self._choose  # called on every ClientHello, with a server name or not

    def replace(self, cert_path: str, key_path: str) -> bool:
        """Load the pair again (TlsFileError leaves the current one serving); True if it changed."""
        info = read_certificate_pair(cert_path, key_path)
        context = server_tls_context(cert_path, key_path)
        changed = info.fingerprint != self.info.fingerprint
        self._current, self.info = context, info
        return changed

    def days_left(self, now: datetime | None = None) -> float:
        return (self.info.not_after - (now or datetime.now(UTC))).total_seconds() / 86_400

    def _choose(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._current is not context:
            conn.context = self._current
