"""The OpenAPI 3.1 document, generated from the same Structs the server decodes and encodes with."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from gatewayd import __version__
from gatewayd.api.events import TYPES, StreamEvent
from gatewayd.api.wire import (
    CheckoutWithError,
    CleanupRequest,
    CleanupView,
    ErrorBody,
    HealthView,
    ReconcileRequest,
    ReportView,
    SettleView,
    TerminalList,
    TerminalView,
)
from gatewayd.checkout.model import CatalogView, CheckoutRequest, CheckoutView, RefundRequest
from gatewayd.checkout.targets import TargetsView

_REF = "#/components/schemas/{name}"
_ERRORS = {
    "400": "validation_error",
    "404": "not_found",
    "409": "idempotency_conflict, invalid_state or already_settled",
    "413": "payload_too_large",
    "422": "insufficient_inventory or unknown_terminal",
    "503": "terminal_offline, terminal_busy, database_unavailable or shutting_down",
    "504": "outcome_pending: poll GET /v1/checkouts/{id}",
    "500": "internal_error",
}


def _ref(struct: type) -> dict[str, Any]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _json(struct: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}}


def _with_checkout(description: str) -> dict[str, Any]:
    """An error answered with the checkout as it stands beside it (or a plain error body)."""
    schema = {"anyOf": [_ref(CheckoutWithError), _ref(ErrorBody)]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: type,
    *,
    body: type | None = None,
    extra: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = ("400", "404", "500"),
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _json(ok, "OK")}
    responses.update(extra or {})
    for status in errors:
        responses.setdefault(status, _json(ErrorBody, _ERRORS[status]))
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


def _events() -> dict[str, Any]:
    """GET /v1/events: Server-Sent Events; each `data:` is a StreamEvent (docs/api.md, Live events)."""

    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}

    return {
        "summary": "Live events (Server-Sent Events): terminal status, checkout progress, finished checkouts",
        "parameters": [
            query(
                "types",
                f"comma-separated event types to send (default all): {', '.join(sorted(TYPES))}",
                {"type": "string"},
            ),
            query("checkout", "only this checkout's events", {"type": "string", "format": "uuid"}),
            query("last_event_id", "as the Last-Event-ID header, for clients that cannot set it", {"type": "string"}),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "resume after this event id (`<run>-<n>`); one the daemon cannot resume from starts"
                " the stream with a stream.reset event",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {
                "description": "text/event-stream: `id: <run>-<n>`, `event: <type>`, `data: <StreamEvent JSON>`,"
                " and a `: heartbeat` comment when nothing else was sent for a while",
                "content": {"text/event-stream": {"schema": _ref_name("StreamEvent")}},
            },
            "400": _json(ErrorBody, _ERRORS["400"]),
            "503": _json(ErrorBody, "shutting_down: the daemon is stopping; reconnect once it is back"),
        },
    }


def _receipt() -> dict[str, Any]:
    """GET /v1/checkouts/{id}/receipt: plain text for a thermal printer, or HTML (Accept)."""
    text = {"type": "string"}
    return {
        "summary": "The checkout's receipt: the sale, a void and each refund as slips of their own",
        "parameters": [
            *_ID,
            {
                "name": "width",
                "in": "query",
                "required": False,
                "description": "columns of the plain-text receipt (default: [receipt] width, 48)",
                "schema": {"type": "integer", "enum": [40, 48]},
            },
            {
                "name": "copy",
                "in": "query",
                "required": False,
                "description": "whose copy: the terminal's own receipt text of that copy follows each card",
                "schema": {"type": "string", "enum": ["customer", "merchant"], "default": "customer"},
            },
        ],
        "responses": {
            "200": {
                "description": "text/plain (every line at most `width` columns) unless Accept prefers text/html",
                "content": {"text/plain": {"schema": text}, "text/html": {"schema": text}},
            },
            "400": _json(ErrorBody, "validation_error: width or copy"),
            "404": _json(ErrorBody, _ERRORS["404"]),
            "409": _json(ErrorBody, "invalid_state: the checkout is not final yet"),
            "503": _json(ErrorBody, "database_unavailable"),
        },
    }


def _ref_name(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    structs = [
        CheckoutRequest,
        CheckoutView,
        CheckoutWithError,
        RefundRequest,
        ErrorBody,
        HealthView,
        TerminalView,
        TerminalList,
        SettleView,
        ReconcileRequest,
        CleanupRequest,
        CleanupView,
        ReportView,
        CatalogView,
        TargetsView,
    ]
    (*_, stream_event), components = msgspec.json.schema_components([*structs, StreamEvent], ref_template=_REF)
    # The `data:` of every event of GET /v1/events, one Struct per `event:` type (`type` repeats it).
    components["StreamEvent"] = stream_event
    all_errors = ("400", "404", "409", "413", "422", "503", "504", "500")
    paths: dict[str, Any] = {
        "/v1/health": {"get": _op("Daemon, database and terminal health", HealthView, errors=("500",))},
        "/v1/terminals": {"get": _op("All terminals", TerminalList, errors=("500",))},
        "/v1/terminals/{id}": {"get": _op("One terminal", TerminalView, params=_ID)},
        "/v1/terminals/{id}/settle": {
            "post": _op(
                "Settle the terminal's open batch",
                SettleView,
                params=_ID,
                errors=("404", "409", "503", "500"),
            )
        },
        "/v1/catalog": {
            "get": _op("The stocked SKUs, with what is available to sell now", CatalogView, errors=("503", "500"))
        },
        "/v1/checkouts": {
            "post": _op(
                "Take payment for an order (blocks until final or the wait runs out)",
                CheckoutView,
                body=CheckoutRequest,
                errors=all_errors,
                extra={
                    "402": _json(
                        CheckoutWithError, "card_declined or checkout_cancelled: the checkout, every tender's fate"
                    ),
                    "409": _with_checkout(
                        "idempotency_conflict, or invalid_state (replay of a voided/refunded checkout)"
                    ),
                    "503": _with_checkout(_ERRORS["503"] + " (after the intent: with the checkout)"),
                    "504": _with_checkout("outcome_pending: the checkout as it stands; poll it"),
                },
            ),
            "get": _op(
                "Find a checkout by idempotency key",
                CheckoutView,
                params=[{"name": "idempotency_key", "in": "query", "required": True, "schema": {"type": "string"}}],
            ),
        },
        "/v1/checkouts/{id}": {"get": _op("A checkout in whatever state it is", CheckoutView, params=_ID)},
        "/v1/checkouts/{id}/receipt": {"get": _receipt()},
        "/v1/checkouts/{id}/void": {
            "post": _op(
                "Void every card tender and cancel the order",
                CheckoutView,
                params=_ID,
                errors=all_errors,
                extra={
                    "409": _json(ErrorBody, "invalid_state, or already_settled: refund it instead"),
                    "504": _with_checkout("outcome_pending: the void is not confirmed yet; ask again"),
                },
            )
        },
        "/v1/checkouts/{id}/refunds": {
            "post": _op(
                "Refund through the terminal",
                CheckoutView,
                params=_ID,
                body=RefundRequest,
                errors=all_errors,
                extra={
                    "402": _json(CheckoutWithError, "refund_declined: nothing was refunded"),
                    "504": _with_checkout("outcome_pending: the refund's outcome is not known yet"),
                },
            )
        },
        "/v1/orphans": {
            "get": {
                "summary": "Approved charges with no completed order",
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/v1/reconcile": {
            "post": {
                "summary": "A terminal batch compared with the database",
                "requestBody": {"content": {"application/json": {"schema": _ref(ReconcileRequest)}}},
                "responses": {"200": {"description": "OK"}, "400": _json(ErrorBody, _ERRORS["400"])},
            }
        },
        "/v1/maintenance/cleanup": {"post": _op("Cancel stale pending orders", CleanupView, body=CleanupRequest)},
        "/v1/events": {"get": _events()},
        "/v1/report/targets": {
            "get": _op(
                "The deployment guide's success metrics, measured, against its week-one, week-two and month-one"
                " targets",
                TargetsView,
                errors=("503", "500"),
            )
        },
        "/v1/report": {
            "get": _op(
                "The deployment guide's hourly, daily and weekly reports",
                ReportView,
                params=[
                    {
                        "name": "period",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["hourly", "daily", "weekly"]},
                    }
                ],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "gatewayd local API", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


@functools.cache
def document_bytes() -> bytes:
    return msgspec.json.encode(document())
