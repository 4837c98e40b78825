"""Seeds that found a bug, kept forever and run by tests/sim/test_regressions.py.

`KNOWN_BUGS` are the bugs in gatewayd the simulation found, each with the seeds that reproduced
it. They are all fixed in gatewayd: every seed here must pass on today's code, as a regression
test. A failing seed found by a range run is a new bug: add it here (and fix gatewayd).

Seeds are tied to the simulator: when the simulator changes (new faults, other client
behaviour), a seed replays a different story, and a seed here may no longer walk the path
that once found its bug. It still must pass; to cover a bug's path again, find a seed that
reproduces it with the fix undone (a mutant of gatewayd) and add it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBug:
    id: str
    summary: str
    seeds: tuple[int, ...]  # seeds that failed because of it (at the time they were found)


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
        "amount against the tender.",
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
)
