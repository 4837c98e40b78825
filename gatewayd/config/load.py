"""Reading a config file: TOML into Structs, secrets resolved, errors that name file, key and expectation."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections import Counter
from pathlib import Path

import msgspec

from gatewayd.api import listen
from gatewayd.config import dsn as dsn_rules
from gatewayd.config.model import ApiConfig, Config, DatabaseConfig, TerminalConfig
from gatewayd.config.secret import Secret, dec_hook
from gatewayd.errors import ConfigError

_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]+)`")
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _key_path(path: str) -> str:
    return path.lstrip(".") or "(top level)"


def describe_validation_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    """(key path, what was expected) from a msgspec validation message."""
    match = _AT.match(str(exc))
    what = match.group("what") if match else str(exc)
    path = _key_path(match.group("path") or "") if match else "(top level)"
    if m := _UNKNOWN.match(what):
        key = m.group("key")
        return (f"{path}.{key}" if path != "(top level)" else key), "unknown key"
    if m := _MISSING.match(what):
        key = m.group("key")
        return (f"{path}.{key}" if path != "(top level)" else key), "required key is missing"
    return path, what.replace("`", "")


def parse(data: bytes | str, source: str = "<config>", *, resolve_secrets: bool = True) -> Config:
    """Decode and check a config; raise ConfigError naming the source, the key and the expectation.

    With `resolve_secrets` false, each secret must have exactly one source but is not read
    (an operator's shell cannot read the credentials systemd hands to the service).
    """
    try:
        config = msgspec.toml.decode(data, type=Config, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        key, expected = describe_validation_error(exc)
        raise ConfigError(f"{source}: {key}: {expected}", file=source, key=key) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", file=source, key="") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 at byte {exc.start}", file=source, key="") from None
    return _resolve(config, source, resolve_secrets)


def load(path: str | os.PathLike[str], *, resolve_secrets: bool = True) -> Config:
    """Read and check the config file at `path`."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}", file=source, key="") from None
    return parse(data, source, resolve_secrets=resolve_secrets)


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}", file=source, key=key)


def _read_secret(
    source: str,
    key_base: str,
    *,
    value: Secret | None,
    env: str | None,
    file: str | None,
    credential: str | None,
    required: bool,
    resolve: bool = True,
) -> Secret | None:
    given = {
        k: v for k, v in {"": value, "_env": env, "_file": file, "_credential": credential}.items() if v is not None
    }
    if len(given) > 1:
        names = ", ".join(key_base + k for k in given)
        raise _fail(source, key_base, f"give only one of {names}")
    if not given:
        if required:
            raise _fail(
                source,
                key_base,
                f"one of {key_base}, {key_base}_env, {key_base}_file or {key_base}_credential is required",
            )
        return None
    if value is not None:
        return value
    if not resolve:
        return None
    if env is not None:
        if env not in os.environ:
            raise _fail(source, key_base + "_env", f"environment variable {env} is not set")
        return Secret(os.environ[env].strip())
    if credential is not None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise _fail(source, key_base + "_credential", "no CREDENTIALS_DIRECTORY (set LoadCredential= in the unit)")
        file = str(Path(directory) / credential)
        key_base += "_credential"
    else:
        key_base += "_file"
    try:
        return Secret(Path(file or "").read_text().strip())
    except UnicodeDecodeError:
        raise _fail(source, key_base, f"cannot read {file}: not UTF-8 text") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _fail(source, key_base, f"cannot read {file}: {reason}") from None


def _check_listen(source: str, key: str, listen: str | None) -> None:
    if listen is None:
        return
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise _fail(source, key, "expected host:port, e.g. 127.0.0.1:9470")


def plain_http_host(t: TerminalConfig) -> str | None:
    """The host a terminal is reached at in plain HTTP off loopback (None: https, or loopback)."""
    parsed = urllib.parse.urlsplit(t.base_url)
    host = parsed.hostname or ""
    return host if parsed.scheme == "http" and not listen.is_loopback(host) else None


def _check_terminal(source: str, index: int, t: TerminalConfig) -> None:
    """The keys each driver needs, and the rule for plain HTTP: only to loopback, or on purpose."""
    at = f"terminals[{index}]"
    if t.driver == "spin" and t.tpn is None:
        raise _fail(source, f"{at}.tpn", 'required with driver = "spin" (the terminal profile number)')
    if t.driver == "spin" and t.register_id is not None:
        raise _fail(source, f"{at}.register_id", 'only used with driver = "spin-local" (SPIn Cloud uses tpn)')
    if t.driver == "spin-local" and t.register_id is None:
        raise _fail(source, f"{at}.register_id", 'required with driver = "spin-local" (the portal\'s Register ID)')
    try:
        port_ok = urllib.parse.urlsplit(t.base_url).port is not None or not t.base_url.split("/")[2].endswith(":")
    except ValueError:
        port_ok = False
    if not urllib.parse.urlsplit(t.base_url).hostname or not port_ok:
        raise _fail(source, f"{at}.base_url", "expected http(s)://host[:port][/path]")
    host = plain_http_host(t)
    if host is not None and not t.allow_plain_http_on_lan:
        advice = (
            "SPIn Local terminals speak only HTTP: set allow_plain_http_on_lan = true for this terminal to accept"
            " that (docs/terminals.md)"
            if t.driver == "spin-local"
            else "SPIn Cloud is https:// (allow_plain_http_on_lan = true is for a simulator on the LAN)"
        )
        raise _fail(
            source,
            f"{at}.base_url",
            f"plain http:// to {host} would send the auth key, amounts and the terminal's answers over the"
            f" network unencrypted; {advice}",
        )


