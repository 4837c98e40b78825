"""The final check: I1-I8 (tests/invariants.py against PostgreSQL and the simulator's ledger),
I6 by replay, what the cashier was told against what happened, and I9 hygiene."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import asyncpg

from chaos.clients import CheckoutRecord
from gatewayd.api.client import GatewayClient
from tests.invariants import COMPLETED, InvariantViolation, check_money_invariants

INVARIANTS = ("I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9")
OPEN_ORDERS = ("pending_payment", "payment_processing", "payment_authorized")
OPEN_TENDERS = ("pending", "processing", "unknown")

# A whole token of 13-19 digits: not part of a longer alphanumeric token (reference ids, hex)
# and not the fraction or integer part of a decimal number (metrics values such as 0.00185361700005).
_DIGITS = re.compile(r"(?<![0-9A-Za-z])(?<![0-9]\.)[0-9]{13,19}(?![0-9A-Za-z])(?!\.[0-9])")
_GROUPED = re.compile(
    r"(?<![0-9A-Za-z-])(?<![0-9]\.)[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,3})?"
    r"(?![0-9A-Za-z-])"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_numbers(text: str) -> list[str]:
    """13-19 digit numbers passing Luhn (bare, or in groups of four separated by spaces/dashes)."""
    found = [m.group(0) for m in _DIGITS.finditer(text) if luhn_ok(m.group(0))]
    for m in _GROUPED.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            found.append(m.group(0))
    return found


def secrets_in(text: str, secrets: list[str]) -> list[str]:
    from urllib.parse import quote

    return [s for s in secrets if s in text or quote(s, safe="") in text]


async def open_work(conn: asyncpg.Connection, store_id: str) -> tuple[int, int]:
    orders = await conn.fetchval(
        "SELECT count(*) FROM orders WHERE store_id = $1 AND status = ANY($2::text[])", store_id, list(OPEN_ORDERS)
    )
    tenders = await conn.fetchval(
        "SELECT count(*) FROM payment_transactions WHERE store_id = $1 AND status = ANY($2::text[])",
        store_id,
        list(OPEN_TENDERS),
    )
    return int(orders), int(tenders)


async def wait_quiescent(dsn: str, store_id: str, timeout_s: float) -> tuple[bool, float, list[dict[str, Any]]]:
    """Until no order and no tender is unfinished (bounded); (quiet, seconds, what is still open)."""
    started = time.monotonic()
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                orders, tenders = await open_work(conn, store_id)
                if orders == 0 and tenders == 0:
                    return True, time.monotonic() - started, []
                if time.monotonic() - started > timeout_s:
                    rows = await conn.fetch(
                        """SELECT o.id::text AS order_id, o.idempotency_key, o.status, o.lease_owner,
                                  o.lease_until::text AS lease_until, o.updated_at::text AS updated_at,
                                  array_agg(t.reference_id || ':' || t.tender_type || ':' || t.status
                                            || ':' || coalesce(t.last_error, '')) AS tenders
                             FROM orders o JOIN payment_transactions t
                               ON t.store_id = o.store_id AND t.order_id = o.id
                            WHERE o.store_id = $1 AND (o.status = ANY($2::text[]) OR t.status = ANY($3::text[]))
                            GROUP BY o.store_id, o.id ORDER BY o.created_at""",
                        store_id,
                        list(OPEN_ORDERS),
                        list(OPEN_TENDERS),
                    )
                    return False, time.monotonic() - started, [dict(r) for r in rows]
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            if time.monotonic() - started > timeout_s:
                return False, time.monotonic() - started, [{"error": "database unreachable"}]
        await asyncio.sleep(0.2)


async def ledger(sim_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(sim_url + "/_sim/ledger") as resp:
        data = await resp.json()
    return list(data["transactions"])


def classify_problems(text: str) -> dict[str, list[str]]:
    """InvariantViolation text -> problems by invariant."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        m = re.match(r"^(I\d):", line.strip())
        out[m.group(1) if m else "I?"].append(line.strip())
    return out


