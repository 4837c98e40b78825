"""The final check: I1-I8 (tests/invariants.py against PostgreSQL and the simulator's ledger),
I6 by replay, what the cashier was told against what happened, and I9 hygiene; before it, what
the operator does after a day like that (refund every orphan gatewayd lists with action refund),
and after it, every charge without goods accounted for and every keypad void reconciled."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import asyncpg

from gatewayd.api.client import GatewayClient
from gatewayd.checkout.machine import UNREACHED
from tests.chaos.clients import CheckoutRecord
from tests.chaos.nemesis import KeypadVoid
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


async def ledger(simulator_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(simulator_url + "/_sim/ledger") as resp:
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
    dsn: str,
    store_id: str,
    sim_ledger: list[dict[str, Any]],
    tpns: dict[str, str],
    stock: dict[str, int],
    orphan_refs: set[str] | None = None,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """tests/invariants.check_money_invariants: I1-I5, I7 (nothing undecided), I8."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        counts = await check_money_invariants(
            conn,
            store_id,
            [t for t in sim_ledger if t["tpn"] in set(tpns.values())],
            tpns,
            stock,
            orphan_refs=orphan_refs,
        )
        return {}, counts
    except InvariantViolation as exc:
        return classify_problems(str(exc)), {}
    finally:
        await conn.close()


async def orphans(socket_path: str, timeout_s: float) -> list[dict[str, Any]] | None:
    """GET /v1/orphans (retried while the daemon is away, bounded); None if never answered."""
    deadline = time.monotonic() + timeout_s
    async with GatewayClient(socket_path, timeout_s=10) as client:
        while True:
            try:
                answer = await client.orphans()
                if answer.status == 200 and isinstance(answer.body, dict):
                    return list(answer.body["orphans"])
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.3)


async def refund_orphans(socket_path: str, timeout_s: float) -> dict[str, Any]:
    """What the operator does after the heal: every orphan listed with action `refund` (its batch
    settled, so it could not be voided) is refunded through POST /v1/checkouts/{id}/refunds for
    its amount (the customer taps the card again), one key per orphan, retried with that key
    while the answer is not final (bounded)."""
    deadline = time.monotonic() + timeout_s
    listed = await orphans(socket_path, timeout_s)
    out: dict[str, Any] = {"listed": None if listed is None else len(listed), "answers": Counter(), "problems": []}
    if listed is None:
        out["problems"].append("I7: GET /v1/orphans did not answer after the heal")
        return out
    todo = [o for o in listed if o.get("action") == "refund"]
    out["to_refund"] = len(todo)
    out["refunded"] = 0
    # An order with several settled charges: the largest first, so each Return lands on its own
    # charge (gatewayd refunds on the first settled charge with enough left).
    todo.sort(key=lambda o: (o["order_id"], -o["amount"]))
    async with GatewayClient(socket_path, timeout_s=30) as client:
        for o in todo:
            key = f"chaos-orphan-{o['transaction_id']}"
            while True:
                try:
                    answer = await client.refund(o["order_id"], key, o["amount"])
                    said = f"{answer.status}" + (f":{answer.error_code}" if answer.error_code else "")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    answer, said = None, f"conn:{type(exc).__name__}"
                out["answers"][said] += 1
                if answer is not None and answer.status == 200:
                    out["refunded"] += 1
                    break
                if answer is not None and answer.status < 500 and answer.status != 409:
                    out["problems"].append(f"refund of orphan {o['reference_id']} ({o['amount']}) answered {said}")
                    break
                if time.monotonic() > deadline:
                    out["problems"].append(f"I7: refund of orphan {o['reference_id']} not final: last answer {said}")
                    break
                await asyncio.sleep(0.5)  # 504 outcome_pending, 503, 409 (its void still settling): same key again
    out["answers"] = dict(out["answers"])
    return out


