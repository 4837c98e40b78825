"""Configuration: TOML decoded into frozen msgspec Structs, unknown keys refused."""

from gatewayd.config.load import load, parse
from gatewayd.config.model import (
    ApiConfig,
    CheckoutConfig,
    Config,
    DatabaseConfig,
    HealthConfig,
    LogConfig,
    MetricsConfig,
    ReceiptConfig,
    RecoveryConfig,
    TerminalConfig,
)
from gatewayd.config.secret import Secret

__all__ = [
    "ApiConfig",
    "CheckoutConfig",
    "Config",
    "DatabaseConfig",
    "HealthConfig",
    "LogConfig",
    "MetricsConfig",
    "ReceiptConfig",
    "RecoveryConfig",
    "Secret",
    "TerminalConfig",
    "load",
    "parse",
]
