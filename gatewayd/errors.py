"""The one root of gatewayd's errors; subclasses per cause, decided by class."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error gatewayd raises on purpose."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class ConfigError(GatewayError):
    """The configuration is invalid: names the file, the key path and what was expected."""


class StoreError(GatewayError):
    """Root of database errors."""


class TransientStoreError(StoreError):
    """The database could not be reached or asked us to retry; the same work may succeed later."""


class PermanentStoreError(StoreError):
    """The database refused the work for a reason a retry will not change."""


class TerminalError(GatewayError):
    """Root of errors about a terminal that are not a payment outcome."""


class TerminalBusy(TerminalError):
    """The terminal's queue is full; nothing was sent."""


class UnknownTerminal(TerminalError):
    """No terminal with that id is configured."""


class ProtocolError(TerminalError):
    """A terminal answer could not be understood (malformed, truncated, oversized)."""
