"""The simulator's aiohttp app: the SPIn REST dialect, the SPIn Local dialect (`GET /cgi.html`,
see `simulator.local`) and `/_sim/` control endpoints. Both dialects reach the same terminals and
ledger through `serve`, which decides; each renders the answer its own way.

Magic cents (`amount % 100`) on Sale, Auth and Return choose the behaviour (see
TERMINALS.md). One transaction at a time per Tpn: a second concurrent one is
answered busy (2008); Status, StatusList and TerminalStatus are answered by the
"proxy" and never count as transactions. Every request must carry the auth key bound to its
Tpn (see `Ledger.admit`); any other key is refused with 2002 and nothing is recorded.

Control endpoints under `/_sim/` act like the terminal or its clerk: offline/online, busy/free
(every transaction answered 2008 until freed), a void on the keypad, a settlement on its own (also
every `auto_settle_s` seconds), key rotation.

Answers carry what a real terminal sends of the card and the receipt: `CardData` (brand, last
four, first digits, BIN, cardholder name, expiry: gatewayd must keep only the first two),
`EMVData` for a chip or a tap, `RRN`, the processor's `HostResponseCode`/`HostResponseMessage`,
and `Receipts` (customer and merchant copies in Dejavoo's tag format) when `GetReceipt` asked.
Every card operation names a `PaymentType`; a Void, Capture, Return (of a known sale) or Status
naming another type than the sale ran as is refused with 1016 "payment type mismatch".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from aiohttp import web

from gatewayd.errors import ProtocolError
from gatewayd.terminals.simulator.ledger import Ledger, Settlement, Terminal, Txn, application
from gatewayd.terminals.spin.codec import SPIN_PAYMENT_TYPES, payment_type_of, to_cents, to_dollars

_encoder = msgspec.json.Encoder(decimal_format="number")
_decoder = msgspec.json.Decoder(float_hook=Decimal)
_TYPE_NAMES = {"sale": "Sale", "auth": "Auth", "capture": "Capture", "return": "Return"}
_TRANSACTIONS = frozenset({"Sale", "Auth", "Capture", "Void", "Return", "Settle"})
_CARD_OPS = frozenset({"Sale", "Auth", "Return"})
_MESSAGES = {
    "0000": "Approved",
    "0001": "Partially approved",
    "1001": "Not found",
    "1002": "Not implemented",
    "1011": "Duplicate Reference Id",
    "1012": "Canceled",
    "1013": "Bad request",
    "1015": "Declined",
    "1016": "Payment type mismatch",
    "1020": "No open batch",
    "2001": "Terminal not connected to SPIn Proxy server",
    "2002": "Active AuthKey not found",
    "2003": "Register not found",
    "2006": "Could not parse request",
    "2007": "The operation has timed out",
    "2008": "Terminal in use",
    "2201": "Invalid request data",
}


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Knobs of one simulator process."""

    latency_s: float = 0.0
    slow_s: float = 3.0
    auto_settle_s: float | None = None  # every terminal settles its open batch this often


LEDGER_KEY = web.AppKey("ledger", Ledger)
CONFIG_KEY = web.AppKey("config", SimulatorConfig)


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(payload), status=status, content_type="application/json")


def _general(code: str, delay: int | None = None) -> dict[str, Any]:
    result = "0" if code in ("0000", "0001") else "2" if code.startswith("2") else "1"
    message = _MESSAGES.get(code, "Error")
    return {
        "ResultCode": result,
        "StatusCode": code,
        "Message": message,
        "DetailedMessage": message,
        "DelayBeforeNextRequest": delay,
    }


def _error(code: str, ref: str = "", delay: int | None = None, status: int = 200) -> web.Response:
    payload: dict[str, Any] = {"GeneralResponse": _general(code, delay), "PaymentType": "Credit"}
    if ref:
        payload["ReferenceId"] = ref
    return _json(payload, status)


_ENTRY_TYPES = {"chip": "Chip", "contactless": "ChipContactless", "swipe": "Swipe", "manual": "Manual"}
_ENTRY_WORDS = {"chip": "CHIP", "contactless": "CONTACTLESS", "swipe": "SWIPED", "manual": "KEYED"}
_HOST = {"0000": ("00", "APPROVAL"), "0001": ("10", "PARTIAL APPROVAL"), "1015": ("05", "DO NOT HONOR")}


