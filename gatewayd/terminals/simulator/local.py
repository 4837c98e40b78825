"""The simulator's SPIn Local dialect: `GET /cgi.html?TerminalTransaction=<request>…</request>`.

The same terminals, ledger, magic cents and `/_sim/` controls as the REST dialect (`app.serve`
decides; this module only reads the XML request and writes the XML answer). A request names its
terminal by `RegisterId`, else `TPN`: a register id equal to a Tpn is the same simulated terminal
both ways, as a real one can be switched between Cloud and Local.

Where the simulated terminal differs from the REST proxy, it does as a terminal on the LAN does:
a Status while a transaction runs (or while it is held busy) is answered busy, since there is no
proxy to answer for it; an offline terminal cannot refuse the connection here (every terminal
shares the simulator's port), so it answers HTTP 503 without a SPIn answer, which the Local driver
reads as "not sent", as it reads a refused connection. The words of each answer are in `WORDS`.
"""

from __future__ import annotations

import urllib.parse

from aiohttp import web

from gatewayd.errors import ProtocolError
from gatewayd.terminals.simulator.app import Call, Reply, serve
from gatewayd.terminals.simulator.ledger import Txn, application
from gatewayd.terminals.spin.shared import SPIN_PAYMENT_TYPES, payment_type_of, to_cents, to_dollars
from gatewayd.terminals.spin_local import xmlflat

# A SPIn status code's XML answer: (ResultCode, Message, RespMSG). The approvals, the decline,
# the cancel, "not found" and the duplicate are as seen in captures of real terminals; the rest
# are the REST dialect's words.
WORDS: dict[str, tuple[str, str, str]] = {
    "0000": ("0", "Approved", "APPROVAL"),
    "0001": ("0", "Approved", "PARTIAL APPROVAL"),
    "1001": ("1", "Canceled", "Transaction not found"),
    "1002": ("1", "Error", "Not implemented"),
    "1011": ("1", "Canceled", "Duplicate Reference Id"),
    "1012": ("1", "Canceled", "Canceled"),
    "1013": ("1", "Error", "Bad request"),
    "1015": ("1", "Declined", "DO NOT HONOR"),
    "1016": ("1", "Declined", "Payment type mismatch"),
    "1020": ("1", "Error", "No open batch"),
    "2002": ("1", "Error", "Invalid AuthKey"),
    "2003": ("1", "Error", "Register not found"),
    "2006": ("1", "Error", "Could not parse request"),
    "2007": ("2", "Error", "The operation has timed out"),
    "2008": ("1", "Error", "Terminal in use"),
    "2201": ("1", "Error", "Invalid request data"),
}
_SPIN_NAMES: dict[str, str] = {str(k): v for k, v in SPIN_PAYMENT_TYPES.items()}
_TYPE_NAMES = {"sale": "Sale", "auth": "Auth", "capture": "Capture", "return": "Return"}
_ENTRY_WORDS = {"chip": "CHIP", "contactless": "CONTACTLESS", "swipe": "SWIPE", "manual": "MANUAL"}


def _q(value: object) -> str:
    return urllib.parse.quote(str(value), safe="")


def _pairs(items: list[tuple[str, object]]) -> str:
    return ",".join(f"{key}={_q(value)}" for key, value in items)


def _xml(fields: list[tuple[str, str]], status: int = 200) -> web.Response:
    text = "<xmp>" + xmlflat.element("response", fields) + "</xmp>"
    return web.Response(text=text, status=status, content_type="text/html")


