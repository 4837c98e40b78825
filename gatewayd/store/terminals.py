"""The payment_processors table: terminals from the config, and health written once per sweep."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gatewayd.store.db import Database


class TerminalStore:
    """Terminal rows of one store."""

    def __init__(self, db: Database, store_id: str) -> None:
        self.db = db
        self.store_id = store_id

    async def own(self, terminal_ids: Sequence[str], owner: str, ttl_s: float) -> None:
        """Stamp (or renew) this daemon as the owner of its terminals for `ttl_s`."""
        await self.db.run(
            lambda c: c.execute(
                """UPDATE payment_processors SET owner = $3, owner_until = now() + make_interval(secs => $4)
                    WHERE store_id = $1 AND id = ANY($2::text[])""",
                self.store_id,
                list(terminal_ids),
                owner,
                ttl_s,
            ),
            what="own terminals",
        )

    async def disown(self, owner: str) -> None:
        """A daemon stopping: its terminals are free at once."""
        await self.db.run(
            lambda c: c.execute(
                "UPDATE payment_processors SET owner = NULL, owner_until = NULL WHERE store_id = $1 AND owner = $2",
                self.store_id,
                owner,
            ),
            what="disown terminals",
        )

    async def live_owners(self, terminal_ids: Sequence[str]) -> dict[str, str]:
        """Terminals of these that a running daemon owns now: {terminal id: owner}."""
        rows = await self.db.run(
            lambda c: c.fetch(
                """SELECT id, owner FROM payment_processors
                    WHERE store_id = $1 AND id = ANY($2::text[]) AND owner_until > now()""",
                self.store_id,
                list(terminal_ids),
            ),
            what="terminal owners",
        )
        return {r["id"]: r["owner"] for r in rows}

    async def sync(self, terminals: Sequence[tuple[str, str, str, bool]]) -> None:
        """Upsert (id, name, driver, is_live) for every configured terminal; others become inactive."""
        ids = [t[0] for t in terminals]
        await self.db.run(
            lambda c: c.execute(
                """WITH cfg AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[])
                              AS t(id, name, driver, is_live)),
                    up AS (INSERT INTO payment_processors (store_id, id, processor_name, driver, is_live, is_active)
                           SELECT $1, id, name, driver, is_live, true FROM cfg
                           ON CONFLICT (store_id, id) DO UPDATE
                              SET processor_name = EXCLUDED.processor_name, driver = EXCLUDED.driver,
                                  is_live = EXCLUDED.is_live, is_active = true, updated_at = now())
               UPDATE payment_processors SET is_active = false, updated_at = now()
                WHERE store_id = $1 AND is_active AND NOT (id = ANY($2::text[]))""",
                self.store_id,
                ids,
                [t[1] for t in terminals],
                [t[2] for t in terminals],
                [t[3] for t in terminals],
            ),
            what="sync terminals",
        )

    async def write_health(self, rows: Sequence[tuple[str, str, datetime, str | None]]) -> None:
        """One statement for a whole sweep: (terminal id, state, checked at, error).

        A row older than what is stored (a sweep that finished after a newer check) is ignored.
        """
        if not rows:
            return
        await self.db.run(
            lambda c: c.execute(
                """UPDATE payment_processors p
                  SET health_status = h.state, last_health_check = h.checked_at,
                      last_health_error = h.error, updated_at = now()
                 FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::text[])
                      AS h(id, state, checked_at, error)
                WHERE p.store_id = $1 AND p.id = h.id
                  AND (p.last_health_check IS NULL OR p.last_health_check <= h.checked_at)""",
                self.store_id,
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
            ),
            attempts=2,
            what="write health",
        )
