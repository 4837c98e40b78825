"""The TypeScript client (clients/typescript, `@gatewayd/client`): `npm ci` from its lockfile, `npm run
build` (ESM dist/index.js with dist/index.d.ts), `npm run check:types` (its committed src/schema.ts
against the OpenAPI document this daemon serves) and `npm test` (vitest: its unit tests and the
guide's checklist against a real `gatewayd demo --tcp`, over TLS with a token, that it starts itself).

Skipped when Node.js or npm is missing (`./dev test` installs Debian's as root) or older than the
package supports (Node 18.17)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from gatewayd.api import openapi

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NODE_MIN = (18, 17)


def _node_version() -> tuple[int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.match(r"v(\d+)\.(\d+)", done.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _why_not() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js and npm are not installed (./dev test installs Debian's nodejs and npm as root)"
    version = _node_version()
    if version is None or version < NODE_MIN:
        return f"node {version} is older than {NODE_MIN[0]}.{NODE_MIN[1]}, the TypeScript client's minimum"
    return None


def _env() -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0", "npm_config_update_notifier": "false"}
    gatewayd = Path(sys.executable).with_name("gatewayd")  # this venv's: the daemon under test
    if gatewayd.exists():
        env["GATEWAYD_BIN"] = str(gatewayd)
    env.pop("GATEWAYD_DEMO_JSON", None)  # the tests start a daemon of their own
    return env


def _run(step: list[str], timeout: float) -> str:
    started = time.monotonic()
    done = subprocess.run(step, cwd=PACKAGE, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)
    took = time.monotonic() - started
    output = f"$ {' '.join(step)}  ({took:.1f} s, exit {done.returncode})\n{done.stdout}{done.stderr}"
    print(output)
    if done.returncode != 0:
        pytest.fail(output, pytrace=False)
    return output


@pytest.mark.timeout(900)
def test_typescript_client_builds_matches_the_api_and_passes_its_checklist(tmp_path: Path) -> None:
    if (why := _why_not()) is not None:
        pytest.skip(why)
    _run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"], timeout=400)
    _run(["npm", "run", "build"], timeout=120)
    assert (PACKAGE / "dist" / "index.js").exists() and (PACKAGE / "dist" / "index.d.ts").exists()
    dist = (PACKAGE / "dist" / "index.js").read_text()
    assert "export {" in dist or "export " in dist  # ESM
    checked = _run(["npm", "run", "check:types"], timeout=120)
    assert "matches the daemon's OpenAPI document" in checked
    # The check fails on a document that differs (here: a field the daemon would have added).
    changed = tmp_path / "openapi.json"
    document = openapi.document()
    document["components"]["schemas"]["HealthView"]["properties"]["uptime_s"] = {"type": "integer"}
    changed.write_bytes(msgspec.json.encode(document))
    stale = subprocess.run(
        ["node", "scripts/openapi-types.mjs", "--check"],
        cwd=PACKAGE,
        env={**_env(), "GATEWAYD_OPENAPI": str(changed)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stale.returncode == 1 and "npm run gen:types" in stale.stderr, stale.stdout + stale.stderr
    tested = _run(["npm", "test"], timeout=400)
    assert re.search(r"Tests\s+\d+ passed", tested), tested


def test_the_client_runtime_uses_no_node_api() -> None:
    """React Native has no Node: nothing under src/ imports a node: module or uses Node's globals
    (nor what React Native lacks)."""
    for source in sorted((PACKAGE / "src").glob("*.ts")):
        text = source.read_text()
        assert not re.search(r"""from\s+["'](node:|fs|path|crypto|http|https|tls|net|buffer|undici)""", text), source
        assert not re.search(r"\b(process|Buffer|require)\b\s*[.(]", text), source
        assert "new URLSearchParams" not in text, source  # React Native's has no set()
