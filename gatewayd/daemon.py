"""The daemon: wires config, store, terminals, checkout, API and observability; ordered start and stop."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import msgspec
from aiohttp import web

from gatewayd import __version__
from gatewayd.api.app import ApiContext, build_app
from gatewayd.api.events import EventHub
from gatewayd.api.listen import ServerTls, TlsFileError, check_tcp_transport, systemd_sockets, tcp_socket, unix_socket
from gatewayd.api.wire import SettleView, TerminalView
from gatewayd.checkout import targets
from gatewayd.checkout.coordinator import Coordinator
from gatewayd.checkout.executor import Executor
from gatewayd.checkout.operations import Operations
from gatewayd.checkout.receipt import Header
from gatewayd.checkout.recovery import Recovery
from gatewayd.checkout.wiring import wire
from gatewayd.config import Config, load
from gatewayd.errors import ConfigError, GatewayError, StoreError
from gatewayd.observe import logs
from gatewayd.observe.http import StatusSource, build_metrics_app
from gatewayd.observe.metrics import Metrics
from gatewayd.observe.systemd import Notifier, watchdog_interval_s
from gatewayd.store import migrate, roles
from gatewayd.store.checkouts import CheckoutStore
from gatewayd.store.connect import database_for, embedded_for, resolve_dsn
from gatewayd.store.db import Database
from gatewayd.store.maintenance import MaintenanceStore
from gatewayd.store.terminals import TerminalStore
from gatewayd.terminals.fleet import Fleet

log = logging.getLogger("gatewayd")

DRAIN_DEADLINE_S = 25.0
# How long a daemon's claim on its terminals outlives its last heartbeat (a crashed daemon's
# terminals are free for the operator CLI this long after it died).
TERMINAL_OWNER_TTL_S = 30.0


def instance_id(config: Config) -> str:
    """A stable name for this daemon: the same after a restart, different for a second daemon."""
    where = hashlib.sha256(f"{config.state_dir}|{config.api.socket}".encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{config.store_id}:{where}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class FleetApi:
    """The API's view of the fleet."""

    def __init__(self, fleet: Fleet, operations: Operations) -> None:
        self.fleet = fleet
        self.operations = operations

    def view(self, terminal_id: str) -> TerminalView | None:
        lane = self.fleet.get(terminal_id)
        config = self.fleet.configs.get(terminal_id)
        if lane is None or config is None:
            return None
        return TerminalView(
            id=terminal_id,
            name=config.display_name,
            driver=config.driver,
            status=lane.state,
            last_health_check=_iso(lane.last_health_check),
            last_health_error=lane.last_health_error,
            queue_depth=lane.queue_depth,
            in_flight=lane.in_flight,
        )

    def views(self) -> list[TerminalView]:
        return [v for tid in self.fleet if (v := self.view(tid)) is not None]

    def counts(self) -> tuple[int, int]:
        """(total, online) without building a view per terminal (GET /v1/health)."""
        return len(self.fleet), sum(1 for lane in self.fleet.values() if lane.state == "online")

    async def settle(self, terminal_id: str) -> SettleView:
        result = await self.operations.settle(terminal_id)
        return SettleView(
            terminal_id=terminal_id,
            ok=result.ok,
            batch=result.batch,
            count=result.count,
            total=result.total,
            message=result.message,
        )


