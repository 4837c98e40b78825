"""One simulated gatewayd process: the real lanes, health monitor, executor (with its lease
heartbeat), coordinator, reversals, recovery and maintenance schedule, wired as
gatewayd/daemon.py wires them, over the fakes.

A crash is `kill -9`: every task of the process is cancelled where it stands, its in-memory
objects are dropped, and nothing it would still have written reaches the fake database.
A restart builds everything afresh with the same instance id (the same daemon, restarted by
systemd) and runs start-up recovery before the API takes requests, as Daemon.start does.

The executor and recovery are thin subclasses that only COUNT (which inquiry verdicts and
recovery branches ran); the lane subclass counts terminal operations per POS request (I6: a
refused request makes none). No behaviour of gatewayd is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gatewayd import failpoints
from gatewayd.checkout.coordinator import Coordinator
from gatewayd.checkout.executor import Executor
from gatewayd.checkout.machine import Asked, Checkout, Tender, TenderStatus, verdict
from gatewayd.checkout.operations import Operations
from gatewayd.checkout.recovery import Recovery, RecoveryReport
from gatewayd.checkout.wiring import wire
from gatewayd.config import CheckoutConfig
from gatewayd.terminals.health import HealthMonitor
from gatewayd.terminals.lane import Lane
from gatewayd.terminals.ops import Op
from gatewayd.terminals.outcomes import Outcome
from tests.sim.determinism import vnow
from tests.sim.faults import Coverage
from tests.sim.loop import OWNER
from tests.sim.terminal import FakeDriver

if TYPE_CHECKING:
    from tests.sim.world import World

INSTANCE_ID = "sim-host:sim-store:0a1b2c3d"
PEER_ID = "sim-host-b:sim-store:4e5f6a7b"  # the store's second daemon
LEASE_S = 600.0
RECOVERY_INTERVAL_S = 60.0
MAINTENANCE_INTERVAL_S = 300.0
HEALTH_INTERVAL_S = 30.0
STARTUP_WAIT_S = 5.0

# Which POS request (if any) the current task works for: the lane counts terminal operations by it.
REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("sim_request", default=None)


class SimMetrics:
    """The executor's metrics hooks, counted into the run's coverage. A transition the database
    refused means the state machine and the SQL disagree: an anomaly of the run."""

    def __init__(self, coverage: Coverage, anomaly: Callable[[str], None] = lambda message: None) -> None:
        self.coverage = coverage
        self.anomaly = anomaly
        self.outcomes: Counter[str] = Counter()

    def checkout_finished(self, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] += 1

    def reversal_finished(self, kind: str, outcome: str) -> None:
        self.outcomes[f"{kind}.{outcome}"] += 1

    def tender_finished(self, tender_type: str, outcome: str) -> None:
        pass

    def recovery_action(self, action: str) -> None:
        name = {
            "completed": "recovery.completed",
            "rolled_back": "recovery.rolled_back",
            "voided": "recovery.voided_orphan",
        }.get(action, f"recovery.{action}")
        self.coverage.hit(name)

    def transition_refused(self, step: str) -> None:
        self.coverage.hit(f"machine.refused_{step}")
        self.anomaly(f"the database refused the state machine's {step}")

    def lease_lost(self) -> None:
        self.coverage.hit("lease.lost")

    def charge_settled(self, what: str) -> None:
        self.coverage.hit(f"charge.settled_{what}")


class SimLanes:
    """gatewayd.checkout.executor.Lanes over one process's lanes, as gatewayd's Fleet keeps them
    across config reloads: a terminal removed from the configuration is retired (it takes no new
    charge, `for_charge` is None) but keeps answering for its charges (`for_followup`: inquiries,
    voids, captures, returns); added back, the same lane takes charges again. An edit changes the
    lane's settings in place (here: the auth key its driver signs with)."""

    def __init__(self) -> None:
        self.active: dict[str, SimLane] = {}  # configured: the operator's settle and reconcile see these
        self.retired: dict[str, SimLane] = {}

    def all(self) -> dict[str, SimLane]:
        return {**self.retired, **self.active}

    def for_charge(self, terminal_id: str | None) -> SimLane | None:
        return self.active.get(terminal_id) if terminal_id is not None else None

    def for_followup(self, terminal_id: str | None) -> SimLane | None:
        if terminal_id is None:
            return None
        return self.active.get(terminal_id) or self.retired.get(terminal_id)

    def timeout_s(self, terminal_id: str) -> int:
        lane = self.for_followup(terminal_id)
        return int(lane.driver.timeout_s) if lane is not None else 120  # type: ignore[attr-defined]

    def payment_type(self, terminal_id: str) -> str:
        return "credit"

    def remove(self, terminal_id: str) -> None:
        lane = self.active.pop(terminal_id, None)
        if lane is not None:
            self.retired[terminal_id] = lane

    def add(self, terminal_id: str) -> None:
        lane = self.retired.pop(terminal_id, None)
        if lane is not None:
            self.active[terminal_id] = lane

    def edit(self, terminal_id: str, key: str) -> None:
        lane = self.for_followup(terminal_id)
        if lane is not None:
            lane.driver.key = key  # type: ignore[attr-defined]