_SPIN_NAMES: dict[str, str] = {str(k): v for k, v in SPIN_PAYMENT_TYPES.items()}


def _spin_type(payment_type: str) -> str:
    return _SPIN_NAMES.get(payment_type, "Credit")


def _receipt(txn: Txn, kind: str, copy: str) -> str:
    """One receipt copy as the terminal prints it, in Dejavoo's tag format."""
    card = txn.card
    assert card is not None
    approved = txn.status != "declined"
    lines = ["<C><B>SIMULATED TERMINAL</B></C>", f"<C>TPN {txn.tpn}</C>", "<BR>"]
    lines.append(f"<L>{_TYPE_NAMES.get(kind, 'Sale').upper()} {_spin_type(txn.payment_type).upper()}</L>")
    lines.append(f"<L>{card.brand} ************{card.last4}</L>")
    lines.append(f"<L>ENTRY: {_ENTRY_WORDS.get(txn.entry_method, 'CHIP')}</L>")
    if txn.entry_method in ("chip", "contactless"):
        label, aid = application(card.brand, txn.payment_type)
        lines += [f"<L>APP: {label}</L>", f"<L>AID: {aid}</L>"]
    if copy == "Merchant":
        first, _, last = card.name.partition("/")[::-1]
        lines.append(f"<L>CARDHOLDER: {first} {last}</L>")
    lines.append(f"<L>REF: {txn.reference_id}</L>")
    if approved:
        lines += [f"<L>AUTH: {txn.auth_code}</L>", f"<L>RRN: {txn.rrn}</L>"]
    lines.append(f"<L>BATCH: {txn.batch} TXN: {txn.number}</L>")
    lines.append(f"<L>AMOUNT: ${to_dollars(txn.amount)}</L>")
    lines.append(f"<C><B>{'APPROVED' if approved else 'DECLINED'}</B></C>")
    lines.append(f"<C>{copy.upper()} COPY</C>")
    return "".join(lines)


def answer_of(txn: Txn, kind: str | None = None) -> dict[str, Any]:
    """The SPIn payment answer for a recorded transaction (what Status returns)."""
    dollars = to_dollars(txn.amount)
    kind = kind or txn.type
    general = _general(txn.status_code)
    host = _HOST.get(txn.status_code)
    if host is not None:
        general["HostResponseCode"] = host[0]
        general["HostResponseMessage"] = f"{host[1]} {txn.auth_code}".strip() if txn.auth_code else host[1]
    answer: dict[str, Any] = {
        "GeneralResponse": general,
        "PaymentType": _spin_type(txn.payment_type),
        "TransactionType": _TYPE_NAMES.get(kind, "Sale"),
        "ReferenceId": txn.reference_id,
        "InvoiceNumber": txn.reference_id[:50],
        "AuthCode": txn.auth_code,
        "BatchNumber": str(txn.batch),
        "TransactionNumber": str(txn.number),
        "Voided": txn.voided,
        "Amounts": {"TotalAmount": dollars, "Amount": dollars, "TipAmount": None, "FeeAmount": None},
    }
    card = txn.card
    if card is not None:
        answer["CardData"] = {
            "CardType": card.brand,
            "EntryType": _ENTRY_TYPES.get(txn.entry_method, "Chip"),
            "Last4": card.last4,
            "First4": card.bin[:4],
            "BIN": card.bin,
            "Name": card.name,
            "ExpirationDate": card.expiry,
        }
        if txn.entry_method in ("chip", "contactless"):
            label, aid = application(card.brand, txn.payment_type)
            answer["EMVData"] = {"ApplicationName": label, "AID": aid, "TVR": "0000008000", "TSI": "E800"}
        if txn.rrn:
            answer["RRN"] = txn.rrn
            answer["PNReferenceId"] = txn.rrn[-10:]
        copies = {"Both": ("Customer", "Merchant"), "Customer": ("Customer",), "Merchant": ("Merchant",)}
        wanted = copies.get(txn.receipts, ())
        if wanted:
            answer["Receipts"] = {copy: _receipt(txn, kind, copy) for copy in wanted}
    return answer


