"""Over a WAN: the database link through the chaos proxy with 40 ms each way.

A checkout's database round trips are counted where they happen, on the wire: the proxy counts
a turn each time the daemon speaks after PostgreSQL has answered (a request/response exchange),
and asyncpg's query logger lists the statements. The counts are the ones docs/operations.md
documents ("Database round trips per checkout"). Then the link is cut at each of a card
checkout's round trips in turn (the request arrives, the answer is lost, the connection is
reset): every checkout still ends completed, with one charge, and the money invariants hold.
No timing is asserted: only counts and outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gatewayd import daemon as daemon_module
from gatewayd.store import db as db_module
from gatewayd.store.embedded import EmbeddedPostgres
from tests.chaos.proxy import FaultProxy, _Link
from tests.harness import Gateway, card, cash, order, running_gateway

ONE_WAY_S = 0.040

# The documented counts (docs/operations.md, "Database round trips per checkout"): statements a
# checkout runs, once the connection has seen them (warm), and the round trips they take.
STATEMENTS = {"cash": 1, "card": 2}
ROUND_TRIPS = {  # statement_cache: true -> one each; false -> two each (parse, then parse+bind+execute)
    True: {"cash": 1, "card": 2},
    False: {"cash": 2, "card": 4},
}


class _Counting:
    """A stream reader that tells the proxy what passed, before the proxy forwards it."""

    def __init__(self, reader: asyncio.StreamReader, proxy: TurnProxy, link: _Link, upstream: bool) -> None:
        self._reader = reader
        self._proxy = proxy
        self._link = link
        self._upstream = upstream

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        if data and self._proxy.saw(self._link, self._upstream):
            return b""  # the answer is thrown away and the link reset (see TurnProxy.saw)
        return data


class TurnProxy(FaultProxy):
    """The chaos proxy, counting request/response turns per link, and able to lose the answer to
    the N-th turn from now (the request reaches PostgreSQL; the answer never reaches the daemon)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__("db-wan", upstream_port)
        self.turns = 0
        self._last: dict[int, bool] = {}  # per link: did the upstream speak last?
        self._drop_at: int | None = None
        self._dropping: set[int] = set()

    def lose_answer_of_turn(self, turns_from_now: int) -> None:
        self._drop_at = self.turns + turns_from_now

    def saw(self, link: _Link, upstream: bool) -> bool:
        """Count a turn when the client speaks after the server did; True: drop this data."""
        key = id(link)
        if upstream:
            if self._last.get(key, True):
                self.turns += 1
                if self._drop_at is not None and self.turns == self._drop_at:
                    self._drop_at = None
                    self._dropping.add(key)
            self._last[key] = False
            return False
        self._last[key] = True
        if key in self._dropping:
            self._dropping.discard(key)
            self.stats["answers_dropped"] += 1
            link.kill()
            return True
        return False

    async def _pump(self, link: _Link, src: Any, dst: asyncio.StreamWriter, *, upstream: bool) -> None:
        await super()._pump(link, _Counting(src, self, link, upstream), dst, upstream=upstream)


@dataclass(eq=False)
class Statements:
    """What asyncpg's query logger saw on the daemon's connections."""

    seen: list[str] = field(default_factory=list)

    def __call__(self, record: Any) -> None:
        self.seen.append(" ".join(record.query.split())[:60])


@contextlib.contextmanager
def quiet_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Statements]:
    """No background database work during a count (the terminal-ownership heartbeat waits an
    hour), and a query logger on every connection the daemon opens."""
    statements = Statements()
    init = db_module._init_connection

    async def logged_init(conn: asyncpg.Connection) -> None:
        await init(conn)
        conn.add_query_logger(statements)

    monkeypatch.setattr(daemon_module, "TERMINAL_OWNER_TTL_S", 3 * 3600.0)
    monkeypatch.setattr(db_module, "_init_connection", logged_init)
    yield statements


def _sections(statement_cache: bool) -> dict[str, dict[str, Any]]:
    return {
        # One connection: every statement is warm on it after one checkout of each kind.
        "database": {"pool_min": 1, "pool_max": 1, "statement_cache": statement_cache},
        "health": {"interval_s": 3600},  # no health writes between the first sweep and the count
        "recovery": {"interval_s": 3600},
    }


