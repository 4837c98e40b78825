"""As root, the embedded PostgreSQL runs as the service user without opening any folder above the
state directory: its cluster lives in the service user's home, linked from the state directory,
and clusters whose state directory is gone are collected."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gatewayd.errors import StoreError
from gatewayd.store.embedded import SERVICE_USER, EmbeddedPostgres, bin_dir, collect_clusters, service_home

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as the service user")


def _modes(paths: Iterator[Path]) -> dict[Path, int]:
    return {p: p.lstat().st_mode for p in paths}


def _wheel_tree() -> Iterator[Path]:
    install = bin_dir().parent
    yield install
    for folder, dirs, files in os.walk(install):
        for name in dirs + files:
            yield Path(folder, name)


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A folder only root can enter, like /root (a clone's parent)."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)
    return folder


async def _query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        if sql.startswith("SELECT"):
            return await conn.fetchval(sql)
        return await conn.execute(sql)
    finally:
        await conn.close()


async def test_private_parent_stays_private(private: Path) -> None:
    state = private / "clone" / "state"
    parents = _modes(p for p in state.parents if p.exists())
    wheel = _modes(_wheel_tree())
    server = EmbeddedPostgres(state / "pgdata", durable=False)
    try:
        dsn = await asyncio.to_thread(server.start)
        await _query(dsn, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        await asyncio.to_thread(server.stop)
        dsn = await asyncio.to_thread(EmbeddedPostgres(state / "pgdata").start)
        assert await _query(dsn, "SELECT n FROM kept") == 7
        await asyncio.to_thread(server.stop, "immediate")
        dsn = await asyncio.to_thread(EmbeddedPostgres(state / "pgdata").start)
        assert await _query(dsn, "SELECT n FROM kept") == 7
    finally:
        await asyncio.to_thread(server.stop, "immediate")

    _assert_private(state, parents, wheel)
    _assert_linked(state / "pgdata", server)


def _assert_private(state: Path, parents: dict[Path, int], wheel: dict[Path, int]) -> None:
    assert _modes(iter(parents)) == parents, "a folder above the state directory changed mode"
    assert _modes(iter(wheel)) == wheel, "the wheel's PostgreSQL changed mode"
    # Nothing root made for the service user is left in the state directory.
    assert {p.name for p in state.iterdir()} == {"pgdata", ".pgdata.lock"}


def _assert_linked(link: Path, server: EmbeddedPostgres) -> None:
    assert link.is_symlink()
    assert os.readlink(link).startswith(f"{service_home()}/clusters/")
    data = link.resolve()
    assert data == server.cluster_dir
    assert data.stat().st_uid == pwd.getpwnam(SERVICE_USER).pw_uid
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (link / "server.log").exists() and (link / "gatewayd-port").exists()


async def test_clusters_of_deleted_state_dirs_are_collected(private: Path) -> None:
    gone, kept, running = (EmbeddedPostgres(private / name / "pgdata", durable=False) for name in "abc")
    try:
        for server in (gone, kept, running):
            await asyncio.to_thread(server.start)
        await asyncio.to_thread(gone.stop)
        await asyncio.to_thread(kept.stop)
        shutil.rmtree(private / "a")
        shutil.rmtree(private / "c")  # its server still runs

        removed = await asyncio.to_thread(collect_clusters)
        assert gone.cluster_dir.parent in removed
        assert not gone.cluster_dir.exists()
        assert kept.cluster_dir.exists() and running.cluster_dir.exists()

        await asyncio.to_thread(running.stop)
        removed = await asyncio.to_thread(collect_clusters)
        assert running.cluster_dir.parent in removed
        assert kept.cluster_dir.exists()

        # The kept one starts again with its data, from its state directory.
        assert await asyncio.to_thread(EmbeddedPostgres(private / "b" / "pgdata").start)
    finally:
        for server in (gone, kept, running):
            await asyncio.to_thread(server.stop, "immediate")


async def test_a_moved_state_dir_keeps_its_cluster(private: Path) -> None:
    server = EmbeddedPostgres(private / "old" / "pgdata", durable=False)
    try:
        dsn = await asyncio.to_thread(server.start)
        await _query(dsn, "CREATE TABLE moved (n int); INSERT INTO moved VALUES (3)")
        await asyncio.to_thread(server.stop)
        (private / "old").rename(private / "new")
        moved = EmbeddedPostgres(private / "new" / "pgdata", durable=False)
        dsn = await asyncio.to_thread(moved.start)
        assert moved.cluster_dir == server.cluster_dir
        await asyncio.to_thread(moved.stop)
        await asyncio.to_thread(collect_clusters)
        dsn = await asyncio.to_thread(moved.start)
        assert await _query(dsn, "SELECT n FROM moved") == 3
    finally:
        await asyncio.to_thread(server.stop, "immediate")


def test_an_unreachable_cluster_in_place_is_refused_with_the_fix(private: Path) -> None:
    data = private / "state" / "pgdata"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("18\n")
    parents = _modes(p for p in data.parents if p.exists())
    with pytest.raises(StoreError, match=r"move .* away"):
        EmbeddedPostgres(data).start()
    assert _modes(iter(parents)) == parents
    assert not data.is_symlink()


async def test_a_running_server_in_place_is_reused_even_if_unreachable(private: Path) -> None:
    """Like a root shell's `gatewayd migrate --config` beside the daemon's own server (run as `gatewayd`)."""
    server = EmbeddedPostgres(private / "live" / "pgdata", durable=False)
    try:
        dsn = await asyncio.to_thread(server.start)
        in_place = private / "state" / "pgdata"
        await asyncio.to_thread(_fake_cluster, in_place, server.cluster_dir)
        assert await asyncio.to_thread(EmbeddedPostgres(in_place).start) == dsn
    finally:
        await asyncio.to_thread(server.stop, "immediate")


def _fake_cluster(path: Path, live: Path) -> None:
    """A root-owned data directory (unreachable to the service user) whose server is `live`'s."""
    path.mkdir(parents=True)
    (path / "PG_VERSION").write_text("18\n")
    shutil.copy(live / "postmaster.pid", path / "postmaster.pid")
