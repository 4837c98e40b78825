"""Mutants: every bug the simulation must catch, re-introduced one at a time by a small, named change.

The simulation proves its reach by killing each mutant: `python -m tests.sim --mutants` runs every
mutant over the CI seed budget and prints, per mutant, the first seed that caught it (a seed that
fails in a way no open known bug of tests/sim/regressions.py explains). A mutant that no seed
catches SURVIVED: the world is too small for that bug, and CI fails (tests/sim/test_mutants.py).

A mutant is a textual change of one function's source (`_Source`: the old text must be there,
exactly once it is replaced, the function recompiled in its own module's namespace) or of one
row of a table (`_Rows`), applied in a worker process for the length of a chunk of seeds and
undone after it. Every fixed bug in `KNOWN_BUGS` (tests/sim/regressions.py) has one here (`bug`),
unless the code path it lived in is gone (`NO_MUTANT`, with the reason), and so have the eight
defects of the state-machine issue (`state-machine-N`).
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _resolve(path: str) -> tuple[Any, str, Any]:
    """'module:Class.attr' or 'module:attr' -> (owner object, attribute name, module)."""
    module_name, _, attr = path.partition(":")
    __import__(module_name)
    module = sys.modules[module_name]
    owner: Any = module
    *parents, name = attr.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name, module


@dataclass(frozen=True)
class _Source:
    """Replace `old` by `new` in the source of one function (a method, or a module's function)."""

    target: str  # "gatewayd.checkout.executor:Executor._confirm"
    old: str
    new: str
    more: tuple[tuple[str, str], ...] = ()  # further (old, new) replacements in the same function

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        owner, name, module = _resolve(self.target)
        original = vars(owner)[name]
        source = textwrap.dedent(inspect.getsource(original))  # a decorated one with its decorators
        for old, new in ((self.old, self.new), *self.more):
            if source.count(old) != 1:
                raise AssertionError(f"mutant of {self.target}: the text to change is not there exactly once")
            source = source.replace(old, new)
        namespace = dict(vars(module))
        exec(compile(source, f"<mutant of {self.target}>", "exec"), namespace)
        setattr(owner, name, namespace[name])
        try:
            yield
        finally:
            setattr(owner, name, original)


@dataclass(frozen=True)
class _Replace:
    """Replace one attribute by a value built when the mutant is applied."""

    target: str
    build: Callable[[Any], Any]  # the original -> its replacement

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        owner, name, _ = _resolve(self.target)
        original = vars(owner)[name]  # as stored (a staticmethod stays one when put back)
        setattr(owner, name, self.build(getattr(owner, name)))
        try:
            yield
        finally:
            setattr(owner, name, original)


@dataclass(frozen=True)
class _Rows:
    """Change rows of the state machine's answer table (`machine.ANSWERS`)."""

    rows: tuple[tuple[str, str, str], ...]  # (asked, answer, verdict) by their values

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        from gatewayd.checkout import machine

        saved = dict(machine.ANSWERS)
        for asked, answer, verdict in self.rows:
            machine.ANSWERS[(machine.Asked(asked), machine.Answer(answer))] = machine.TenderStatus(verdict)
        try:
            yield
        finally:
            machine.ANSWERS.clear()
            machine.ANSWERS.update(saved)


Change = _Source | _Replace | _Rows


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str  # the KNOWN_BUGS id, or "state-machine-N" (the eight defects)
    what: str
    changes: tuple[Change, ...]

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for change in self.changes:
                stack.enter_context(change.applied())
            yield


def _daemon_clock_not_found_late(original: Any) -> Any:
    """not_found_late measured on the daemon's own wall clock, not the database's `now`."""
    from tests.sim.daemon import daemon_wall_clock

    def not_found_late(tender: Any, now: datetime | None) -> bool:
        return original(tender, daemon_wall_clock())

    return not_found_late


def _always_held(original: Any) -> Any:
    def lease_held(self: Any, now: datetime, order_id: Any, owner: str | None) -> bool:
        return owner is not None and order_id in self.orders

    return lease_held


def _never_lost(original: Any) -> Any:
    return staticmethod(lambda now, o, owner: False)


def _confirm_nothing(original: Any) -> Any:
    async def _confirm(self: Any, lane: Any, t: Any, not_found: Any) -> Any:
        return not_found

    return _confirm


# The CI seed budget for mutants: every mutant must be caught within it (test_mutants.py).
MUTANT_SEEDS = range(1, 2501)

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- the state-machine issue's eight defects
    Mutant(
        "void-not-found-not-charged",
        "state-machine-1",
        "a Void of a known-approved charge answered 'not found' is taken as not charged (voided), not settled",
        (_Rows((("void", "not_found", "voided"), ("void", "not_found_late", "voided"))),),
    ),
    Mutant(
        "voided-as-approval",
        "state-machine-2",
        "a Voided answer to a charge or an inquiry is taken as an approval",
        (_Rows((("charge", "voided", "approved"), ("inquiry", "voided", "approved"))),),
    ),
    Mutant(
        "inquiry-misconfigured-not-charged",
        "state-machine-3",
        "an inquiry answered Misconfigured (SPIn 2002, a wrong auth key) is taken as not charged",
        (_Rows((("inquiry", "misconfigured", "failed"),)),),
    ),
    Mutant(
        "non-final-answered-final",
        "state-machine-4",
        "the coordinator answers a checkout that is not final as its outcome, not OutcomePending",
        (
            _Source(
                "gatewayd.checkout.coordinator:Coordinator._wait",
                "if view is not None and view.final:",
                "if view is not None:",
            ),
        ),
    ),
    Mutant(
        "settle-with-captures-owed",
        "state-machine-5",
        "the operator's settle is allowed while authorizations still owe their capture (the holds lapse)",
        (_Source("gatewayd.checkout.operations:Operations._settle_refusal", "if captures:", "if False:"),),
    ),
    Mutant(
        "reload-drops-retired-lane",
        "state-machine-6",
        "a reload that removes a terminal drops its lane: its in-doubt charges, voids and captures cannot be "
        "followed up",
        (
            _Source(
                "tests.sim.daemon:SimLanes.for_followup",
                "return self.active.get(terminal_id) or self.retired.get(terminal_id)",
                "return self.active.get(terminal_id)",
            ),
        ),
    ),
    Mutant(
        "phantom-reservation",
        "state-machine-7",
        "the commit (and the rollback) subtract the line's quantity from an inventory row, also when the row "
        "appeared after the order reserved nothing",
        (
            _Source(
                "tests.sim.tables:Tables._took_by_sku",
                'took = line["quantity"] if line["reserved"] is None else line["reserved"]',
                'took = line["quantity"]',
            ),
        ),
    ),
    Mutant(
        "lease-unfenced",
        "state-machine-8",
        "gw_lease_held is always true (and the commit/fail fence never says lost): a daemon woken after its lease "
        "expired writes over the one that took the order over",
        (
            _Replace("tests.sim.tables:Tables.lease_held", _always_held),
            _Replace("tests.sim.tables:Tables._lease_lost", _never_lost),
        ),
    ),
    Mutant(
        "deadline-on-daemon-clock",
        "state-machine-8",
        "a 'not found' is believed by the daemon's own (skewed) wall clock instead of the database's",
        (
            _Replace("gatewayd.checkout.executor:not_found_late", _daemon_clock_not_found_late),
            _Replace("gatewayd.checkout.reversals:not_found_late", _daemon_clock_not_found_late),
        ),
    ),
    # ---------------------------------------------------------------- every bug of tests/sim/regressions.py
    Mutant(
        "lane-void-cache",
        "lane-void-cache",
        "the lane caches a refused void (or capture) and replays it to every later one of that charge",
        (
            _Source(
                "gatewayd.terminals.lane:Lane._finish",
                "retryable = (isinstance(job.op, Void)",
                "retryable = False and (isinstance(job.op, Void)",
            ),
        ),
    ),
    Mutant(
        "refund-inquiry",
        "refund-inquiry",
        "a Busy/Offline answer to a refund's Status inquiry fails the refund",
        (
            _Source(
                "gatewayd.checkout.reversals:Reversals._apply",
                "isinstance(outcome, Offline | Misconfigured | Busy) and not sent",
                "isinstance(outcome, Offline | Misconfigured | Busy)",
            ),
        ),
    ),
    Mutant(
        "not-found-anchor",
        "not-found-anchor",
        "sent_at is stamped at the first send only, not again before a resend: 'not found' believed too early",
        (
            _Source(
                "tests.sim.tables:Tables.mark_sent",
                'tx.update(status="processing", sent_at=now,',
                'tx.update(status="processing", sent_at=tx["sent_at"] or now,',
            ),
        ),
    ),
    Mutant(
        "capture-after-void",
        "capture-after-void",
        "a voided (or failed) authorization keeps capture_status 'pending' and claim_uncaptured selects "
        "authorizations whatever their status: both halves of the fix undone (either alone is masked by the "
        "other: record_tender clearing capture_status leaves nothing for the filter to catch)",
        (
            _Source(
                "tests.sim.tables:Tables.record_tender",
                'capture_status=None if status in ("voided", "failed") else tx["capture_status"],',
                'capture_status=tx["capture_status"],',
            ),
            _Source("tests.sim.tables:Tables.claim_uncaptured", 'and t["status"] == "approved" and', "and"),
        ),
    ),
    Mutant(
        "void-intent",
        "void-intent",
        "a void has no durable intent (void_requested_at never written)",
        (
            _Source(
                "tests.sim.tables:Tables.mark_void_requested",
                'tx.update(void_requested_at=tx["void_requested_at"] or now, updated_at=now)',
                "pass",
            ),
        ),
    ),
    Mutant(
        "refund-race",
        "refund-race",
        "recovery's refund pass no longer skips (nor waits for) an order this process is working on, and "
        "mark_refund_sent answers ok when it moved nothing: recovery fails a refund the POS's request is about "
        "to send, and the Return is sent anyway. (Undoing the last alone is masked: with the order's lock and "
        "the busy_with skip, nothing of this process fails a refund between its read and its send, and other "
        "daemons are fenced by the lease, so mark_refund_sent never sees a stale row.)",
        (
            _Source(
                "gatewayd.checkout.recovery:Recovery._refunds",
                "if self.executor.busy_with(tx.order_id) or tx.refund_id is None:",
                "if tx.refund_id is None:",
                more=(
                    (
                        "async with self.executor.leased(tx.order_id) as ok:",
                        "async with self.executor._leased(tx.order_id) as ok:",
                    ),
                ),
            ),
            _Source(
                "tests.sim.tables:Tables.mark_refund_sent",
                'if t["status"] not in ("pending", "processing"):\n        return "stale"',
                'if t["status"] not in ("pending", "processing"):\n        return "ok"',
            ),
        ),
    ),
    Mutant(
        "void-refund-pending",
        "void-refund-pending",
        "a checkout with a refund pending may be voided",
        (
            _Source(
                "gatewayd.checkout.reversals:Reversals._void",
                "or any(r.status == RefundStatus.PENDING for r in c.refunds)",
                "",
            ),
        ),
    ),
    Mutant(
        "refund-timeout",
        "refund-timeout",
        "a refund's Return is stored with timeout 120 s whatever its terminal's own timeout",
        (
            _Source(
                "gatewayd.checkout.reversals:Reversals.finish",
                'timeout_s = ex.lanes.timeout_s(tx.terminal_id or "")',
                "timeout_s = 120",
            ),
        ),
    ),
    Mutant(
        "pending-answer-not-found",
        "pending-answer-not-found",
        "the pending answer's view lets NotFound through (404 for a checkout that exists)",
        (
            _Source(
                "gatewayd.checkout.coordinator:Coordinator._view_if_any",
                "except (CheckoutError, StoreError):",
                "except StoreError:",
            ),
        ),
    ),
    Mutant(
        "void-split-settled",
        "void-split-settled",
        "a void raises already_settled as soon as one card is settled, after voiding the ones before it",
        (
            _Source(
                "gatewayd.checkout.reversals:Reversals._void",
                "            c = await self._load(order_id)\n        if isinstance(step, Done):",
                "            c = await self._load(order_id)\n"
                "            if any(t.status == TenderStatus.APPROVED and t.settled for t in c.cards):\n"
                "                return _voided(c)\n"
                "        if isinstance(step, Done):",
            ),
        ),
    ),
    Mutant(
        "void-refund-race",
        "void-refund-race",
        "a refund is begun (gw_begin_refund) before the order's lease is taken: a void of the order running "
        "under the lease does not see it, and the Return is sent for the voided order",
        (
            _Source(
                "gatewayd.checkout.reversals:Reversals.refund",
                "            if not ok:\n"
                "                raise OutcomePending(\n"
                '                    "another process is working on this checkout; ask again",\n'
                '                    details={"checkout_id": str(order_id)},\n'
                "                )\n"
                "            result = await before_intent(self.store.begin_refund(payload))\n"
                "            _refused(result, request)\n"
                '            refund_id = uuid.UUID(result["refund_id"])\n',
                "            if not ok:\n"
                "                raise OutcomePending(\n"
                '                    "another process is working on this checkout; ask again",\n'
                '                    details={"checkout_id": str(order_id)},\n'
                "                )\n",
                more=(
                    (
                        "    try:\n        # Begun under",
                        "    result = await before_intent(self.store.begin_refund(payload))\n"
                        "    _refused(result, request)\n"
                        '    refund_id = uuid.UUID(result["refund_id"])\n'
                        "    try:\n        # Begun under",
                    ),
                ),
            ),
        ),
    ),
    Mutant(
        "refund-lapsed-hold",
        "refund-lapsed-hold",
        "a Void of an authorization whose batch closed is asked as a sale's (not found: the charge stands, "
        "marked settled) and the orphan list does not tell a hold from money received: the lapsed hold is "
        "listed as an orphan to refund. (Undoing the listing alone is masked: today a lapsed hold's Void is "
        "asked as VOID_HOLD, so it is voided, never marked settled, and never listed.)",
        (
            _Source(
                "gatewayd.checkout.machine:void_question",
                'if tender.operation == "auth" and tender.capture_status != "captured":',
                "if False:",
            ),
            _Source("tests.sim.tables:Tables.orphans", '"hold": not _money(t),', '"hold": False,'),
        ),
    ),
    Mutant(
        "follow-up-not-found",
        "follow-up-not-found",
        "a Void or Capture answered 'not found' is believed without asking Status (an earlier answer may be lost)",
        (_Replace("gatewayd.checkout.executor:Executor._confirm", _confirm_nothing),),
    ),
    Mutant(
        "capture-stale-tender",
        "capture-stale-tender",
        "capture_pending sends the Capture for the tender as claimed, without reading it again under the lease",
        (_Source("gatewayd.checkout.executor:Executor._capture", "t = fresh[0]", "t = claimed"),),
    ),
    Mutant(
        "reversal-lock",
        "reversal-lock",
        "Executor.leased drops an order's lock from the map when it is unlocked at exit (a waiter may hold it), "
        "and a refused lease write (LeaseLost) is not answered as OutcomePending by the void nor skipped by the "
        "capture pass: both halves of the fix (1978db9) undone. (Undoing the lock alone is masked: reversals "
        "of one order do run side by side then - 19 of seeds 1-300 - but every write the second makes after "
        "the first's gw_void_checkout is refused, LeaseLost is a GatewayError caught as OutcomePending, and "
        "nothing the invariants see goes wrong.)",
        (
            _Source(
                "gatewayd.checkout.executor:Executor.leased",
                "if self._lock_users[order_id] == 0:\n            del self._lock_users[order_id]\n",
                "if not lock.locked():\n",
            ),
            _Source(
                "gatewayd.checkout.reversals:Reversals.void",
                "except LeaseLost:",
                "except ():",
            ),
            _Source(
                "gatewayd.checkout.executor:Executor.capture_pending",
                "except LeaseLost:",
                "except ():",
            ),
        ),
    ),
    Mutant(
        "settle-unguarded",
        "settle-unguarded",
        "the settle's checks are not repeated on the lane just before the Settle leaves",
        (_Source("gatewayd.checkout.operations:Operations.settle", "before_send=still_clear", "before_send=None"),),
    ),
    Mutant(
        "stalled-send",
        "stalled-send",
        "a charge is sent whether or not the sender still holds the lease, a takeover keeps the old stamp, and a "
        "late approval is dropped",
        (
            _Source(
                "gatewayd.checkout.executor:Executor.may_send",
                "return order_id not in self._lost and",
                "return True or",
            ),
            _Source("tests.sim.tables:Tables.claim_unfinished", "if prev is not None and prev != owner:", "if False:"),
            _Source(
                "gatewayd.checkout.executor:Executor._approved_after_all",
                "if await best_effort(self.store.late_approval(t.id, outcome.amount)):",
                "if False:",
            ),
        ),
    ),
    Mutant(
        "late-approval-stale",
        "stalled-send",
        "an approval refused as stale (not for the lease) is dropped: the daemon that paused past the wire "
        "holds the order's lease again (for a refund) when it hears the approval, so only LeaseLost corrected it",
        (
            _Source(
                "gatewayd.checkout.executor:Executor._record",
                "else:\n            await self._approved_after_all(c, t, outcome)\n        return after\n",
                "return after\n",
                more=(
                    (
                        'if recorded.written != "ok":\n        await self._approved_after_all(c, t, outcome)\n',
                        'if recorded.written != "ok":\n',
                    ),
                ),
            ),
        ),
    ),
    Mutant(
        "own-reclaim-stuck",
        "own-reclaim-stuck",
        "a drive that lost its lease keeps the lease its own recovery took back",
        (
            _Source(
                "gatewayd.checkout.executor:Executor._drive",
                "await best_effort(self.store.release_lease(order_id, self.owner))",
                "pass",
            ),
        ),
    ),
    # ---------------------------------------------------------------- issue 16: the intent stamps its card sent
    Mutant(
        "send-past-margin",
        "issue-16-send-margin",
        "a card the intent stamped sent (sql/010) is sent without a stamp of its own however long after the "
        "intent it leaves: its stored sent_at is older than the send by more than the not-found rule's "
        "SEND_MARGIN_S, and a 'not found' is believed while the terminal still reads the card",
        (
            _Source(
                "gatewayd.checkout.executor:Executor._charge",
                "if intent_stamp is not None and self._now() - intent_stamp <= SEND_MARGIN_S:",
                "if intent_stamp is not None:",
            ),
        ),
    ),
    Mutant(
        "settle-removed-terminal",
        "settle-removed-terminal",
        "the settle takes the lane without asking whether a reload removed the terminal meanwhile",
        (
            _Source(
                "gatewayd.checkout.operations:Operations.settle",
                "lane = self.lanes.get(terminal_id)",
                "lane = self.lanes[terminal_id]",
            ),
        ),
    ),
)
BY_NAME = {m.name: m for m in MUTANTS}
# Fixed bugs with no mutant: the code path the bug lived in is gone, so no small change of today's code
# re-introduces it (a mutant there would be an equivalent mutant, and would survive for that reason).
NO_MUTANT: dict[str, str] = {
    "inquiry-partial": (
        "Whether an approval is partial is no longer judged from the answer. The old mutant (answer_of "
        "comparing outcome.amount with outcome.requested_amount) changes nothing any decision reads: "
        "machine.ANSWERS maps (CHARGE or INQUIRY, PARTIAL) and (..., APPROVED) both to APPROVED and (VOID or "
        "VOID_HOLD, PARTIAL/APPROVED) both to VOID_AGAIN; FAILURE_CODES is read only for NOT_CHARGED verdicts; "
        "the approved amount is stored from the answer's amount (executor._fields) and machine.decide voids "
        "a partial tender by Tender.partial (stored approved_amount < amount); no code of gatewayd.checkout "
        "reads an answer's requested_amount or Approved.partial. The bug's seeds (446, 531) stay as "
        "regression tests."
    ),
}
# The seeds of a mutant run in blocks (each block only once every earlier block passed: the first
# seed that caught a mutant is exact), the blocks' chunks over worker processes.
CHUNK = 25