@contextlib.asynccontextmanager
async def wan_gateway(
    pg_server: EmbeddedPostgres, dsn: str, tmp_path: Path, statement_cache: bool
) -> AsyncIterator[tuple[Gateway, TurnProxy]]:
    assert pg_server.port is not None
    proxy = TurnProxy(pg_server.port)
    port = await proxy.start()
    proxy.set_mode("latency", ONE_WAY_S)
    try:
        async with running_gateway(
            dsn,
            tmp_path,
            daemon_dsn=f"postgresql://postgres@127.0.0.1:{port}/gatewayd?application_name=gatewayd-wan",
            sections=_sections(statement_cache),
        ) as gw:
            yield gw, proxy
            await gw.check_invariants()
    finally:
        await proxy.stop()


async def _count(gw: Gateway, proxy: TurnProxy, statements: Statements, tender: dict[str, Any]) -> tuple[int, int]:
    """(round trips, statements) of one checkout that completes."""
    turns, seen = proxy.turns, len(statements.seen)
    answer = await gw.checkout(tender)
    assert answer.status == 200, answer.body
    return proxy.turns - turns, len(statements.seen) - seen


@pytest.mark.parametrize("statement_cache", [True, False], ids=["statement_cache", "no_statement_cache"])
async def test_round_trips_per_checkout(
    pg_server: EmbeddedPostgres, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement_cache: bool
) -> None:
    with quiet_daemon(monkeypatch) as statements:
        async with wan_gateway(pg_server, dsn, tmp_path, statement_cache) as (gw, proxy):
            for kind, tender in (("cash", cash(700)), ("card", card(1500))):
                await _count(gw, proxy, statements, tender)  # the first: prepares and learns types
                counts = [await _count(gw, proxy, statements, tender) for _ in range(2)]
                assert counts == [(ROUND_TRIPS[statement_cache][kind], STATEMENTS[kind])] * 2, (
                    kind,
                    counts,
                    statements.seen[-STATEMENTS[kind] :],
                )


# The phases of a warm card checkout, one round trip each, as Database.run names them in its
# retry log line (docs/operations.md's table in the same order).
CARD_PHASES = ["prepare checkout", "record tender and finish"]


async def test_a_link_cut_at_any_round_trip_loses_nothing(
    pg_server: EmbeddedPostgres,
    dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer to each of a card checkout's round trips lost in turn (the statement ran, the
    daemon never hears so, the connection is reset): each phase is retried as the same call,
    which is idempotent, and the POS retries with the same key when it is told to. Every checkout
    ends completed with exactly one approved charge of its amount."""
    caplog.set_level(logging.INFO, logger="gatewayd.store.db")
    with quiet_daemon(monkeypatch) as statements:
        async with wan_gateway(pg_server, dsn, tmp_path, statement_cache=True) as (gw, proxy):
            assert len(CARD_PHASES) == ROUND_TRIPS[True]["card"]
            for turn, phase in enumerate(CARD_PHASES, start=1):
                # Warm: the connection a cut replaced has prepared everything again, so that turn
                # N is the N-th phase (a cold statement takes two round trips).
                for _ in range(2):
                    await _count(gw, proxy, statements, card(1000))
                amount = 2000 + turn
                body = order(card(amount))
                caplog.clear()
                proxy.lose_answer_of_turn(turn)
                answer = await gw.client.checkout(body)
                assert proxy.stats["answers_dropped"] == turn, f"the answer of round trip {turn} was not lost"
                for _ in range(100):  # the POS's retries, same key, as long as it is told to retry
                    if answer.status == 200 or not answer.error_code:
                        break
                    assert answer.body["error"]["retry"] == "same_key", answer.body
                    await asyncio.sleep(0.1)
                    answer = await gw.client.checkout(body)
                assert answer.status == 200 and answer.body["status"] == "completed", (turn, answer.body)
                retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
                assert retried and retried[0].startswith(f"{phase}: database unavailable: "), (turn, retried)
                assert "connection has been released" not in retried[0]
                ledger = [t for t in await gw.ledger() if t["amount"] == amount]
                assert [t["status"] for t in ledger] == ["approved"], (turn, ledger)
