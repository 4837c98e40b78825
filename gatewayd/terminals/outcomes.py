"""Typed outcomes of terminal operations: what a driver returns, never raises.

A money operation ends in exactly one of these. `Unknown` means the request may
have reached the card network: the caller must inquire (`status`) and never
treat it as declined.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# The card's payment type (SPIn `PaymentType`): `card` lets the customer choose on the terminal.
PaymentType = Literal["credit", "debit", "card", "ebt_food", "ebt_cash", "gift"]
PAYMENT_TYPES: tuple[PaymentType, ...] = ("credit", "debit", "card", "ebt_food", "ebt_cash", "gift")
# How the card was read, as a receipt prints it.
EntryMethod = Literal["chip", "contactless", "swipe", "manual"]
# Why the terminal said no, as far as its answer tells (the state machine adds the rest).
DeclineReason = Literal["declined", "cancelled_by_customer", "no_card_presented"]


class CardReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """What a receipt needs of an approved card, and nothing else of the card: no BIN, no first
    digits, no cardholder name, no expiry (the codec drops them unread, and takes them out of the
    terminal's own receipt text).

    `host_reference`: the processor's retrieval reference (SPIn `RRN`, else `PNReferenceId`);
    `customer_copy`/`merchant_copy`: the terminal's own receipt text (SPIn `Receipts`), as sent,
    in its tag format (`<C>centred</C>`, `<L>left</L>` ...), scrubbed."""

    entry_method: EntryMethod | None = None
    application_label: str = ""
    aid: str = ""
    host_reference: str = ""
    customer_copy: str = ""
    merchant_copy: str = ""


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
    # The type the terminal ran it as (for `card`: the one the customer chose); None if not said.
    payment_type: PaymentType | None = None
    receipt: CardReceipt = CardReceipt()

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
    `reason`: what the terminal's answer says about why (information for the cashier; what the
    decline means for money is the state machine's ANSWERS table alone); `host_code` and
    `host_message`: the processor's own response code and words (SPIn `HostResponseCode`,
    `HostResponseMessage`), when it gave them.
    """

    reference_id: str
    status_code: str
    message: str = ""
    cancelled: bool = False
    reason: DeclineReason = "declined"
    host_code: str = ""
    host_message: str = ""


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
