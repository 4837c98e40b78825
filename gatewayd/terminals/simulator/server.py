"""Running the simulator: in-process (`running_simulator`) or as `gatewayd simulate` (`main`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gatewayd.terminals.simulator.app import SimulatorConfig, make_app
from gatewayd.terminals.simulator.ledger import Ledger


@dataclass(frozen=True, slots=True)
class Simulator:
    """A running simulator: its base URL and its ledger."""

    url: str
    ledger: Ledger

    def set_offline(self, tpn: str, offline: bool = True) -> None:
        """Take terminal `tpn` offline (or back online), as `POST /_sim/terminals/{tpn}/offline` does."""
        self.ledger.set_offline(tpn, offline)


@contextlib.asynccontextmanager
async def running_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    latency_ms: int = 0,
    slow_s: float = 3.0,
    tpns: set[str] | frozenset[str] | None = None,
    authkeys: Mapping[str, str] | None = None,
    auto_settle_s: float | None = None,
) -> AsyncIterator[Simulator]:
    """Serve the simulator on host:port (0 = any free port) for the duration of the block.

    `tpns` is an allow-list (None: any Tpn); `authkeys` binds Tpns to their keys (others bind
    to the first key they are sent); `auto_settle_s` makes every terminal settle on its own.
    """
    ledger = Ledger(tpns, authkeys)
    config = SimulatorConfig(latency_s=latency_ms / 1000, slow_s=slow_s, auto_settle_s=auto_settle_s)
    app = make_app(ledger, config)
    # handler_cancellation: a held request ends when its client gives up.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        yield Simulator(url=f"http://{url_host}:{bound[1]}", ledger=ledger)
    finally:
        ledger.reset()
        await runner.cleanup()


def parse_tpns(text: str) -> dict[str, str | None]:
    """`A:KEYA,B` -> {"A": "KEYA", "B": None}: the allow-list, each Tpn with its auth key if given."""
    tpns: dict[str, str | None] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        tpn, colon, key = (part.strip() for part in entry.partition(":"))
        if not tpn or (colon and not key) or tpn in tpns:
            raise argparse.ArgumentTypeError(f"bad or repeated entry {entry!r} (expected TPN or TPN:KEY)")
        tpns[tpn] = key or None
    return tpns


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


SIMULATE_EPILOG = """\
The SPIn REST simulator: any number of simulated Dejavoo terminals (told apart by Tpn) speaking
the SPIn proxy's REST dialect (/v2/Payment/Sale, Auth, Capture, Return, Void, Status, Settle,
/v2/Common/TerminalStatus ...), for the demo, the tests, the benchmarks and POS developers.
One transaction at a time per terminal; a second is answered busy.

The cents of a Sale, Auth or Return amount choose what happens ("magic cents"):
  .51 declined          .52 approved, answer never sent   .53 approved, connection dropped
  .54 busy once         .55 slow (--slow-s)               .56 partial approval
  .57 card never read   .58 approved, proxy timeout 2007  .59 cancelled by the customer
  anything else: approved after --latency-ms
The last digit of the cents says how the card is read: 0-3 chip, 4-6 contactless, 7-8 swipe,
9 keyed. Answers carry CardData, EMVData (chip, contactless), RRN and, when GetReceipt asks,
Receipts. A `Card` sale lets the customer choose: debit on odd whole dollars, credit on even.
A Void, Capture, Status or Return (of a sale named by its InvoiceNumber) with another
PaymentType than the sale ran as is refused: 1016.

Control endpoints (what the clerk or the terminal does behind the POS's back): GET /_sim/ledger,
POST /_sim/reset, POST /_sim/terminals/TPN/offline|online|busy|free|settle|authkey|void/REF
(busy: every transaction answered 2008, DelayBeforeNextRequest {"delay_s": N} or 300, until free).
More: README.md ("The SPIn simulator"); the gatewayd API that drives these terminals: docs/api.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd simulate",
        description="Serve simulated SPIn terminals over HTTP (the SPIn REST simulator).",
        epilog=SIMULATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (required; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        metavar="N",
        help="milliseconds every ordinary card transaction takes (default: 0)",
    )
    parser.add_argument(
        "--slow-s",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds a slow transaction (amount ending in .55) takes (default: 3.0)",
    )
    parser.add_argument(
        "--tpns",
        type=parse_tpns,
        default=None,
        metavar="TPN[:KEY],...",
        help="comma-separated allow-list of Tpns, each TPN or TPN:KEY to bind its auth key "
        "(default: any Tpn; a Tpn without a key binds to the first one it is sent)",
    )
    parser.add_argument(
        "--auto-settle-s",
        type=_seconds,
        default=None,
        metavar="S",
        help="every terminal settles its open batch on its own every S seconds (default: never)",
    )
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    given: dict[str, str | None] = args.tpns or {}
    tpns = frozenset(given) if given else None
    authkeys = {tpn: key for tpn, key in given.items() if key}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_simulator(
        args.host, args.port, args.latency_ms, args.slow_s, tpns, authkeys, args.auto_settle_s
    ) as simulator:
        print(f"gatewayd simulator listening on {simulator.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """`gatewayd simulate --port P [--host H] [--latency-ms N] [--slow-s S] [--tpns A[:KEY],B]
    [--auto-settle-s S]`."""
    args = _parse(argv)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        print(f"gatewayd simulate: {exc}", file=sys.stderr)
        return 1
    return 0


@contextlib.asynccontextmanager
async def simulator_subprocess(
    port: int,
    *,
    host: str = "127.0.0.1",
    slow_s: float = 3.0,
    args: Sequence[str] = (),
    preexec_fn: Callable[[], Any] | None = None,
) -> AsyncIterator[str]:
    """`gatewayd simulate` in a process of its own (tests, chaos runs, benchmarks); yields its URL.
    `args`: more options (`--latency-ms`, `--tpns`, `--auto-settle-s`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatewayd",
        "simulate",
        "--host",
        host,
        "--port",
        str(port),
        "--slow-s",
        str(slow_s),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if b"listening" not in line:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"simulator did not start: {line!r}")
    # Whatever it prints later is read and dropped, so that a full pipe never stalls it.
    drain = asyncio.ensure_future(_drain(proc.stdout))
    try:
        yield f"http://{host}:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await asyncio.gather(drain, return_exceptions=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
