"""One chaos run: build the stack, run both flows under the nemesis, heal, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from gatewayd.stack import Dialect
from gatewayd.store.embedded import free_port
from tests.chaos import checks
from tests.chaos.clients import GatewayClients
from tests.chaos.nemesis import GatewayLanes, Nemesis, plan
from tests.chaos.oldflow import OldFlow
from tests.chaos.proxy import FaultProxy
from tests.chaos.stack import OLDFLOW_APP, DaemonSupervisor, Postgres, config_text, simulator_process
from tests.chaos.workload import STOCK

log = logging.getLogger("chaos")

DIALECT_CHOICES = ("rest", "local", "mixed")


def lane_dialects(terminal_ids: list[str], dialect: str) -> dict[str, Dialect]:
    """Each lane's SPIn dialect: all REST, all Local, or mixed (odd lanes REST, even lanes Local:
    one store speaking both, as a store may)."""
    if dialect not in DIALECT_CHOICES:
        raise ValueError(f"dialect must be one of {', '.join(DIALECT_CHOICES)}")
    if dialect == "mixed":
        return {tid: ("rest" if k % 2 else "local") for k, tid in enumerate(terminal_ids, 1)}
    return {tid: ("local" if dialect == "local" else "rest") for tid in terminal_ids}


async def run(
    *,
    seed: int,
    seconds: float,
    clients: int = 8,
    lanes: int = 4,
    heal_timeout_s: float = 60.0,
    workdir: Path | None = None,
    keep: bool = False,
    with_oldflow: bool = True,
    strict: bool = False,
    auto_settle_anytime: bool = False,
    dialect: str = "rest",
) -> dict[str, Any]:
    wall0 = time.monotonic()
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o755)
    store_id = f"chaos-{seed}"
    pg = Postgres(tmp / "pg")
    report: dict[str, Any] = {
        "seed": seed,
        "seconds": seconds,
        "clients": clients,
        "lanes": lanes,
        "workdir": str(tmp),
        "daemon_log": str(tmp / "gatewayd.log"),
        "auto_settle_anytime": auto_settle_anytime,
        "dialect": dialect,
    }
    await pg.start()
    try:
        await pg.migrate()
        conn = await pg.connect()
        try:
            await conn.executemany(
                "INSERT INTO inventory (store_id, sku, on_hand) VALUES ($1, $2, $3)",
                [(store_id, sku, n) for sku, n in STOCK.items()],
            )
            await OldFlow.create_schema(conn)
        finally:
            await conn.close()
        async with simulator_process() as sim_port:
            await _run_stack(
                report,
                tmp,
                pg,
                sim_port,
                store_id,
                seed,
                seconds,
                clients,
                lanes,
                heal_timeout_s,
                with_oldflow,
                strict,
                auto_settle_anytime,
                dialect,
            )
    finally:
        with contextlib.suppress(Exception):
            await pg.stop("fast")
    report["wall_s"] = time.monotonic() - wall0
    if report.get("ok") and not keep and workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


async def _run_stack(
    report: dict[str, Any],
    tmp: Path,
    pg: Postgres,
    sim_port: int,
    store_id: str,
    seed: int,
    seconds: float,
    n_clients: int,
    lanes: int,
    heal_timeout_s: float,
    with_oldflow: bool,
    strict: bool,
    auto_settle_anytime: bool = False,
    dialect: str = "rest",
) -> None:
    simulator_url = f"http://127.0.0.1:{sim_port}"
    terminal_proxy, db_proxy = FaultProxy("terminal", sim_port), FaultProxy("db", pg.port)
    await terminal_proxy.start()
    await db_proxy.start()
    daemon: DaemonSupervisor | None = None
    try:
        suffix = secrets.token_hex(4).upper()
        terminal_ids = [f"lane-{k}" for k in range(1, lanes + 1)]
        gw_tpns = {tid: f"GW{k}{suffix}" for k, tid in enumerate(terminal_ids, 1)}
        old_tpns = [f"OLD{k}{suffix}" for k in range(1, lanes + 1)]
        gw_keys = {tid: "ck" + secrets.token_urlsafe(12) for tid in terminal_ids}
        dialects = lane_dialects(terminal_ids, dialect)
        old_keys = ["ok" + secrets.token_urlsafe(12) for _ in old_tpns]
        socket_path = tmp / "gatewayd.sock"
        metrics_port = free_port()
        config = tmp / "gatewayd.toml"
        config.write_text(
            config_text(
                store_id=store_id,
                state_dir=tmp / "state",
                socket_path=socket_path,
                db_port=db_proxy.port or 0,
                metrics_port=metrics_port,
                terminal_url=f"http://127.0.0.1:{terminal_proxy.port}",
                tpns=gw_tpns,
                authkeys=gw_keys,
                dialects=dialects,
            )
        )
        log_path = tmp / "gatewayd.log"
        daemon = DaemonSupervisor(config, socket_path, log_path)
        await daemon.start()
        if not await daemon.ready(60):
            raise RuntimeError(f"the daemon did not become ready:\n{log_path.read_text()[-3000:]}")

        gw = GatewayClients(str(socket_path), seed, n_clients, lanes, terminal_ids)
        old = OldFlow(
            seed,
            n_clients,
            lanes,
            f"http://127.0.0.1:{terminal_proxy.port}",
            old_tpns,
            old_keys,
            f"postgresql://postgres@127.0.0.1:{db_proxy.port}/gatewayd?application_name={OLDFLOW_APP}",
        )
        events = plan(seed, seconds, lanes)
        nemesis = Nemesis(
            events,
            daemon,
            pg,
            db_proxy,
            terminal_proxy,
            simulator_url,
            [[gw_tpns[tid], old_tpns[i]] for i, tid in enumerate(terminal_ids)],
            oldflow=old if with_oldflow else None,
            gw=GatewayLanes(
                store_id,
                str(socket_path),
                terminal_ids,
                gw_tpns,
                gw_keys,
                reconcilable={tid for tid, d in dialects.items() if d == "rest"},
            ),
            auto_settle_anytime=auto_settle_anytime,
        )
        log.info("chaos: %d fault(s) planned over %.0fs", len(events), seconds)

        # ---- the fault window
        gw.start()
        if with_oldflow:
            old.start()
        window_end = time.monotonic() + seconds
        nemesis_task = asyncio.ensure_future(nemesis.run())
        await asyncio.wait({nemesis_task}, timeout=seconds)
        await asyncio.sleep(max(0.0, window_end - time.monotonic()))  # the last fault may end early
        report["window_s"] = seconds

        # ---- the healed window: faults off, everything back, clients stop, nothing left unfinished
        heal0 = time.monotonic()
        nemesis_task.cancel()
        await asyncio.gather(nemesis_task, return_exceptions=True)
        await nemesis.heal()
        problems: dict[str, list[str]] = {name: [] for name in checks.INVARIANTS}
        if not await daemon.ready(heal_timeout_s):
            why = [ln for ln in log_path.read_text(errors="replace").splitlines() if "cannot start" in ln][-1:]
            problems["I7"].append(
                f"the daemon is not serving after the heal (exit codes "
                f"{dict(Counter(daemon.exit_codes))}) {' '.join(why)}".strip()
            )
        missing = await nemesis.lanes_listed(heal_timeout_s)
        if missing:
            problems["I7"].append(f"lane(s) {missing} not back in GET /v1/terminals after the heal")
        clients_done, _ = await asyncio.gather(gw.finish(heal_timeout_s), old.finish(heal_timeout_s))
        if not clients_done:
            problems["I7"].append("POS clients still waiting for an answer after the heal timeout")
        quiet, quiet_s, still_open = await checks.wait_quiescent(pg.dsn(), store_id, heal_timeout_s)
        report["heal_s"] = time.monotonic() - heal0
        report["quiescent_after_s"] = quiet_s
        if not quiet:
            problems["I7"] += [f"I7: unfinished after {quiet_s:.0f}s: {row}" for row in still_open[:10]]

        # ---- the operator after such a day: keypad voids reconciled, settled orphans refunded
        await nemesis.audit_all(heal_timeout_s if quiet else 0.0)
        refunds = await checks.refund_orphans(str(socket_path), heal_timeout_s)
        problems["I7"] += [line for line in refunds["problems"] if line.startswith("I7:")]
        if refunds.get("to_refund"):
            quiet, refunds_quiet_s, still_open = await checks.wait_quiescent(pg.dsn(), store_id, heal_timeout_s)
            if not quiet:
                problems["I7"] += [
                    f"I7: unfinished {refunds_quiet_s:.0f}s after the refunds: {row}" for row in still_open[:10]
                ]
        listed = await checks.orphans(str(socket_path), heal_timeout_s)
        if listed is None:
            problems["I7"].append("I7: GET /v1/orphans did not answer after the refunds")
        orphan_refs = {o["reference_id"] for o in listed or []}
        report["operator_s"] = time.monotonic() - heal0 - report["heal_s"]

        # ---- the final check
        sim_ledger = await checks.ledger(simulator_url)
        keypad_problems, money_ledger, keypad_counts = checks.keypad_voids(nemesis.keypad, sim_ledger)
        problems["I8"] += keypad_problems
        money, counts = await checks.money_invariants(pg.dsn(), store_id, money_ledger, gw_tpns, STOCK, orphan_refs)
        for name, lines in money.items():
            problems.setdefault(name, []).extend(lines)
        accounted, orphan_counts = await checks.orphans_accounted(
            pg.dsn(), store_id, sim_ledger, set(gw_tpns.values()), orphan_refs
        )
        problems["I1"] += accounted
        told, final = await checks.told_vs_final(pg.dsn(), store_id, gw.records)
        for line in told:
            problems.setdefault("I6" if "I6:" in line else "I?", []).append(line)
        new_attempts = await checks.given_back(pg.dsn(), store_id)
        replay_problems, replays = (
            await checks.replay(str(socket_path), simulator_url, gw.records, final, new_attempts=new_attempts)
            if quiet
            else ([], 0)
        )
        problems["I6"] += replay_problems
        log_text = log_path.read_text(errors="replace")
        hygiene, sizes = await checks.hygiene(
            log_text, pg.dsn(), f"http://127.0.0.1:{metrics_port}/metrics", list(gw_keys.values())
        )
        problems["I9"] += hygiene

        conn = await asyncpg.connect(pg.dsn(), timeout=5)
        try:
            tenders = [
                dict(r)
                for r in await conn.fetch(
                    """SELECT t.reference_id, t.kind, t.tender_type, t.amount, t.status, o.id::text AS order_id,
                          o.status AS order_status
                     FROM payment_transactions t JOIN orders o ON o.store_id = t.store_id AND o.id = t.order_id
                    WHERE t.store_id = $1""",
                    store_id,
                )
            ]
            saved = [dict(r) for r in await conn.fetch("SELECT checkout_id, reference_ids FROM oldflow_orders")]
            failed_rows = await conn.fetch(
                "SELECT failure_code, failure_reason FROM orders WHERE store_id = $1 AND status = 'payment_failed'",
                store_id,
            )
            failures = Counter(r["failure_code"] for r in failed_rows)
            reasons = Counter(
                f"{r['failure_code']}: {re.sub(r'[0-9]+', 'N', r['failure_reason'] or '')[:80]}" for r in failed_rows
            )
            recovery_events = Counter(
                r["kind"]
                for r in await conn.fetch(
                    "SELECT kind FROM audit_events WHERE store_id = $1 AND kind LIKE 'recovery.%'", store_id
                )
            )
        finally:
            await conn.close()
        gw_row = checks.gateway_summary(gw.records, final, money_ledger, tenders, set(gw_tpns.values()), orphan_refs)
        for key in ("orphaned", "double", "lost"):
            if gw_row[key]:
                problems["I1" if key == "orphaned" else "I2" if key == "double" else "I3"].append(
                    f"gatewayd row: {gw_row[key]} {key}"
                )
        old_row = old.summarize(sim_ledger, saved)

        # The API contract calls a 500 internal_error "a bug": reported, and a violation with --strict.
        internal = sum(1 for r in gw.records for a in r.answers if a.startswith("500"))
        contract = [f"{internal} answer(s) 500 internal_error (see ERROR lines in the daemon log)"] if internal else []
        if strict:
            problems["I?"] = problems.get("I?", []) + contract

        final_exit = await daemon.close()
        if final_exit != 0:
            problems["I7"].append(f"the daemon did not stop cleanly on SIGTERM (exit {final_exit})")
        fired = nemesis.counts()
        report.update(
            {
                "ok": not any(problems.values()),
                "invariants": {k: v for k, v in problems.items()},
                "flows": {"gatewayd": gw_row, "old flow": old_row},
                "counts": counts,
                "i6_replays": replays,
                "contract": contract,
                "failure_codes": dict(failures),
                "failure_reasons": dict(reasons.most_common()),
                "recovery_events": dict(recovery_events),
                "nemesis": {
                    "planned": dict(Counter(e.name for e in events)),
                    "fired": dict(fired),
                    "kinds_fired": dict(nemesis.kinds_fired()),
                    "events": [f.as_dict() for f in nemesis.fired],
                },
                "operator": {
                    "settles": nemesis.settles,
                    "refunds": {k: v for k, v in refunds.items() if k != "problems"},
                    "refund_notes": refunds["problems"],
                    "orphans_listed_after": sorted(orphan_refs),
                    "orphans": orphan_counts,
                    "keypad": keypad_counts,
                    "keypad_voids": [kv.as_dict() for kv in nemesis.keypad],
                },
                "proxies": {"db": dict(db_proxy.stats), "terminal": dict(terminal_proxy.stats)},
                "process": {
                    "daemon_starts": daemon.starts,
                    "exit_codes": dict(Counter(daemon.exit_codes)),
                    "final_exit": final_exit,
                    "pg_restarts": fired.get("pg_restart", 0),
                },
                "hygiene_scanned": sizes,
                "daemon_log_lines": {
                    "ERROR": log_text.count("\nERROR "),
                    "Traceback": log_text.count("Traceback"),
                    "WARNING": log_text.count("\nWARNING "),
                },
                "answers": dict(Counter(a.split(":")[0] for r in gw.records for a in r.answers)),
                "answers_detail": dict(
                    Counter(a for r in gw.records for a in r.answers if not a.startswith(("200", "poll")))
                ),
                "old_attempts": dict(
                    Counter(
                        a.split(":")[0] + (":" + a.split(":")[1] if a.startswith("error") else "")
                        for r in old.records
                        for a in r.attempts
                    )
                ),
            }
        )
    finally:
        if daemon is not None:
            await daemon.close()  # idempotent: already closed on the normal path
        await terminal_proxy.stop()
        await db_proxy.stop()