@dataclass
class Daemon:
    """Everything one running gatewayd owns, in start order."""

    config: Config
    config_path: str | None = None
    apply_migrations: bool = False
    notifier: Notifier = field(default_factory=Notifier)
    db: Database | None = None
    fleet: Fleet | None = None
    coordinator: Coordinator | None = None
    executor: Executor | None = None
    terminals_store: TerminalStore | None = None
    lease_heartbeat: asyncio.Task[Any] | None = None
    operations: Operations | None = None
    recovery: Recovery | None = None
    startup_recovery: asyncio.Task[Any] | None = None
    runner: web.AppRunner | None = None
    metrics_runner: web.AppRunner | None = None
    metrics: Metrics = field(default_factory=Metrics)
    events: EventHub | None = None
    maintenance: MaintenanceStore | None = None
    passed_sockets: dict[str, socket.socket] = field(default_factory=dict)
    api_tls: ServerTls | None = None  # the TCP listener's TLS; a reload replaces its certificate
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    reload_event: asyncio.Event = field(default_factory=asyncio.Event)
    ready: bool = False

    async def start(self) -> None:
        """Database, migrations check, terminals, coordinator, API; READY=1 at the end."""
        config = self.config
        self.passed_sockets = systemd_sockets()  # once: it consumes LISTEN_FDS
        logs.register_secrets(self._secrets(config))
        dsn = await resolve_dsn(config)
        logs.register_secrets([p for p in [_dsn_password(dsn)] if p])
        self.db = database_for(config, dsn)
        await self.db.open()
        await self._check_migrations()
        await self._check_role()
        terminals = TerminalStore(self.db, config.store_id)
        await terminals.sync([(t.id, t.display_name, t.driver, t.is_live) for t in config.terminals])
        api = config.api
        self.events = events = EventHub(
            buffer=api.events_buffer, queue=api.events_queue, heartbeat_s=api.events_heartbeat_s, metrics=self.metrics
        )
        self.fleet = Fleet(
            config.health,
            write_health=terminals.write_health,
            on_result=self.metrics.lane_result,
            on_event=self.metrics.lane_event,
            on_state=events.terminal_status,
        )
        self.fleet.start(config.terminals)
        self.maintenance = maintenance = MaintenanceStore(self.db, config.store_id)
        parts = wire(
            CheckoutStore(self.db, config.store_id),
            maintenance,
            self.fleet,
            config.checkout,
            owner=instance_id(config),
            lease_s=config.recovery.lease_s,
            metrics=self.metrics,
            events=events,
            terminals=self.fleet,
        )
        self.executor, self.coordinator = parts.executor, parts.coordinator
        self.operations, self.recovery = parts.operations, parts.recovery
        executor = parts.executor
        self.terminals_store = terminals
        await terminals.own([t.id for t in config.terminals], executor.owner, TERMINAL_OWNER_TTL_S)
        self.lease_heartbeat = asyncio.ensure_future(self._heartbeat())
        coordinator = self.coordinator
        fleet = self.fleet
        self.metrics.watch(lambda: fleet, self.db, lambda: coordinator.in_flight)
        await self._serve_metrics()
        await self._recover_at_startup()
        await self._serve_api()
        self.ready = True
        settle_heap()
        self.notifier.ready(self.status_line())
        log.info(
            "gatewayd %s ready: store %s, %d terminal(s), api %s",
            __version__,
            config.store_id,
            len(config.terminals),
            config.api.socket,
        )

    async def _heartbeat(self) -> None:
        """Leases of the orders this daemon drives, and its claim on its terminals."""
        assert self.executor is not None and self.terminals_store is not None
        lease_task = asyncio.ensure_future(self.executor.renew_forever())
        try:
            while True:
                await asyncio.sleep(TERMINAL_OWNER_TTL_S / 3)
                ids = list(self.fleet.configs) if self.fleet is not None else []
                try:
                    await self.terminals_store.own(ids, self.executor.owner, TERMINAL_OWNER_TTL_S)
                except StoreError as exc:
                    log.warning("terminal ownership not renewed: %s", exc.message)
        finally:
            lease_task.cancel()
            await asyncio.gather(lease_task, return_exceptions=True)

    async def _recover_at_startup(self, wait_s: float = 5.0) -> None:
        """Resolve what a previous run left unfinished before the API takes new work.

        Inquiries queue on the lanes ahead of anything new; a terminal that is offline does not
        hold the daemon back: what is not done within `wait_s` goes on in the background.
        """
        assert self.recovery is not None
        self.startup_recovery = asyncio.ensure_future(self.recovery.run_once(startup=True))
        done, _ = await asyncio.wait({self.startup_recovery}, timeout=wait_s)
        if done and self.startup_recovery.exception() is None:
            report = self.startup_recovery.result()
            if report.claimed:
                log.info(
                    "start-up recovery: %d order(s) in %.2fs: %s",
                    report.claimed,
                    report.seconds,
                    report.finished,
                )
        elif done:
            log.error("start-up recovery failed: %s", self.startup_recovery.exception())
        else:
            log.warning("start-up recovery still running after %.0fs; continuing in the background", wait_s)

    @staticmethod
    def _secrets(config: Config) -> list[str]:
        values = [t.authkey.reveal() for t in config.terminals if t.authkey is not None]
        if config.api.tcp_token is not None:
            values.append(config.api.tcp_token.reveal())
        return values

    async def _check_migrations(self) -> None:
        """Serve only a database at exactly this gatewayd's migrations (applying them if asked)."""
        assert self.db is not None
        known = migrate.discover()  # no migration files installed: refused here, named
        async with self.db.connection() as conn:
            if self.apply_migrations:
                await migrate.apply(conn, known)
            applied = await migrate.recorded(conn)  # None when schema_migrations itself is missing
        config = f"--config {self.config_path}" if self.config_path else "--config FILE"
        how = (
            f"run `gatewayd migrate {config}` (or `gatewayd migrate --dsn DSN`) or start with `gatewayd run --migrate`"
        )
        newer = migrate.unknown(applied or {}, known)
        if newer:
            # Migrations are additive (new nullable columns and functions, nothing dropped), so an
            # older daemon runs on a newer schema: a chain's central database is migrated once,
            # before its stores upgrade one by one, and a store not yet upgraded must still start.
            log.warning(
                "the database records migration(s) %s that gatewayd %s does not know: a newer gatewayd"
                " migrated it. This version runs on it (migrations are additive); upgrade this store soon",
                ", ".join(newer),
                __version__,
            )
        if not applied:
            ledger = "no schema_migrations table" if applied is None else "schema_migrations records none"
            raise ConfigError(f"the database has no gatewayd schema ({ledger}): {how}")
        missing = [m for m in known if m.version not in applied]
        if missing:
            names = ", ".join(f"{m.version:03d}_{m.name}" for m in missing)
            raise ConfigError(f"the database lacks migrations {names}: {how}")

    async def _check_role(self) -> None:
        """Say loudly when the daemon runs as a superuser or as its tables' owner (a metric too).

        Not on its own embedded server (no [database] dsn: the daemon started or reused it
        itself, as the demo and a single-store install do): that server has no other role.
        """
        assert self.db is not None
        if embedded_for(self.config) is not None:
            self.metrics.database_role(privileged=False)
            return
        async with self.db.connection() as conn:
            who = await roles.identity(conn)
        self.metrics.database_role(privileged=who.privileged)
        if who.privileged:
            log.warning(
                "the daemon connects as the database role %s, which %s: far more than it needs (DDL, every row"
                " past row-level security). Give it its own role: `gatewayd migrate --dsn OWNER_DSN --app-role NAME`,"
                " then name NAME in [database] dsn (docs/operations.md, Least privilege and the public roles)",
                who.role,
                who.describe(),
            )

    async def _serve_api(self) -> None:
        assert self.db is not None and self.fleet is not None and self.coordinator is not None
        api = self.config.api
        token = api.tcp_token.reveal() if api.tcp_token is not None else None
        assert self.operations is not None
        ctx = ApiContext(
            coordinator=self.coordinator,
            terminals=FleetApi(self.fleet, self.operations),
            db=self.db,
            operations=self.operations,
            checkout_wait_s=api.checkout_wait_s,
            tcp_token=token,
            events=self.events,
            receipt=self._receipt_header,
        )
        app = build_app(ctx, max_body_bytes=api.max_body_bytes)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self.runner.setup()
        passed = self.passed_sockets
        sock = passed.pop("api") if "api" in passed else unix_socket(api.socket, api.socket_mode, api.socket_group)
        await web.SockSite(self.runner, sock).start()
        if api.tcp_listen:
            tcp = passed.pop("api-tcp") if "api-tcp" in passed else tcp_socket(api.tcp_listen)
            try:
                # systemd's socket may be bound elsewhere than tcp_listen says: its own address decides
                check_tcp_transport(tcp, tls=api.tls_enabled, tls_setting=api.tls)
                if api.tls_enabled:
                    assert api.tls_cert is not None and api.tls_key is not None  # resolved by load()
                    self.api_tls = ServerTls(api.tls_cert, api.tls_key)
            except TlsFileError as exc:
                tcp.close()
                raise ConfigError(f"api.{exc.key}: {exc.message}", key=f"api.{exc.key}") from None
            except ConfigError:
                tcp.close()
                raise
            context = self.api_tls.context if self.api_tls is not None else None
            await web.SockSite(self.runner, tcp, ssl_context=context).start()
            if self.api_tls is not None:
                log.info("api tcp %s: TLS with %s", api.tcp_listen, self.api_tls.info.describe())
                self._warn_expiry()
            else:
                log.warning("api tcp %s: plain HTTP, no TLS (api.tls = %s)", api.tcp_listen, api.tls or "unset")

    async def _serve_metrics(self) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        source = StatusSource(
            terminals=self._terminal_dicts,
            recent_checkouts=self._recent_checkouts,
            ready=self._is_ready,
            store_id=self.config.store_id,
            events=self.events,
        )
        self.metrics_runner = web.AppRunner(
            build_metrics_app(self.metrics, source), access_log=None, handle_signals=False
        )
        await self.metrics_runner.setup()
        sock = self.passed_sockets.pop("metrics") if "metrics" in self.passed_sockets else tcp_socket(listen)
        await web.SockSite(self.metrics_runner, sock).start()

    def _terminal_dicts(self) -> list[dict[str, Any]]:
        if self.fleet is None or self.operations is None:
            return []
        return [msgspec.structs.asdict(v) for v in FleetApi(self.fleet, self.operations).views()]

    async def _recent_checkouts(self) -> list[dict[str, Any]]:
        assert self.maintenance is not None
        rows = await asyncio.wait_for(self.maintenance.recent_orders(), 3.0)
        return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]

    async def _is_ready(self) -> bool:
        return self.ready and self.db is not None and await self.db.ping()

    async def _refresh_snapshot(self, interval_s: float = 5.0, targets_every: int = 12) -> None:
        """Database-derived gauges, refreshed off the scrape path (the guide's targets every
        `targets_every` rounds: a minute)."""
        assert self.maintenance is not None
        rounds = 0
        while True:
            try:
                count, age = await self.maintenance.unresolved_summary()
                self.metrics.snapshot.unresolved, self.metrics.snapshot.oldest_unresolved_age_s = count, age
                self.metrics.snapshot.orphans = await self.maintenance.orphan_count()
                if rounds % targets_every == 0:
                    row = await self.maintenance.targets(targets.WEEK_DAYS, targets.MONTH_DAYS, targets.HEALTH_STALE_S)
                    self.metrics.snapshot.targets = targets.samples(targets.figures_of(row))
            except StoreError:
                pass
            rounds += 1
            await asyncio.sleep(interval_s)

    def _receipt_header(self) -> tuple[Header, int]:
        """The receipt's header from [receipt] as configured now (a reload applies), and its width."""
        r = self.config.receipt
        return Header(
            name=r.store_name or self.config.store_id, address=r.address, phone=r.phone, footer=r.footer
        ), r.width

    def status_line(self) -> str:
        fleet = self.fleet
        online = sum(1 for lane in fleet.values() if lane.state == "online") if fleet else 0
        total = len(fleet) if fleet else 0
        in_flight = self.coordinator.in_flight if self.coordinator else 0
        return f"terminals {online}/{total} online, {in_flight} checkout(s) in flight"

    async def reload(self) -> bool:
        """SIGHUP: re-read the config; terminals added, removed or changed; an invalid file changes nothing."""
        if self.config_path is None or self.fleet is None or self.db is None:
            return False
        self.notifier.reloading()
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc.message)
            self.notifier.ready(self.status_line())
            return False
        logs.register_secrets(self._secrets(new))
        try:
            await TerminalStore(self.db, new.store_id).sync(
                [(t.id, t.display_name, t.driver, t.is_live) for t in new.terminals]
            )
        except StoreError as exc:
            # New terminals need their rows before a charge can name them: change nothing for now.
            log.error(
                "reload refused, keeping the running configuration: the database is away (%s);"
                " reload again once it is back",
                exc.message,
            )
            self.notifier.ready(self.status_line())
            return False
        added, removed, changed = await self.fleet.reload(new.terminals)
        self.config = new
        self._reload_tls(new)
        settle_heap()
        log.info(
            "reloaded %s: terminals added %s, removed %s, changed %s",
            self.config_path,
            added or "-",
            removed or "-",
            changed or "-",
        )
        self.notifier.ready(self.status_line())
        return True

    def _reload_tls(self, new: Config) -> None:
        """A renewed certificate (same paths, new files) is served from the next connection on."""
        api = new.api
        wanted = api.tcp_listen is not None and api.tls_enabled
        if self.api_tls is None or not wanted:
            if (self.api_tls is not None) != wanted:
                log.warning("api tcp: turning TLS on or off takes effect at the next restart, not on reload")
            return
        assert api.tls_cert is not None and api.tls_key is not None
        try:
            changed = self.api_tls.replace(api.tls_cert, api.tls_key)
        except TlsFileError as exc:
            log.error("api tcp: the TLS certificate was not replaced, still serving the old one: %s", exc.message)
            return
        if changed:
            log.info("api tcp: now serving %s", self.api_tls.info.describe())
        self._warn_expiry()

    def _warn_expiry(self) -> None:
        if self.api_tls is None:
            return
        days = self.api_tls.days_left()
        if days <= 0:
            log.error(
                "api tcp: the TLS certificate has expired: tablets refuse it. Renew it and reload (docs/operations.md)"
            )
        elif days < 30:
            log.warning("api tcp: the TLS certificate expires in %.0f day(s): renew it and reload", days)

    async def stop(self) -> None:
        """Stop accepting checkouts, drain within the deadline, then close in reverse order."""
        self.notifier.stopping()
        if self.coordinator is not None:
            left = await self.coordinator.drain(DRAIN_DEADLINE_S)
            if left:
                log.warning("%d checkout(s) still running at shutdown: left to recovery", left)
        if self.events is not None:
            self.events.close()  # open streams end, so that the listeners close at once
        for task in (self.startup_recovery, self.lease_heartbeat):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.fleet is not None:
            await self.fleet.close()
        if self.terminals_store is not None and self.executor is not None:
            try:
                await self.terminals_store.disown(self.executor.owner)
            except StoreError as exc:
                log.warning("terminals not disowned (free in %.0fs): %s", TERMINAL_OWNER_TTL_S, exc.message)
        if self.db is not None:
            await self.db.close()

    async def _watchdog(self) -> None:
        interval = watchdog_interval_s()
        if interval is None or self.db is None:
            return
        while True:
            await asyncio.sleep(interval)
            if await self.db.ping():
                self.notifier.watchdog()
            self.notifier.status(self.status_line())

    async def run_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_event.set)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watchdog)
            tg.start_soon(self._reloader)
            tg.start_soon(self._refresh_snapshot)
            rec = self.config.recovery
            if self.recovery is not None and self.operations is not None:
                tg.start_soon(self.recovery.run_forever, rec.interval_s)
                tg.start_soon(
                    self.operations.maintain_forever,
                    rec.maintenance_interval_s,
                    rec.stale_pending_minutes,
                    rec.unresolved_alert_minutes,
                    self._orphans_seen,
                )
            await self.stop_event.wait()
            log.info("stopping: no new checkouts; draining")
            if self.coordinator is not None:
                self.coordinator.accepting = False
            tg.cancel_scope.cancel()

    def _orphans_seen(self, count: int) -> None:
        self.metrics.snapshot.orphans = count

    async def _reloader(self) -> None:
        while True:
            await self.reload_event.wait()
            self.reload_event.clear()
            await self.reload()