def _blocks(seeds: Sequence[int]) -> list[list[int]]:
    sizes, out, i = [25, 75, 200, 300], [], 0
    while i < len(seeds):
        size = sizes[min(len(out), len(sizes) - 1)]
        out.append(list(seeds[i : i + size]))
        i += size
    return out


def run_mutant_chunk(name: str, seeds: Sequence[int]) -> int | str | None:
    """The first of `seeds` that catches the mutant (in this process), None, or why it does not apply."""
    from tests.sim.regressions import explain
    from tests.sim.runner import run_seed

    try:
        mutant = BY_NAME[name].applied()
        mutant.__enter__()
    except AssertionError as exc:
        return str(exc)
    try:
        for seed in seeds:
            result = run_seed(seed)
            if not result.ok and explain(result.violations) is None:
                return seed
    finally:
        mutant.__exit__(None, None, None)
    return None


def check_applies() -> list[str]:
    """Every mutant's change applies (its text is found) and is undone; the problems."""
    problems = []
    for m in MUTANTS:
        try:
            with m.applied():
                pass
        except Exception as exc:
            problems.append(f"{m.name}: {exc}")
    return problems


@dataclass
class MutantReport:
    caught: dict[str, int | str | None]  # the first seed that caught it; None: survived; str: does not apply
    seconds: float

    @property
    def survivors(self) -> list[str]:
        """Mutants no seed caught (or that no longer apply to the code: they prove nothing)."""
        return [name for name, seed in self.caught.items() if not isinstance(seed, int)]

    def table(self) -> str:
        width = max(len(n) for n in self.caught)
        lines = [f"{'mutant':<{width}}  first seed  bug"]
        for name, seed in self.caught.items():
            shown = "SURVIVED" if seed is None else "BROKEN" if isinstance(seed, str) else str(seed)
            note = f"  ({seed})" if isinstance(seed, str) else ""
            lines.append(f"{name:<{width}}  {shown:>10}  {BY_NAME[name].bug}{note}")
        lines.append(f"{len(self.caught)} mutants in {self.seconds:.1f}s, {len(self.survivors)} survived")
        return "\n".join(lines)


def run_mutants(
    seeds: Sequence[int],
    names: Sequence[str] | None = None,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> MutantReport:
    names = list(names or BY_NAME)
    started = time.perf_counter()
    caught: dict[str, int | str | None] = dict.fromkeys(names)
    alive = list(names)
    jobs = max(1, jobs or os.cpu_count() or 1)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for block in _blocks(list(seeds)):
            if not alive:
                break
            futures = {
                name: [pool.submit(run_mutant_chunk, name, block[i : i + CHUNK]) for i in range(0, len(block), CHUNK)]
                for name in alive
            }
            for name, parts in futures.items():
                answers = [f.result() for f in parts]
                broken = [a for a in answers if isinstance(a, str)]
                found = [a for a in answers if isinstance(a, int)]
                if broken:
                    caught[name] = broken[0]
                elif found:
                    caught[name] = min(found)
                if progress is not None and caught[name] is not None:
                    progress(f"{name}: {caught[name]} ({time.perf_counter() - started:.0f}s)")
            alive = [n for n in alive if caught[n] is None]
            if progress is not None:
                progress(f"seeds {block[0]}-{block[-1]} done, {len(alive)} alive: {', '.join(alive)}")
    return MutantReport(caught, time.perf_counter() - started)