class SimLane(Lane):
    """A real Lane; counts the operations each POS request causes."""

    calls_by_request: Counter[str]

    async def execute(self, op: Op, *args: Any, **kwargs: Any) -> Any:
        tag = REQUEST.get()
        if tag is not None:
            self.calls_by_request[tag] += 1
        return await super().execute(op, *args, **kwargs)  # type: ignore[arg-type]


class SimExecutor(Executor):
    """The real executor; counts what inquiries about tenders in doubt decided."""

    coverage: Coverage

    async def _apply(
        self, c: Checkout, t: Tender, asked: Asked, outcome: Outcome, *, late: bool = False
    ) -> Checkout | None:
        if asked is Asked.INQUIRY:
            branch = {
                TenderStatus.APPROVED: "approved",
                TenderStatus.DECLINED: "declined",
                TenderStatus.FAILED: "not_found",
                TenderStatus.VOIDED: "voided",
            }.get(verdict(asked, outcome, t, late=late))  # type: ignore[arg-type]
            if branch is not None:
                self.coverage.hit(f"recovery.inquiry_{branch}")
        return await super()._apply(c, t, asked, outcome, late=late)


class SimRecovery(Recovery):
    """The real recovery; counts the refunds it finished."""

    coverage: Coverage

    async def run_once(self, *, startup: bool = False, min_age_s: float = 0.0) -> RecoveryReport:
        report = await super().run_once(startup=startup, min_age_s=min_age_s)
        if report.refunds:
            self.coverage.hit("recovery.refund_finished", report.refunds)
        return report


