"""The SQL of the checkout: each phase one statement (a server-side function where it is several)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal, NamedTuple

import asyncpg
import msgspec

from gatewayd.checkout.machine import OPEN_TENDER, Checkout, Order, Refund, Tender, TenderStatus, row, tenders_of
from gatewayd.store.db import Database

# What a fenced write says: done, refused because the lease is not ours (any more), or refused
# because the row is no longer in a state the write may move it from.
Written = Literal["ok", "lease_lost", "stale"]

# One round trip for an order with its tenders and refunds (arrays of the tables' row types, which
# asyncpg decodes into records with the columns' own types), and the database's clock.
_LOAD = """
SELECT now() AS now, o,
       coalesce((SELECT array_agg(t ORDER BY t.kind, t.tender_index, t.created_at) FROM payment_transactions t
                  WHERE t.store_id = o.store_id AND t.order_id = o.id), '{{}}') AS tenders,
       coalesce((SELECT array_agg(r ORDER BY r.created_at) FROM refunds r
                  WHERE r.store_id = o.store_id AND r.order_id = o.id), '{{}}') AS refunds
  FROM orders o WHERE o.store_id = $1 AND {where}"""

_INTENT = "SELECT * FROM gw_checkout_intent(" + ", ".join(f"${i}" for i in range(1, 28)) + ")"
_RECORD_AND = "SELECT * FROM gw_record_tender_and(" + ", ".join(f"${i}" for i in range(1, 33)) + ")"


def _checkout(order: Any, tenders: Any, now: datetime) -> Checkout:
    """An order just written, with its tenders, as `load` would return it (no refunds yet)."""
    return Checkout(order=row(Order, order), tenders=tenders_of(tenders), now=now)


class Recorded(NamedTuple):
    """What `record_and_finish` did: the answer's write (as `record_tender` says it), what the
    order's completion or failure answered (None when none was asked or the write did not
    happen), and the order with its tenders as stored after both (None when the lease was lost)."""

    written: Written
    outcome: str | None
    checkout: Checkout | None


class TenderAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a terminal's answer writes on a tender: its new status (only from `from_statuses`),
    the outcome's fields (each None keeps what is stored: what a receipt needs, sql/009, is kept
    once known), why it did not charge (`failure_code` and `decline_reason`, written as given), the
    raw outcome, the last error and the audit event's detail. The order of the fields is the order
    of the SQL's parameters after the store, the tender and the owner."""

    status: TenderStatus
    from_statuses: tuple[TenderStatus, ...] = tuple(sorted(OPEN_TENDER))
    approved_amount: int | None = None
    auth_code: str | None = None
    card_brand: str | None = None
    last4: str | None = None
    batch_number: str | None = None
    transaction_number: str | None = None
    status_code: str | None = None
    raw: dict[str, Any] | None = None
    last_error: str | None = None
    audit: dict[str, Any] = msgspec.field(default_factory=dict)
    failure_code: str | None = None
    payment_type: str | None = None
    entry_method: str | None = None
    application_label: str | None = None
    aid: str | None = None
    host_reference: str | None = None
    receipt_customer: str | None = None
    receipt_merchant: str | None = None
    decline_reason: str | None = None
    host_code: str | None = None
    host_message: str | None = None

    def params(self) -> tuple[Any, ...]:
        """The SQL's parameters $4 to $26, in order."""
        values = msgspec.structs.astuple(self)
        return (str(self.status), [str(s) for s in self.from_statuses], *values[2:])


class FinishStep(msgspec.Struct, frozen=True, kw_only=True):
    """The step `record_and_finish` takes after storing an answer: `commit` the order (loyalty
    points at `points_per_unit` per `minor_per_unit`) or `fail` it (with its code, reason and
    status). The order of the fields is the order of the SQL's parameters after the answer's."""

    then: Literal["commit", "fail"]
    points_per_unit: int = 0
    minor_per_unit: int = 1
    fail_code: str | None = None
    fail_reason: str | None = None
    fail_status: str = "payment_failed"

    def params(self) -> tuple[Any, ...]:
        """The SQL's parameters $27 to $32, in order."""
        return msgspec.structs.astuple(self)


# A tender row is fenced by its order's lease: the order id comes from the row itself.
_HELD = "gw_lease_held($1, (SELECT order_id FROM payment_transactions WHERE store_id = $1 AND id = $2), $3)"


