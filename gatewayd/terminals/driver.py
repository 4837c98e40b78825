"""The driver interface: how the lanes talk to one terminal, whatever its protocol.

A driver is mechanism only: one request, one typed answer. It never retries,
never waits for a busy terminal and never raises for network trouble: money
methods return `Unknown` when the request may have left, `Offline` when it
certainly did not. Policy (retries, inquiry, backoff) lives in the lane.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gatewayd.terminals.outcomes import BatchEntry, Health, Outcome, PaymentType, SettleResult


@runtime_checkable
class TerminalDriver(Protocol):
    """One terminal's transport; callers are the lane's owner task only, one call at a time."""

    @property
    def terminal_id(self) -> str:
        """The gateway's id for this terminal (logs and metrics name it)."""
        ...

    @property
    def timeout_s(self) -> float:
        """How long the terminal side may take for one transaction (SPInProxyTimeout)."""
        ...

    @property
    def transaction_timeout_s(self) -> float:
        """How long after sending a transaction is certainly over (terminal timeout + margin)."""
        ...

    async def sale(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Charge `amount` cents under reference id `ref`."""
        ...

    async def auth(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Authorize (hold) `amount` cents under reference id `ref`."""
        ...

    async def capture(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Capture `amount` cents of the earlier authorization `ref`."""
        ...

    async def void(self, ref: str, amount: int | None = None, *, payment_type: PaymentType = "credit") -> Outcome:
        """Void the transaction `ref` in the open batch (with the sale's payment type); `Voided` when done."""
        ...

    async def refund(
        self, ref: str, amount: int, *, payment_type: PaymentType = "credit", sale_ref: str | None = None
    ) -> Outcome:
        """Refund `amount` cents as a new transaction with the NEW reference id `ref` (with the
        sale's payment type; `sale_ref`: the sale it returns)."""
        ...

    async def status(self, ref: str, *, payment_type: PaymentType = "credit") -> Outcome:
        """Inquire about `ref`: Approved / Voided / Declined / NotFound / Busy / Offline / Unknown."""
        ...

    async def health(self) -> Health:
        """Ask whether the terminal is reachable."""
        ...

    async def settle(self) -> SettleResult:
        """Close the open batch."""
        ...

    async def batch(self) -> list[BatchEntry]:
        """The transactions of the open batch, as the terminal reports them."""
        ...

    async def aclose(self) -> None:
        """Release the transport (idempotent)."""
        ...
