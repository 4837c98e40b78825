"""A real PgBouncer (Debian's `pgbouncer`) in front of a test PostgreSQL, for the pooler tests.

It runs in the foreground, logging to a file, with `auth_type = trust` on loopback only, and
stops when the context ends. PgBouncer refuses to run as root: started by root it is given
`user = gatewayd-pg` (the embedded server's own unprivileged user), so it reads its files as
root and then drops to that user; it keeps no file open after that but the log it was handed,
so its folder may be private. Run by anyone else it runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gatewayd.store.embedded import SERVICE_USER, bin_dir, free_port

# The daemon's login role in the pooler tests (made by `gatewayd migrate --app-role`'s code).
POOLED_APP_ROLE = "gatewayd_pooled"


def pgbouncer_binary() -> str | None:
    """The pgbouncer program, or None (Debian installs it in /usr/sbin, not always on PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    return found


@dataclass
class PgBouncer:
    """A running PgBouncer: its port, its log, and its admin console."""

    port: int
    upstream_port: int
    folder: Path
    pool_mode: str
    pool_size: int
    process: subprocess.Popen[bytes]

    def dsn(self, database: str = "gatewayd", user: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    @property
    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def show(self, what: str) -> list[dict[str, str]]:
        """`SHOW what` on the admin console (simple query protocol only, hence psql), as rows."""
        result = subprocess.run(
            [
                str(bin_dir() / "psql"),
                "--no-psqlrc",
                "--csv",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "pgbouncer",
                "-c",
                f"SHOW {what}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        )
        lines = result.stdout.strip().splitlines()
        header = lines[0].split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def server_connections(self, user: str, database: str = "gatewayd") -> int:
        """PostgreSQL connections the pool (database, user) holds."""
        return sum(1 for r in self.show("SERVERS") if (r.get("database"), r.get("user")) == (database, user))

    def client_connections(self, user: str, database: str = "gatewayd") -> int:
        """Client connections to the pool (database, user)."""
        return sum(1 for r in self.show("CLIENTS") if (r.get("database"), r.get("user")) == (database, user))


def _config(
    port: int, upstream_port: int, folder: Path, pool_mode: str, pool_size: int, extra: Mapping[str, str]
) -> str:
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": str(folder / "users.txt"),
        "admin_users": "postgres",
        "pool_mode": pool_mode,
        "default_pool_size": str(pool_size),
        "max_client_conn": "500",
        "reserve_pool_size": "0",
        "server_round_robin": "1",  # hand out every server connection, not the last one used
        "log_connections": "0",
        "log_disconnections": "0",
        **extra,
    }
    if os.geteuid() == 0:
        pwd.getpwnam(SERVICE_USER)  # made by the embedded server started before us
        settings["user"] = SERVICE_USER
    lines = ["[databases]", f"* = host=127.0.0.1 port={upstream_port}", "[pgbouncer]"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port} within {timeout_s}s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_pgbouncer(
    upstream_port: int,
    folder: Path,
    *,
    pool_mode: str = "transaction",
    pool_size: int = 3,
    settings: Mapping[str, str] | None = None,
    users: tuple[str, ...] = ("postgres",),
) -> Iterator[PgBouncer]:
    """PgBouncer on a free loopback port in front of 127.0.0.1:`upstream_port`, stopped at the end;
    `settings`: more [pgbouncer] settings (TLS for its clients, say); `users`: who may log in
    (trust: no password, as the test server has none)."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.txt").write_text("".join(f'"{user}" ""\n' for user in users))
    config = folder / "pgbouncer.ini"
    log_path = folder / "pgbouncer.log"
    for _ in range(5):
        port = free_port()
        config.write_text(_config(port, upstream_port, folder, pool_mode, pool_size, settings or {}))
        with open(log_path, "ab") as log:
            process = subprocess.Popen([binary, str(config)], stdout=log, stderr=log, cwd="/")
        try:
            _wait_listening(port, process, log_path)
        except RuntimeError:
            process.kill()
            process.wait()
            if "Address already in use" in log_path.read_text(errors="replace"):
                continue  # someone took the port between free_port() and the bind
            raise
        break
    else:
        raise RuntimeError(f"pgbouncer found no free port:\n{log_path.read_text(errors='replace')}")
    bouncer = PgBouncer(port, upstream_port, folder, pool_mode, pool_size, process)
    try:
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