def _fenced(held: str, writes: str) -> str:
    """A write fenced by a lease, as one statement: `writes` (CTEs that test `(SELECT held FROM l)`
    and end in one named `t`) run only while `held` is true; the answer is "lease_lost" when it is
    not, "ok" when `t` changed a row, "stale" when the row had moved on."""
    return (
        f"WITH l AS (SELECT {held} AS held),{writes}\n"
        "SELECT CASE WHEN NOT (SELECT held FROM l) THEN 'lease_lost'"
        " WHEN EXISTS (SELECT 1 FROM t) THEN 'ok' ELSE 'stale' END"
    )


def _written(value: Any) -> Written:
    return "ok" if value == "ok" else "lease_lost" if value == "lease_lost" else "stale"


class CheckoutStore:
    """Checkout persistence for one store."""

    def __init__(self, db: Database, store_id: str) -> None:
        self.db = db
        self.store_id = store_id

    async def prepare(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record the intent (order, lines, reservation, tenders) in one transaction (sql/010
        gw_checkout_intent), from plain arrays.

        `payload["stamp"]`: the id of a card tender to record as sent in the same transaction (the
        first the daemon is about to send; see Executor.drive). `payload["points_per_unit"]` and
        `["minor_per_unit"]`: given, a checkout without a card tender is completed in the same
        transaction too. The answer: `outcome` (created, exists, insufficient, untracked), `id`,
        `request_hash`, `skus` (what was short or untracked), `order_number`, `committed` (the
        completion's outcome, for a cash checkout completed at once) and `checkout`: the order
        with its tenders as stored now (created, or the one that exists), so nothing is read back.

        Two daemons racing on one idempotency key: the loser's insert hits the unique key and is
        rolled back whole; asked again, the function finds the winner's order ("exists").
        """
        lines = payload["lines"]
        tenders = payload["tenders"]
        stamp = payload.get("stamp")
        args = (
            self.store_id,
            uuid.UUID(payload["id"]),
            payload["idempotency_key"],
            payload["request_hash"],
            payload["card_mode"],
            [payload["subtotal"], payload["tax"], payload["discount"], payload["total"], payload["change_due"]],
            payload["currency"],
            payload.get("register_id"),
            payload.get("customer_id"),
            payload.get("untracked_skus"),
            payload["lease_owner"],
            float(payload["lease_s"]),
            [line["sku"] for line in lines],
            [int(line["quantity"]) for line in lines],
            [int(line["unit_price"]) for line in lines],
            [uuid.UUID(t["id"]) for t in tenders],
            [t["type"] for t in tenders],
            [t["operation"] for t in tenders],
            [int(t["amount"]) for t in tenders],
            [t.get("tendered") for t in tenders],
            [t["reference_id"] for t in tenders],
            [t.get("terminal_id") for t in tenders],
            [t.get("timeout_s") for t in tenders],
            [t.get("payment_type") for t in tenders],
            None if stamp is None else uuid.UUID(stamp),
            payload.get("points_per_unit"),
            payload.get("minor_per_unit"),
        )

        async def work(c: asyncpg.Connection) -> asyncpg.Record:
            try:
                return await c.fetchrow(_INTENT, *args)
            except asyncpg.UniqueViolationError:
                return await c.fetchrow(_INTENT, *args)

        found = await self.db.run(work, what="prepare checkout")
        result: dict[str, Any] = {"outcome": found["r_outcome"]}
        if found["r_skus"] is not None:
            result["skus"] = found["r_skus"]
        if found["r_id"] is not None:
            result.update(id=str(found["r_id"]), request_hash=found["r_hash"])
        if found["r_order"] is not None:
            result["order_number"] = found["r_order"]["order_number"]
            result["checkout"] = _checkout(found["r_order"], found["r_tenders"], found["r_now"])
        if found["r_committed"] is not None:
            result["committed"] = found["r_committed"]
        return result

    async def catalog(self) -> list[asyncpg.Record]:
        """The store's stocked SKUs: sku, name, on hand, reserved (by checkouts under way)."""
        return await self.db.fetch(
            "SELECT sku, name, on_hand, reserved FROM inventory WHERE store_id = $1 ORDER BY sku", self.store_id
        )

    async def retire_key(self, order_id: uuid.UUID, request_hash: str) -> str:
        """Give the key of a checkout that failed unreached back (sql/007 gw_retire_key):
        'retired', 'gone', 'conflict' or 'final'."""
        answer: str = await self.db.run(
            lambda c: c.fetchval("SELECT gw_retire_key($1, $2, $3)", self.store_id, order_id, request_hash),
            what="retire key",
        )
        return answer

    async def receipt_lines(self, order_id: uuid.UUID) -> tuple[list[dict[str, Any]], datetime | None]:
        """An order's lines for its receipt (sku, quantity, unit price, the name the store gives
        the SKU, if it stocks it) and when it was voided (None if never), in one round trip."""
        found = await self.db.run(
            lambda c: c.fetchrow(
                """SELECT coalesce((SELECT array_agg(json_build_object(
                                       'sku', i.sku, 'quantity', i.quantity, 'unit_price', i.unit_price,
                                       'name', inv.name) ORDER BY i.line_no)
                                      FROM order_items i LEFT JOIN inventory inv
                                        ON inv.store_id = i.store_id AND inv.sku = i.sku
                                     WHERE i.store_id = $1 AND i.order_id = $2), '{}') AS lines,
                          (SELECT max(at) FROM audit_events
                            WHERE store_id = $1 AND order_id = $2 AND kind = 'checkout.voided') AS voided_at""",
                self.store_id,
                order_id,
            ),
            what="receipt lines",
        )
        lines = [json.loads(line) if isinstance(line, str) else dict(line) for line in found["lines"]]
        return lines, found["voided_at"]

    async def find_key(self, key: str) -> tuple[uuid.UUID, str] | None:
        """(order id, request hash) of the checkout with this idempotency key, if any."""
        row = await self.db.run(
            lambda c: c.fetchrow(
                "SELECT id, request_hash FROM orders WHERE store_id = $1 AND idempotency_key = $2",
                self.store_id,
                key,
            ),
            what="find key",
        )
        return None if row is None else (row["id"], row["request_hash"])

    async def load(self, *, order_id: uuid.UUID | None = None, key: str | None = None) -> Checkout | None:
        """An order with its tenders and refunds, by id or idempotency key, read at the database's now()."""
        where = "o.id = $2" if order_id is not None else "o.idempotency_key = $2"

        async def work(c: asyncpg.Connection) -> Checkout | None:
            found = await c.fetchrow(_LOAD.format(where=where), self.store_id, order_id if order_id else key)
            if found is None:
                return None
            return Checkout(
                order=row(Order, found["o"]),
                tenders=tenders_of(found["tenders"]),
                refunds=tuple(row(Refund, r) for r in found["refunds"]),
                now=found["now"],
            )

        return await self.db.run(work, what="load checkout")

    async def tender(self, tender_id: uuid.UUID) -> tuple[Tender, datetime] | None:
        """One transaction as stored now, with the database's clock (read again before every inquiry)."""
        found = await self.db.run(
            lambda c: c.fetchrow(
                "SELECT now() AS now, t FROM payment_transactions t WHERE t.store_id = $1 AND t.id = $2",
                self.store_id,
                tender_id,
            ),
            what="tender",
        )
        return None if found is None else (row(Tender, found["t"]), found["now"])

    async def mark_sent(self, order_id: uuid.UUID, tender_id: uuid.UUID, owner: str) -> Written:
        """Just before the first byte leaves: the tender is `processing`, stamped on the database's clock.

        Fenced by the lease; "stale" when the order moved on (cancelled, failed) or the tender did.
        """
        value = await self.db.run(
            lambda c: c.fetchval(
                _fenced(
                    "gw_lease_held($1, $2, $4)",
                    """
               o AS (
                   UPDATE orders SET status = 'payment_processing', payment_status = 'processing',
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND (SELECT held FROM l)
                      AND status IN ('pending_payment', 'payment_processing')
                   RETURNING id),
               t AS (
                   UPDATE payment_transactions
                      SET status = 'processing', sent_at = now(),
                          attempts = attempts + 1, updated_at = now()
                    WHERE store_id = $1 AND id = $3 AND order_id IN (SELECT id FROM o)
                      AND status IN ('pending', 'processing', 'unknown')
                   RETURNING true)""",
                ),
                self.store_id,
                order_id,
                tender_id,
                owner,
            ),
            what="mark tender sent",
        )
        return _written(value)

    async def record_tender(self, tender_id: uuid.UUID, owner: str, answer: TenderAnswer) -> Written:
        """Store a terminal's answer for a tender (only from the given statuses); one audit event.

        What a receipt needs (sql/009) is kept once known; `decline_reason` is written with
        `failure_code` (a tender that charges after all has neither). Fenced by the order's lease:
        a daemon that lost it is refused and stops driving the order.
        """
        value = await self.db.run(
            lambda c: c.fetchval(
                _fenced(
                    _HELD,
                    """
               t AS (
                   UPDATE payment_transactions
                      SET status = $4, approved_amount = coalesce($6, approved_amount),
                          auth_code = coalesce($7, auth_code), card_brand = coalesce($8, card_brand),
                          last4 = coalesce($9, last4), batch_number = coalesce($10, batch_number),
                          transaction_number = coalesce($11, transaction_number),
                          status_code = coalesce($12, status_code), raw_response = coalesce($13, raw_response),
                          last_error = $14, failure_code = $16,
                          payment_type = coalesce($17, payment_type), entry_method = coalesce($18, entry_method),
                          application_label = coalesce($19, application_label), aid = coalesce($20, aid),
                          host_reference = coalesce($21, host_reference),
                          receipt_customer = coalesce($22, receipt_customer),
                          receipt_merchant = coalesce($23, receipt_merchant),
                          decline_reason = $24, host_code = coalesce($25, host_code),
                          host_message = coalesce($26, host_message),
                          capture_status = CASE WHEN $4 IN ('voided', 'failed') THEN NULL ELSE capture_status END,
                          resolved_at = CASE WHEN $4 IN ('processing', 'unknown') THEN NULL ELSE now() END,
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND status = ANY($5::text[]) AND (SELECT held FROM l)
                   RETURNING id, order_id),
               a AS (
                   INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)
                   SELECT $1, 'tender.' || $4, t.order_id, t.id, $15::jsonb FROM t)""",
                ),
                self.store_id,
                tender_id,
                owner,
                *answer.params(),
            ),
            what="record tender",
        )
        return _written(value)

    async def record_and_finish(
        self,
        tender_id: uuid.UUID,
        owner: str,
        answer: TenderAnswer,
        step: FinishStep,
    ) -> Recorded:
        """`record_tender`, then in the same transaction (sql/010 gw_record_tender_and), when the
        answer was stored, `step`: `commit` or `fail` of its order (each checks
        everything again and answers as it does alone): the second of a card checkout's two
        commits. Answers with the order and its tenders as stored after it, so nothing is read
        back."""
        found = await self.db.run(
            lambda c: c.fetchrow(
                _RECORD_AND,
                self.store_id,
                tender_id,
                owner,
                *answer.params(),
                *step.params(),
            ),
            what="record tender and finish",
        )
        checkout = None
        if found["r_order"] is not None:
            checkout = _checkout(found["r_order"], found["r_tenders"], found["r_now"])
        return Recorded(_written(found["r_written"]), found["r_outcome"], checkout)

    async def mark_settled(self, tender_id: uuid.UUID, owner: str, reason: str) -> Written:
        """A known-approved charge the terminal no longer has in its open batch: it stays approved
        (the customer is charged) and now needs a Return, never a Void."""
        value = await self.db.run(
            lambda c: c.fetchval(
                _fenced(
                    _HELD,
                    """
               t AS (
                   UPDATE payment_transactions SET settled_at = coalesce(settled_at, now()), last_error = $4,
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND status = 'approved' AND (SELECT held FROM l)
                   RETURNING id, order_id),
               a AS (
                   INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)
                   SELECT $1, 'tender.settled', t.order_id, t.id, jsonb_build_object('reason', $4::text) FROM t)""",
                ),
                self.store_id,
                tender_id,
                owner,
                reason,
            ),
            what="mark tender settled",
        )
        return _written(value)

    async def late_approval(self, tender_id: uuid.UUID, approved_amount: int) -> bool:
        """A terminal approved a charge the lease holder already concluded was never made ("not
        found" after its deadline): the approval is hard evidence and corrects that conclusion,
        whoever holds the lease. Only a tender failed as not charged is changed; the charge then
        stands approved on an order that did not complete: an orphan that recovery voids."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """WITH t AS (
                       UPDATE payment_transactions
                          SET status = 'approved', approved_amount = $3, failure_code = NULL, decline_reason = NULL,
                              last_error = 'approved after all: the terminal answered a late charge',
                              resolved_at = now(), updated_at = now()
                        WHERE store_id = $1 AND id = $2 AND status = 'failed' AND failure_code = 'card_not_charged'
                       RETURNING id, order_id)
                   INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)
                   SELECT $1, 'tender.late_approval', t.order_id, t.id, jsonb_build_object('amount', $3::bigint)
                     FROM t
                   RETURNING true""",
                    self.store_id,
                    tender_id,
                    approved_amount,
                ),
                what="late approval",
            )
        )

    async def mark_void_requested(self, tender_id: uuid.UUID, owner: str) -> Written:
        """Just before a Void leaves: the charge may be voided from here on."""
        value = await self.db.run(
            lambda c: c.fetchval(
                _fenced(
                    _HELD,
                    """
               t AS (
                   UPDATE payment_transactions SET void_requested_at = coalesce(void_requested_at, now()),
                          updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND (SELECT held FROM l)
                   RETURNING true)""",
                ),
                self.store_id,
                tender_id,
                owner,
            ),
            what="mark void requested",
        )
        return _written(value)

    async def commit(
        self, order_id: uuid.UUID, points_per_unit: int, minor_per_unit: int, owner: str
    ) -> dict[str, Any]:
        """Complete the order (inventory, loyalty, register session) in one transaction, fenced by the lease."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval(
                "SELECT gw_commit_checkout($1, $2, $3, $4, $5)",
                self.store_id,
                order_id,
                points_per_unit,
                minor_per_unit,
                owner,
            ),
            what="commit checkout",
        )
        return result

    async def fail(self, order_id: uuid.UUID, code: str, reason: str, status: str, owner: str) -> dict[str, Any]:
        """Fail the order and release its reservation (nothing may be in doubt or voidable), fenced."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval(
                "SELECT gw_fail_checkout($1, $2, $3, $4, $5, $6)", self.store_id, order_id, code, reason, status, owner
            ),
            what="fail checkout",
        )
        return result

    async def set_captured(self, tender_id: uuid.UUID, owner: str) -> Written:
        """An authorization was captured; the order is paid once none is left to capture."""
        value = await self.db.run(
            lambda c: c.fetchval(
                _fenced(
                    _HELD,
                    """
               t AS (
                   UPDATE payment_transactions SET capture_status = 'captured', updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND capture_status = 'pending' AND (SELECT held FROM l)
                   RETURNING order_id, id),
               a AS (INSERT INTO audit_events (store_id, kind, order_id, transaction_id)
                     SELECT $1, 'tender.captured', order_id, id FROM t),
               o AS (UPDATE orders o SET payment_status = 'paid', updated_at = now()
                       FROM t WHERE o.store_id = $1 AND o.id = t.order_id AND o.payment_status = 'authorized'
                        AND NOT EXISTS (SELECT 1 FROM payment_transactions p
                                         WHERE p.store_id = $1 AND p.order_id = t.order_id
                                           AND p.capture_status = 'pending' AND p.id <> t.id))""",
                ),
                self.store_id,
                tender_id,
                owner,
            ),
            what="record capture",
        )
        return _written(value)

    async def audit(
        self,
        kind: str,
        *,
        order_id: uuid.UUID | None = None,
        transaction_id: uuid.UUID | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one audit event."""
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)",
                self.store_id,
                kind,
                order_id,
                transaction_id,
                detail or {},
            ),
            what="audit",
        )

    # ------------------------------------------------------------ leases

    async def claim_unfinished(
        self,
        owner: str,
        lease_s: float,
        *,
        take_own: bool,
        limit: int = 100,
        older_than_s: float = 0.0,
        only: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """Take the lease on unfinished orders for recovery: expired leases, and with `take_own` our own.

        A live daemon renews the leases of the orders it drives, so an expired lease means its
        owner died or stalled: the order is recovered (one never sent is rolled back; the stalled
        owner, if it wakes, is fenced off). SKIP LOCKED lets two daemons recover side by side
        without waiting on each other, and the lease keeps them from driving one order twice.
        """
        rows = await self.db.run(
            lambda c: c.fetch(
                """WITH p AS (
                   SELECT store_id, id, lease_owner AS prev FROM orders
                    WHERE store_id = $1
                      AND status IN ('pending_payment', 'payment_processing', 'payment_authorized')
                      AND updated_at < now() - make_interval(secs => $6)
                      AND (lease_until IS NULL OR lease_until <= now() OR ($4 AND lease_owner = $2))
                      AND ($7::uuid IS NULL OR id = $7)
                    ORDER BY created_at LIMIT $5 FOR UPDATE SKIP LOCKED),
               c AS (
                   UPDATE orders o SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                          updated_at = now()
                     FROM p WHERE o.store_id = p.store_id AND o.id = p.id
                   RETURNING o.id, p.prev),
               -- Taken over from another daemon: its send may have left as late as now (it sends only
               -- while its lease lives), so a "not found" counts from now, not from its stamp.
               s AS (
                   UPDATE payment_transactions t SET sent_at = greatest(t.sent_at, now()), updated_at = now()
                     FROM c WHERE t.store_id = $1 AND t.order_id = c.id AND c.prev IS DISTINCT FROM $2
                      AND c.prev IS NOT NULL AND t.status IN ('processing', 'unknown') AND t.sent_at IS NOT NULL)
               SELECT id FROM c""",
                self.store_id,
                owner,
                lease_s,
                take_own,
                limit,
                older_than_s,
                only,
            ),
            what="claim unfinished orders",
        )
        return [r["id"] for r in rows]

    async def take_lease(self, order_id: uuid.UUID, owner: str, lease_s: float) -> bool | None:
        """Take (or renew) one order's lease, whatever its status: free, expired, or ours already.
        False: another daemon holds it; None: there is no such order."""
        value: bool | None = await self.db.run(
            lambda c: c.fetchval("SELECT gw_take_lease($1, $2, $3, $4)", self.store_id, order_id, owner, lease_s),
            what="take lease",
        )
        return value

    async def renew_leases(self, order_ids: list[uuid.UUID], owner: str, lease_s: float) -> set[uuid.UUID]:
        """Extend the leases we still hold; the ids missing from the answer are lost."""
        rows = await self.db.run(
            lambda c: c.fetch(
                """UPDATE orders SET lease_until = now() + make_interval(secs => $4)
                    WHERE store_id = $1 AND id = ANY($2::uuid[]) AND lease_owner = $3 AND lease_until > now()
                   RETURNING id""",
                self.store_id,
                order_ids,
                owner,
                lease_s,
            ),
            what="renew leases",
        )
        return {r["id"] for r in rows}

    async def release_lease(self, order_id: uuid.UUID, owner: str) -> None:
        await self.db.run(
            lambda c: c.execute(
                "UPDATE orders SET lease_owner = NULL, lease_until = NULL WHERE store_id = $1 AND id = $2"
                " AND lease_owner = $3",
                self.store_id,
                order_id,
                owner,
            ),
            what="release lease",
        )

    # ------------------------------------------------------------ captures, voids and refunds

    async def claim_uncaptured(self, limit: int = 100) -> list[Tender]:
        """Authorizations of completed orders still waiting for their capture (not lost to a settle)."""
        rows = await self.db.run(
            lambda c: c.fetch(
                """SELECT t FROM payment_transactions t
                WHERE store_id = $1 AND capture_status = 'pending' AND status = 'approved' AND settled_at IS NULL
                ORDER BY created_at LIMIT $2""",
                self.store_id,
                limit,
            ),
            what="uncaptured",
        )
        return [row(Tender, r["t"]) for r in rows]

    async def void_order(self, order_id: uuid.UUID, owner: str) -> dict[str, Any]:
        """Once every card tender is voided: the order is voided and everything it credited is taken back."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval(
                """SELECT CASE WHEN (SELECT status FROM orders WHERE store_id = $1 AND id = $2) = 'voided'
                                    THEN '{"outcome": "already"}'::jsonb
                               WHEN gw_lease_held($1, $2, $3) THEN gw_void_checkout($1, $2)
                               ELSE '{"outcome": "lease_lost"}'::jsonb END""",
                self.store_id,
                order_id,
                owner,
            ),
            what="void checkout",
        )
        return result

    async def begin_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record a refund request and the transaction that will carry it (idempotent by key).

        Two requests racing on one key: the loser's insert hits the unique key and is rolled back
        whole; asked again, the function finds the winner's refund ("exists")."""

        async def work(c: asyncpg.Connection) -> Any:
            query = "SELECT gw_begin_refund($1, $2::jsonb)"
            try:
                return await c.fetchval(query, self.store_id, payload)
            except asyncpg.UniqueViolationError:
                return await c.fetchval(query, self.store_id, payload)

        result: dict[str, Any] = await self.db.run(work, what="begin refund")
        return result

    async def finish_refund(self, refund_id: uuid.UUID, ok: bool, reason: str, owner: str) -> dict[str, Any]:
        """Complete (or fail) a refund whose terminal answer is known, fenced by the order's lease."""
        result: dict[str, Any] = await self.db.run(
            lambda c: c.fetchval(
                """SELECT CASE WHEN r.status <> 'pending'
                                    THEN jsonb_build_object('outcome', 'already', 'status', r.status)
                               WHEN gw_lease_held($1, r.order_id, $5) THEN gw_finish_refund($1, $2, $3, $4)
                               ELSE '{"outcome": "lease_lost"}'::jsonb END
                     FROM refunds r WHERE r.store_id = $1 AND r.id = $2""",
                self.store_id,
                refund_id,
                ok,
                reason,
                owner,
            ),
            what="finish refund",
        )
        return result or {"outcome": "not_found"}

    async def unresolved_refunds(self, older_than_s: float = 0.0, refund_id: uuid.UUID | None = None) -> list[Tender]:
        """Refund transactions whose terminal answer was never stored (untouched for `older_than_s`),
        each with the sale it goes back on: its reference id (`sale_reference`) and, until the
        Return has been sent with one, its payment type (a Return goes as the sale went)."""
        rows = await self.db.run(
            lambda c: c.fetch(
                """SELECT t, s.reference_id AS sale_reference, s.payment_type AS sale_type
                 FROM payment_transactions t JOIN refunds r
                   ON r.store_id = t.store_id AND r.id = t.refund_id
                 LEFT JOIN payment_transactions s
                   ON s.store_id = t.store_id AND s.order_id = t.order_id AND s.kind = 'payment'
                  AND s.tender_index = t.tender_index
                WHERE t.store_id = $1 AND t.kind = 'refund' AND r.status = 'pending'
                  AND t.updated_at <= now() - make_interval(secs => $2)
                  AND ($3::uuid IS NULL OR r.id = $3)""",
                self.store_id,
                older_than_s,
                refund_id,
            ),
            what="unresolved refunds",
        )
        return [
            row(
                Tender,
                {
                    **dict(r["t"]),
                    "sale_reference": r["sale_reference"],
                    "payment_type": r["t"]["payment_type"] or r["sale_type"],
                },
            )
            for r in rows
        ]

    async def mark_refund_sent(
        self, transaction_id: uuid.UUID, timeout_s: int, owner: str, payment_type: str | None = None
    ) -> Written:
        """Just before a Return leaves (or leaves again): stamped with the real send time, the
        terminal's own timeout and the payment type it goes as (the sale's). "stale" when the
        transaction is no longer pending or in progress."""
        value = await self.db.run(
            lambda c: c.fetchval(
                _fenced(
                    _HELD,
                    """
               t AS (
                   UPDATE payment_transactions SET status = 'processing', sent_at = now(), timeout_s = $4,
                          payment_type = coalesce($5, payment_type), attempts = attempts + 1, updated_at = now()
                    WHERE store_id = $1 AND id = $2 AND status IN ('pending', 'processing') AND (SELECT held FROM l)
                   RETURNING true)""",
                ),
                self.store_id,
                transaction_id,
                owner,
                timeout_s,
                payment_type,
            ),
            what="mark refund sent",
        )
        return _written(value)

    async def fail_unsent_refund(self, refund_id: uuid.UUID, reason: str, owner: str) -> bool:
        """Fail a refund whose Return never left, atomically: only while its transaction is pending."""
        return bool(
            await self.db.run(
                lambda c: c.fetchval(
                    """WITH t AS (
                           UPDATE payment_transactions SET status = 'failed', last_error = $3, updated_at = now()
                            WHERE store_id = $1 AND refund_id = $2 AND status = 'pending'
                              AND gw_lease_held($1, order_id, $4)
                           RETURNING refund_id, order_id),
                       r AS (
                           UPDATE refunds SET status = 'failed', failure_reason = $3
                             FROM t WHERE refunds.store_id = $1 AND refunds.id = t.refund_id
                              AND refunds.status = 'pending'
                           RETURNING refunds.id, refunds.order_id)
                       INSERT INTO audit_events (store_id, kind, order_id, detail)
                       SELECT $1, 'refund.failed', r.order_id, jsonb_build_object('refund_id', r.id, 'reason', $3::text)
                         FROM r
                       RETURNING true""",
                    self.store_id,
                    refund_id,
                    reason,
                    owner,
                ),
                what="fail unsent refund",
            )
        )
