"""A running daemon for the CLI's tests, and an environment that names no socket."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Gateway, running_gateway


@pytest.fixture
async def gw(dsn: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(dsn, tmp_path, terminals=2) as gateway:
        yield gateway


@pytest.fixture
def clean_env() -> dict[str, str]:
    """This process's environment without GATEWAYD_SOCKET, so that only the test names a socket."""
    return {k: v for k, v in os.environ.items() if k != "GATEWAYD_SOCKET"}
