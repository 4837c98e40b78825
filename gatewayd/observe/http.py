"""The metrics listener: /metrics for Prometheus, /healthz, /readyz, and the status page at /."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gatewayd import __version__
from gatewayd.observe.metrics import Metrics


@dataclass
class StatusSource:
    """What the status page and readiness read."""

    terminals: Callable[[], list[dict[str, Any]]]
    recent_checkouts: Callable[[], Awaitable[list[dict[str, Any]]]]
    ready: Callable[[], Awaitable[bool]]
    store_id: str


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
    err = f'<div class="err">{html.escape(t["last_health_error"])}</div>' if t.get("last_health_error") else ""
    checked = html.escape((t.get("last_health_check") or "never")[:19].replace("T", " "))
    return (
        f'<div class="card" data-terminal="{html.escape(t["id"])}" data-status="{t["status"]}">'
        f'<span class="dot {t["status"]}"></span><b>{html.escape(t["name"])}</b> '
        f'<span class="meta">({html.escape(t["id"])})</span><div class="meta">{t["status"]} · queue '
        f"{t['queue_depth']} · checked {checked}</div>{err}</div>"
    )


def render(
    store_id: str, terminals: list[dict[str, Any]], checkouts: list[dict[str, Any]], orphans: int, db_up: bool
) -> str:
    """The status page: readable on a phone, refreshing itself, no external assets."""
    rows = "".join(
        f'<tr><td>{html.escape(c["order_number"])}</td><td class="{c["status"]}">{c["status"]}</td>'
        f"<td>{c['total'] / 100:.2f} {html.escape(c['currency'])}</td>"
        f"<td>{html.escape(c['created_at'][11:19])}</td></tr>"
        for c in checkouts
    )
    online = sum(1 for t in terminals if t["status"] == "online")
    orphan_class = "orphans bad" if orphans else "orphans"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="5">
<title>gatewayd · {html.escape(store_id)}</title><style>{_CSS}</style></head><body>
<h1>gatewayd · {html.escape(store_id)}</h1>
<div class="sub">terminals {online}/{len(terminals)} online · database {
        "up" if db_up else '<span class="bad">DOWN</span>'
    } · <span class="{orphan_class}" id="orphans">orphaned payments: {orphans}</span>
 · v{__version__}</div>
<div class="grid">{"".join(_terminal_card(t) for t in terminals)}</div>
<table><thead><tr><th>Order</th><th>Outcome</th><th>Total</th><th>Time (UTC)</th></tr></thead>
<tbody>{rows or '<tr><td colspan="4">no checkouts yet</td></tr>'}</tbody></table>
</body></html>"""


async def status_page(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    metrics = request.app[METRICS]
    try:
        checkouts = await source.recent_checkouts()
        db_up = True
    except Exception:
        checkouts, db_up = [], False
    page = render(source.store_id, source.terminals(), checkouts, metrics.snapshot.orphans, db_up)
    return web.Response(text=page, content_type="text/html")


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
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
