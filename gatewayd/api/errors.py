"""API error codes: each one's HTTP status, and what the POS should do next (`retry`).

retry:
- "same_key": send the same request again with the same idempotency key (nothing was charged,
  or the checkout goes on and the retry answers its outcome);
- "new_key": this checkout is over (declined, cancelled); another attempt is a new checkout;
- "no": do not send it again as it is: fix the request, or an operator must act first.
"""

from __future__ import annotations

from typing import Literal

Retry = Literal["same_key", "new_key", "no"]

CODES: dict[str, tuple[int, Retry]] = {
    "validation_error": (400, "no"),
    "unauthorized": (401, "no"),
    "card_declined": (402, "new_key"),
    "checkout_cancelled": (402, "new_key"),
    "refund_declined": (402, "no"),
    "not_found": (404, "no"),
    "method_not_allowed": (405, "no"),
    "idempotency_conflict": (409, "new_key"),
    "invalid_state": (409, "no"),
    "already_settled": (409, "no"),
    "payload_too_large": (413, "no"),
    "unsupported_media_type": (415, "no"),
    "insufficient_inventory": (422, "no"),
    "untracked_sku": (422, "no"),
    "unknown_terminal": (422, "no"),
    "terminal_offline": (503, "same_key"),
    "terminal_busy": (503, "same_key"),
    "terminal_misconfigured": (503, "no"),
    "database_unavailable": (503, "same_key"),
    "shutting_down": (503, "same_key"),
    "outcome_pending": (504, "same_key"),
    "internal_error": (500, "same_key"),
}

# Failure codes stored on a failed checkout that answer with their own code (a terminal was to
# blame); every other failure answers card_declined with the failure in its details.
FAILED_CHECKOUT_STATUS: frozenset[str] = frozenset({"terminal_offline", "terminal_busy", "terminal_misconfigured"})


def http_status(code: str) -> int:
    return CODES.get(code, (500, "same_key"))[0]


def retry_hint(code: str) -> Retry:
    return CODES.get(code, (500, "same_key"))[1]
