"""The state machine's tables, row by row, and the drawing in docs/checkout-states.md kept in step."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gatewayd.checkout import machine
from gatewayd.checkout.machine import (
    ANSWERS,
    TENDER_TRANSITIONS,
    Answer,
    Asked,
    Checkout,
    Keep,
    Order,
    OrderStatus,
    PaymentStatus,
    Tender,
    TenderStatus,
    decide,
)
from gatewayd.store import migrate
from gatewayd.terminals.outcomes import Approved, Busy, Declined, Misconfigured, NotFound, Offline, Unknown, Voided

DOC = Path(__file__).resolve().parents[2] / "docs" / "checkout-states.md"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _doc() -> str:
    return DOC.read_text()


def test_the_drawing_shows_exactly_the_tender_transitions() -> None:
    block = _doc().split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = set(re.findall(r"^\s+(\w+) --> (\w+)$", block, re.M))
    assert drawn == {(a.value, b.value) for a, b in TENDER_TRANSITIONS}


def test_the_answer_table_in_the_docs_is_the_code_s() -> None:
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in _doc().splitlines() if line.startswith("| ")]
    header = next(row for row in cells if row[0] == "answer")
    assert header == ["answer", *(a.value for a in Asked)]
    rows = {row[0]: row[1:] for row in cells if row[0] in {a.value for a in Answer}}
    assert set(rows) == {a.value for a in Answer}
    for answer in Answer:
        for i, asked in enumerate(Asked):
            assert rows[answer.value][i] == ANSWERS[(asked, answer)].value, (asked, answer)


def test_every_question_has_an_answer_for_every_answer() -> None:
    assert set(ANSWERS) == {(q, a) for q in Asked for a in Answer}


def _checked(table: str, column: str) -> set[str]:
    """The values a CHECK (column IN (...)) of `table` in sql/001 allows."""
    schema = next(m.sql for m in migrate.discover() if m.version == 1)
    body = schema.split(f"CREATE TABLE IF NOT EXISTS {table} ", 1)[1].split(";", 1)[0]
    allowed = re.search(rf"\n\s+{column}\s.*?CHECK \({column} IN \((.*?)\)\)", body, re.S)
    assert allowed is not None, (table, column)
    return set(re.findall(r"'(\w+)'", allowed.group(1)))


def test_the_statuses_match_the_sql_checks() -> None:
    assert {s.value for s in OrderStatus} == _checked("orders", "status")
    assert {s.value for s in PaymentStatus} == _checked("orders", "payment_status")
    assert {s.value for s in TenderStatus} == _checked("payment_transactions", "status")
    assert {s.value for s in machine.RefundStatus} == _checked("refunds", "status")


# ------------------------------------------------------------------ what an answer makes of a tender


def _tender(status: TenderStatus = TenderStatus.PROCESSING, amount: int = 1000, **kw: Any) -> Tender:
    return Tender(
        id=uuid.uuid4(),
        order_id=uuid.uuid4(),
        kind="payment",
        tender_index=kw.pop("index", 0),
        tender_type=kw.pop("tender_type", "card"),
        operation="sale",
        amount=amount,
        status=status,
        reference_id=uuid.uuid4().hex[:20].upper(),
        payment_processor_id="lane-1",
        timeout_s=60,
        **kw,
    )


OUTCOMES: dict[Answer, Any] = {
    Answer.APPROVED: Approved(reference_id="R", amount=1000, requested_amount=1000),
    Answer.PARTIAL: Approved(reference_id="R", amount=400, requested_amount=1000),
    Answer.VOIDED: Voided(reference_id="R", amount=1000),
    Answer.DECLINED: Declined(reference_id="R", status_code="1015"),
    Answer.NOT_FOUND: NotFound(reference_id="R"),
    Answer.NOT_FOUND_LATE: NotFound(reference_id="R"),
    Answer.BUSY: Busy(retry_after_s=1.0),
    Answer.OFFLINE: Offline(),
    Answer.MISCONFIGURED: Misconfigured(status_code="2002"),
    Answer.UNKNOWN: Unknown(reason="timeout"),
}


@pytest.mark.parametrize("key", sorted(ANSWERS, key=str), ids=lambda k: f"{k[0].value}-{k[1].value}")
def test_each_row_of_the_answer_table(key: tuple[Asked, Answer]) -> None:
    asked, answer = key
    late = answer == Answer.NOT_FOUND_LATE
    tender = _tender(TenderStatus.APPROVED if asked in (Asked.VOID, Asked.VOID_HOLD) else TenderStatus.PROCESSING)
    assert machine.answer_of(OUTCOMES[answer], tender, late=late) == answer
    result = machine.verdict(asked, OUTCOMES[answer], tender, late=late)
    assert result == ANSWERS[key]
    if isinstance(result, TenderStatus):
        assert (tender.status, result) in TENDER_TRANSITIONS or tender.status == result


def test_only_a_definitive_answer_decides_an_inquiry() -> None:
    decided = {a for a in Answer if isinstance(ANSWERS[(Asked.INQUIRY, a)], TenderStatus)}
    assert decided == {Answer.APPROVED, Answer.PARTIAL, Answer.VOIDED, Answer.DECLINED, Answer.NOT_FOUND_LATE}


def test_not_found_for_a_known_approved_charge_never_means_not_charged() -> None:
    assert ANSWERS[(Asked.VOID, Answer.NOT_FOUND)] is Keep.SETTLED
    assert ANSWERS[(Asked.VOID, Answer.NOT_FOUND_LATE)] is Keep.SETTLED


def test_not_found_is_believed_on_the_database_clock_only_after_the_deadline() -> None:
    sent = _tender(sent_at=NOW)
    # 60 s timeout + 10 s margin + 1 s for a stamp the intent made before the send (retry.SEND_MARGIN_S)
    assert not machine.not_found_late(sent, NOW + timedelta(seconds=70.9))
    assert machine.not_found_late(sent, NOW + timedelta(seconds=71))
    assert not machine.not_found_late(_tender(), NOW + timedelta(days=1))  # never sent: never believed


# ------------------------------------------------------------------ decide, step by step


def _checkout(*tenders: Tender, status: OrderStatus = OrderStatus.PAYMENT_PROCESSING) -> Checkout:
    order = Order(
        id=uuid.uuid4(), order_number="000001", status=status, payment_status=PaymentStatus.PROCESSING,
        idempotency_key="k", request_hash="h", card_mode="sale", subtotal=0, tax=0, discount=0, total=0,
        change_due=0, refunded_amount=0, currency="USD",
    )  # fmt: skip
    return Checkout(order=order, tenders=tenders, now=NOW)


A = TenderStatus.APPROVED


@pytest.mark.parametrize(
    ("tenders", "charge_pending", "step", "which"),
    [
        ([], True, machine.Commit, None),
        ([A], True, machine.Commit, None),
        ([TenderStatus.PENDING], True, machine.Charge, 0),
        ([A, TenderStatus.PENDING], True, machine.Charge, 1),
        ([TenderStatus.PENDING], False, machine.Fail, None),
        ([A, TenderStatus.PENDING], False, machine.VoidCharge, 0),
        ([TenderStatus.UNKNOWN], True, machine.Inquire, 0),
        ([TenderStatus.DECLINED, TenderStatus.PROCESSING], True, machine.Inquire, 1),
        ([A, TenderStatus.DECLINED], True, machine.VoidCharge, 0),
        ([TenderStatus.VOIDED, TenderStatus.DECLINED], True, machine.Fail, None),
        ([TenderStatus.FAILED], True, machine.Fail, None),
        ([TenderStatus.VOIDED], True, machine.Fail, None),
    ],
)
def test_decide(tenders: list[TenderStatus], charge_pending: bool, step: type, which: int | None) -> None:
    rows = [_tender(s, index=i) for i, s in enumerate(tenders)]
    for i, t in enumerate(rows):
        if t.status == A:
            rows[i] = Tender(**{**{f: getattr(t, f) for f in t.__struct_fields__}, "approved_amount": t.amount})
    decided = decide(_checkout(*rows), charge_pending=charge_pending)
    assert isinstance(decided, step)
    if which is not None:
        assert decided.tender == rows[which]  # type: ignore[attr-defined]


def test_a_partial_approval_is_voided_first() -> None:
    partial = _tender(A, approved_amount=400)
    assert isinstance(decide(_checkout(partial), charge_pending=True), machine.VoidCharge)


def test_a_settled_charge_is_not_voided_and_the_order_fails_around_it() -> None:
    settled = _tender(A, approved_amount=1000, settled_at=NOW)
    declined = _tender(TenderStatus.DECLINED, index=1, failure_code="card_declined", last_error="declined")
    step = decide(_checkout(settled, declined), charge_pending=True)
    assert isinstance(step, machine.Fail) and step.failure.code == "card_declined"


def test_a_final_order_needs_nothing() -> None:
    for status in machine.FINAL_ORDER:
        assert isinstance(decide(_checkout(_tender(), status=status), charge_pending=True), machine.Done)


def test_cash_never_blocks_and_never_needs_the_terminal() -> None:
    cash = _tender(TenderStatus.PENDING, tender_type="cash")
    assert isinstance(decide(_checkout(cash), charge_pending=False), machine.Commit)


def test_voiding_a_completed_order_step_by_step() -> None:
    approved = _tender(A, approved_amount=1000)
    settled = _tender(A, approved_amount=500, settled_at=NOW, index=1)
    voided = _tender(TenderStatus.VOIDED, index=2)
    completed = OrderStatus.COMPLETED
    step = machine.decide_void(_checkout(approved, settled, status=completed))
    assert isinstance(step, machine.VoidCharge) and step.tender == approved
    # a settled charge cannot be voided: the order is voided around it (an orphan to refund)
    assert isinstance(machine.decide_void(_checkout(voided, settled, status=completed)), machine.VoidOrder)
    assert isinstance(machine.decide_void(_checkout(voided, status=completed)), machine.VoidOrder)
    assert isinstance(machine.decide_void(_checkout(voided, status=OrderStatus.VOIDED)), machine.Done)


def test_a_hold_is_voided_by_its_own_question() -> None:
    hold = Tender(**{**{f: getattr(_tender(A), f) for f in Tender.__struct_fields__}, "operation": "auth"})
    assert machine.void_question(hold) == Asked.VOID_HOLD
    captured = Tender(**{**{f: getattr(hold, f) for f in Tender.__struct_fields__}, "capture_status": "captured"})
    assert machine.void_question(captured) == Asked.VOID
    assert machine.void_question(_tender(A)) == Asked.VOID
    # a hold whose batch closed lapsed: nothing was taken, the tender is voided, never "settled"
    assert ANSWERS[(Asked.VOID_HOLD, Answer.NOT_FOUND)] == TenderStatus.VOIDED
