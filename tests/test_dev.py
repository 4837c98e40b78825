"""The README's entry point: `./dev` with no command (or `help`) prints its help and exits 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[1] / "dev"


@pytest.mark.parametrize("args", [[], ["help"], ["-h"]])
def test_dev_without_a_command_prints_its_help(args: list[str]) -> None:
    done = subprocess.run([str(DEV), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ./dev COMMAND")
    for command in ("demo", "test", "lint"):
        assert f"\n  {command} " in done.stdout
