"""CheckoutStore and MaintenanceStore for the simulation: the same methods, signatures, typed
answers and retry behaviour as `gatewayd/store/checkouts.py` and `maintenance.py`, over the fake
server.

Every method goes through the real `Database.run` (5 attempts with backoff, as in production)
or, for the maintenance queries, through a single `Database.connection()` attempt, exactly
as the real classes do. Rows come up typed (`gatewayd.checkout.machine.row`), built from the
fake's column dicts the way CheckoutStore builds them from asyncpg records, and `load` and
`tender` carry the database's clock (the statement's `now`), as in production.

The arguments each statement is recorded with (the server's history) are those of the real
method, so that tests/sim/differential.py can replay them through the real store.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from gatewayd.checkout.machine import Checkout, Order, Refund, Tender, row, tenders_of
from gatewayd.store.checkouts import FinishStep, Recorded, TenderAnswer, Written
from tests.sim.db import SimDatabase
from tests.sim.loop import OWNER
from tests.sim.tables import Tables


def _checkout(found: tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None, now: datetime) -> Any:
    if found is None:
        return None
    order, tenders, refunds = found
    return Checkout(
        order=row(Order, order),
        tenders=tenders_of(tenders),
        refunds=tuple(row(Refund, r) for r in refunds),
        now=now,
    )


class SimCheckoutStore:
    """Duck-types gatewayd.store.checkouts.CheckoutStore."""

    def __init__(self, db: SimDatabase, tables: Tables, store_id: str = "sim") -> None:
        self.db = db
        self.t = tables
        self.store_id = store_id

    async def _write(self, name: str, what: str, apply: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.db.run(lambda c: c.call(name, apply, *args, **kwargs), what=what)

    async def prepare(self, payload: dict[str, Any]) -> dict[str, Any]:
        def apply(now: datetime) -> dict[str, Any]:
            result = self.t.prepare(now, payload)
            if "id" in result:  # the order with its tenders as stored now, as gw_checkout_intent answers
                result["checkout"] = _checkout(self.t.load(uuid.UUID(result["id"]), None), now)
            return result

        result: dict[str, Any] = await self._write("prepare", "prepare checkout", apply, payload)
        proc = OWNER.get()
        stall = getattr(proc, "stall_after_intent", None)
        if result["outcome"] == "created" and payload.get("stamp") and stall is not None:
            # the nemesis asked: the process freezes right after the intent that stamped its card
            # sent, before it reads the answer (so before it can check the send margin)
            stall(payload)
            await proc.thawed()
        return result

    async def catalog(self) -> list[dict[str, Any]]:
        def rows(now: datetime) -> list[dict[str, Any]]:
            return [
                {"sku": sku, "name": v.get("name"), "on_hand": v["on_hand"], "reserved": v["reserved"]}
                for sku, v in sorted(self.t.inventory.items())
            ]

        found: list[dict[str, Any]] = await self.db.run(lambda c: c.call("catalog", rows), what="catalog")
        return found

    async def receipt_lines(self, order_id: uuid.UUID) -> tuple[list[dict[str, Any]], datetime | None]:
        def apply(now: datetime) -> tuple[list[dict[str, Any]], datetime | None]:
            lines = [
                {
                    "sku": line["sku"],
                    "quantity": line["quantity"],
                    "unit_price": line["unit_price"],
                    "name": self.t.inventory.get(line["sku"], {}).get("name"),
                }
                for line in self.t.items.get(order_id, [])
            ]
            voided = [
                e["at"] for e in self.t.audit_events if e["order_id"] == order_id and e["kind"] == "checkout.voided"
            ]
            return lines, max(voided, default=None)

        found: tuple[list[dict[str, Any]], datetime | None] = await self.db.run(
            lambda c: c.call("receipt_lines", apply, order_id), what="receipt lines"
        )
        return found

    async def retire_key(self, order_id: uuid.UUID, request_hash: str) -> str:
        answer: str = await self._write(
            "retire_key",
            "retire key",
            lambda now: self.t.retire_key(now, order_id, request_hash),
            order_id,
            request_hash,
        )
        return answer

    async def find_key(self, key: str) -> tuple[uuid.UUID, str] | None:
        return await self.db.run(lambda c: c.call("find_key", lambda now: self.t.find_key(key), key), what="find key")

    async def load(self, *, order_id: uuid.UUID | None = None, key: str | None = None) -> Checkout | None:
        """One statement (the order with its tenders and refunds, and now()), as in production."""
        found: Checkout | None = await self.db.run(
            lambda c: c.call("load", lambda now: _checkout(self.t.load(order_id, key), now)), what="load checkout"
        )
        return found

    async def tender(self, tender_id: uuid.UUID) -> tuple[Tender, datetime] | None:
        def apply(now: datetime) -> tuple[Tender, datetime] | None:
            t = self.t.tender(tender_id)
            return None if t is None else (row(Tender, t), now)

        found: tuple[Tender, datetime] | None = await self.db.run(
            lambda c: c.call("tender", apply, tender_id), what="tender"
        )
        return found

    async def mark_sent(self, order_id: uuid.UUID, tender_id: uuid.UUID, owner: str) -> Written:
        written: Written = await self._write(
            "mark_sent",
            "mark tender sent",
            lambda now: self.t.mark_sent(now, order_id, tender_id, owner),
            order_id,
            tender_id,
            owner,
        )
        proc = OWNER.get()
        stall = getattr(proc, "stall_after_stamp", None)
        if written == "ok" and stall is not None:
            stall()  # the nemesis asked: freeze right after the stamp, before the request leaves
        return written

    async def record_tender(self, tender_id: uuid.UUID, owner: str, answer: TenderAnswer) -> Written:
        written: Written = await self._write(
            "record_tender",
            "record tender",
            lambda now: self.t.record_tender(now, tender_id, str(answer.status), owner, **_answer_fields(answer)),
            tender_id,
            owner,
            _stable(answer),
        )
        return written

    async def record_and_finish(
        self, tender_id: uuid.UUID, owner: str, answer: TenderAnswer, step: FinishStep
    ) -> Recorded:
        finish = msgspec.structs.asdict(step)

        def apply(now: datetime) -> Recorded:
            written, outcome = self.t.record_and_finish(
                now, tender_id, str(answer.status), owner, **_answer_fields(answer), **finish
            )
            if written == "lease_lost":
                return Recorded(written, None, None)
            order_id = self.t.txs[tender_id]["order_id"]
            return Recorded(written, outcome, _checkout(self.t.load(order_id, None), now))

        recorded: Recorded = await self._write(
            "record_and_finish", "record tender and finish", apply, tender_id, owner, _stable(answer), step
        )
        return recorded

    async def mark_settled(self, tender_id: uuid.UUID, owner: str, reason: str) -> Written:
        written: Written = await self._write(
            "mark_settled",
            "mark tender settled",
            lambda now: self.t.mark_settled(now, tender_id, owner, reason),
            tender_id,
            owner,
            reason,
        )
        return written

    async def late_approval(self, tender_id: uuid.UUID, approved_amount: int) -> bool:
        done: bool = await self._write(
            "late_approval",
            "late approval",
            lambda now: self.t.late_approval(now, tender_id, approved_amount),
            tender_id,
            approved_amount,
        )
        return done

    async def mark_void_requested(self, tender_id: uuid.UUID, owner: str) -> Written:
        written: Written = await self._write(
            "mark_void_requested",
            "mark void requested",
            lambda now: self.t.mark_void_requested(now, tender_id, owner),
            tender_id,
            owner,
        )
        return written

    async def commit(
        self, order_id: uuid.UUID, points_per_unit: int, minor_per_unit: int, owner: str
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._write(
            "commit",
            "commit checkout",
            lambda now: self.t.commit(now, order_id, points_per_unit, minor_per_unit, owner),
            order_id,
            points_per_unit,
            minor_per_unit,
            owner,
        )
        return result

    async def fail(self, order_id: uuid.UUID, code: str, reason: str, status: str, owner: str) -> dict[str, Any]:
        text = str(status)
        result: dict[str, Any] = await self._write(
            "fail",
            "fail checkout",
            lambda now: self.t.fail(now, order_id, code, reason, text, owner),
            order_id,
            code,
            reason,
            text,
            owner,
        )
        return result

    async def set_captured(self, tender_id: uuid.UUID, owner: str) -> Written:
        written: Written = await self._write(
            "set_captured",
            "record capture",
            lambda now: self.t.set_captured(now, tender_id, owner),
            tender_id,
            owner,
        )
        return written

    async def audit(
        self,
        kind: str,
        *,
        order_id: uuid.UUID | None = None,
        transaction_id: uuid.UUID | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self._write(
            "audit",
            "audit",
            lambda now: self.t.audit(now, kind, order_id, transaction_id, detail),
            kind,
            order_id=order_id,
            transaction_id=transaction_id,
            detail=detail,
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
        claimed: list[uuid.UUID] = await self._write(
            "claim_unfinished",
            "claim unfinished orders",
            lambda now: self.t.claim_unfinished(
                now, owner, lease_s, take_own=take_own, limit=limit, older_than_s=older_than_s, only=only
            ),
            owner,
            lease_s,
            take_own=take_own,
            limit=limit,
            older_than_s=older_than_s,
            only=only,
        )
        return claimed

    async def take_lease(self, order_id: uuid.UUID, owner: str, lease_s: float) -> bool | None:
        taken: bool | None = await self._write(
            "take_lease",
            "take lease",
            lambda now: self.t.take_lease(now, order_id, owner, lease_s),
            order_id,
            owner,
            lease_s,
        )
        return taken

    async def renew_leases(self, order_ids: list[uuid.UUID], owner: str, lease_s: float) -> set[uuid.UUID]:
        ids = list(order_ids)
        renewed: set[uuid.UUID] = await self._write(
            "renew_leases",
            "renew leases",
            lambda now: self.t.renew_leases(now, ids, owner, lease_s),
            ids,
            owner,
            lease_s,
        )
        return renewed

    async def release_lease(self, order_id: uuid.UUID, owner: str) -> None:
        await self._write(
            "release_lease", "release lease", lambda now: self.t.release_lease(order_id, owner), order_id, owner
        )

    # ------------------------------------------------------------ captures, voids and refunds

    async def claim_uncaptured(self, limit: int = 100) -> list[Tender]:
        found: list[Tender] = await self.db.run(
            lambda c: c.call("claim_uncaptured", lambda now: [row(Tender, t) for t in self.t.claim_uncaptured(limit)]),
            what="uncaptured",
        )
        return found

    async def void_order(self, order_id: uuid.UUID, owner: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._write(
            "void_order", "void checkout", lambda now: self.t.void_order(now, order_id, owner), order_id, owner
        )
        return result

    async def begin_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._write(
            "begin_refund", "begin refund", lambda now: self.t.begin_refund(now, payload), payload
        )
        return result

    async def finish_refund(self, refund_id: uuid.UUID, ok: bool, reason: str, owner: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._write(
            "finish_refund",
            "finish refund",
            lambda now: self.t.finish_refund(now, refund_id, ok, reason, owner),
            refund_id,
            ok,
            reason,
            owner,
        )
        return result

    async def unresolved_refunds(self, older_than_s: float = 0.0, refund_id: uuid.UUID | None = None) -> list[Tender]:
        found: list[Tender] = await self.db.run(
            lambda c: c.call(
                "unresolved_refunds",
                lambda now: [row(Tender, t) for t in self.t.unresolved_refunds(now, older_than_s, refund_id)],
                older_than_s,
                refund_id,
            ),
            what="unresolved refunds",
        )
        return found

    async def mark_refund_sent(
        self, transaction_id: uuid.UUID, timeout_s: int, owner: str, payment_type: str | None = None
    ) -> Written:
        written: Written = await self._write(
            "mark_refund_sent",
            "mark refund sent",
            lambda now: self.t.mark_refund_sent(now, transaction_id, timeout_s, owner, payment_type),
            transaction_id,
            timeout_s,
            owner,
            payment_type,
        )
        return written

    async def fail_unsent_refund(self, refund_id: uuid.UUID, reason: str, owner: str) -> bool:
        return bool(
            await self._write(
                "fail_unsent_refund",
                "fail unsent refund",
                lambda now: self.t.fail_unsent_refund(now, refund_id, reason, owner),
                refund_id,
                reason,
                owner,
            )
        )


class SimMaintenanceStore:
    """Duck-types gatewayd.store.maintenance.MaintenanceStore (the queries recovery and the
    maintenance schedule use); one attempt each, like `Database.fetch`."""

    def __init__(self, db: SimDatabase, tables: Tables, store_id: str = "sim") -> None:
        self.db = db
        self.t = tables
        self.store_id = store_id

    async def _read(self, name: str, apply: Any, *args: Any) -> Any:
        async with self.db.conn() as c:
            return await c.call(name, apply, *args)

    async def orphans(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._read("orphans", lambda now: self.t.orphans(now))
        return found

    async def cleanup(self, minutes: int) -> int:
        def apply(now: datetime) -> list[uuid.UUID]:
            stale = self.t.stale_pending(now, minutes)
            for order_id in stale:
                self.t.fail(
                    now, order_id, "stale_pending", f"pending_payment for more than {minutes} minutes", "cancelled"
                )
            return stale

        return len(await self._read("cleanup", apply, minutes))

    async def unresolved(self, older_than_s: float = 0.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._read("unresolved", lambda now: self.t.unresolved(now, older_than_s))
        return found

    async def half_voided(self) -> list[uuid.UUID]:
        found: list[uuid.UUID] = await self._read("half_voided", lambda now: self.t.half_voided())
        return found

    async def open_on_terminal(self, terminal_id: str) -> int:
        return int(await self._read("open_on_terminal", lambda now: self.t.open_on_terminal(terminal_id)))

    async def captures_pending(self, terminal_id: str) -> int:
        return int(await self._read("captures_pending", lambda now: self.t.captures_pending(terminal_id)))

    async def settled_orphans(self, terminal_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._read(
            "settled_orphans", lambda now: self.t.settled_orphans(terminal_id)
        )
        return found

    async def record_settlement(self, terminal_id: str, detail: dict[str, Any]) -> None:
        await self._read(
            "record_settlement",
            lambda now: self.t.audit(now, "terminal.settled", None, None, {"terminal_id": terminal_id, **detail}),
        )


def _stable(answer: TenderAnswer) -> TenderAnswer:
    """The answer with plain strings in a stable order: the history is replayed and the run must
    not depend on the hash seed (a frozenset's order does)."""
    return msgspec.structs.replace(answer, from_statuses=tuple(sorted(answer.from_statuses)))


def _answer_fields(answer: TenderAnswer) -> dict[str, Any]:
    """The answer as the tables' record_tender takes it (its status apart, plain strings)."""
    fields = msgspec.structs.asdict(answer)
    del fields["status"]
    fields["from_statuses"] = tuple(sorted(str(s) for s in answer.from_statuses))
    return fields
