"""Checkout errors: each carries the API error code it becomes and the structured details."""

from __future__ import annotations

from typing import Any

from gatewayd.errors import GatewayError


class CheckoutError(GatewayError):
    """Root of the errors a checkout request can end in; `code` is the API error code."""

    code = "internal_error"

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, checkout: Any = None, **fields: Any
    ) -> None:
        super().__init__(message, **fields)
        self.details = details or {}
        # The checkout as it stands, answered beside the error (a CheckoutView), when there is one.
        self.checkout = checkout


class InvalidRequest(CheckoutError):
    """The request is well-formed JSON of the right types but does not add up; names the field."""

    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details={"field": field})
        self.field = field


class NotFound(CheckoutError):
    code = "not_found"


class IdempotencyConflict(CheckoutError):
    code = "idempotency_conflict"


class InsufficientInventory(CheckoutError):
    code = "insufficient_inventory"


class UntrackedSku(CheckoutError):
    """A line names a SKU the store keeps no stock of, and the store refuses those."""

    code = "untracked_sku"


class UnknownTerminalRequested(CheckoutError):
    code = "unknown_terminal"


class TerminalOffline(CheckoutError):
    code = "terminal_offline"


class TerminalBusyError(CheckoutError):
    code = "terminal_busy"


class DatabaseUnavailable(CheckoutError):
    code = "database_unavailable"


class ShuttingDown(CheckoutError):
    code = "shutting_down"


class OutcomePending(CheckoutError):
    """The outcome is not known within the wait; the checkout goes on in the background."""

    code = "outcome_pending"


class NotAllowed(CheckoutError):
    """The operation does not fit the checkout's state (e.g. refunding a failed checkout)."""

    code = "invalid_state"


class AlreadySettled(CheckoutError):
    """A void of a charge whose batch has settled: it stands; refund it instead."""

    code = "already_settled"


class RefundDeclined(CheckoutError):
    """The terminal declined the Return (or it never started): nothing was refunded."""

    code = "refund_declined"
