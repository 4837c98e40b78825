"""API errors are said as sentences (message, code in brackets, details as "key: value"), never
as Python dicts."""

from __future__ import annotations

from gatewayd.cli.output import api_error_text
from tests.harness import Gateway
from tests.procs import run_cli


async def test_reconcile_of_an_unknown_terminal_is_a_sentence(gw: Gateway) -> None:
    code, out = await run_cli("reconcile", "--socket", gw.daemon.config.api.socket, "--terminal", "lane-9")
    assert code == 1, out
    assert out.strip() == "error: no terminal 'lane-9' (not_found)", out
    assert "{'" not in out and '{"' not in out


def test_error_text_message_code_and_details() -> None:
    body = {"error": {"code": "not_found", "message": "no terminal 'lane-9'", "details": {}}}
    assert api_error_text(404, body) == "no terminal 'lane-9' (not_found)"
    body = {
        "error": {
            "code": "invalid_state",
            "message": "lane-1 has tenders not yet resolved",
            "details": {"unresolved": 1, "terminal_id": "lane-1", "allowed": ["GET", "POST"], "empty": None},
        }
    }
    assert api_error_text(409, body) == (
        "lane-1 has tenders not yet resolved (invalid_state)\n  unresolved: 1\n  allowed: GET, POST"
    )
    # A validation error names its field in the message already.
    body = {"error": {"code": "validation_error", "message": "period: one of hourly", "details": {"field": "period"}}}
    assert api_error_text(400, body) == "period: one of hourly (validation_error)"
    # Not gatewayd's error body (a proxy, a crash): the HTTP status and the text, still no dict.
    assert api_error_text(502, "Bad Gateway") == "the daemon answered HTTP 502: Bad Gateway"
    assert api_error_text(500, {"unexpected": 1}) == "the daemon answered HTTP 500 with no error message"
