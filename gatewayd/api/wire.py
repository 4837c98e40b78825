"""Wire Structs of the API that are not checkouts: errors, health, terminals, operator answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gatewayd.checkout.model import CheckoutView


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    # What to do next: send it again with the same idempotency key, start a new checkout (new
    # key), or not as it is (fix the request, or an operator acts first). gatewayd.api.errors.
    retry: Literal["same_key", "new_key", "no"]
    details: dict[str, Any] = {}


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every non-2xx answer."""

    error: ErrorInfo


class CheckoutWithError(CheckoutView, frozen=True, kw_only=True):
    """A 402/503 after the intent was recorded: the checkout itself, with the error beside it."""

    error: ErrorInfo


class TerminalCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    online: int


class HealthView(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/health."""

    status: Literal["ok", "degraded"]
    database: Literal["up", "down"]
    terminals: TerminalCounts
    version: str
    checkouts_in_flight: int = 0


class TerminalView(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/terminals/{id}."""

    id: str
    name: str
    driver: str
    status: Literal["online", "offline", "busy", "unknown"]
    last_health_check: str | None
    last_health_error: str | None
    queue_depth: int
    in_flight: bool = False


class TerminalList(msgspec.Struct, frozen=True, kw_only=True):
    terminals: list[TerminalView]


class SettleView(msgspec.Struct, frozen=True, kw_only=True):
    """POST /v1/terminals/{id}/settle."""

    terminal_id: str
    ok: bool
    batch: str = ""
    count: int = 0
    total: int = 0
    message: str = ""


class ReconcileRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    terminal_id: str | None = None


class CleanupRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    older_than_minutes: Annotated[int, Meta(ge=1, le=525_600)] = 15  # at most a year


class CleanupView(msgspec.Struct, frozen=True, kw_only=True):
    cancelled: int


class ReportSection(msgspec.Struct, frozen=True, kw_only=True):
    """One of the guide's reports: its rows, each value as the database gave it (money in minor
    units, rates and ages as text)."""

    title: str
    period: Literal["hourly", "daily", "weekly"]
    columns: list[str]
    rows: list[list[int | str | bool | None]]


class ReportView(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/report."""

    sections: list[ReportSection]
