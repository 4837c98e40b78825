"""The CLI finds the daemon as a newcomer expects: --socket, $GATEWAYD_SOCKET, --config's [api]
socket, ./state/demo.json of a demo started here, then the production path; when nobody answers,
it says which socket it tried and why that one."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import Gateway
from tests.procs import run_cli


def _demo_dir(tmp_path: Path, sock: str) -> Path:
    """A directory as `gatewayd demo` leaves it: state/demo.json naming the socket."""
    here = tmp_path / "here"
    (here / "state").mkdir(parents=True)
    (here / "state" / "demo.json").write_text(json.dumps({"socket": sock, "dsn": "postgresql://unused"}))
    return here


async def test_demo_json_in_the_current_directory_is_found(
    gw: Gateway, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    here = _demo_dir(tmp_path, gw.daemon.config.api.socket)
    code, out = await run_cli("terminals", "--json", cwd=here, env=clean_env)
    assert code == 0, out
    assert sorted(t["id"] for t in json.loads(out)) == ["lane-1", "lane-2"]
    code, out = await run_cli("orphans", cwd=here, env=clean_env)  # an operator command finds it too
    assert code == 0 and "no orphaned payments" in out, out


async def test_environment_beats_config_and_demo_json(gw: Gateway, tmp_path: Path, clean_env: dict[str, str]) -> None:
    assert gw.daemon.config_path is not None
    dead = str(tmp_path / "nobody.sock")
    here = _demo_dir(tmp_path, gw.daemon.config.api.socket)
    code, out = await run_cli(
        "terminals", "--config", gw.daemon.config_path, cwd=here, env={**clean_env, "GATEWAYD_SOCKET": dead}
    )
    assert code == 1, out
    assert f"cannot reach gatewayd at {dead} (from $GATEWAYD_SOCKET)" in out, out
    # The other way round: the environment's live socket wins over a dead config (and demo.json).
    code, out = await run_cli(
        "terminals",
        "--config",
        str(tmp_path / "missing.toml"),
        env={**clean_env, "GATEWAYD_SOCKET": gw.daemon.config.api.socket},
    )
    assert code == 0 and "lane-1" in out, out
    # --socket beats the environment.
    code, out = await run_cli(
        "terminals", "--socket", dead, env={**clean_env, "GATEWAYD_SOCKET": gw.daemon.config.api.socket}
    )
    assert code == 1 and f"at {dead} (from --socket)" in out, out


async def test_config_beats_demo_json(gw: Gateway, tmp_path: Path, clean_env: dict[str, str]) -> None:
    assert gw.daemon.config_path is not None
    here = _demo_dir(tmp_path, str(tmp_path / "stale-demo.sock"))
    code, out = await run_cli("terminals", "--config", gw.daemon.config_path, cwd=here, env=clean_env)
    assert code == 0 and "lane-2" in out, out


async def test_cannot_connect_names_the_socket_and_where_it_came_from(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("status", "terminals", "orphans", "cleanup", "reconcile", "report"):
        code, out = await run_cli(command, cwd=empty, env=clean_env)
        assert code == 1, (command, out)
        assert (
            "cannot reach gatewayd at /run/gatewayd/gatewayd.sock (the production default: no --socket,"
            " GATEWAYD_SOCKET, --config or ./state/demo.json)" in out
        ), (command, out)
        assert "Traceback" not in out, out
    stale = _demo_dir(tmp_path, str(tmp_path / "demo-stopped.sock"))
    code, out = await run_cli("status", cwd=stale, env=clean_env)
    assert code == 1
    assert f"at {tmp_path / 'demo-stopped.sock'} (from ./state/demo.json, written by gatewayd demo)" in out, out


async def test_socket_help_says_the_order() -> None:
    for command in ("status", "orphans", "report"):
        code, out = await run_cli(command, "--help")
        flat = " ".join(out.split())
        assert code == 0
        assert (
            "--socket, else $GATEWAYD_SOCKET, else --config's [api] socket, else ./state/demo.json"
            " (written by gatewayd demo), else /run/gatewayd/gatewayd.sock" in flat
        ), flat
