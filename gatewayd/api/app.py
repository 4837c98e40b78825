"""The local HTTP/JSON API (aiohttp): routes, validation, error bodies, the TCP bearer token."""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import msgspec
from aiohttp import web

from gatewayd import __version__
from gatewayd.api import events as live
from gatewayd.api import openapi
from gatewayd.api.errors import FAILED_CHECKOUT_STATUS, http_status, retry_hint
from gatewayd.api.wire import (
    CheckoutWithError,
    CleanupRequest,
    CleanupView,
    ErrorBody,
    ErrorInfo,
    HealthView,
    ReconcileRequest,
    ReportSection,
    ReportView,
    SettleView,
    TerminalCounts,
    TerminalList,
    TerminalView,
)
from gatewayd.checkout import receipt as receipts
from gatewayd.checkout.coordinator import Coordinator
from gatewayd.checkout.errors import CheckoutError, InvalidRequest, NotAllowed, NotFound, ShuttingDown
from gatewayd.checkout.model import CheckoutRequest, CheckoutView, RefundRequest
from gatewayd.store.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Terminals(Protocol):
    """What the API reads and asks of the store's terminals."""

    def views(self) -> list[TerminalView]: ...
    def counts(self) -> tuple[int, int]: ...
    def view(self, terminal_id: str) -> TerminalView | None: ...
    async def settle(self, terminal_id: str) -> SettleView: ...


class Operations(Protocol):
    """Operator work: orphans, reconciliation, cleanup (answers are plain JSON-able objects)."""

    async def orphans(self) -> Any: ...
    async def reconcile(self, terminal_id: str | None) -> Any: ...
    async def cleanup(self, older_than_minutes: int) -> int: ...
    async def report(self, period: str | None = None) -> list[dict[str, Any]]: ...
    async def targets(self) -> Any: ...


@dataclass
class ApiContext:
    coordinator: Coordinator
    terminals: Terminals
    db: Database
    operations: Operations | None = None
    checkout_wait_s: float = 90.0
    tcp_token: str | None = None
    events: live.EventHub | None = None
    # The store's receipt header and default width ([receipt]; read at each request: a reload applies)
    receipt: Callable[[], tuple[receipts.Header, int]] | None = None


CONTEXT = web.AppKey("context", ApiContext)
MAX_BODY = web.AppKey("max_body_bytes", int)
_ENCODER = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200) -> web.Response:
    """Encode a Struct (or builtins) with msgspec."""
    return web.Response(body=_ENCODER.encode(value), status=status, content_type="application/json")


def error_response(
    code: str, message: str, details: dict[str, Any] | None = None, status: int | None = None
) -> web.Response:
    body = ErrorBody(error=ErrorInfo(code=code, message=message, retry=retry_hint(code), details=details or {}))
    return json_response(body, status or http_status(code))


_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<key>[^`]+)`")


def _decode_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> web.Response:
    text = str(exc)
    path = ""
    if " - at `$" in text:
        text, _, rest = text.partition(" - at `$")
        path = rest.rstrip("`").lstrip(".")
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return error_response("validation_error", f"malformed JSON: {text}", {"field": "(body)"})
    if named := _NAMED_FIELD.match(text):
        path = f"{path}.{named['key']}" if path else named["key"]
    field = path or "(body)"
    return error_response("validation_error", f"{field}: {text.replace('`', '')}", {"field": field})


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """Read and strictly decode the body; raises an aiohttp response on bad input."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise _as_exception(error_response("unsupported_media_type", "send application/json"))
    body = await request.read()
    try:
        return msgspec.json.decode(body or b"{}", type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _as_exception(_decode_error(exc)) from None
    except UnicodeDecodeError:  # msgspec raises it for invalid UTF-8 inside a JSON string
        raise _as_exception(
            error_response("validation_error", "malformed JSON: not valid UTF-8", {"field": "(body)"})
        ) from None


class _Answer(web.HTTPException):
    """Carries a prepared response out of nested code."""

    def __init__(self, response: web.Response) -> None:
        super().__init__()
        self.response = response


def _as_exception(response: web.Response) -> _Answer:
    return _Answer(response)


def _is_tcp(request: web.Request) -> bool:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return isinstance(sockname, tuple)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token on TCP, error bodies for everything, and the daemon keeps serving."""
    ctx = request.app[CONTEXT]
    if _is_tcp(request):
        header = request.headers.get("Authorization", "")
        token = ctx.tcp_token
        if not token or not hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
            return error_response("unauthorized", "a valid bearer token is required")
    try:
        return await handler(request)
    except _Answer as answer:
        return answer.response
    except CheckoutError as exc:
        if isinstance(exc.checkout, CheckoutView):
            return _with_error(exc.checkout, exc.code, exc.message, exc.details)
        return error_response(exc.code, exc.message, exc.details)
    except web.HTTPRequestEntityTooLarge:
        return error_response("payload_too_large", "the body is over the limit", {"max_bytes": request.app[MAX_BODY]})
    except web.HTTPNotFound:
        return error_response("not_found", f"no such path: {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        return error_response(
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}",
            {"allowed": sorted(exc.allowed_methods)},
        )
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response("internal_error", "internal error; the checkout is left for recovery")