async def money_invariants(
    dsn: str, store_id: str, sim_ledger: list[dict[str, Any]], tpns: dict[str, str], stock: dict[str, int]
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """tests/invariants.check_money_invariants: I1-I5, I7 (nothing undecided), I8."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        counts = await check_money_invariants(
            conn, store_id, [t for t in sim_ledger if t["tpn"] in set(tpns.values())], tpns, stock
        )
        return {}, counts
    except InvariantViolation as exc:
        return classify_problems(str(exc)), {}
    finally:
        await conn.close()


async def told_vs_final(dsn: str, store_id: str, records: list[CheckoutRecord]) -> tuple[list[str], dict[str, str]]:
    """What the cashier was told must be what happened: a completed answer is a completed order,
    a failed answer a failed one. Returns (problems, final status by key)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch("SELECT idempotency_key, status FROM orders WHERE store_id = $1", store_id)
    finally:
        await conn.close()
    final = {r["idempotency_key"]: r["status"] for r in rows}
    problems: list[str] = []
    for rec in records:
        problems += [f"{rec.key}: {p}" for p in rec.problems]
        told, actual = rec.told, final.get(rec.key)
        if told == "completed" and actual not in COMPLETED:
            problems.append(f"I6: {rec.key} answered completed, the order is {actual}")
        elif told in ("payment_failed", "cancelled") and actual != told:
            problems.append(f"I6: {rec.key} answered {told}, the order is {actual}")
        elif told is not None and told.startswith("rejected:") and actual is not None:
            problems.append(f"I6: {rec.key} answered {told} but an order exists ({actual})")
    return problems, final


async def replay(
    socket_path: str, sim_url: str, records: list[CheckoutRecord], final: dict[str, str], limit: int = 60
) -> tuple[list[str], int]:
    """I6 after the heal: the same key and body answer the final outcome and charge nothing new;
    the same key with another body is refused (409) without touching a terminal."""
    problems: list[str] = []
    sample = [r for r in records if r.key in final][:limit]
    before = await ledger(sim_url)
    async with GatewayClient(socket_path, timeout_s=30) as client:
        for rec in sample:
            answer = await client.checkout(rec.body)
            status = answer.body.get("status") if isinstance(answer.body, dict) else None
            if status != final[rec.key]:
                problems.append(f"I6: replay of {rec.key} answered {answer.status} {status}, final is {final[rec.key]}")
        for rec in sample[: max(1, limit // 6)]:
            other = {
                **rec.body,
                "tenders": [{"type": "cash", "amount": rec.spec.total + 1}],
                "lines": [{"sku": rec.spec.sku, "quantity": 1, "unit_price": rec.spec.total + 1}],
            }
            answer = await client.checkout(other)
            if answer.status != 409 or answer.error_code != "idempotency_conflict":
                problems.append(f"I6: {rec.key} with another body answered {answer.status} {answer.error_code}")
    after = await ledger(sim_url)
    if after != before:
        problems.append(f"I6: replays changed the terminal ledger ({len(before)} -> {len(after)} rows)")
    return problems, len(sample)


async def hygiene(log_text: str, dsn: str, metrics_url: str, secrets: list[str]) -> tuple[list[str], dict[str, int]]:
    """I9: no card number and no secret in the daemon's log, the database or /metrics."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                " AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ]
        dump_parts = []
        for table in tables:
            rows = await conn.fetch(f'SELECT row_to_json(t)::text AS j FROM "{table}" t')
            dump_parts += [r["j"] for r in rows]
    finally:
        await conn.close()
    dump = "\n".join(dump_parts)
    metrics = ""
    try:
        async with aiohttp.ClientSession() as s, s.get(metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            metrics = await r.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [f"I9: /metrics could not be scraped: {exc}"], {}
    problems: list[str] = []
    for where, text in (("daemon log", log_text), ("database", dump), ("/metrics", metrics)):
        for number in card_numbers(text)[:5]:
            problems.append(f"I9: card-like number {number} in the {where}")
        for secret in secrets_in(text, secrets):
            problems.append(f"I9: auth key {secret[:3]}… in the {where}")
    return problems, {
        "log_bytes": len(log_text),
        "db_rows": len(dump_parts),
        "db_bytes": len(dump),
        "metrics_bytes": len(metrics),
    }


def gateway_summary(
    records: list[CheckoutRecord],
    final: dict[str, str],
    sim_ledger: list[dict[str, Any]],
    tenders: list[dict[str, Any]],
    tpns: set[str],
) -> dict[str, Any]:
    """The gatewayd row, from the ledger and the database (not from what the POS believed)."""
    charges = [
        t
        for t in sim_ledger
        if t["tpn"] in tpns and t["type"] in ("sale", "auth", "capture") and t["status"] in ("approved", "captured")
    ]
    by_ref = {t["reference_id"]: t for t in tenders}
    orders: dict[str, dict[str, Any]] = {}
    for t in tenders:
        orders.setdefault(t["order_id"], {"status": t["order_status"], "cards": []})
        if t["tender_type"] == "card" and t["kind"] == "payment":
            orders[t["order_id"]]["cards"].append(t)
    charged_per_order: Counter[str] = Counter()
    charge_by_ref = {}
    orphaned = 0
    for c in charges:
        row = by_ref.get(c["reference_id"])
        charge_by_ref[c["reference_id"]] = c
        if row is None or row["order_status"] not in COMPLETED:
            orphaned += 1
        if row is not None:
            charged_per_order[row["order_id"]] += 1
    double = sum(1 for oid, n in charged_per_order.items() if n > len(orders[oid]["cards"]))
    lost = 0
    for o in orders.values():
        if o["status"] in COMPLETED and any(
            c["reference_id"] not in charge_by_ref or charge_by_ref[c["reference_id"]]["amount"] != c["amount"]
            for c in o["cards"]
        ):
            lost += 1
    attempted = len(records)
    completed = sum(1 for r in records if final.get(r.key) in COMPLETED)
    declined = sum(1 for r in records if final.get(r.key) == "payment_failed")
    return {
        "attempted": attempted,
        "completed": completed,
        "charges": len(charges),
        "charged_amount": sum(c["amount"] for c in charges),
        "orphaned": orphaned,
        "orphaned_amount": sum(
            c["amount"]
            for c in charges
            if by_ref.get(c["reference_id"]) is None or by_ref[c["reference_id"]]["order_status"] not in COMPLETED
        ),
        "double": double,
        "lost": lost,
        "failed_final": declined,
        "never_recorded": sum(1 for r in records if r.key not in final),
        "gave_up": sum(1 for r in records if r.gave_up),
        "failure_rate": (attempted - completed) / attempted if attempted else 0.0,
    }
