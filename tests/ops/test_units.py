"""The systemd units, sysusers and tmpfiles snippets: key settings, consistency with the code
and the example config, `systemd-analyze security` exposure and `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from gatewayd.config.model import ApiConfig

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
SERVICE = SYSTEMD / "gatewayd.service"
SOCKET = SYSTEMD / "gatewayd.socket"
SYSUSERS = SYSTEMD / "gatewayd.sysusers.conf"
TMPFILES = SYSTEMD / "gatewayd.tmpfiles.conf"
EXAMPLE_CONFIG = ROOT / "config" / "gatewayd.toml"
MAX_EXPOSURE = 1.5

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """A systemd unit as {section: {key: [values in order]}}; keys may repeat, as in systemd."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {line!r} outside a section"
        assert "=" in line, f"{path.name}: not key=value: {line!r}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times: {values}"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span such as 40, 40s, 1min 30s."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit(SERVICE)


@pytest.fixture(scope="module")
def socket_unit() -> Unit:
    return parse_unit(SOCKET)


# ---------------------------------------------------------------------------- the service


def test_service_lifecycle(service: Unit) -> None:
    s = "Service"
    assert one(service, s, "Type") == "notify"
    assert one(service, s, "NotifyAccess") == "main"
    assert one(service, s, "ExecStart") == "/usr/bin/gatewayd run --config /etc/gatewayd/gatewayd.toml"
    assert one(service, s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert seconds(one(service, s, "WatchdogSec")) == 30
    assert one(service, s, "Restart") == "on-failure"
    # An invalid config exits 2: restarting it would only loop.
    assert "2" in one(service, s, "RestartPreventExitStatus").split()
    assert one(service, s, "User") == "gatewayd"
    assert one(service, s, "Group") == "gatewayd"
    assert one(service, s, "Sockets") == "gatewayd.socket"
    assert "gatewayd.socket" in one(service, "Unit", "After").split()
    assert one(service, "Install", "WantedBy") == "multi-user.target"


def test_stop_timeout_covers_the_drain(service: Unit) -> None:
    from gatewayd.daemon import DRAIN_DEADLINE_S

    timeout = seconds(one(service, "Service", "TimeoutStopSec"))
    # the drain, then the API runner's 5 s shutdown, terminals and pool: at least 10 s of margin
    assert timeout >= DRAIN_DEADLINE_S + 10, timeout
    # SIGTERM to the daemon only: an embedded PostgreSQL must keep serving the drain
    assert one(service, "Service", "KillMode") == "mixed"


def test_directories(service: Unit) -> None:
    s = "Service"
    assert one(service, s, "RuntimeDirectory") == "gatewayd"
    assert one(service, s, "StateDirectory") == "gatewayd"
    # the socket unit's socket file lives in the runtime dir: it must survive a service stop
    assert one(service, s, "RuntimeDirectoryPreserve") == "yes"
    # POS users must be able to traverse to the socket
    assert int(one(service, s, "RuntimeDirectoryMode"), 8) & 0o001
    assert one(service, s, "UMask") == "0027"


def test_credentials_match_the_example_config(service: Unit) -> None:
    creds = dict(v.split(":", 1) for v in service["Service"].get("LoadCredential", []))
    assert creds.get("lane-1-authkey") == "/etc/gatewayd/keys/lane-1"
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    for terminal in example.get("terminals", []):
        name = terminal.get("authkey_credential")
        if name:
            assert name in creds, f"{terminal['id']}: authkey_credential {name!r} has no LoadCredential="
    for path in creds.values():
        assert path.startswith("/etc/gatewayd/keys/"), path


def test_hardening(service: Unit) -> None:
    s = service["Service"]
    expected_yes = [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateUsers",
        "PrivateIPC",
        "ProtectHostname",
        "ProtectClock",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RemoveIPC",
    ]
    for key in expected_yes:
        assert s.get(key) == ["yes"], f"{key}= should be yes, is {s.get(key)}"
    assert s["ProtectSystem"] == ["strict"]
    assert s["ProtectProc"] == ["invisible"]
    assert s["DevicePolicy"] == ["closed"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["SystemCallArchitectures"] == ["native"]
    assert "@system-service" in s["SystemCallFilter"]
    assert "~@privileged @resources" in s["SystemCallFilter"]
    assert s["SystemCallErrorNumber"] == ["EPERM"]


def test_sandbox_leaves_what_the_daemon_needs(service: Unit) -> None:
    s = service["Service"]
    # PostgreSQL over TCP, terminals over HTTPS, metrics over TCP, the API on a unix socket
    assert sorted(" ".join(s["RestrictAddressFamilies"]).split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    for key in ("PrivateNetwork", "IPAddressDeny", "NoExecPaths", "ReadOnlyPaths", "InaccessiblePaths"):
        assert key not in s, f"{key}= would stop the daemon reaching its database, terminals or binaries"
    # ProcSubset=pid hides /proc/stat, which prometheus_client needs for the process_* metrics
    assert "ProcSubset" not in s


# ---------------------------------------------------------------------------- the socket


def test_socket(socket_unit: Unit) -> None:
    s = "Socket"
    listen = one(socket_unit, s, "ListenStream")
    assert listen == "/run/gatewayd/gatewayd.sock"
    # the daemon's own default and the example config name the same path
    assert listen == ApiConfig().socket
    assert tomllib.loads(EXAMPLE_CONFIG.read_text())["api"]["socket"] == listen
    assert one(socket_unit, s, "SocketMode") == "0660"
    assert one(socket_unit, s, "SocketUser") == "gatewayd"
    assert one(socket_unit, s, "SocketGroup") == "gatewayd-pos"
    assert one(socket_unit, s, "Service") == "gatewayd.service"
    assert one(socket_unit, "Install", "WantedBy") == "sockets.target"


def test_socket_name_is_the_one_the_daemon_adopts(socket_unit: Unit) -> None:
    name = one(socket_unit, "Socket", "FileDescriptorName")
    assert name == "api"
    source = (ROOT / "gatewayd" / "daemon.py").read_text()
    assert f'passed.pop("{name}"' in source


# ---------------------------------------------------------------------------- sysusers / tmpfiles


def _table(path: Path) -> list[list[str]]:
    rows = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(shlex.split(line))
    return rows


def test_sysusers(socket_unit: Unit, service: Unit) -> None:
    rows = _table(SYSUSERS)
    users = {r[1] for r in rows if r[0] == "u"}
    groups = {r[1] for r in rows if r[0] in ("g", "u")}
    assert one(service, "Service", "User") in users
    assert one(socket_unit, "Socket", "SocketUser") in users
    assert one(socket_unit, "Socket", "SocketGroup") in groups
    assert "gatewayd-pos" in groups


def test_tmpfiles() -> None:
    entries = {r[1]: r for r in _table(TMPFILES) if r[0] == "d"}
    etc = entries["/etc/gatewayd"]
    assert (etc[2], etc[3], etc[4]) == ("0750", "root", "gatewayd")
    keys = entries["/etc/gatewayd/keys"]
    assert (keys[2], keys[3], keys[4]) == ("0700", "root", "root")  # read by systemd, not the daemon
    state = entries["/var/lib/gatewayd"]
    assert (state[3], state[4]) == ("gatewayd", "gatewayd")
    assert int(state[2], 8) & 0o007 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles --root needs root to chown")
def test_sysusers_and_tmpfiles_apply(tmp_path: Path) -> None:
    if not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")):
        pytest.skip("systemd-sysusers/systemd-tmpfiles not installed (apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True, timeout=30
    )
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    assert passwd.startswith("gatewayd:") or "\ngatewayd:" in passwd
    assert "gatewayd-pos:" in group
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    uid = int(next(line for line in passwd.splitlines() if line.startswith("gatewayd:")).split(":")[2])
    keys = (tmp_path / "etc" / "gatewayd" / "keys").stat()
    assert (keys.st_mode & 0o777, keys.st_uid) == (0o700, 0)
    state = (tmp_path / "var" / "lib" / "gatewayd").stat()
    assert (state.st_mode & 0o777, state.st_uid) == (0o750, uid)


# ---------------------------------------------------------------------------- systemd-analyze


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd); CI installs it")
    return tool


def test_security_exposure() -> None:
    tool = _analyze()
    result = subprocess.run(
        [tool, "security", "--offline=true", str(SERVICE)], capture_output=True, text=True, timeout=60
    )
    out = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, out[-2000:]
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}\n{out}"


def test_verify_is_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` with the binaries replaced by /bin/true: no warning at all."""
    tool = _analyze()
    text = SERVICE.read_text()
    text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", text)
    text = re.sub(r"(?m)^ExecStopPost=.*$", "ExecStopPost=-/bin/true", text)
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    result = subprocess.run(
        [tool, "verify", str(tmp_path / SERVICE.name), str(tmp_path / SOCKET.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "gatewayd" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_verify_complains_only_about_the_binary() -> None:
    """The real unit: the only complaint allowed is /usr/bin/gatewayd missing on this machine."""
    tool = _analyze()
    result = subprocess.run([tool, "verify", str(SERVICE), str(SOCKET)], capture_output=True, text=True, timeout=60)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "gatewayd" in line]
    other = [line for line in lines if "/usr/bin/gatewayd" not in line]
    assert not other, "\n".join(other)
