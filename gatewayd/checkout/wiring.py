"""The checkout's parts wired together, once, for every way gatewayd runs.

`gatewayd run` (through Daemon.start), the demo, the in-process test harness and the seeded
simulation all build the executor, reversals, coordinator, recovery and operator operations
here; only what they are built over differs (the real stores and lanes, or the simulation's
fakes). Listeners, systemd and the database pool stay with the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gatewayd.checkout.coordinator import Coordinator
from gatewayd.checkout.executor import CheckoutEvents, CheckoutMetrics, Executor, Lanes
from gatewayd.checkout.operations import Operations
from gatewayd.checkout.recovery import Recovery
from gatewayd.checkout.reversals import Reversals
from gatewayd.config import CheckoutConfig
from gatewayd.store.checkouts import CheckoutStore
from gatewayd.store.maintenance import MaintenanceStore


@dataclass
class Checkouts:
    """Everything that drives money, for one store."""

    executor: Executor
    reversals: Reversals
    coordinator: Coordinator
    recovery: Recovery
    operations: Operations


def wire(
    store: CheckoutStore,
    maintenance: MaintenanceStore,
    lanes: Lanes,
    policy: CheckoutConfig,
    *,
    owner: str,
    lease_s: float,
    metrics: CheckoutMetrics | None = None,
    events: CheckoutEvents | None = None,
    terminals: Mapping[str, Any] | None = None,
    executor_type: type[Executor] = Executor,
    recovery_type: type[Recovery] = Recovery,
) -> Checkouts:
    """Build the checkout's parts over `store`, `maintenance` and `lanes`. `terminals`: the lanes by
    id for the operator's reconcile and settle (the fleet); `*_type`: a subclass that observes
    (the simulation counts what ran), never one that changes behaviour; `events`: the live event
    stream's hooks (none: nothing is told)."""
    executor = executor_type(store, lanes, policy, owner=owner, lease_s=lease_s, metrics=metrics, events=events)
    reversals = Reversals(executor, policy.max_amount)
    return Checkouts(
        executor=executor,
        reversals=reversals,
        coordinator=Coordinator(executor, reversals),
        recovery=recovery_type(executor, reversals, maintenance),
        operations=Operations(maintenance, terminals if terminals is not None else {}),
    )
