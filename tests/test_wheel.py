"""The wheel, as an operator installs it: built from this tree, installed into a fresh venv outside
it and run from elsewhere, it migrates an empty database (the SQL ships as package data) and runs
the demo through one card payment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from tests.store.test_migrations import FUNCTIONS, TABLES, VIEWS, _catalog
from tests.test_demo import card_checkout, start_demo, stop_demo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Top-level entries of the tree that are not source: not copied into the build.
NOT_SOURCE = {".git", ".venv", "build", "dist", "state", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
# Nothing of the source tree or the project venv may leak into the installed gatewayd.
LEAKY = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    cwd: Path  # outside the source tree
    env: dict[str, str]
    build_log: str

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def gatewayd(self) -> Path:
        return self.venv / "bin" / "gatewayd"


def _not_source(folder: str, names: list[str]) -> set[str]:
    top = NOT_SOURCE if Path(folder) == ROOT else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 180) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{out}"
    return out


def _pins() -> str:
    """This venv's distributions as constraints: the new venv gets the same dependency versions
    (from pip's cache) as the one the tests run in."""
    pins = {d.metadata["Name"].lower(): d.version for d in metadata.distributions() if d.metadata["Name"]}
    pins.pop("gatewayd", None)
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    started = time.monotonic()
    # A copy, so that the build leaves no build/ or egg-info in the tree (nor reads a stale one).
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_not_source)
    build_log = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", str(source), "-w", str(tmp / "dist")], tmp, env
    )
    (wheel,) = (tmp / "dist").glob("gatewayd-*.whl")
    shutil.rmtree(source)
    built = time.monotonic()
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    (tmp / "pins.txt").write_text(_pins())
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    _run([*pip, "install", "--constraint", str(tmp / "pins.txt"), str(wheel)], tmp, env)
    print(f"wheel built in {built - started:.1f}s, installed in {time.monotonic() - built:.1f}s")
    yield Installed(wheel, venv, tmp, env, build_log)


def test_wheel_ships_the_migrations_and_builds_without_deprecations(installed: Installed) -> None:
    shipped = {n for n in zipfile.ZipFile(installed.wheel).namelist() if n.startswith("gatewayd/sql/")}
    files = {f"gatewayd/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")}
    assert files and files <= shipped, sorted(files - shipped)
    assert "deprecat" not in installed.build_log.lower(), installed.build_log


def test_installed_gatewayd_is_the_wheel(installed: Installed) -> None:
    """Run from outside the tree with no PYTHONPATH, gatewayd and its SQL come from the new venv."""
    code = "import gatewayd; from gatewayd.store import migrate; print(gatewayd.__file__); print(migrate.sql_dir())"
    out = _run([str(installed.python), "-c", code], installed.cwd, installed.env).split()
    assert len(out) == 2, out
    for path in out:
        assert Path(path).is_relative_to(installed.venv), out
        assert not Path(path).is_relative_to(ROOT), out


async def _gatewayd(installed: Installed, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(installed.gatewayd),
        *args,
        cwd=installed.cwd,
        env=installed.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_wheel_migrates_an_empty_database(installed: Installed, empty_dsn: str) -> None:
    code, out = await _gatewayd(installed, "migrate", "--dsn", empty_dsn)
    assert code == 0, out
    assert "applied 001_schema" in out
    tables, functions, views = await _catalog(empty_dsn)
    assert TABLES <= tables
    assert FUNCTIONS <= functions
    assert VIEWS <= views
    code, out = await _gatewayd(installed, "migrate", "--dsn", empty_dsn)
    assert code == 0 and "up to date" in out, out


async def test_wheel_demo_takes_a_card_payment(installed: Installed) -> None:
    state = installed.cwd / "demo"
    proc, output = await start_demo(state, (str(installed.gatewayd),), cwd=installed.cwd, env=installed.env)
    try:
        info = json.loads((state / "demo.json").read_text())
        answer = await card_checkout(output, info)
        assert answer["status"] == "completed", answer
        assert answer["tenders"][0]["status"] == "approved"
    finally:
        assert await stop_demo(proc) == 0
