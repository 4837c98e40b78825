"""Printing for operator commands: aligned tables for people, JSON for scripts."""

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