def _with_error(
    view: CheckoutView, code: str, message: str, details: dict[str, Any] | None = None, status: int | None = None
) -> web.Response:
    """A non-2xx answer that carries the checkout as it stands, with the error beside it."""
    body = CheckoutWithError(
        **msgspec.structs.asdict(view),
        error=ErrorInfo(
            code=code,
            message=message,
            retry=retry_hint(code),
            details={"checkout_id": view.id, **(details or {})},
        ),
    )
    return json_response(body, status or http_status(code))


def _checkout_response(view: CheckoutView) -> web.Response:
    """The answer to POST /v1/checkouts: 200 only for a completed checkout. A failed or cancelled
    one is final and answers its error beside the checkout (402, or 503 when a terminal was to
    blame); one completed and since voided or refunded answers 409; anything not final 504."""
    status = view.status
    if status == "completed":
        return json_response(view)
    if status == "payment_failed":
        failure = view.failure.code if view.failure else ""
        code = failure if failure in FAILED_CHECKOUT_STATUS else "card_declined"
        message = view.failure.message if view.failure else "payment failed"
        details: dict[str, Any] = {"failure": failure} if failure != code else {}
        if view.failure is not None and view.failure.reason is not None:
            details["reason"] = view.failure.reason  # why, for the POS to branch on (docs/api.md)
        return _with_error(view, code, message, details or None)
    if status == "cancelled":
        message = view.failure.message if view.failure else "cancelled before any card was charged"
        return _with_error(view, "checkout_cancelled", message + "; nothing is owed: start a new checkout")
    if view.final:
        return _with_error(
            view, "invalid_state", f"this checkout completed and has since been {status.replace('_', ' ')}"
        )
    return _with_error(view, "outcome_pending", "the outcome is not known yet; the checkout goes on: poll it")