def _payment_type(body: dict[str, Any]) -> str | None:
    """The request's payment type, as gatewayd names them; credit when not given; None if unknown."""
    if body.get("PaymentType") in (None, ""):
        return "credit"
    return payment_type_of(body.get("PaymentType"))


async def _hold() -> Reply:
    """Never answer; ends when the client goes away or the connection is dropped."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ one request, either dialect


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the terminal understands it, whichever dialect carried it: REST's JSON body
    (`Tpn`, `Authkey`, `ReferenceId` ...) or Local's XML (`RegisterId`, `AuthKey`, `RefId` ...)."""

    op: str  # Sale | Auth | Capture | Void | Return | Status | StatusList | Settle | anything else
    terminal: str  # the Tpn, or the Register ID (a register id equal to a Tpn is that terminal)
    authkey: str
    ref: str = ""
    amount: int | None = None  # cents; None when missing or not a whole number of cents
    payment_type: str | None = "credit"  # gatewayd's name; None: not a type the terminal knows
    receipts: str = "No"  # the copies asked back (REST GetReceipt; Local asks none)
    invoice: str = ""
    timeout_s: float = 120.0  # SPInProxyTimeout, or Local's OperationalTimeout
    local: bool = False  # straight to the terminal: no proxy answers for it


@dataclass(frozen=True, slots=True)
class Reply:
    """What the terminal answers, before a dialect renders it: a SPIn status code (REST's
    vocabulary) and the transaction it is about, or the closed batch, or the open one."""

    code: str
    txn: Txn | None = None
    ref: str = ""
    delay: int | None = None
    http_status: int = 200
    settlement: Settlement | None = None
    transactions: list[Txn] | None = None
    voiding: bool = False  # the answer to a Void (Local echoes "Void Sale")


