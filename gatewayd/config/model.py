"""The configuration, as frozen msgspec Structs: every key documented in config/gatewayd.toml."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gatewayd.config.secret import Secret
from gatewayd.terminals.outcomes import PaymentType

PositiveSeconds = Annotated[float, Meta(gt=0, le=86_400)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DatabaseConfig(_Section, frozen=True):
    """Where the data lives: a DSN, or (absent) an embedded PostgreSQL under state_dir."""

    dsn: Secret | None = None
    # asyncpg's cache of named prepared statements. false behind a transaction-mode pooler
    # (PgBouncer pool_mode = transaction, Supabase's pooler on port 6543): there the next
    # transaction may run on another server connection, where the name is unknown or means
    # another statement. Off, every statement is parsed afresh (one more round trip each).
    statement_cache: bool = True
    # A DSN whose host is not loopback must require TLS ("required": sslmode=require, verify-ca or
    # verify-full, or ssl_root_cert); "off" lets it connect in the clear, on purpose.
    tls: Literal["required", "off"] = "required"
    # The CA file that signed the server's certificate: the daemon connects with
    # sslmode=verify-full (the certificate and the host name checked) against it.
    ssl_root_cert: str | None = None
    pool_min: Annotated[int, Meta(ge=1, le=100)] = 2
    pool_max: Annotated[int, Meta(ge=1, le=500)] = 10
    connect_timeout_s: PositiveSeconds = 10.0
    command_timeout_s: PositiveSeconds = 30.0
    durable: bool = True  # embedded only: fsync; tests may turn it off


class ApiConfig(_Section, frozen=True):
    """The local API: a unix socket, optionally a TCP listener guarded by a bearer token."""

    socket: str = "/run/gatewayd/gatewayd.sock"
    socket_mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    socket_group: str | None = None
    max_body_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    checkout_wait_s: PositiveSeconds = 90.0
    # The live event stream (GET /v1/events): how many recent events are kept for a client that
    # reconnects with Last-Event-ID, how many may wait for one slow reader before it is dropped,
    # and the seconds between heartbeat comments.
    events_buffer: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    events_queue: Annotated[int, Meta(ge=1, le=100_000)] = 256
    events_heartbeat_s: PositiveSeconds = 15.0
    tcp_listen: str | None = None
    tcp_token: Secret | None = None
    tcp_token_env: str | None = None
    tcp_token_file: str | None = None
    # TLS on the TCP listener: the server certificate and its key (PEM files, re-read on reload,
    # or systemd credentials by name, read at start). "on" needs both; "off" serves plain HTTP
    # (the only way to do so off loopback); absent, TLS is on exactly when both are given.
    tls: Literal["on", "off"] | None = None
    tls_cert: str | None = None
    tls_cert_credential: str | None = None
    tls_key: str | None = None
    tls_key_credential: str | None = None

    @property
    def tls_enabled(self) -> bool:
        """TLS on the TCP listener: asked for, or implied by a certificate and key."""
        if self.tls is not None:
            return self.tls == "on"
        has_cert = self.tls_cert is not None or self.tls_cert_credential is not None
        has_key = self.tls_key is not None or self.tls_key_credential is not None
        return has_cert and has_key


class MetricsConfig(_Section, frozen=True):
    """Prometheus metrics, liveness and the status page."""

    listen: str | None = "127.0.0.1:9470"


class HealthConfig(_Section, frozen=True):
    """Terminal health monitoring."""

    interval_s: PositiveSeconds = 30.0
    failure_threshold: Annotated[int, Meta(ge=1, le=100)] = 2
    offline_backoff_cap_s: PositiveSeconds = 300.0


class CheckoutConfig(_Section, frozen=True):
    """Checkout policy."""

    card_mode: Literal["sale", "auth_capture"] = "sale"
    max_amount: Annotated[int, Meta(gt=0)] = 10_000_000  # minor units; larger amounts are refused
    loyalty_points_per_unit: Annotated[int, Meta(ge=0, le=1000)] = 1  # points per whole currency unit
    minor_units_per_unit: Annotated[int, Meta(ge=1)] = 100
    max_lines: Annotated[int, Meta(ge=1, le=10_000)] = 500
    max_tenders: Annotated[int, Meta(ge=1, le=50)] = 10
    # The store's currency (ISO 4217): a checkout in another currency is refused.
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    # SKUs with no inventory row: sold without stock keeping ("allow"), or refused ("refuse").
    untracked_skus: Literal["allow", "refuse"] = "allow"


class RecoveryConfig(_Section, frozen=True):
    """Recovery and maintenance schedule."""

    interval_s: PositiveSeconds = 60.0
    stale_pending_minutes: Annotated[int, Meta(ge=1)] = 15
    maintenance_interval_s: PositiveSeconds = 300.0
    unresolved_alert_minutes: Annotated[int, Meta(ge=1)] = 10
    # How long a daemon owns an order it drives; another daemon of the store takes over after it.
    lease_s: Annotated[float, Meta(ge=2, le=86_400)] = 600.0


class LogConfig(_Section, frozen=True):
    """Log format and level."""

    format: Literal["plain", "json"] = "plain"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


ReceiptText = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


class ReceiptConfig(_Section, frozen=True):
    """The receipt's header and footer (GET /v1/checkouts/{id}/receipt) and its default width."""

    store_name: ReceiptText = ""  # empty: the store_id
    address: tuple[ReceiptText, ...] = ()  # lines under the name
    phone: ReceiptText = ""
    footer: tuple[ReceiptText, ...] = ("Thank you!",)
    width: Literal[40, 48] = 48  # columns of the plain-text receipt unless ?width= says


