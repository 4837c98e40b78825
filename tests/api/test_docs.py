"""The API's documentation keeps up with the API: every endpoint of the OpenAPI document is in
docs/api.md, every error code with its retry hint, and the docs speak of the project alone."""

from __future__ import annotations

import re
from pathlib import Path

from gatewayd.api import openapi
from gatewayd.api.errors import CODES

ROOT = Path(__file__).resolve().parents[2]
API_MD = (ROOT / "docs" / "api.md").read_text()


def test_every_endpoint_is_documented() -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, operations in openapi.document()["paths"].items()
        for method in operations
        if f"`{method.upper()} {path}" not in API_MD
    ]
    assert missing == [], f"endpoints of /v1/openapi.json not in docs/api.md: {missing}"


def test_every_error_code_is_documented_with_its_retry_hint() -> None:
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| \d+ \| `([a-z_]+)` \|", API_MD, flags=re.M))
    assert {code: hint for code, (_, hint) in CODES.items()} == rows


def test_docs_speak_of_the_project_alone() -> None:
    """No paths of a particular machine, no talk of who else used it."""
    texts = {p.relative_to(ROOT): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    pattern = re.compile(r"/work/|/home/\w|/root/\w|other engineers|/tmp/[\w.-]+/(?:patch|gatewayd-)")
    found = {str(path): pattern.findall(text) for path, text in texts.items() if pattern.search(text)}
    assert found == {}