def answer_of(txn: Txn, *, voiding: bool = False) -> list[tuple[str, str]]:
    """The XML answer for a recorded transaction (what Status returns, and the answer to it)."""
    result, message, resp = WORDS.get(txn.status_code, ("1", "Error", "Error"))
    if txn.auth_code and result == "0":
        resp = f"{resp} {txn.auth_code}"
    kind = _TYPE_NAMES.get(txn.type, "Sale")
    dollars = f"{to_dollars(txn.amount):.2f}"
    ext: list[tuple[str, object]] = [("Amount", dollars), ("InvNum", txn.reference_id[:50])]
    card = txn.card
    if card is not None:
        ext += [("CardType", card.brand), ("BatchNum", txn.batch), ("Tip", "0.00"), ("AcntLast4", card.last4)]
        ext += [("BIN", card.bin), ("Name", card.name), ("ExpDate", card.expiry)]
    ext += [("TotalAmt", dollars), ("EntryType", _ENTRY_WORDS.get(txn.entry_method, "CHIP"))]
    if txn.status_code in ("0000", "0001"):
        ext.append(("RespCode", "00" if txn.status_code == "0000" else "10"))
    elif txn.status_code == "1015":
        ext.append(("RespCode", "05"))
    if txn.rrn:
        ext.append(("RRN", txn.rrn))
    fields = [
        ("RefId", txn.reference_id),
        ("RegisterId", txn.tpn),
        ("InvNum", txn.reference_id[:50]),
        ("TransNum", str(txn.number)),
        ("ResultCode", result),
        ("RespMSG", _q(resp)),
        ("Message", message),
        ("AuthCode", txn.auth_code),
        ("PNRef", txn.rrn[-10:] if txn.rrn else ""),
        ("PaymentType", _SPIN_NAMES.get(txn.payment_type, "Credit")),
        ("TransType", f"Void {kind}" if voiding else kind),
        ("Voided", "true" if txn.voided else "false"),
        ("SN", f"SIM{txn.tpn[-9:]}"),
        ("ExtData", _pairs(ext)),
    ]
    if card is not None and txn.entry_method in ("chip", "contactless"):
        label, aid = application(card.brand, txn.payment_type)
        fields.append(("EMVData", _pairs([("AID", aid), ("AppName", label), ("TVR", "0000008000"), ("TSI", "E800")])))
    return fields


def _error(code: str, ref: str = "", status: int = 200) -> web.Response:
    result, message, resp = WORDS.get(code, ("1", "Error", "Error"))
    fields = [("RefId", ref)] if ref else []
    return _xml([*fields, ("ResultCode", result), ("RespMSG", _q(resp)), ("Message", message)], status)


def render(reply: Reply) -> web.Response:
    """The XML answer to a request the terminal decided (`app.serve`)."""
    if reply.code == "2001":
        return web.Response(status=503, text="terminal offline", content_type="text/plain")
    if reply.txn is not None:
        return _xml(answer_of(reply.txn, voiding=reply.voiding))
    if reply.settlement is not None:
        closed = reply.settlement
        ext = _pairs([("BatchNum", closed.batch), ("Count", closed.count), ("TotalAmt", to_dollars(closed.amount))])
        return _xml([("ResultCode", "0"), ("RespMSG", _q("Batch closed")), ("Message", "Approved"), ("ExtData", ext)])
    return _error(reply.code, reply.ref, reply.http_status)


_OPS = {"sale": "Sale", "auth": "Auth", "capture": "Capture", "ticket": "Capture", "void": "Void"}
_OPS |= {"return": "Return", "status": "Status", "settle": "Settle"}


def call_of(fields: dict[str, list[str]]) -> Call:
    """The dialect-neutral request of an XML `<request>`."""

    def one(name: str) -> str:
        values = fields.get(name) or [""]
        return values[0].strip()

    trans_type = one("TransType")
    try:
        amount: int | None = to_cents(one("Amount"))
    except ProtocolError:
        amount = None
    given = one("PaymentType")
    try:
        timeout_s = min(720.0, max(1.0, float(one("OperationalTimeout") or 120)))
    except ValueError:
        timeout_s = 120.0
    return Call(
        op=_OPS.get(trans_type.lower(), trans_type or "?"),
        terminal=one("RegisterId") or one("TPN"),
        authkey=one("AuthKey"),
        ref=one("RefId"),
        amount=amount,
        payment_type="credit" if not given else payment_type_of(given),
        invoice=one("InvNum"),
        timeout_s=timeout_s,
        local=True,
    )


async def cgi(request: web.Request) -> web.Response:
    """`GET /cgi.html?TerminalTransaction=…`: one SPIn Local request."""
    xml = request.query.get("TerminalTransaction", "")
    try:
        fields = xmlflat.children(xml, "request")
    except ProtocolError:
        return _error("2006", status=400)
    call = call_of(fields)
    if not call.terminal:
        return _error("2003")
    return render(await serve(request, call))