async def _card_op(request: web.Request, term: Terminal, call: Call, amount: int) -> Reply:
    """One card transaction. Like the real proxy, its outcome is decided by its timeout: a
    terminal slower than that is answered 2007 with the transaction recorded as it ended."""
    config = request.app[CONFIG_KEY]
    ref, kind, cents = call.ref, call.op.lower(), amount % 100
    if ref in term.open:
        return Reply("1011", ref=ref)
    payment_type = call.payment_type
    if payment_type is None:
        return Reply("1013", ref=ref)
    sale = term.find(call.invoice) if kind == "return" else None
    if sale is not None and sale.type in ("sale", "capture") and sale.payment_type != payment_type:
        # a Return of a known sale, with another type than the sale ran as
        txn = term.record(
            ref, kind, amount, amount, "declined", "1016", payment_type=payment_type, receipts=call.receipts
        )
        return Reply("1016", txn)
    record = functools.partial(term.record, payment_type=payment_type, receipts=call.receipts, sale=sale)
    if cents == 54 and ref not in term.busy_seen:
        term.busy_seen.add(ref)
        return Reply("2008", ref=ref, delay=1)
    if cents == 57:
        return await _hold()
    delay_s = config.slow_s if cents == 55 else config.latency_s if cents not in range(51, 60) else 0.0
    proxy_gave_up = delay_s >= call.timeout_s
    if delay_s > 0:
        await asyncio.sleep(min(delay_s, call.timeout_s))
    approved_status = "returned" if kind == "return" else "approved"
    if cents in (51, 59):
        code = "1015" if cents == 51 else "1012"
        return Reply(code, record(ref, kind, amount, amount, "declined", code))
    if cents == 56 and kind != "return":
        return Reply("0001", record(ref, kind, amount // 2, amount, approved_status, "0001"))
    txn = record(ref, kind, amount, amount, approved_status, "0000")
    if cents == 52:
        return await _hold()
    if cents == 53:
        if request.transport is not None:
            request.transport.abort()
        return await _hold()
    if cents == 58 or proxy_gave_up:
        return Reply("2007", ref=ref)
    return Reply(txn.status_code, txn)


def _capture(term: Terminal, ref: str, amount: int, payment_type: str | None) -> Reply:
    txn = term.open.get(ref)
    if txn is None or txn.voided or txn.type not in ("auth", "capture") or txn.status == "declined":
        return Reply("1001", ref=ref)
    if payment_type != txn.payment_type:
        return Reply("1016", ref=ref)
    if txn.type == "auth":
        if amount > txn.amount or amount <= 0:
            return Reply("1013", ref=ref)
        txn.type, txn.status, txn.amount = "capture", "captured", amount
    return Reply(txn.status_code, txn)


def _void(term: Terminal, ref: str, payment_type: str | None) -> Reply:
    txn = term.open.get(ref)
    if txn is not None and txn.status != "declined" and payment_type != txn.payment_type:
        return Reply("1016", ref=ref)  # a void must name the type the sale ran as
    if txn is None or not txn.void():
        return Reply("1001", ref=ref)
    return Reply(txn.status_code, txn, voiding=True)


def _settle(term: Terminal) -> Reply:
    closed = term.settle()
    return Reply("1020") if closed is None else Reply("0000", settlement=closed)


async def _transaction(request: web.Request, term: Terminal, call: Call) -> Reply:
    ref = call.ref
    if call.op == "Settle":
        return _settle(term)
    if not ref or len(ref) > 50:
        return Reply("2201", ref=ref, http_status=400)
    if call.op == "Void":
        return _void(term, ref, call.payment_type)
    amount = call.amount
    if amount is None or amount <= 0:
        return Reply("1013", ref=ref)
    if call.op == "Capture":
        return _capture(term, ref, amount, call.payment_type)
    return await _card_op(request, term, call, amount)


def _inquiry(term: Terminal, call: Call) -> Reply:
    if call.op == "StatusList":
        return Reply("0000", transactions=list(term.open.values()))
    txn = term.open.get(call.ref)
    if txn is None:
        return Reply("1001", ref=call.ref)
    if call.payment_type not in txn.card_types:
        return Reply("1016", ref=call.ref)  # a Status names the type the sale was sent with, or ran as
    return Reply(txn.status_code, txn)


async def serve(request: web.Request, call: Call) -> Reply:
    """The terminal's answer to one request (the proxy's, for REST): credentials, offline,
    busy, one transaction at a time, then the operation itself."""
    ledger_ = request.app[LEDGER_KEY]
    if not ledger_.serves(call.terminal):
        return Reply("2003")
    term = ledger_.admit(call.terminal, call.authkey)
    if term is None:
        return Reply("2002")  # no key, or not the one bound to this terminal: refused, nothing recorded
    if term.offline:
        return Reply("2001", ref=call.ref)
    inquiry = call.op in ("Status", "StatusList")
    # REST inquiries are answered by the proxy; a Local terminal is one device doing one thing.
    if inquiry and not (call.local and (term.active or term.busy_delay_s is not None)):
        return _inquiry(term, call)
    if not inquiry and call.op not in _TRANSACTIONS:
        return Reply("1002")
    if term.busy_delay_s is not None and call.op != "Settle":
        return Reply("2008", ref=call.ref, delay=term.busy_delay_s)
    if inquiry:
        return Reply("2008", ref=call.ref, delay=1)
    term.active += 1
    term.max_active = max(term.max_active, term.active)
    transport = request.transport
    try:
        if transport is not None:
            term.transports.add(transport)
        if term.active > 1:
            return Reply("2008", ref=call.ref, delay=1)
        return await _transaction(request, term, call)
    finally:
        term.active -= 1
        if transport is not None:
            term.transports.discard(transport)


# ------------------------------------------------------------------ the REST dialect


def _rest(reply: Reply) -> web.Response:
    if reply.txn is not None:
        return _json(answer_of(reply.txn))
    if reply.settlement is not None:
        closed = reply.settlement
        report = {"Count": closed.count, "Amount": to_dollars(closed.amount)}
        details = [{"Application": "Credit", "HostStatus": "Approved", "TransactionsReports": [report]}]
        return _json({"GeneralResponse": _general("0000"), "BatchNumber": str(closed.batch), "SettleDetails": details})
    if reply.transactions is not None:
        return _json({"GeneralResponse": _general("0000"), "Transactions": [answer_of(t) for t in reply.transactions]})
    return _error(reply.code, reply.ref, reply.delay, reply.http_status)


def _amount(body: dict[str, Any]) -> int | None:
    try:
        return to_cents(body.get("Amount"))
    except ProtocolError:
        return None


def _proxy_timeout_s(body: dict[str, Any]) -> float:
    try:
        return min(720.0, max(1.0, float(body.get("SPInProxyTimeout") or 120)))
    except (TypeError, ValueError):
        return 120.0


async def payment(request: web.Request) -> web.Response:
    """`POST /v2/Payment/{op}`."""
    op = request.match_info["op"]
    try:
        body = _decoder.decode(await request.read())
    except (msgspec.DecodeError, ValueError):
        return _error("2006", status=400)
    if not isinstance(body, dict) or not body.get("Tpn"):
        return _error("2201", status=400)
    call = Call(
        op=op,
        terminal=str(body["Tpn"]),
        authkey=str(body.get("Authkey") or ""),
        ref=str(body.get("ReferenceId") or ""),
        amount=_amount(body),
        payment_type=_payment_type(body),
        receipts=str(body.get("GetReceipt") or "No"),
        invoice=str(body.get("InvoiceNumber") or ""),
        timeout_s=_proxy_timeout_s(body),
    )
    return _rest(await serve(request, call))


async def terminal_status(request: web.Request) -> web.Response:
    """`GET /v2/Common/TerminalStatus?request.tpn=…&request.authkey=…`."""
    query = {k.lower(): v for k, v in request.query.items()}
    tpn = query.get("request.tpn") or query.get("tpn") or ""
    authkey = query.get("request.authkey") or query.get("authkey") or ""
    ledger_ = request.app[LEDGER_KEY]
    if not ledger_.serves(tpn):
        return _json({"TerminalStatus": "NotFound", "Tpn": tpn, "ErrorDescription": _MESSAGES["2003"]}, 404)
    # Without a key it answers as it always has; a key must be the bound one.
    term = ledger_.admit(tpn, authkey) if authkey else ledger_.terminal(tpn)
    if term is None:
        return _json({"TerminalStatus": "NotFound", "Tpn": tpn, "ErrorDescription": _MESSAGES["2002"]})
    state = "Offline" if term.offline else "Online"
    return _json({"TerminalStatus": state, "Tpn": tpn, "ErrorDescription": ""})


# ------------------------------------------------------------------ control


async def set_state(request: web.Request) -> web.Response:
    """`POST /_sim/terminals/{tpn}/offline|online`."""
    tpn, state = request.match_info["tpn"], request.match_info["state"]
    if not request.app[LEDGER_KEY].set_offline(tpn, state == "offline"):
        return _json({"error": "unknown tpn", "tpn": tpn}, 404)
    return _json({"tpn": tpn, "state": state})


async def set_busy(request: web.Request) -> web.Response:
    """`POST /_sim/terminals/{tpn}/busy` (optional `{"delay_s": N}`, default 300) and `/free`: a
    busy terminal answers every transaction 2008 with DelayBeforeNextRequest N, until freed."""
    tpn, state = request.match_info["tpn"], request.match_info["state"]
    term = request.app[LEDGER_KEY].terminal(tpn)
    if term is None:
        return _not_found("unknown tpn", tpn=tpn)
    delay_s = 300
    if state == "busy" and request.can_read_body:
        try:
            body = _decoder.decode(await request.read())
        except (msgspec.DecodeError, ValueError):
            body = None
        given = body.get("delay_s") if isinstance(body, dict) else None
        if not isinstance(given, int) or isinstance(given, bool) or not 0 <= given <= 3600:
            return _json({"error": 'expected a JSON body {"delay_s": 0..3600} or none', "tpn": tpn}, 400)
        delay_s = given
    term.busy_delay_s = delay_s if state == "busy" else None
    return _json({"tpn": tpn, "state": state, **({"delay_s": delay_s} if state == "busy" else {})})


def _not_found(what: str, **about: str) -> web.Response:
    return _json({"error": what, **about}, 404)


async def keypad_void(request: web.Request) -> web.Response:
    """`POST /_sim/terminals/{tpn}/void/{ref}`: the clerk voids an open transaction on the keypad."""
    tpn, ref = request.match_info["tpn"], request.match_info["ref"]
    term = request.app[LEDGER_KEY].terminal(tpn)
    if term is None:
        return _not_found("unknown tpn", tpn=tpn)
    txn = term.open.get(ref)
    if txn is None:
        return _not_found("no such transaction in the open batch", tpn=tpn, reference_id=ref)
    if txn.voided or not txn.void():
        return _json({"error": f"cannot void a {txn.status} transaction", "tpn": tpn, "reference_id": ref}, 409)
    return _json(txn.row())


async def terminal_settle(request: web.Request) -> web.Response:
    """`POST /_sim/terminals/{tpn}/settle`: the terminal closes its open batch on its own."""
    tpn = request.match_info["tpn"]
    term = request.app[LEDGER_KEY].terminal(tpn)
    if term is None:
        return _not_found("unknown tpn", tpn=tpn)
    closed = term.settle()
    if closed is None:
        return _json({"error": "no open batch", "tpn": tpn}, 409)
    return _json({"tpn": tpn, "batch": closed.batch, "count": closed.count, "amount": closed.amount})


async def rebind(request: web.Request) -> web.Response:
    """`POST /_sim/terminals/{tpn}/authkey` with `{"authkey": "NEWKEY"}`: key rotation."""
    tpn = request.match_info["tpn"]
    try:
        body = _decoder.decode(await request.read())
    except (msgspec.DecodeError, ValueError):
        body = None
    authkey = body.get("authkey") if isinstance(body, dict) else None
    if not isinstance(authkey, str) or not authkey:
        return _json({"error": 'expected a JSON body {"authkey": "NEWKEY"}', "tpn": tpn}, 400)
    if not request.app[LEDGER_KEY].bind(tpn, authkey):
        return _not_found("unknown tpn", tpn=tpn)
    return _json({"tpn": tpn, "rebound": True})  # the key itself is never echoed


async def reset(request: web.Request) -> web.Response:
    """`POST /_sim/reset`."""
    request.app[LEDGER_KEY].reset()
    return _json({"reset": True})


async def ledger(request: web.Request) -> web.Response:
    """`GET /_sim/ledger`."""
    return _json(request.app[LEDGER_KEY].snapshot())


async def _settle_every(ledger_: Ledger, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        for term in list(ledger_.terminals.values()):
            term.settle()


async def _auto_settle(app: web.Application) -> AsyncIterator[None]:
    """Runs with the app: every terminal settles its open batch every `auto_settle_s` seconds."""
    every_s = app[CONFIG_KEY].auto_settle_s
    assert every_s is not None
    task = asyncio.create_task(_settle_every(app[LEDGER_KEY], every_s), name="simulator-auto-settle")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(ledger_: Ledger, config: SimulatorConfig) -> web.Application:
    """The simulator app serving `ledger_`."""
    app = web.Application(client_max_size=256 * 1024)
    app[LEDGER_KEY] = ledger_
    app[CONFIG_KEY] = config
    if config.auto_settle_s is not None:
        app.cleanup_ctx.append(_auto_settle)
    app.router.add_post("/v2/Payment/{op}", payment)
    app.router.add_get("/v2/Common/TerminalStatus", terminal_status)
    from gatewayd.terminals.simulator import local  # the Local dialect renders what `serve` decides

    app.router.add_get("/cgi.html", local.cgi)
    app.router.add_post("/_sim/terminals/{tpn}/{state:offline|online}", set_state)
    app.router.add_post("/_sim/terminals/{tpn}/{state:busy|free}", set_busy)
    app.router.add_post("/_sim/terminals/{tpn}/void/{ref}", keypad_void)
    app.router.add_post("/_sim/terminals/{tpn}/settle", terminal_settle)
    app.router.add_post("/_sim/terminals/{tpn}/authkey", rebind)
    app.router.add_post("/_sim/reset", reset)
    app.router.add_get("/_sim/ledger", ledger)
    return app
