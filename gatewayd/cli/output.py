"""Printing for operator commands: aligned tables for people, JSON for scripts, API errors as
sentences."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import msgspec


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def _detail(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_detail(v) for v in value)
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def api_error_text(status: int, body: Any) -> str:
    """An API error answer as people read it: the message, its code in brackets, then each
    detail the message does not already say, as "key: value" (never a Python dict).

    `{"error": {"code": "not_found", "message": "no terminal 'lane-9'", "details": {}}}`
    -> "no terminal 'lane-9' (not_found)".
    """
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not error.get("message"):
        text = body.strip() if isinstance(body, str) else ""
        return f"the daemon answered HTTP {status}" + (f": {text}" if text else " with no error message")
    message = str(error["message"])
    code = error.get("code")
    lines = [f"{message} ({code})" if code else message]
    details = error.get("details")
    if isinstance(details, dict):
        for key, value in details.items():
            said = isinstance(value, str) and len(value) >= 3 and value in message
            if value is None or value == "" or value == [] or said:
                continue
            lines.append(f"  {key}: {_detail(value)}")
    return "\n".join(lines)


class Progress:
    """A one-line progress indicator on a terminal; silent when stdout is piped."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()

    def update(self, done: int, total: int | None = None) -> None:
        if self.enabled:
            of = f"/{total}" if total is not None else ""
            sys.stderr.write(f"\r{self.label}: {done}{of}")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (len(self.label) + 24) + "\r")
            sys.stderr.flush()