def _uuid(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such checkout") from None


# ------------------------------------------------------------------ handlers


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    total, online = ctx.terminals.counts()
    db_up = await ctx.db.ping()
    status: Literal["ok", "degraded"] = "ok" if db_up and online == total else "degraded"
    return json_response(
        HealthView(
            status=status,
            database="up" if db_up else "down",
            terminals=TerminalCounts(total=total, online=online),
            version=__version__,
            checkouts_in_flight=ctx.coordinator.in_flight,
        )
    )


async def list_terminals(request: web.Request) -> web.Response:
    return json_response(TerminalList(terminals=request.app[CONTEXT].terminals.views()))


async def get_terminal(request: web.Request) -> web.Response:
    view = request.app[CONTEXT].terminals.view(request.match_info["id"])
    if view is None:
        raise NotFound(f"no terminal {request.match_info['id']!r}")
    return json_response(view)


async def settle_terminal(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if ctx.terminals.view(request.match_info["id"]) is None:
        raise NotFound(f"no terminal {request.match_info['id']!r}")
    return json_response(await ctx.terminals.settle(request.match_info["id"]))


async def catalog(request: web.Request) -> web.Response:
    return json_response(await request.app[CONTEXT].coordinator.catalog())


async def create_checkout(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    checkout = await decode_body(request, CheckoutRequest)
    view = await ctx.coordinator.checkout(checkout, ctx.checkout_wait_s)
    return _checkout_response(view)


async def get_checkout(request: web.Request) -> web.Response:
    return json_response(await request.app[CONTEXT].coordinator.get(_uuid(request)))


async def find_checkout(request: web.Request) -> web.Response:
    key = request.query.get("idempotency_key")
    if not key:
        raise InvalidRequest("idempotency_key", "query parameter idempotency_key is required")
    if len(key) > 200 or not re.fullmatch(r"[\x21-\x7e]+", key):
        raise InvalidRequest("idempotency_key", "1 to 200 printable ASCII characters, no spaces")
    return json_response(await request.app[CONTEXT].coordinator.get(key=key))


def _prefers_html(accept: str) -> bool:
    """Whether an Accept header asks for HTML before plain text (q-values honoured)."""
    best: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best[kind.lower()] = max(q, best.get(kind.lower(), 0.0))
    html_q = max(best.get("text/html", 0.0), best.get("application/xhtml+xml", 0.0))
    text_q = max(best.get("text/plain", 0.0), best.get("text/*", 0.0), best.get("*/*", 0.0) * 0.99)
    return html_q > 0 and html_q >= text_q


async def checkout_receipt(request: web.Request) -> web.Response:
    """GET /v1/checkouts/{id}/receipt[?width=40|48][&copy=customer|merchant]: the receipt as
    plain text (default) or HTML (Accept: text/html)."""
    ctx = request.app[CONTEXT]
    header, default_width = ctx.receipt() if ctx.receipt is not None else (receipts.Header(name="gatewayd"), 48)
    width_text = request.query.get("width")
    if width_text is not None and width_text not in ("40", "48"):
        raise InvalidRequest("width", "40 or 48 columns (left out: the store's [receipt] width)")
    copy = request.query.get("copy", "customer")
    if copy not in ("customer", "merchant"):
        raise InvalidRequest("copy", "customer or merchant")
    view, lines, voided_at = await ctx.coordinator.receipt(_uuid(request))
    if not view.final:
        raise NotAllowed(
            f"checkout {view.id} is {view.status.replace('_', ' ')}: its receipt is printed once it is final",
            details={"checkout_id": view.id, "status": view.status},
        )
    data = receipts.Receipt(
        checkout=view,
        lines=tuple(receipts.Line(x["sku"], x["quantity"], x["unit_price"], x.get("name")) for x in lines),
        header=header,
        voided_at=None if voided_at is None else voided_at.isoformat(),
    )
    which: receipts.Copy = "merchant" if copy == "merchant" else "customer"
    if _prefers_html(request.headers.get("Accept", "")):
        return web.Response(text=receipts.render_html(data, which), content_type="text/html", charset="utf-8")
    width = int(width_text) if width_text is not None else default_width
    return web.Response(text=receipts.render_text(data, width, which), content_type="text/plain", charset="utf-8")


async def void_checkout(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    return json_response(await ctx.coordinator.void(_uuid(request), ctx.checkout_wait_s))


async def refund_checkout(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    refund = await decode_body(request, RefundRequest)
    return json_response(await ctx.coordinator.refund(_uuid(request), refund, ctx.checkout_wait_s))


def _operations(request: web.Request) -> Operations:
    ops = request.app[CONTEXT].operations
    if ops is None:
        raise NotFound("operator endpoints are not enabled")
    return ops


async def orphans(request: web.Request) -> web.Response:
    return json_response(await _operations(request).orphans())


async def reconcile(request: web.Request) -> web.Response:
    body = await decode_body(request, ReconcileRequest)
    return json_response(await _operations(request).reconcile(body.terminal_id))


async def cleanup(request: web.Request) -> web.Response:
    body = await decode_body(request, CleanupRequest)
    if body.older_than_minutes < 1:
        raise InvalidRequest("older_than_minutes", "must be at least 1")
    return json_response(CleanupView(cancelled=await _operations(request).cleanup(body.older_than_minutes)))


async def report(request: web.Request) -> web.Response:
    period = request.query.get("period") or None
    if period not in (None, "hourly", "daily", "weekly"):
        raise InvalidRequest("period", "one of hourly, daily, weekly (or leave it out for all three)")
    sections = await _operations(request).report(period)
    return json_response(ReportView(sections=[msgspec.convert(s, ReportSection) for s in sections]))


async def report_targets(request: web.Request) -> web.Response:
    """GET /v1/report/targets: the guide's success metrics against its targets."""
    return json_response(await _operations(request).targets())


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: the live event stream (text/event-stream), filtered by ?types= and
    ?checkout=, resumed from Last-Event-ID (or ?last_event_id=, for clients that cannot set it)."""
    hub = request.app[CONTEXT].events
    if hub is None:
        raise NotFound("the event stream is not enabled")
    types = live.parse_types(request.query.get("types"))
    if types is None:
        raise InvalidRequest("types", f"a comma-separated list of: {', '.join(sorted(live.TYPES))}")
    checkout = request.query.get("checkout") or None
    if checkout is not None:
        try:
            checkout = str(uuid.UUID(checkout))
        except ValueError:
            raise InvalidRequest("checkout", "a checkout id (a UUID)") from None
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or None
    try:
        sub = hub.subscribe(types=types, checkout=checkout, last_event_id=last)
    except live.EventsClosed:
        raise ShuttingDown("the daemon is shutting down; reconnect once it is back") from None
    return await live.stream(request, hub, sub)


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.document_bytes(), content_type="application/json")


def build_app(ctx: ApiContext, *, max_body_bytes: int = 64 * 1024) -> web.Application:
    """The API application; serve it on the unix socket (and the optional TCP listener)."""
    app = web.Application(middlewares=[guard], client_max_size=max_body_bytes)
    app[CONTEXT] = ctx
    app[MAX_BODY] = max_body_bytes
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/terminals", list_terminals)
    app.router.add_get("/v1/terminals/{id}", get_terminal)
    app.router.add_post("/v1/terminals/{id}/settle", settle_terminal)
    app.router.add_get("/v1/catalog", catalog)
    app.router.add_post("/v1/checkouts", create_checkout)
    app.router.add_get("/v1/checkouts", find_checkout)
    app.router.add_get("/v1/checkouts/{id}", get_checkout)
    app.router.add_get("/v1/checkouts/{id}/receipt", checkout_receipt)
    app.router.add_post("/v1/checkouts/{id}/void", void_checkout)
    app.router.add_post("/v1/checkouts/{id}/refunds", refund_checkout)
    app.router.add_get("/v1/orphans", orphans)
    app.router.add_post("/v1/reconcile", reconcile)
    app.router.add_post("/v1/maintenance/cleanup", cleanup)
    app.router.add_get("/v1/report", report)
    app.router.add_get("/v1/report/targets", report_targets)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/openapi.json", openapi_document)
    return app
