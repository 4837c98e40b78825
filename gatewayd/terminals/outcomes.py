"""Typed outcomes of terminal operations: what a driver returns, never raises.

A money operation ends in exactly one of these. `Unknown` means the request may
have reached the card network: the caller must inquire (`status`) and never
treat it as declined.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Approved(msgspec.Struct, frozen=True, kw_only=True, tag="approved"):
    """The terminal approved; `amount` is what it approved (less than asked on a partial approval)."""

    reference_id: str
    amount: int
    requested_amount: int
    auth_code: str = ""
    card_brand: str = ""
    last4: str = ""
    batch_number: str = ""
    transaction_number: str = ""
    status_code: str = "0000"
    transaction_type: str = ""  # sale | auth | capture | return | void, as the terminal reports it

    @property
    def partial(self) -> bool:
        return self.amount < self.requested_amount


class Voided(msgspec.Struct, frozen=True, kw_only=True, tag="voided"):
    """The transaction exists and is voided: the customer is not charged for it.

    The answer to a Void that went through, and to an inquiry about a charge voided at the
    terminal (keypad, host reversal, another daemon). Never an approval.
    """

    reference_id: str
    amount: int = 0
    status_code: str = ""


class Declined(msgspec.Struct, frozen=True, kw_only=True, tag="declined"):
    """A definite no: nothing was charged.

    `cancelled`: the terminal reports the card flow cancelled (by the customer, or by the proxy
    when its own timeout ran out, in which case the authorization may still have gone through).
    """

    reference_id: str
    status_code: str
    message: str = ""
    cancelled: bool = False


class Busy(msgspec.Struct, frozen=True, kw_only=True, tag="busy"):
    """The terminal is busy; nothing was started. Retry after `retry_after_s` with the same reference id."""

    retry_after_s: float
    status_code: str = ""
    message: str = ""


class Offline(msgspec.Struct, frozen=True, kw_only=True, tag="offline"):
    """The terminal is not connected; nothing was started."""

    status_code: str = ""
    message: str = ""


class Unknown(msgspec.Struct, frozen=True, kw_only=True, tag="unknown"):
    """The outcome is not known (timeout, reset, protocol error, 2007 ...): inquire by reference id."""

    reason: str
    status_code: str = ""


class NotFound(msgspec.Struct, frozen=True, kw_only=True, tag="not_found"):
    """A `status` inquiry: the terminal has no transaction with that reference id."""

    reference_id: str
    status_code: str = ""


class Misconfigured(msgspec.Struct, frozen=True, kw_only=True, tag="misconfigured"):
    """Auth, route or request error: no retry will help until the configuration changes."""

    status_code: str = ""
    message: str = ""


Outcome = Approved | Voided | Declined | Busy | Offline | Unknown | NotFound | Misconfigured

HealthState = Literal["online", "offline", "busy", "unknown"]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """One answer of a terminal health check."""

    state: HealthState
    message: str = ""
    misconfigured: bool = False


class BatchEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One transaction of a terminal's batch, as the terminal reports it."""

    reference_id: str
    type: str  # sale | auth | capture | void | return
    amount: int
    status: str  # approved | declined | voided | returned ...
    batch: str = ""
    auth_code: str = ""


class SettleResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a settlement request."""

    ok: bool
    batch: str = ""
    count: int = 0
    total: int = 0
    message: str = ""
