"""`gatewayd status` and `gatewayd terminals`: readable tables from a running daemon.

Also where every command that talks to the daemon finds its socket (`find_socket`) and what it
says when nobody answers there (`unreachable`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from gatewayd.api.client import Answer, GatewayClient
from gatewayd.api.events import SseEvent, read_events
from gatewayd.cli.output import api_error_text, emit_json, table
from gatewayd.errors import ConfigError

DEFAULT_SOCKET = "/run/gatewayd/gatewayd.sock"
DEMO_FILE = "state/demo.json"  # written by `gatewayd demo` (default --state-dir ./state)
SOCKET_ORDER = (
    f"--socket, else $GATEWAYD_SOCKET, else --config's [api] socket, else ./{DEMO_FILE} "
    f"(written by gatewayd demo), else {DEFAULT_SOCKET}"
)


def add_socket_args(p: argparse.ArgumentParser, config_help: str | None = None) -> None:
    p.add_argument("--socket", help=f"the daemon's API socket; the first of: {SOCKET_ORDER}")
    p.add_argument("--config", help=config_help or "config file: its [api] socket is the daemon's")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


@dataclass(frozen=True, slots=True)
class SocketChoice:
    """The socket a command will try, and why that one (said when nobody answers there)."""

    path: str
    source: str


def _demo_socket() -> tuple[str | None, str]:
    """(the socket in ./state/demo.json, or None and why not)."""
    try:
        info = json.loads(Path(DEMO_FILE).read_text())
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError:
        return None, "is not JSON"
    sock = info.get("socket") if isinstance(info, dict) else None
    if not isinstance(sock, str) or not sock:
        return None, "has no socket"
    return str(Path(sock).absolute()), ""


def find_socket(args: argparse.Namespace) -> SocketChoice:
    """The daemon's socket, found as a newcomer expects: --socket, $GATEWAYD_SOCKET, --config's
    [api] socket, ./state/demo.json of a demo started here, then the production path.
    Raises ConfigError for a --config that cannot be read."""
    if getattr(args, "socket", None):
        return SocketChoice(str(args.socket), "from --socket")
    if env := os.environ.get("GATEWAYD_SOCKET"):
        return SocketChoice(env, "from $GATEWAYD_SOCKET")
    if config := getattr(args, "config", None):
        from gatewayd.config import load

        return SocketChoice(load(config, resolve_secrets=False).api.socket, f"from [api] socket in {config}")
    demo, problem = _demo_socket()
    if demo is not None:
        return SocketChoice(demo, f"from ./{DEMO_FILE}, written by gatewayd demo")
    if problem:
        why = f"no --socket, GATEWAYD_SOCKET or --config, and ./{DEMO_FILE} {problem}"
    else:
        why = f"no --socket, GATEWAYD_SOCKET, --config or ./{DEMO_FILE}"
    return SocketChoice(DEFAULT_SOCKET, f"the production default: {why}")


def unreachable(choice: SocketChoice, exc: BaseException, fallback: str | None = None) -> str:
    """What to print when nobody answers at the chosen socket: where, why there, and what to do.
    `fallback`: how the command can do without the daemon, if it can."""
    os_error = getattr(exc, "os_error", exc)  # aiohttp wraps the OSError of the connect
    if isinstance(os_error, PermissionError):
        problem = "permission denied: run it as root or as a member of the socket's group (gatewayd-pos)"
    elif isinstance(os_error, FileNotFoundError):
        problem = "is it running? (no such socket)"
    elif isinstance(os_error, ConnectionRefusedError):
        problem = "is it running? (nobody is listening there)"
    elif isinstance(exc, TimeoutError):
        problem = "it did not answer in time"
    else:
        problem = f"is it running? ({exc})"
    hint = fallback or "start it (systemctl start gatewayd, or ./dev demo) or name its socket with --socket"
    return f"cannot reach gatewayd at {choice.path} ({choice.source}) — {problem}\n  {hint}"


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="daemon health and terminals, from the running daemon")
    add_socket_args(p)
    p.add_argument(
        "--watch",
        action="store_true",
        help="then print a line per terminal status change and finished checkout as they happen"
        " (the live event stream), until Ctrl-C; with --json, one JSON object a line",
    )
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("terminals", help="the terminals and their state")
    add_socket_args(p)
    p.set_defaults(handler=cmd_terminals)


async def ask(path_: str, *calls: tuple[str, str, Any]) -> list[Answer]:
    """Send requests to the daemon; raises OSError-like errors when it does not answer."""
    async with GatewayClient(path_, timeout_s=30) as client:
        return [await client.request(method, path, body) for method, path, body in calls]


def run_requests(args: argparse.Namespace, *calls: tuple[str, str, Any]) -> list[Answer] | int:
    """The daemon's answers, or the exit code after saying why there are none."""
    try:
        choice = find_socket(args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(ask(choice.path, *calls))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: {unreachable(choice, exc)}", file=sys.stderr)
        return 1


def print_api_error(answer: Answer) -> None:
    print(f"error: {api_error_text(answer.status, answer.body)}", file=sys.stderr)


def terminal_rows(terminals: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            t["id"],
            t["name"],
            t["status"].upper() if t["status"] != "online" else "online",
            t["queue_depth"],
            "yes" if t.get("in_flight") else "",
            (t.get("last_health_check") or "")[:19],
            t.get("last_health_error") or "",
        ]
        for t in terminals
    ]