class SimProcess:
    """One run of the daemon, from start to crash (or to the end of the simulation)."""

    def __init__(self, world: World, generation: int, instance_id: str = INSTANCE_ID, skew_s: float = 0.0) -> None:
        self.world = world
        self.generation = generation
        self.instance_id = instance_id
        self.skew_s = skew_s  # this daemon's wall clock minus the database's
        self.alive = True
        self.ready = False
        self.stalled_until = -1.0
        self.stall_after_stamp: Callable[[], None] | None = None
        # The nemesis: freeze right after an intent that stamped its card sent (sql/010), before
        # its answer is read, and kill the process once that card's request has left.
        self.stall_after_intent: Callable[[dict[str, Any]], None] | None = None
        self.crash_at_next_send = False
        self.tasks: dict[asyncio.Task[Any], None] = {}
        self.lanes = SimLanes()
        self.executor: SimExecutor | None = None
        self.coordinator: Coordinator | None = None
        self.recovery: SimRecovery | None = None
        self.operations: Operations | None = None

    # ------------------------------------------------------------ tasks

    def adopt(self, task: asyncio.Task[Any]) -> None:
        self.tasks[task] = None
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(task, None)

    def spawn(self, coro: Coroutine[Any, Any, Any], request: str | None = None) -> asyncio.Task[Any]:
        """A task of this process (and, with `request`, working for that POS request)."""
        ctx = contextvars.copy_context()
        ctx.run(OWNER.set, self)
        ctx.run(REQUEST.set, request)
        return asyncio.get_running_loop().create_task(coro, context=ctx)

    def kill(self) -> None:
        """kill -9: every task stops at its current await; nothing more of it runs."""
        self.alive = False
        self.ready = False
        for task in list(self.tasks):
            task.cancel()

    def _watch(self, task: asyncio.Task[Any], what: str) -> None:
        """A background task that dies of an unexpected error takes the daemon down (anyio task group)."""

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or not self.alive:
                return
            exc = t.exception()
            if exc is not None:
                # In gatewayd the task group fails and the daemon exits: a crash of its own making.
                self.world.checker.fail("I7", f"{what} died of {type(exc).__name__}: {exc} (the daemon exits)")
                self.world.crash("daemon task died", planned=False)

        task.add_done_callback(done)

    def _heartbeat_died(self, task: asyncio.Task[Any]) -> None:
        """The heartbeat is not in the daemon's task group: if it dies, leases lapse silently."""
        if not task.cancelled() and self.alive and task.exception() is not None:
            self.world.anomaly(f"lease heartbeat died: {type(task.exception()).__name__}: {task.exception()}")

    def wall(self) -> datetime:
        """This daemon's own wall clock (skewed); gatewayd must compare deadlines on the database's."""
        return vnow() + timedelta(seconds=self.skew_s)

    def stall(self, seconds: float) -> None:
        """Freeze the process (a VM pause, a GC storm): no statement, no terminal I/O, no heartbeat."""
        self.stalled_until = max(self.stalled_until, asyncio.get_running_loop().time() + seconds)

    def stall_at_next_stamp(self, seconds: float) -> None:
        """Freeze the process right after its next tender is stamped sent, before the request leaves
        (the worst moment: the other daemon may conclude 'not found' while this one still holds it)."""

        def now() -> None:
            self.stall_after_stamp = None
            self.stall(seconds)

        self.stall_after_stamp = now

    async def thawed(self) -> None:
        while True:
            left = self.stalled_until - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.sleep(left)

    # ------------------------------------------------------------ start-up, as Daemon.start

    async def start(self) -> None:
        w = self.world
        loop = asyncio.get_running_loop()
        lane_rng = random.Random(f"lane:{w.seed}:{self.generation}")
        calls: Counter[str] = w.calls_by_request
        for tid, term in w.terminals.items():
            lane = SimLane(
                tid,
                FakeDriver(term, w.config_keys[tid], self.thawed),
                queue_depth=w.plan.queue_depth,
                clock=loop.time,
                sleep=asyncio.sleep,
                rand=lane_rng.random,
            )
            lane.calls_by_request = calls
            # A terminal the configuration no longer lists: retired from the start (its lane only
            # answers for the charges it already has).
            (self.lanes.active if tid in w.configured else self.lanes.retired)[tid] = lane
            self._watch(self.spawn(lane.run()), f"lane {tid}")
        if self.skew_s:
            w.coverage.hit("clock_skew")
            w.trace("proc", self.generation, "clock_skew", self.skew_s)
        monitor = HealthMonitor(
            list(self.lanes.all().values()),
            HEALTH_INTERVAL_S,
            failure_threshold=2,
            offline_backoff_cap_s=300.0,
            clock=loop.time,
            sleep=asyncio.sleep,
            rand=lane_rng.random,
            now=self.wall,
        )
        self._watch(self.spawn(monitor.run()), "health monitor")
        parts = wire(  # as Daemon.start does; the fakes duck-type CheckoutStore / MaintenanceStore
            w.store,  # type: ignore[arg-type]
            w.maintenance,  # type: ignore[arg-type]
            self.lanes,
            CheckoutConfig(card_mode=w.plan.card_mode),
            owner=self.instance_id,
            lease_s=LEASE_S,
            metrics=w.metrics,
            terminals=self.lanes.active,
            executor_type=SimExecutor,
            recovery_type=SimRecovery,
        )
        executor, recovery = parts.executor, parts.recovery
        assert isinstance(executor, SimExecutor) and isinstance(recovery, SimRecovery)
        executor.coverage = recovery.coverage = w.coverage
        self.executor, self.coordinator, self.recovery = executor, parts.coordinator, recovery
        self.operations = operations = parts.operations
        # The lease heartbeat: Daemon.start runs it beside everything else (not in the task group).
        heartbeat = self.spawn(executor.renew_forever())
        heartbeat.add_done_callback(self._heartbeat_died)
        startup = self.spawn(recovery.run_once(startup=True))
        done, _ = await asyncio.wait({startup}, timeout=STARTUP_WAIT_S)
        if done and startup.exception() is not None:
            w.trace("proc", self.generation, "startup_recovery_failed", type(startup.exception()).__name__)
        self.ready = True
        w.trace("proc", self.generation, "ready")
        self._watch(self.spawn(recovery.run_forever(RECOVERY_INTERVAL_S)), "recovery timer")
        self._watch(self.spawn(operations.maintain_forever(MAINTENANCE_INTERVAL_S, 15, 10)), "maintenance")

    async def call(
        self,
        work: Callable[[Coordinator], Awaitable[Any]],
        request: str,
        patience_s: float | None,
        cancel_on_disconnect: bool,
    ) -> Any:
        """One API request: served by a task of this process; a crash resets the connection."""
        assert self.coordinator is not None
        coordinator = self.coordinator
        task = self.spawn(_call(work, coordinator), request)
        done, _ = await asyncio.wait({task}, timeout=patience_s)
        if not done:
            if cancel_on_disconnect:
                task.cancel()
            task.add_done_callback(_quiet)
            raise Disconnected("the POS stopped waiting")
        if task.cancelled():
            raise Disconnected("connection reset: the daemon went away")
        return task.result()


