"""Prometheus metrics: counters and histograms fed by hooks, device state read at scrape time.

Everything lives in an injected registry (never the global one), so a test or a second daemon
in one process sees only its own values. Labels stay low-cardinality: terminal ids yes,
checkout or reference ids never.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gatewayd import __version__

CHECKOUT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 10, 15, 20, 30, 60, 120)
TERMINAL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
STATES = ("online", "offline", "busy", "unknown")


class LaneView(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def last_health_check(self) -> Any: ...

    @property
    def queue_depth(self) -> int: ...
    @property
    def in_flight(self) -> bool: ...


@dataclass
class Snapshot:
    """Values from the database, refreshed by the maintenance loop (a scrape never queries)."""

    unresolved: int = 0
    oldest_unresolved_age_s: float = 0.0
    orphans: int = 0
    # The guide's success metrics (gatewayd.checkout.targets.samples): (name, help, labels, value).
    targets: list[tuple[str, str, dict[str, str], float]] = field(default_factory=list)


class StateCollector(Collector):
    """Terminal, database and checkout state, computed when Prometheus scrapes."""

    def __init__(
        self,
        lanes: Callable[[], Mapping[str, LaneView]],
        db: Any,
        in_flight: Callable[[], int],
        snapshot: Snapshot,
    ) -> None:
        self._lanes = lanes
        self._db = db
        self._in_flight = in_flight
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gatewayd_terminal_up", "1 when the terminal is online", labels=["terminal"])
        status = GaugeMetricFamily(
            "gatewayd_terminal_status", "1 for the terminal's current status", labels=["terminal", "status"]
        )
        depth = GaugeMetricFamily(
            "gatewayd_terminal_queue_depth", "Operations waiting on the terminal's lane", labels=["terminal"]
        )
        busy = GaugeMetricFamily(
            "gatewayd_terminal_in_flight", "1 while an operation runs on the terminal", labels=["terminal"]
        )
        checked = GaugeMetricFamily(
            "gatewayd_terminal_last_health_check_timestamp_seconds",
            "Unix time of the last health check",
            labels=["terminal"],
        )
        for tid, lane in sorted(self._lanes().items()):
            up.add_metric([tid], 1.0 if lane.state == "online" else 0.0)
            for state in STATES:
                status.add_metric([tid, state], 1.0 if lane.state == state else 0.0)
            depth.add_metric([tid], float(lane.queue_depth))
            busy.add_metric([tid], 1.0 if lane.in_flight else 0.0)
            if lane.last_health_check is not None:
                checked.add_metric([tid], lane.last_health_check.timestamp())
        yield from (up, status, depth, busy, checked)
        yield GaugeMetricFamily("gatewayd_database_up", "1 when the database answers", value=float(self._db.up))
        yield GaugeMetricFamily("gatewayd_database_pool_in_use", "Connections in use", value=self._db.in_use())
        yield GaugeMetricFamily("gatewayd_database_pool_size", "Connections open", value=self._db.size())
        yield CounterMetricFamily("gatewayd_database_errors", "Database errors", value=self._db.errors)
        yield GaugeMetricFamily("gatewayd_checkouts_in_flight", "Checkouts being processed", value=self._in_flight())
        snap = self._snapshot
        yield GaugeMetricFamily("gatewayd_tenders_unresolved", "Tenders processing or unknown", value=snap.unresolved)
        yield GaugeMetricFamily(
            "gatewayd_oldest_unresolved_tender_age_seconds",
            "Age of the oldest unresolved tender",
            value=snap.oldest_unresolved_age_s,
        )
        yield GaugeMetricFamily(
            "gatewayd_orphaned_payments", "Approved charges with no completed order", value=snap.orphans
        )
        families: dict[str, GaugeMetricFamily] = {}
        for name, help_text, labels, value in snap.targets:
            keys = sorted(labels)
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help_text, labels=keys)
            family.add_metric([labels[k] for k in keys], value)
        yield from families.values()


class Metrics:
    """The daemon's metrics; also the coordinator's and the lanes' metric hooks."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Gauge("gatewayd_build_info", "gatewayd build", ["version"], registry=r).labels(__version__).set(1)
        self.checkouts = Counter("gatewayd_checkouts", "Checkouts by outcome", ["outcome"], registry=r)
        # Voids and refunds of completed sales: not checkouts, so not in the failure rate.
        self.reversals = Counter(
            "gatewayd_reversals",
            "Voids and refunds of completed checkouts, by outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.checkout_seconds = Histogram(
            "gatewayd_checkout_duration_seconds", "Checkout duration", buckets=CHECKOUT_BUCKETS, registry=r
        )
        self.tenders = Counter("gatewayd_tenders", "Tenders by type and outcome", ["type", "outcome"], registry=r)
        self.terminal_seconds = Histogram(
            "gatewayd_terminal_request_duration_seconds",
            "Terminal operations by operation and outcome",
            ["terminal", "operation", "outcome"],
            buckets=TERMINAL_BUCKETS,
            registry=r,
        )
        self.unknown = Counter("gatewayd_unknown_outcomes", "Ambiguous terminal outcomes", ["terminal"], registry=r)
        self.inquiries = Counter("gatewayd_inquiries", "Status inquiries sent", ["terminal"], registry=r)
        self.recovery = Counter("gatewayd_recovery_actions", "Recovery actions", ["action"], registry=r)
        self.refused = Counter(
            "gatewayd_transitions_refused",
            "Steps the state machine chose that the database refused (the two disagree: a bug)",
            ["step"],
            registry=r,
        )
        self.leases_lost = Counter(
            "gatewayd_leases_lost", "Orders this daemon stopped driving because its lease ran out", registry=r
        )
        self.settled_charges = Counter(
            "gatewayd_settled_charges",
            "Approved charges found in a closed batch by a void or a capture (they need a refund, or were never"
            " captured)",
            ["operation"],
            registry=r,
        )
        self.event_subscribers = Gauge(
            "gatewayd_event_subscribers", "Open live event streams (GET /v1/events and the status page)", registry=r
        )
        self.event_subscribers_dropped = Counter(
            "gatewayd_event_subscribers_dropped",
            "Live event streams ended because their reader fell a whole queue behind",
            registry=r,
        )
        for outcome in ("completed", "payment_failed"):
            self.checkouts.labels(outcome)
        for what in ("void", "capture"):
            self.settled_charges.labels(what)
        for step in ("commit", "fail"):
            self.refused.labels(step)
        for action in ("completed", "rolled_back", "voided", "inquired", "captured", "cleaned_up"):
            self.recovery.labels(action)
        self.role_privileged = Gauge(
            "gatewayd_database_role_privileged",
            "1 when the daemon's database role is a superuser or owns gatewayd's tables (give it its own:"
            " gatewayd migrate --app-role)",
            registry=r,
        )
        self.snapshot = Snapshot()
        if process:
            ProcessCollector(registry=r)

    def watch(self, lanes: Callable[[], Mapping[str, LaneView]], db: Any, in_flight: Callable[[], int]) -> None:
        """Register the scrape-time collector of terminal, database and checkout state."""
        self.registry.register(StateCollector(lanes, db, in_flight, self.snapshot))

    def database_role(self, *, privileged: bool) -> None:
        """What the start-up check found about the daemon's database role."""
        self.role_privileged.set(1 if privileged else 0)

    # coordinator hooks
    def checkout_finished(self, outcome: str, seconds: float) -> None:
        self.checkouts.labels(outcome).inc()
        if outcome in ("completed", "payment_failed"):
            self.checkout_seconds.observe(seconds)

    def reversal_finished(self, kind: str, outcome: str) -> None:
        self.reversals.labels(kind, outcome).inc()

    def tender_finished(self, tender_type: str, outcome: str) -> None:
        self.tenders.labels(tender_type, outcome).inc()

    def transition_refused(self, step: str) -> None:
        self.refused.labels(step).inc()

    def lease_lost(self) -> None:
        self.leases_lost.inc()

    def charge_settled(self, what: str) -> None:
        self.settled_charges.labels(what).inc()

    def recovery_action(self, action: str) -> None:
        self.recovery.labels(action).inc()

    # event hub hooks
    def event_subscribers_changed(self, count: int) -> None:
        self.event_subscribers.set(count)

    def event_subscriber_dropped(self) -> None:
        self.event_subscribers_dropped.inc()

    # lane hooks
    def lane_result(self, terminal_id: str, operation: str, outcome: str, seconds: float) -> None:
        self.terminal_seconds.labels(terminal_id, operation, outcome).observe(seconds)

    def lane_event(self, terminal_id: str, event: str) -> None:
        (self.unknown if event == "unknown" else self.inquiries).labels(terminal_id).inc()


def now_s() -> float:
    return time.time()
