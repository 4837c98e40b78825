"""Listening sockets for the API: the unix socket (stale one replaced, live one refused) or systemd's."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
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
