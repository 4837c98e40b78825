"""The retry and inquiry policy, in one place: how long to wait before trying again, how often to
try, and when a terminal's "not found" may be believed.

Everything that retries (lanes inquiring, voids, the database, the health sweep) takes its delays
from `backoff_s`; everything that decides a charge from a "not found" asks `not_found_believable`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# How long past a terminal's own transaction timeout a "not found" becomes believable: until then
# the request may still be on its way, or the card still being read.
NOT_FOUND_MARGIN_S = 10.0
# How long after the daemon asked for the intent that stamps a tender sent (sql/010
# gw_checkout_intent, sent_at = the transaction's now()) the request may still leave without a
# stamp of its own: the lane checks it on this process's monotonic clock right before the send,
# with no await in between, and stamps again first when it is past. So a stored sent_at is at most
# this much earlier than the moment the request really left, and a "not found" for a stored
# tender waits this much longer (STORED_MARGIN_S). docs/decisions.md, "The intent stamps its
# first card sent".
SEND_MARGIN_S = 1.0
# The margin of a "not found" measured on the database's clock from a stored sent_at.
STORED_MARGIN_S = NOT_FOUND_MARGIN_S + SEND_MARGIN_S
# A terminal's transaction timeout when its row does not say.
DEFAULT_TIMEOUT_S = 120

# Voids during a rollback: attempts before the order is left to recovery, and their delays.
VOID_ATTEMPTS = 6
VOID_BACKOFF = (0.5, 10.0)
# Inquiries after an ambiguous answer (lanes and the checkout's own).
INQUIRY_BACKOFF = (0.5, 30.0)
# Database work after the intent exists: retried until it succeeds.
PERSIST_BACKOFF = (0.2, 5.0)
# One database statement's own retries (Database.run).
STATEMENT_BACKOFF = (0.05, 2.0)


def backoff_s(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number `attempt` (0-based): uniform in [0, min(cap_s, base_s * 2**attempt)]."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 60))
    return max(0.0, rand() * ceiling)


def not_found_believable(elapsed_s: float, timeout_s: float | None, margin_s: float = STORED_MARGIN_S) -> bool:
    """True once a "not found" for a transaction sent `elapsed_s` ago means it never happened.

    `elapsed_s` is measured on one clock from the moment the request was last stamped sent: the
    database's clock for stored tenders (any daemon may ask; the default margin covers a stamp
    up to SEND_MARGIN_S before the request really left), the lane's own monotonic clock for its
    own sends (where `margin_s` is the terminal's HTTP margin: the request is certainly over then).
    """
    return elapsed_s >= not_found_wait_s(timeout_s, margin_s)


def not_found_wait_s(timeout_s: float | None, margin_s: float = STORED_MARGIN_S) -> float:
    """How long after a send a "not found" becomes believable."""
    return float(timeout_s or DEFAULT_TIMEOUT_S) + margin_s
