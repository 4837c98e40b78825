"""`gatewayd openapi` prints what GET /v1/openapi.json serves, for client generators (no daemon needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec

from gatewayd.api import openapi


def test_openapi_prints_the_served_document(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gatewayd", "openapi"], capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    served = msgspec.json.decode(openapi.document_bytes())  # the body of GET /v1/openapi.json
    assert msgspec.json.decode(done.stdout) == served
    assert done.stdout.startswith(b"{\n  ")  # indented, for a reader and a diff
    out = tmp_path / "openapi.json"
    again = subprocess.run(
        [sys.executable, "-m", "gatewayd", "openapi", "--output", str(out)], capture_output=True, timeout=60
    )
    assert again.returncode == 0 and again.stdout == b"", again.stderr.decode()
    assert out.read_bytes() == done.stdout
