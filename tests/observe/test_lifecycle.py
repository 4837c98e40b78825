"""The daemon under a systemd-like supervisor: notify socket, watchdog, socket activation,
draining on SIGTERM, reloading on SIGHUP, logs that name things and hide secrets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd.api.client import GatewayClient
from tests.harness import card, order
from tests.procs import DaemonProcess, Store, simulator_process


@pytest.fixture(scope="module")
async def simulator_url() -> AsyncIterator[str]:
    async with simulator_process(slow_s=2.0) as url:
        yield url


@pytest.fixture
async def store(dsn: str, simulator_url: str, tmp_path: Path) -> Store:
    s = Store(dsn, simulator_url, tmp_path)
    await s.seed()
    return s


class NotifySocket:
    """A fake $NOTIFY_SOCKET collecting what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, text: str, timeout_s: float = 20) -> None:
        for _ in range(int(timeout_s * 20)):
            if any(text in m for m in self.drain()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{text!r} never arrived: {self.messages}")


async def test_notify_watchdog_and_stopping(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    daemon = await DaemonProcess(store.config()).start()
    try:
        await notify.wait_for("READY=1")
        await notify.wait_for("WATCHDOG=1")
        await notify.wait_for("STATUS=terminals")
        assert any("online" in m for m in notify.drain() if m.startswith("STATUS=") or "\nSTATUS=" in m)
    finally:
        assert await daemon.stop() == 0
    try:
        await notify.wait_for("STOPPING=1")
    finally:
        notify.sock.close()


async def test_socket_activation_with_a_passed_fd(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    config = store.config()
    script = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'gatewayd', 'run', '--config', sys.argv[2]])"
    )
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "api"}
    with open(tmp_path / "activated.log", "wb") as log:  # noqa: ASYNC230 - the child keeps its own fd
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            str(listener.fileno()),
            str(config),
            pass_fds=(listener.fileno(),),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    listener.close()
    try:
        for _ in range(200):
            try:
                async with GatewayClient(str(path), timeout_s=2) as client:
                    if (await client.health()).status == 200:
                        break
            except OSError:
                await asyncio.sleep(0.05)
        async with GatewayClient(str(path)) as client:
            answer = await client.checkout(order(card(1000)))
            assert answer.status == 200, answer.body
        configured = Path(str(config).replace(".toml", ".sock"))
        assert not await asyncio.to_thread(configured.exists), "the configured socket was not used"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_sigterm_lets_a_slow_checkout_finish(store: Store) -> None:
    daemon = await DaemonProcess(store.config()).start()
    async with daemon.client() as client:
        slow = asyncio.ensure_future(client.checkout(order(card(2055))))  # 55: approved after 2 s
        await asyncio.sleep(0.5)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        answer = await slow
    assert answer.status == 200 and answer.body["status"] == "completed", answer.body
    assert await daemon.exited(30) == 0
    await store.check()


async def test_new_checkouts_refused_while_draining(store: Store) -> None:
    daemon = await DaemonProcess(store.config()).start()
    async with daemon.client() as client:
        slow = asyncio.ensure_future(client.checkout(order(card(2055))))
        await asyncio.sleep(0.5)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        try:
            refused = await client.checkout(order(card(1000)))
        except OSError:
            refused = None  # the listener may already be closed, which refuses too
        assert refused is None or (refused.status == 503 and refused.error_code == "shutting_down")
        assert (await slow).status == 200
    assert await daemon.exited(30) == 0


async def test_sighup_adds_a_terminal_and_keeps_a_bad_config_out(store: Store) -> None:
    config = store.config()
    daemon = await DaemonProcess(config).start()
    try:
        async with daemon.client() as client:
            assert (await client.checkout(order(card(1000, "lane-3")))).error_code == "unknown_terminal"
            store.tpns["lane-3"] = "C" + store.store_id.upper()[:11]
            text = config.read_text()
            new = store.config()  # same file name: rewritten with lane-3 added
            assert new == config and new.read_text() != text
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if (await client.terminal("lane-3")).status == 200:
                    break
                await asyncio.sleep(0.05)
            answer = await client.checkout(order(card(1000, "lane-3")))
            assert answer.status == 200, answer.body
            config.write_text(new.read_text() + "\n[bogus]\nkey = 1\n")
            daemon.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert (await client.checkout(order(card(1000, "lane-1")))).status == 200
        log = daemon.log.read_text()
        assert "reload refused" in log and "bogus" in log
    finally:
        assert await daemon.stop() == 0


async def test_json_logs_name_things_and_hide_keys(store: Store) -> None:
    config = store.config(extra='[log]\nformat = "json"\nlevel = "DEBUG"\n')
    daemon = await DaemonProcess(config).start()
    try:
        async with daemon.client() as client:
            answer = await client.checkout(order(card(1052)))
            assert answer.status == 200
    finally:
        await daemon.stop()
    lines = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(entry) for entry in lines)
    text = daemon.log.read_text()
    for tpn in store.tpns.values():
        assert f"KEY{tpn[-7:]}" not in text
    assert any(answer.body["id"] in e["message"] for e in lines)
    assert any("lane-1" in e["message"] for e in lines)