async def orphans_accounted(
    dsn: str, store_id: str, sim_ledger: list[dict[str, Any]], tpns: set[str], orphan_refs: set[str]
) -> tuple[list[str], dict[str, int]]:
    """Nothing silently dropped: every approved charge on gatewayd's terminals that belongs to no
    completed order is listed by GET /v1/orphans, or was refunded (its tender `refunded`, and the
    terminal holds Returns of its refunds for at least its amount); and every Return refunds a
    charge the terminal really holds (never money given back for a charge voided or never made)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = [
            dict(r)
            for r in await conn.fetch(
                """SELECT t.reference_id, t.kind, t.status, t.tender_index, t.amount, t.order_id::text AS order_id,
                          o.status AS order_status
                     FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                    WHERE t.store_id = $1 AND t.tender_type = 'card'""",
                store_id,
            )
        ]
    finally:
        await conn.close()
    by_ref = {r["reference_id"]: r for r in rows}
    mine = [t for t in sim_ledger if t["tpn"] in tpns]
    status_of = {t["reference_id"]: t["status"] for t in mine}
    returned = {t["reference_id"]: t["amount"] for t in mine if t["type"] == "return" and t["status"] == "returned"}
    charges = [t for t in mine if _money(t)]
    problems: list[str] = []
    counts = {"without_goods": 0, "listed": 0, "refunded": 0, "returns": len(returned)}
    for c in charges:
        row = by_ref.get(c["reference_id"])
        if row is None or row["order_status"] in COMPLETED:
            continue  # unknown to gatewayd: I8 says so
        counts["without_goods"] += 1
        if c["reference_id"] in orphan_refs:
            counts["listed"] += 1
            continue
        if row["status"] == "refunded":
            back = sum(
                returned.get(r["reference_id"], 0)
                for r in rows
                if r["kind"] == "refund"
                and r["order_id"] == row["order_id"]
                and r["tender_index"] == row["tender_index"]
                and r["status"] == "approved"
            )
            if back >= c["amount"]:
                counts["refunded"] += 1
            else:
                problems.append(f"I1: charge {c['reference_id']} ({c['amount']}) is marked refunded, returned {back}")
            continue
        problems.append(
            f"I1: charge {c['reference_id']} ({c['amount']}) of a {row['order_status']} order (tender "
            f"{row['status']}) is neither listed by /v1/orphans nor refunded: silently dropped"
        )
    for ref, amount in returned.items():
        r = by_ref.get(ref)
        if r is None:
            continue  # I8
        paid = next(
            (
                p
                for p in rows
                if p["kind"] == "payment" and p["order_id"] == r["order_id"] and p["tender_index"] == r["tender_index"]
            ),
            None,
        )
        held = status_of.get(paid["reference_id"]) if paid is not None else None
        if held not in ("approved", "captured"):
            problems.append(f"I1: Return {ref} ({amount}) gives back a charge the terminal shows as {held}")
    return problems, counts


def _money(t: dict[str, Any]) -> bool:
    """A ledger row where money moved to the store and stayed: an approved sale, a captured capture."""
    return (t["type"] == "sale" and t["status"] == "approved") or (t["type"] == "capture" and t["status"] == "captured")


def keypad_voids(
    records: list[KeypadVoid], sim_ledger: list[dict[str, Any]]
) -> tuple[list[str], list[dict[str, Any]], dict[str, int]]:
    """A charge voided on the keypad whose order COMPLETED anyway is an external discrepancy
    gatewayd cannot see by itself: POST /v1/reconcile must list it as `status_mismatch` (the
    nemesis asked while the voided charge was still in the open batch). Returns (problems, the
    ledger with those reconciled charges counted as gatewayd counts them, counts): the money
    check then holds gatewayd to everything else."""
    problems: list[str] = []
    reconciled: set[str] = set()
    counts = {"voided": len(records), "order_failed": 0, "order_completed": 0, "reconciled": 0, "unresolved": 0}
    for kv in records:
        if kv.order_status in COMPLETED:
            counts["order_completed"] += 1
            if kv.reconcile == "status_mismatch":
                counts["reconciled"] += 1
                reconciled.add(kv.reference_id)
            else:
                problems.append(
                    f"I8: {kv.reference_id} voided on the keypad, order {kv.order_id} completed, and POST "
                    f"/v1/reconcile {'could not be asked' if kv.reconcile is None else 'listed it as ' + kv.reconcile}"
                )
        elif kv.order_status in OPEN_ORDERS or kv.order_status is None:
            counts["unresolved"] += 1  # quiescence (I7) reports the order itself
        else:
            counts["order_failed"] += 1
    adjusted = [
        {**t, "status": "approved"} if t["reference_id"] in reconciled and t["status"] == "voided" else t
        for t in sim_ledger
    ]
    return problems, adjusted, counts


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


async def given_back(dsn: str, store_id: str) -> set[str]:
    """Keys whose order failed only because its terminal could not be reached (nothing charged):
    by design a retry with the same key is a new attempt (`retry: same_key`), not a replay."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT idempotency_key FROM orders WHERE store_id = $1 AND status = 'payment_failed'"
            " AND failure_code = ANY($2::text[])",
            store_id,
            sorted(UNREACHED),
        )
    finally:
        await conn.close()
    return {r["idempotency_key"] for r in rows}