# A terminal identifier on the wire (TPN, Register ID).
TerminalNumber = Annotated[str, Meta(min_length=1, max_length=50)]
# The terminal's protocol: "spin" is SPIn REST through Dejavoo's cloud proxy (SPIn Cloud),
# "spin-local" the XML dialect straight to the terminal on the LAN (SPIn Local).
TerminalDriverName = Literal["spin", "spin-local"]


class TerminalConfig(_Section, frozen=True):
    """One card terminal. The auth key comes from exactly one of the authkey* keys.

    `driver = "spin"` (SPIn Cloud) needs `tpn`; `driver = "spin-local"` (SPIn Local) needs
    `register_id` and takes `tpn` as well if given. A `base_url` in plain `http://` to an address
    that is not loopback needs `allow_plain_http_on_lan = true` (docs/terminals.md says what goes
    over the LAN in clear: the auth key, amounts, references and the terminal's answers)."""

    id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    base_url: Annotated[str, Meta(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]
    tpn: TerminalNumber | None = None
    register_id: TerminalNumber | None = None
    name: str = ""
    driver: TerminalDriverName = "spin"
    allow_plain_http_on_lan: bool = False
    authkey: Secret | None = None
    authkey_env: str | None = None
    authkey_file: str | None = None
    authkey_credential: str | None = None  # a systemd credential (LoadCredential=) by name
    timeout_s: Annotated[int, Meta(ge=1, le=720)] = 120  # SPInProxyTimeout sent to the terminal
    http_margin_s: Annotated[float, Meta(ge=0.5, le=120)] = 10.0  # the HTTP timeout is timeout_s plus this
    queue_depth: Annotated[int, Meta(ge=1, le=10_000)] = 32
    is_live: bool = True
    # What a card tender runs as unless it names its own: credit, debit, card (the customer
    # chooses on the terminal), ebt_food, ebt_cash, gift (SPIn PaymentType).
    payment_type: PaymentType = "credit"

    @property
    def display_name(self) -> str:
        return self.name or self.id


class Config(_Section, frozen=True):
    """The whole configuration of one store's daemon."""

    store_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    state_dir: str = "/var/lib/gatewayd"
    database: DatabaseConfig = DatabaseConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    checkout: CheckoutConfig = CheckoutConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    log: LogConfig = LogConfig()
    receipt: ReceiptConfig = ReceiptConfig()
    terminals: list[TerminalConfig] = []

    def terminal(self, terminal_id: str) -> TerminalConfig | None:
        return next((t for t in self.terminals if t.id == terminal_id), None)