def _resolve_terminal(source: str, index: int, t: TerminalConfig, resolve: bool) -> TerminalConfig:
    _check_terminal(source, index, t)
    key = _read_secret(
        source,
        f"terminals[{index}].authkey",
        value=t.authkey,
        env=t.authkey_env,
        file=t.authkey_file,
        credential=t.authkey_credential,
        required=True,
        resolve=resolve,
    )
    if not resolve:
        return t
    return msgspec.structs.replace(t, authkey=key, authkey_env=None, authkey_file=None, authkey_credential=None)


def _resolve_api(source: str, api: ApiConfig, resolve: bool) -> ApiConfig:
    _check_listen(source, "api.tcp_listen", api.tcp_listen)
    token = _read_secret(
        source,
        "api.tcp_token",
        value=api.tcp_token,
        env=api.tcp_token_env,
        file=api.tcp_token_file,
        credential=None,
        required=api.tcp_listen is not None,
        resolve=resolve,
    )
    tls_files = _check_api_tls(source, api)
    if not resolve:
        return api
    if token is not None and len(token.reveal()) < 16:
        raise _fail(source, "api.tcp_token", "must be at least 16 characters")
    api = msgspec.structs.replace(api, tcp_token=token, tcp_token_env=None, tcp_token_file=None)
    if tls_files is None:
        return api
    cert, key = (_tls_path(source, name, path, credential) for name, path, credential in tls_files)
    try:
        listen.read_certificate_pair(cert, key)
        listen.server_tls_context(cert, key)
    except listen.TlsFileError as exc:
        from_credential = (api.tls_cert_credential if exc.key == "tls_cert" else api.tls_key_credential) is not None
        raise _fail(source, f"api.{exc.key}" + ("_credential" if from_credential else ""), exc.message) from None
    return msgspec.structs.replace(api, tls_cert=cert, tls_key=key, tls_cert_credential=None, tls_key_credential=None)


_TLS_KEYS = ("tls", "tls_cert", "tls_cert_credential", "tls_key", "tls_key_credential")


def _check_api_tls(source: str, api: ApiConfig) -> list[tuple[str, str | None, str | None]] | None:
    """The TLS keys of [api] fit together, and a TCP listener off loopback has TLS or says tls = "off".

    Returns (key, path, credential) for the certificate and for its key when TLS is on.
    """
    if api.tcp_listen is None:
        given = [k for k in _TLS_KEYS if getattr(api, k) is not None]
        if given:
            raise _fail(source, f"api.{given[0]}", "only used with api.tcp_listen (the unix socket needs no TLS)")
        return None
    files = [
        ("api.tls_cert", api.tls_cert, api.tls_cert_credential),
        ("api.tls_key", api.tls_key, api.tls_key_credential),
    ]
    for name, path, credential in files:
        if path is not None and credential is not None:
            raise _fail(source, name, f"give only one of {name}, {name}_credential")
    missing = [name for name, path, credential in files if path is None and credential is None]
    if api.tls == "on" and missing:
        raise _fail(source, "api.tls", '"on" needs ' + " and ".join(f"{n} (or {n}_credential)" for n in missing))
    if api.tls is None and len(missing) == 1:
        given_name = next(name for name, _, _ in files if name not in missing)
        raise _fail(source, missing[0], f"required with {given_name}: the certificate and its private key go together")
    if not api.tls_enabled and api.tls != "off" and not listen.is_loopback(api.tcp_listen.rpartition(":")[0]):
        raise _fail(source, "api.tcp_listen", listen.plain_tcp_refusal(api.tcp_listen))
    return files if api.tls_enabled else None


def _tls_path(source: str, name: str, path: str | None, credential: str | None) -> str:
    """The file to read: the path given, or the systemd credential's file."""
    if credential is None:
        assert path is not None
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise _fail(source, name + "_credential", "no CREDENTIALS_DIRECTORY (set LoadCredential= in the unit)")
    return str(Path(directory) / credential)


def _check_database(source: str, db: DatabaseConfig, resolve: bool) -> None:
    """The link to a configured database: TLS off the host, no statement cache behind a known pooler."""
    if db.dsn is None:
        return  # the embedded server listens on 127.0.0.1 only
    dsn = db.dsn.reveal()
    problem = dsn_rules.transport_problem(dsn, tls=db.tls, ssl_root_cert=db.ssl_root_cert)
    problem = problem or dsn_rules.pooler_problem(dsn, statement_cache=db.statement_cache)
    if problem is not None:
        raise _fail(source, *problem)
    if resolve and db.ssl_root_cert is not None:
        try:
            Path(db.ssl_root_cert).read_bytes()
        except OSError as exc:
            raise _fail(source, "database.ssl_root_cert", f"cannot read {db.ssl_root_cert}: {exc.strerror}") from None


def _resolve(config: Config, source: str, resolve: bool) -> Config:
    duplicates = [tid for tid, n in Counter(t.id for t in config.terminals).items() if n > 1]
    if duplicates:
        raise _fail(source, "terminals", f"duplicate terminal id {duplicates[0]!r}")
    _check_listen(source, "metrics.listen", config.metrics.listen)
    if config.database.pool_min > config.database.pool_max:
        raise _fail(source, "database.pool_min", "must not exceed database.pool_max")
    _check_database(source, config.database, resolve)
    terminals = [_resolve_terminal(source, i, t, resolve) for i, t in enumerate(config.terminals)]
    return msgspec.structs.replace(config, terminals=terminals, api=_resolve_api(source, config.api, resolve))
