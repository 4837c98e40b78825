"""Seeds that found a bug, kept forever and run by tests/sim/test_regressions.py.

`KNOWN_BUGS` are the bugs in gatewayd the simulation found, each with the seeds that reproduced
it. A fixed bug's seeds must pass on today's code: they are regression tests. An OPEN bug (found,
not fixed in gatewayd yet) names its `symptoms`, the violations it causes (regular expressions):
its seeds must still fail with exactly those, and a range run tolerates a failing seed whose every
violation is the symptom of an open bug (GATEWAYD_SIM_STRICT=1 or `--strict` does not). Once
gatewayd is fixed its seeds pass, test_regressions says so: set `fixed=True`, drop `symptoms`.
A failing seed no open bug explains is a new bug: add it here.

Seeds are tied to the simulator: when the simulator changes (new faults, other client
behaviour), a seed replays a different story, and a seed here may no longer walk the path
that once found its bug. It still must pass; to cover a bug's path again, find a seed that
reproduces it with the fix undone (a mutant of gatewayd) and add it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBug:
    id: str
    summary: str
    seeds: tuple[int, ...]  # seeds that failed because of it (at the time they were found)
    fixed: bool = True
    symptoms: tuple[str, ...] = ()  # an open bug's violations, as regular expressions

    def explains(self, violation: str) -> bool:
        return not self.fixed and any(re.search(pattern, violation) for pattern in self.symptoms)


def explain(violations: Iterable[str]) -> list[str] | None:
    """The open bugs whose symptoms account for every violation; None when one is unexplained."""
    culprits: list[str] = []
    for violation in violations:
        bug = next((b for b in KNOWN_BUGS if b.explains(violation)), None)
        if bug is None:
            return None
        if bug.id not in culprits:
            culprits.append(bug.id)
    return culprits


KNOWN_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        "lane-void-cache",
        "A declined void (or the lane's own 'void not applied' verdict) was cached by the lane under "
        "(void, reference id) and replayed to every later void of that charge: the void was never sent "
        "again in this process. Rolled-back checkouts stayed charged and payment_processing, legacy "
        "orphans were never voided, half-voided checkouts never finished (I1, I7). Fixed in gatewayd: "
        "Lane._finish keeps only a void's or capture's success.",
        (4, 21),
    ),
    KnownBug(
        "refund-inquiry",
        "finish_refund took a Busy or Offline answer to its Status inquiry as 'the refund failed' and "
        "failed a refund whose Return the terminal had approved: the customer had the money back, the "
        "books said not (I2). Fixed in gatewayd: Offline/Busy only fail a refund when they answer the "
        "Return itself.",
        (113, 290, 375),
    ),
    KnownBug(
        "not-found-anchor",
        "After a restart, recovery believes a 'not found' once sent_at + timeout + 10 s has passed, but "
        "sent_at is not when the request last left: the tender is failed, the order rolled back (or the "
        "refund failed), and the terminal approves moments later (I2, I1: money without goods, nobody "
        "voids it). Fixed in gatewayd: mark_sent runs in the lane's before_send, after the queue wait, and "
        "stamps sent_at again before every busy resend (seeds 161, 421, 757, then 85, 229, 1319); "
        "mark_refund_sent does the same for Returns.",
        (161, 421, 757, 85, 229, 1319),
    ),
    KnownBug(
        "inquiry-partial",
        "A partial approval learnt by a Status inquiry was not seen as partial (Status answers carry no "
        "requested amount): the tender was recorded approved, the commit answered not_ready and the POS got "
        "internal_error (a 5xx) until a later pass voided it. Fixed in gatewayd: _apply judges the approved "
        "amount against the tender; since the state machine, partial-ness is judged only from the stored "
        "tender (Tender.partial), never from the answer, so no mutant can re-introduce it (mutants.NO_MUTANT).",
        (446, 531),
    ),
    KnownBug(
        "capture-after-void",
        "auth_capture: voiding a completed checkout before its capture left capture_status 'pending'; "
        "every recovery pass then sent a Capture for a voided authorization, forever (I7). Fixed in "
        "gatewayd: record_tender clears capture_status of a voided/failed tender, claim_uncaptured "
        "selects approved tenders only.",
        (93, 1654, 1697),
    ),
    KnownBug(
        "void-intent",
        "A void had no durable intent: when the daemon died while a void was in flight (or the POS gave "
        "up), the terminal could have voided the charge while the order stayed completed with the tender "
        "approved (goods gone, money back, books say sold), and a later refund of it paid the customer "
        "twice (I3, I2). Fixed in gatewayd: payment_transactions.void_requested_at, half_voided picks "
        "such orders up, refunds are refused while a void is pending.",
        (268, 413, 1865),
    ),
    KnownBug(
        "refund-race",
        "Recovery's refund pass fails a refund that is still pending as 'interrupted before it was sent' "
        "while this very process is about to send it for the POS; the Return is sent anyway "
        "(mark_refund_sent silently changes nothing): the customer gets the money, the refund stays "
        "failed (I2). Fixed in gatewayd: fail_unsent_refund is atomic, mark_refund_sent says whether it "
        "moved the row and the Return is not sent when it did not; recovery skips orders this process "
        "is working on.",
        (4270, 2130, 2957, 4211, 7261),
    ),
    KnownBug(
        "void-refund-pending",
        "A checkout can be voided while one of its refunds is still pending (Return sent, answer "
        "unknown); recovery then finishes the refund as approved and gw_finish_refund turns the voided "
        "order into partially_refunded: the customer got the void and the refund, loyalty and register "
        "totals go wrong (I2, I3, I5). Fixed in gatewayd: a checkout with a pending refund cannot be "
        "voided.",
        (3182, 1072, 2818, 2923, 4167),
    ),
    KnownBug(
        "refund-timeout",
        "refund_checkout writes every refund transaction with timeout_s 120 whatever the terminal's own "
        "timeout (up to 720 s): with a slower terminal recovery believes a 'not found' for a Return still "
        "running, fails the refund, and the terminal pays the customer moments later (I2). Fixed in "
        "gatewayd: mark_refund_sent stores the terminal's own timeout.",
        (35,),
    ),
    KnownBug(
        "pending-answer-not-found",
        "A checkout whose answer was not ready within the POS's wait was looked up by the id this request "
        "had minted, which does not exist when the key's checkout was created by an earlier request (or "
        "before the intent landed): Coordinator._wait let the NotFound through and the POS was told "
        "404 'no such checkout' for a checkout that exists and may be charging (I6). Fixed in gatewayd: "
        "_view_if_any answers the pending outcome without a view.",
        (14, 20, 26),
    ),
    # ---------------------------------------------------------------- found in the state machine's first cut, fixed
    KnownBug(
        "void-split-settled",
        "Reversals.void voids the card tenders one at a time; when a later one's batch has settled "
        "(Void answered 'not found') it raises already_settled after the earlier ones were voided: the "
        "order stays completed with a voided tender, half_voided skips it for its settled tender, "
        "gw_void_checkout refuses it, and the refund the POS is told to make covers only the settled "
        "charge: goods kept, part of the money back, books say sold (I3).",
        (92, 135, 211),
    ),
    KnownBug(
        "refund-lapsed-hold",
        "An authorization of an order that did not complete, whose batch closed before it was voided, "
        "is a hold that lapsed: nothing was ever received. gatewayd marks it settled and lists it as an "
        "orphan to refund (Operations.orphans action 'refund', reconcile needs_refund), and "
        "gw_begin_refund's orphan branch counts it as refundable (status approved, settled_at set, any "
        "operation): the operator's Return pays the customer money never received (I2).",
        (1, 125, 150),
    ),
    KnownBug(
        "follow-up-not-found",
        "A Void or Capture answered 'not found' is taken as 'the batch closed, the charge stands as it "
        "was' (machine.ANSWERS (VOID, NOT_FOUND) -> SETTLED; Executor.capture_pending), without asking "
        "Status, even when an earlier Void or Capture of it went out and its answer was lost: a charge "
        "already voided is declared standing and listed to be refunded (the operator's refund pays it "
        "back twice, I2; or the POS is answered already_settled for a charge it voided and told to refund "
        "it, I3), a hold already captured is declared lost (capture pending forever, a false ALERT, I7).",
        (184, 446, 584),
    ),
    KnownBug(
        "capture-stale-tender",
        "Executor.capture_pending claims the authorizations to capture, then waits for each order's "
        "lease (a void of it may be running) and sends the Capture for the tender as it was claimed, "
        "without reading it again: a Capture for an authorization just voided, and a false 'hold lost' "
        "ALERT (charge_settled) when the terminal says it has no such hold (I8).",
        (93,),
    ),
    KnownBug(
        "reversal-lock",
        "Executor.leased drops an order's lock from _locks when it is not locked at exit, but an "
        "asyncio.Lock is unlocked between a release and the waiter's wake-up: a waiting reversal (or "
        "capture) then holds a lock no longer in the map, and a second one of the same order runs beside "
        "it. The first's gw_void_checkout clears the lease, the second's next write is refused, and "
        "LeaseLost (not a GatewayError) escapes: through Reversals.void to the API as a 500 (I6), through "
        "capture_pending out of Recovery.run_once, whose timer dies and takes the daemon down (I7).",
        (678, 2560, 3317),
    ),
    KnownBug(
        "settle-unguarded",
        "Operations.settle checks that nothing is open on the terminal (open_on_terminal, "
        "captures_pending), then queues the Settle on the lane: a charge sent and committed meanwhile "
        "(its Capture queued behind the Settle) is settled uncaptured, and the hold lapses: the merchant "
        "is never paid, gatewayd marks it lost (I2). The checks and the Settle are not atomic with "
        "respect to the lane.",
        (1640,),
    ),
    # ---------------------------------------------------------------- found by the grown world
    KnownBug(
        "void-refund-race",
        "A void and a refund of one completed checkout at once: Reversals.void takes the order's lease and "
        "checks that no refund is pending, then gw_begin_refund (which takes no lease and does not look at "
        "void_requested_at) creates a refund beside it; gw_void_checkout voids the order anyway (it refuses "
        "only refunded_amount > 0, not a pending refund), and the refund, once it gets the lease, sends its "
        "Return for the voided order: the customer gets the void and the Return (I2). Suspected: "
        "sql/006_state_machine.sql gw_void_checkout (~line 313) and gw_begin_refund (~line 380), "
        "gatewayd/checkout/reversals.py Reversals.refund (begin_refund before the lease, no re-check of the "
        "order after it). Fixed in gatewayd (6a94349): a refund is begun under the order's lease, like a void, "
        "so a void and a refund of one order never interleave.",
        (300, 989, 1405, 2034, 2455),
    ),
    KnownBug(
        "stalled-send",
        "A daemon stamped a tender sent (mark_sent, under a live lease), then stalled past its lease "
        "before the request left; another daemon took the order over, inquired, believed 'not found' a "
        "terminal timeout after the stamp and failed the order; the first daemon woke and sent the Sale: "
        "the customer charged for a failed order (I1/I2). Fixed in gatewayd: a charge leaves only while "
        "the sender surely holds the lease (Executor.may_send, asked by the lane with no await before the "
        "send), a takeover moves the tender's sent_at to the takeover (claim_unfinished), and a pause "
        "after that last check (seeds 2221, 2259) is caught afterwards: the late approval corrects the "
        "tender (CheckoutStore.late_approval) and recovery voids the orphan. Seed 1062: the paused daemon "
        "had taken the order's lease again (to refund the other tender's orphan) when it heard the approval, "
        "so its write was refused as stale, not for the lease, and the approval was dropped (I2); fixed: "
        "any approval that could not be recorded goes to late_approval (Executor._approved_after_all).",
        (1062, 1114, 2221, 2259),
    ),
    KnownBug(
        "own-reclaim-stuck",
        "A drive whose lease renewal failed (stalled) stopped with LeaseLost while this daemon's own "
        "recovery had just taken the lease back: nobody drove the order and its fresh lease kept every "
        "recovery pass off it until it expired (I7). Fixed in gatewayd: a drive that lost its lease "
        "releases it if it is its own.",
        (147,),
    ),
    # ---------------------------------------------------------------- OPEN
    KnownBug(
        "settle-removed-terminal",
        "Operations.settle looks its lane up (self.lanes[terminal_id]) only after the refusal check's "
        "statements: a config reload that removes the terminal meanwhile (here while the daemon stalled) "
        "makes it raise KeyError, not a GatewayError: a 500 to the operator (I6). The API's existence check "
        "(api/app.py settle_terminal) runs before those awaits, so it does not cover this. Suspected: "
        "gatewayd/checkout/operations.py Operations.settle (~line 118). Fixed: the lane is looked up after "
        "the checks, and a terminal gone by then is answered 404.",
        (457,),
    ),
)
