"""An asyncio TCP fault proxy: loopback in front of one upstream (PostgreSQL or the SPIn simulator).

Modes (switched at any time by the nemesis, they act on new AND existing connections):

- ``pass``: bytes flow both ways untouched.
- ``latency``: every chunk, both ways, waits ``latency_s`` before it is forwarded (order kept).
- ``blackhole``: connections are accepted and nothing is forwarded any more (new connections
  never reach the upstream). The connections that swallowed bytes are reset when the mode
  ends, as a partitioned TCP connection eventually is, so no swallowed byte is ever delivered late.
- ``reset``: every open connection is reset (RST) at once and new ones are reset on accept.
- ``drop_answer``: the client's bytes are delivered; the first answer bytes from the upstream
  are thrown away and both sides are reset: "the request arrived, the answer was lost".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("chaos.proxy")

MODES = ("pass", "latency", "blackhole", "reset", "drop_answer")
CHUNK = 64 * 1024


def _hard_close(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST (SO_LINGER 0), not FIN."""
    if writer is None:
        return
    transport = writer.transport
    if transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    poisoned: bool = False  # swallowed bytes in a blackhole: must never be used again
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def kill(self) -> None:
        """Reset both sides (a fault)."""
        _hard_close(self.client)
        _hard_close(self.server)
        for task in self.tasks:
            task.cancel()

    def close(self) -> None:
        """Close both sides normally (FIN): the conversation ended by itself."""
        for writer in (self.client, self.server):
            if writer is not None and not writer.transport.is_closing():
                writer.close()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """127.0.0.1:port -> upstream_host:upstream_port, with a mode the nemesis sets."""

    def __init__(
        self,
        name: str,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        connect_timeout_s: float = 2.0,
        eof_delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self.eof_delay_s = eof_delay_s  # a hop that passes the data on before the FIN (a NAT, a pooler)
        self.upstream = (upstream_host, upstream_port)
        self.connect_timeout_s = connect_timeout_s
        self.mode = "pass"
        self.latency_s = 0.0
        self.port: int | None = None
        self.stats: Counter[str] = Counter()
        self._links: set[_Link] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.kill()
        self._links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def set_mode(self, mode: str, latency_s: float = 0.0) -> None:
        """Switch mode; `reset` kills every open connection, leaving `blackhole` kills the poisoned ones."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        previous, self.mode, self.latency_s = self.mode, mode, latency_s
        if mode != "pass":
            self.stats[mode] += 1
        if mode == "reset":
            for link in list(self._links):
                link.kill()
        if previous == "blackhole" and mode != "blackhole":
            for link in [lk for lk in self._links if lk.poisoned]:
                link.kill()
        log.debug("proxy %s: %s -> %s", self.name, previous, mode)

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer)
        self._links.add(link)
        try:
            if self.mode == "reset":
                self.stats["reset_on_accept"] += 1
                return
            if self.mode == "blackhole":
                link.poisoned = True
                self.stats["blackholed_on_accept"] += 1
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream), self.connect_timeout_s
                )
            except (OSError, TimeoutError):
                self.stats["upstream_refused"] += 1
                return
            link.server = up_writer
            if self.mode in ("reset", "blackhole"):  # switched while we were connecting
                link.poisoned = True
                return
            c2s = asyncio.ensure_future(self._pump(link, reader, up_writer, upstream=True))
            s2c = asyncio.ensure_future(self._pump(link, up_reader, writer, upstream=False))
            link.tasks = [c2s, s2c]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            # one side finished: let the other drain briefly, then close both
            await asyncio.wait(link.tasks, timeout=5)
        except asyncio.CancelledError:
            pass
        finally:
            if link.poisoned or self.mode == "reset" or link.server is None:
                link.kill()
            else:
                link.close()
            self._links.discard(link)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        """Read and discard until the peer gives up or the link is killed."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.read(CHUNK):
                pass

    async def _pump(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    if self.eof_delay_s:
                        await asyncio.sleep(self.eof_delay_s)
                    if not link.poisoned:
                        with contextlib.suppress(OSError, RuntimeError):
                            dst.write_eof()
                    return
                mode = self.mode
                if mode == "blackhole" or link.poisoned:
                    link.poisoned = True
                    self.stats["bytes_swallowed"] += len(data)
                    continue
                if mode == "reset":
                    link.kill()
                    return
                if mode == "drop_answer" and not upstream:
                    self.stats["answers_dropped"] += 1
                    link.kill()
                    return
                if mode == "latency" and self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                    if link.poisoned or self.mode in ("blackhole", "reset"):
                        link.poisoned = True
                        continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            link.kill()
        except asyncio.CancelledError:
            pass