def daemon_wall_clock() -> datetime:
    """The wall clock of the daemon whose task is running (skewed), or the virtual one."""
    owner = OWNER.get()
    return owner.wall() if isinstance(owner, SimProcess) else vnow()


async def _call(work: Callable[[Coordinator], Awaitable[Any]], coordinator: Coordinator) -> Any:
    return await work(coordinator)


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Disconnected(Exception):
    """The POS lost the connection (or stopped waiting) before the answer."""


class Refused(Exception):
    """The daemon is not running (crashed, restarting): connection refused."""


# ------------------------------------------------------------ failpoints as crash points


@contextlib.contextmanager
def failpoint_crashes(world: World) -> Iterator[None]:
    """Make gatewayd's named failpoints places where the simulated process may be killed.

    `failpoints.hit` rolls the seed's dice at the point itself; `failpoints.soon` (a moment no
    await marks, such as a sale on the wire) rolls them `delay_s` later in virtual time, in a
    task of the same process, which the flow joins as in production. A seed without failpoint
    crashes leaves them unarmed (`soon` schedules nothing), as production does.
    """
    saved = (failpoints.hit, failpoints.soon)

    async def hit(name: str) -> None:
        owner = OWNER.get()
        if not isinstance(owner, SimProcess) or not owner.alive:
            return
        if name == "after_sale_sent" and owner.crash_at_next_send:
            owner.crash_at_next_send = False
            world.crash(f"failpoint {name} (after a send past the margin)", planned=True, failpoint=True)
            await asyncio.sleep(0)
        elif world.failpoint_roll(name):
            world.crash(f"failpoint {name}", planned=True, failpoint=True)
            await asyncio.sleep(0)  # the kill lands here: this task is cancelled with the others

    def soon(name: str, delay_s: float) -> asyncio.Task[None] | None:
        owner = OWNER.get()
        armed = isinstance(owner, SimProcess) and owner.crash_at_next_send
        if world.plan.failpoint_crash <= 0 and not armed:
            return None

        async def later() -> None:
            await asyncio.sleep(delay_s)
            await hit(name)

        return asyncio.ensure_future(later())

    failpoints.hit = hit  # type: ignore[assignment]
    failpoints.soon = soon  # type: ignore[assignment]
    try:
        yield
    finally:
        failpoints.hit, failpoints.soon = saved  # type: ignore[assignment]