async def replay(
    socket_path: str,
    simulator_url: str,
    records: list[CheckoutRecord],
    final: dict[str, str],
    limit: int = 60,
    new_attempts: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[str], int]:
    """I6 after the heal: the same key and body answer the final outcome and charge nothing new;
    the same key with another body is refused (409) without touching a terminal. Keys in
    `new_attempts` (`given_back`) are left out: sending them again would be a new checkout."""
    problems: list[str] = []
    sample = [r for r in records if r.key in final and r.key not in new_attempts][:limit]
    before = await ledger(simulator_url)
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
    after = await ledger(simulator_url)
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
    orphan_refs: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The gatewayd row, from the ledger and the database (not from what the POS believed).
    A charge with no completed order is `orphaned` unless it was refunded (`refunded`) or
    gatewayd lists it for the operator to refund (`listed`); an uncaptured hold is not a charge."""
    charges = [t for t in sim_ledger if t["tpn"] in tpns and _money(t)]
    holds = [t for t in sim_ledger if t["tpn"] in tpns and t["type"] == "auth" and t["status"] == "approved"]
    by_ref = {t["reference_id"]: t for t in tenders}
    orders: dict[str, dict[str, Any]] = {}
    for t in tenders:
        orders.setdefault(t["order_id"], {"status": t["order_status"], "cards": []})
        if t["tender_type"] == "card" and t["kind"] == "payment":
            orders[t["order_id"]]["cards"].append(t)
    charged_per_order: Counter[str] = Counter()
    charge_by_ref = {}
    orphaned, refunded, listed, orphaned_amount = 0, 0, 0, 0
    for c in charges:
        row = by_ref.get(c["reference_id"])
        charge_by_ref[c["reference_id"]] = c
        if row is not None and row["order_status"] in COMPLETED:
            pass
        elif row is not None and row["status"] == "refunded":
            refunded += 1
        elif row is not None and c["reference_id"] in orphan_refs:
            listed += 1
        else:
            orphaned += 1
            orphaned_amount += c["amount"]
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
        "orphaned_amount": orphaned_amount,
        "refunded_orphans": refunded,
        "listed_orphans": listed,
        "holds": len(holds),
        "double": double,
        "lost": lost,
        "failed_final": declined,
        "never_recorded": sum(1 for r in records if r.key not in final),
        "gave_up": sum(1 for r in records if r.gave_up),
        "failure_rate": (attempted - completed) / attempted if attempted else 0.0,
    }
