"""The metrics listener: /metrics for Prometheus, /healthz, /readyz, and the status page at /.

The status page keeps itself up to date from the live event stream (`/events` here: terminal
status and finished checkouts only, the same hub as the API's GET /v1/events): a terminal's card
changes in place, and a finished checkout (or a stream.reset) re-reads the page's tables.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gatewayd import __version__
from gatewayd.api import events as live
from gatewayd.observe.metrics import Metrics


@dataclass
class StatusSource:
    """What the status page and readiness read."""

    terminals: Callable[[], list[dict[str, Any]]]
    recent_checkouts: Callable[[], Awaitable[list[dict[str, Any]]]]
    ready: Callable[[], Awaitable[bool]]
    store_id: str
    events: live.EventHub | None = None


SOURCE = web.AppKey("source", StatusSource)
METRICS = web.AppKey("metrics", Metrics)

_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#111}
h1{font-size:1.3rem;margin:0 0 4px} .sub{color:#555;font-size:.85rem;margin-bottom:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{background:#fff;border-radius:10px;padding:10px 12px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.dot{display:inline-block;width:14px;height:14px;border-radius:50%;vertical-align:middle;margin-right:6px}
.online{background:#1a9e3f}.offline{background:#d11f1f}.busy{background:#e8a200}.unknown{background:#888}
.err{color:#b00;font-size:.8rem;word-break:break-word} .meta{color:#555;font-size:.8rem}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:10px;overflow:hidden;margin-top:10px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eee;font-size:.85rem}
.completed{color:#1a9e3f}.payment_failed,.cancelled{color:#d11f1f}
.orphans{font-weight:bold} .bad{color:#d11f1f}
"""


def _terminal_card(t: dict[str, Any]) -> str:
    err = html.escape(t.get("last_health_error") or "")
    checked = html.escape((t.get("last_health_check") or "never")[:19].replace("T", " "))
    return (
        f'<div class="card" data-terminal="{html.escape(t["id"])}" data-status="{t["status"]}">'
        f'<span class="dot {t["status"]}"></span><b>{html.escape(t["name"])}</b> '
        f'<span class="meta">({html.escape(t["id"])})</span><div class="meta"><span class="state">{t["status"]}'
        f'</span> · queue {t["queue_depth"]} · checked {checked}</div><div class="err">{err}</div></div>'
    )


# Live updates from /events. The stream starts after the event this page was rendered at (the
# script's data-last-event), so nothing that happens in between is missed; a finished checkout or a
# stream.reset (events were missed) re-reads the page and swaps its tables in.
_SCRIPT = """
(function () {
  if (!window.EventSource) { setTimeout(function () { location.reload(); }, 5000); return; }
  var last = document.currentScript.dataset.lastEvent;
  var url = "events?types=terminal.status,checkout.finished";
  if (last) url += "&last_event_id=" + encodeURIComponent(last);
  var source = new EventSource(url);
  function online() {
    var cards = document.querySelectorAll(".card[data-terminal]"), n = 0;
    cards.forEach(function (c) { if (c.dataset.status === "online") n++; });
    document.getElementById("online").textContent = n + "/" + cards.length;
  }
  source.addEventListener("terminal.status", function (e) {
    var d = JSON.parse(e.data);
    document.querySelectorAll(".card[data-terminal]").forEach(function (card) {
      if (card.dataset.terminal !== d.terminal_id) return;
      card.dataset.status = d.status;
      card.querySelector(".dot").className = "dot " + d.status;
      card.querySelector(".state").textContent = d.status;
      card.querySelector(".err").textContent = d.last_error || "";
    });
    online();
  });
  var pending = null;
  function reread() {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      fetch(location.pathname, {cache: "no-store"}).then(function (r) { return r.text(); }).then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        ["#sub", "#terminals", "#checkouts"].forEach(function (id) {
          document.querySelector(id).innerHTML = page.querySelector(id).innerHTML;
        });
      }).catch(function () {});
    }, 250);
  }
  source.addEventListener("checkout.finished", reread);
  source.addEventListener("stream.reset", reread);
  source.addEventListener("open", function () { document.body.dataset.live = "1"; });
  source.addEventListener("error", function () { document.body.dataset.live = "0"; });
})();
"""


def render(
    store_id: str,
    terminals: list[dict[str, Any]],
    checkouts: list[dict[str, Any]],
    orphans: int,
    db_up: bool,
    last_event: str | None = None,
) -> str:
    """The status page: readable on a phone, kept up to date by the event stream (a reload every
    5 s without JavaScript), no external assets. `last_event`: the newest event it shows."""
    rows = "".join(
        f'<tr><td>{html.escape(c["order_number"])}</td><td class="{c["status"]}">{c["status"]}</td>'
        f"<td>{c['total'] / 100:.2f} {html.escape(c['currency'])}</td>"
        f"<td>{html.escape(c['created_at'][11:19])}</td></tr>"
        for c in checkouts
    )
    online = sum(1 for t in terminals if t["status"] == "online")
    orphan_class = "orphans bad" if orphans else "orphans"
    script = f'<script data-last-event="{html.escape(last_event)}">{_SCRIPT}</script>' if last_event is not None else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">{
        '<noscript><meta http-equiv="refresh" content="5"></noscript>'
        if last_event is not None
        else '<meta http-equiv="refresh" content="5">'
    }
<title>gatewayd · {html.escape(store_id)}</title><style>{_CSS}</style></head><body>
<h1>gatewayd · {html.escape(store_id)}</h1>
<div class="sub" id="sub">terminals <span id="online">{online}/{len(terminals)}</span> online · database {
        "up" if db_up else '<span class="bad">DOWN</span>'
    } · <span class="{orphan_class}" id="orphans">orphaned payments: {orphans}</span>
 · v{__version__}</div>
<div class="grid" id="terminals">{"".join(_terminal_card(t) for t in terminals)}</div>
<table><thead><tr><th>Order</th><th>Outcome</th><th>Total</th><th>Time (UTC)</th></tr></thead>
<tbody id="checkouts">{rows or '<tr><td colspan="4">no checkouts yet</td></tr>'}</tbody></table>
{script}</body></html>"""


async def status_page(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    metrics = request.app[METRICS]
    # The newest event, read before the state it goes with: the page's stream resumes after it.
    last_event = source.events.last_id if source.events is not None else None
    try:
        checkouts = await source.recent_checkouts()
        db_up = True
    except Exception:
        checkouts, db_up = [], False
    page = render(source.store_id, source.terminals(), checkouts, metrics.snapshot.orphans, db_up, last_event)
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


STATUS_TYPES = frozenset({"terminal.status", "checkout.finished"})


async def events(request: web.Request) -> web.StreamResponse:
    """The status page's event stream: terminal status and finished checkouts (no idempotency
    keys or checkout progress on this unauthenticated listener)."""
    hub = request.app[SOURCE].events
    if hub is None:
        raise web.HTTPNotFound()
    types = live.parse_types(request.query.get("types"))
    try:
        sub = hub.subscribe(
            types=(types or STATUS_TYPES) & STATUS_TYPES,
            last_event_id=request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or None,
        )
    except live.EventsClosed:
        raise web.HTTPServiceUnavailable() from None
    return await live.stream(request, hub, sub)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    ready = await request.app[SOURCE].ready()
    return web.Response(text="ready\n" if ready else "not ready\n", status=200 if ready else 503)


def build_metrics_app(metrics: Metrics, source: StatusSource) -> web.Application:
    app = web.Application()
    app[METRICS] = metrics
    app[SOURCE] = source
    app.router.add_get("/", status_page)
    app.router.add_get("/events", events)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