TERMINAL_HEADERS = ["ID", "NAME", "STATUS", "QUEUE", "BUSY", "LAST CHECK (UTC)", "LAST ERROR"]


def status_text(health: dict[str, Any], terminals: list[dict[str, Any]]) -> str:
    h = health
    return (
        f"gatewayd {h['version']}: {h['status']}  database {h['database']}  "
        f"terminals {h['terminals']['online']}/{h['terminals']['total']} online  "
        f"checkouts in flight {h.get('checkouts_in_flight', 0)}\n\n" + table(TERMINAL_HEADERS, terminal_rows(terminals))
    )


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return cmd_watch(args)
    answers = run_requests(args, ("GET", "/v1/health", None), ("GET", "/v1/terminals", None))
    if isinstance(answers, int):
        return answers
    health, terminals = answers
    for answer in answers:
        if not answer.ok:
            print_api_error(answer)
            return 1
    if args.json:
        emit_json({"health": health.body, "terminals": terminals.body.get("terminals", [])})
        return 0 if health.body.get("status") == "ok" else 1  # docs/operations.md: 1 unhealthy with --json
    print(status_text(health.body, terminals.body["terminals"]))
    return 0 if health.body["status"] == "ok" else 3


# ---------------------------------------------------------------- status --watch

WATCH_TYPES = "terminal.status,checkout.finished"
RECONNECT_S = 2.0


def event_line(event: SseEvent) -> str:
    """One line for a terminal.status or checkout.finished event, as `status --watch` prints it."""
    d = event.data
    at = str(d.get("at", ""))[11:19]
    if event.event == "terminal.status":
        status = str(d.get("status", ""))
        error = f" ({d['last_error']})" if d.get("last_error") else ""
        return f"{at}  terminal {d.get('terminal_id')} {status if status == 'online' else status.upper()}{error}"
    if event.event == "checkout.finished":
        return f"{at}  checkout {d.get('checkout_id')} {d.get('status')}"
    return f"{at}  {event.event} {msgspec.json.encode(d).decode()}"


class _Watch:
    """The status, then the events, over one connection at a time; resumes after a drop."""

    def __init__(self, choice: SocketChoice, as_json: bool) -> None:
        self.choice = choice
        self.as_json = as_json
        self.last_id: str | None = None
        self.connected = False  # once: from then on, a lost daemon is waited for

    def say(self, text: str, value: Any) -> None:
        if self.as_json:
            sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    async def show_status(self, session: aiohttp.ClientSession) -> None:
        async with session.get("http://gatewayd/v1/health") as h, session.get("http://gatewayd/v1/terminals") as t:
            health, terminals = await h.json(), await t.json()
        listed = terminals.get("terminals", []) if isinstance(terminals, dict) else []
        self.say(status_text(health, listed) + "\n", {"health": health, "terminals": listed})

    async def follow(self, session: aiohttp.ClientSession) -> int | None:
        """One connection: subscribe first, then the status (nothing is missed in between), then
        each event. None when the stream ended (reconnect); an exit code when it cannot go on."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with session.get(f"http://gatewayd/v1/events?types={WATCH_TYPES}", headers=headers) as resp:
            if resp.status != 200:
                body = await resp.json(content_type=None)
                print(f"error: {api_error_text(resp.status, body)}", file=sys.stderr)
                return None if resp.status == 503 else 1
            self.connected = True
            if self.last_id is None:
                await self.show_status(session)
            async for event in read_events(resp):
                self.last_id = event.id or self.last_id
                if event.event == "stream.reset":  # events were missed (the daemon restarted): re-read
                    self.say("-- events were missed (the daemon restarted?): the status now --", _raw(event))
                    await self.show_status(session)
                else:
                    self.say(event_line(event), _raw(event))
        return None

    async def run(self) -> int:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        while True:
            connector = aiohttp.UnixConnector(path=self.choice.path)
            try:
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                    code = await self.follow(session)
                    if code is not None:
                        return code
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if not self.connected:
                    print(f"error: {unreachable(self.choice, exc)}", file=sys.stderr)
                    return 1
                print(
                    f"lost the daemon at {self.choice.path} ({exc or type(exc).__name__}); reconnecting",
                    file=sys.stderr,
                )
            await asyncio.sleep(RECONNECT_S)


def _raw(event: SseEvent) -> dict[str, Any]:
    return {"id": event.id, "event": event.event, "data": event.data}


def cmd_watch(args: argparse.Namespace) -> int:
    """`gatewayd status --watch`: the status, then a line per event, until Ctrl-C (exit 0)."""
    try:
        choice = find_socket(args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_Watch(choice, args.json).run())
    except KeyboardInterrupt:
        return 0


def cmd_terminals(args: argparse.Namespace) -> int:
    answers = run_requests(args, ("GET", "/v1/terminals", None))
    if isinstance(answers, int):
        return answers
    if not answers[0].ok:
        print_api_error(answers[0])
        return 1
    terminals = answers[0].body["terminals"]
    if args.json:
        emit_json(terminals)
    else:
        print(table(TERMINAL_HEADERS, terminal_rows(terminals)))
    return 0