def _dsn_password(dsn: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(dsn).password
    except ValueError:
        return None


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    apply_migrations: bool = False,
    on_ready: Callable[[Daemon], Any] | None = None,
) -> int:
    """Run one daemon to the end; the exit code."""
    daemon = Daemon(config, config_path=config_path, apply_migrations=apply_migrations)
    try:
        await daemon.start()
    except (GatewayError, OSError, asyncpg.PostgresError) as exc:
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        log.error("cannot start: %s", message)
        await daemon.stop()
        return 1 if isinstance(exc, StoreError) or not isinstance(exc, ConfigError) else 2
    if on_ready is not None:
        on_ready(daemon)
    try:
        await daemon.run_until_stopped()
    finally:
        await daemon.stop()
    log.info("stopped")
    return 0


def settle_heap() -> None:
    """Put what the daemon holds for its whole life (modules, configuration, a lane and a driver
    per terminal) out of the cyclic garbage collector's reach. Each collection of the oldest
    generation walked all of it again: at 10,000 terminals that walk was a fifth of an idle
    daemon's CPU. Run at start-up and after each reload (thawed, collected and frozen again, so
    that what a reload removed is still collected)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def run(config: Config, *, config_path: str | None = None, apply_migrations: bool = False) -> int:
    """Run on uvloop."""
    import uvloop

    logs.setup(config.log.level, config.log.format)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config, config_path=config_path, apply_migrations=apply_migrations))
