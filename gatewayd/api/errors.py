"""API error codes and their HTTP statuses (the contract in docs API.md)."""

from __future__ import annotations

STATUS_BY_CODE: dict[str, int] = {
    "validation_error": 400,
    "unauthorized": 401,
    "card_declined": 402,
    "checkout_cancelled": 402,
    "refund_declined": 402,
    "not_found": 404,
    "method_not_allowed": 405,
    "idempotency_conflict": 409,
    "invalid_state": 409,
    "already_settled": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "insufficient_inventory": 422,
    "unknown_terminal": 422,
    "terminal_offline": 503,
    "terminal_busy": 503,
    "terminal_misconfigured": 503,
    "database_unavailable": 503,
    "shutting_down": 503,
    "outcome_pending": 504,
    "internal_error": 500,
}

# Failure codes stored on a failed checkout, as the HTTP status of the answer that carries it.
FAILED_CHECKOUT_STATUS: dict[str, int] = {
    "terminal_offline": 503,
    "terminal_busy": 503,
    "terminal_misconfigured": 503,
}


def http_status(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)
