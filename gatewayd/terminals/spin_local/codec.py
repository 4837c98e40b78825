"""SPIn Local (the XML dialect, straight to the terminal on the LAN): pure requests and answers.

A request is one HTTP GET: `<base>/cgi.html?TerminalTransaction=<request>…</request>`, the XML
percent-encoded whole. An answer is `<xmp><response>…</response></xmp>`: flat tags, text
percent-encoded, `ExtData` and `EMVData` comma-separated `key=value` lists. Unlike REST there is
no 4-digit StatusCode: `ResultCode` (0 ok, 1 the terminal's error, 2 the proxy's, in Local the
terminal's own service) and the words of `Message` and `RespMSG` say what happened, so the
classification reads the words (`classify`) and anything it does not recognise is Unknown,
never a decline. The typed outcomes are the REST codec's (`terminals.outcomes`); payment types,
money and the card's receipt fields come from `spin.shared`, shared with the REST codec.

What is known of the dialect, and how sure, is in docs/terminals.md. In short: the transport,
the request tags, `ResultCode`, `Message`/`RespMSG` and `ExtData`/`EMVData` are documented or
seen in captures; the exact words of busy, authentication and timeout answers are not, and are
matched loosely here.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum

from gatewayd.errors import ProtocolError
from gatewayd.terminals.outcomes import (
    Approved,
    Busy,
    CardReceipt,
    Declined,
    Health,
    Misconfigured,
    NotFound,
    Offline,
    Outcome,
    PaymentType,
    SettleResult,
    Unknown,
    Voided,
)
from gatewayd.terminals.spin.shared import (
    DEFAULT_BUSY_DELAY_S,
    MAX_ANSWER_BYTES,
    MAX_BUSY_DELAY_S,
    aid_of,
    cancel_reason,
    entry_method_of,
    host_reference_of,
    loose_text,
    payment_type_of,
    spin_type,
    to_cents,
    to_dollars,
)
from gatewayd.terminals.spin_local import xmlflat

__all__ = [
    "MAX_ANSWER_BYTES",
    "Answer",
    "Credentials",
    "Kind",
    "auth_request",
    "capture_request",
    "classify",
    "outcome_of",
    "parse",
    "parse_health",
    "parse_payment",
    "parse_settle",
    "parse_status",
    "query",
    "return_request",
    "sale_request",
    "settle_request",
    "status_request",
    "void_request",
]


@dataclass(frozen=True, slots=True)
class Credentials:
    """A Local terminal's identity: its Register ID (the portal's), the auth key (never shown in
    repr or str), and optionally its TPN, sent as well (`TPN`) when configured."""

    register_id: str
    authkey: str = field(repr=False)
    tpn: str | None = None


# ---------------------------------------------------------------- requests


def _amount(cents: int) -> str:
    """Decimal dollars with exactly two places, as the XML dialect writes them ("12.30")."""
    return f"{to_dollars(cents):.2f}"


def _request(cred: Credentials, fields: list[tuple[str, str]]) -> str:
    identity = [("RegisterId", cred.register_id), ("AuthKey", cred.authkey)]
    if cred.tpn:
        identity.append(("TPN", cred.tpn))
    return xmlflat.element("request", [*fields, *identity])


def _timeout(timeout_s: float) -> tuple[str, str]:
    return ("OperationalTimeout", str(max(1, min(720, math.ceil(timeout_s)))))


def _money(
    trans_type: str, ref: str, amount: int, payment_type: PaymentType, invoice: str | None, timeout_s: float
) -> list[tuple[str, str]]:
    return [
        ("PaymentType", spin_type(payment_type)),
        ("TransType", trans_type),
        ("Amount", _amount(amount)),
        ("Tip", "0.00"),
        ("Frequency", "OneTime"),
        ("InvNum", (invoice or ref)[:50]),
        ("RefId", ref),
        ("PrintReceipt", "No"),
        ("SigCapture", "No"),
        _timeout(timeout_s),
    ]


def sale_request(cred: Credentials, ref: str, amount: int, timeout_s: float, payment_type: PaymentType) -> str:
    """A Sale of `amount` cents under reference id `ref` (no tip, no receipt printed)."""
    return _request(cred, _money("Sale", ref, amount, payment_type, None, timeout_s))


def auth_request(cred: Credentials, ref: str, amount: int, timeout_s: float, payment_type: PaymentType) -> str:
    """An Auth (pre-authorization) of `amount` cents under `ref`."""
    fields = [f for f in _money("Auth", ref, amount, payment_type, None, timeout_s) if f[0] != "Tip"]
    return _request(cred, fields)


def return_request(
    cred: Credentials, ref: str, amount: int, timeout_s: float, payment_type: PaymentType, invoice: str | None
) -> str:
    """A Return under the NEW reference id `ref`; `invoice`: the sale's reference id (`InvNum`)."""
    fields = [f for f in _money("Return", ref, amount, payment_type, invoice, timeout_s) if f[0] != "Tip"]
    return _request(cred, fields)


def capture_request(
    cred: Credentials, ref: str, amount: int, timeout_s: float, payment_type: PaymentType, auth_code: str = ""
) -> str:
    """A Capture (Ticket) of `amount` cents of the Auth `ref`; `AuthCode` when it is known."""
    fields = [
        ("PaymentType", spin_type(payment_type)),
        ("TransType", "Capture"),
        ("Amount", _amount(amount)),
        ("Tip", "0.00"),
        ("RefId", ref),
        ("PrintReceipt", "No"),
        _timeout(timeout_s),
    ]
    if auth_code:
        fields.insert(4, ("AuthCode", auth_code))
    return _request(cred, fields)


def void_request(
    cred: Credentials, ref: str, timeout_s: float, payment_type: PaymentType, amount: int | None = None
) -> str:
    """A Void of the transaction `ref` (the open batch only), with the sale's payment type."""
    fields = [("PaymentType", spin_type(payment_type)), ("TransType", "Void")]
    if amount is not None:
        fields.append(("Amount", _amount(amount)))
    fields += [("RefId", ref), ("PrintReceipt", "No"), _timeout(timeout_s)]
    return _request(cred, fields)


def status_request(cred: Credentials, ref: str, payment_type: PaymentType) -> str:
    """A Status inquiry about `ref`, with the payment type it was sent with."""
    fields = [
        ("PaymentType", spin_type(payment_type)),
        ("TransType", "Status"),
        ("RefId", ref),
        ("PrintReceipt", "No"),
    ]
    return _request(cred, fields)


def settle_request(cred: Credentials, timeout_s: float) -> str:
    """Close the open batch (`Param` Close: settle with the host)."""
    return _request(cred, [("TransType", "Settle"), ("Param", "Close"), _timeout(timeout_s)])


def query(xml: str) -> str:
    """The query string of the GET: `TerminalTransaction=` and the XML, percent-encoded whole."""
    return "TerminalTransaction=" + urllib.parse.quote(xml, safe="")


# ---------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Answer:
    """A parsed `<response>`: every text field percent-decoded, ExtData and EMVData as dicts."""

    fields: dict[str, str]
    ext: dict[str, str]
    emv: dict[str, str]

    def get(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def said(self) -> str:
        """Message and RespMSG together, for the words that classify an answer."""
        message, resp = self.get("Message"), self.get("RespMSG")
        return f"{message}: {resp}" if message and resp and resp.lower() != message.lower() else message or resp


# Tags whose repetition with different values makes the answer untrustworthy.
_DECISIVE = frozenset({"ResultCode", "Message", "RespMSG", "RefId", "TransType", "Voided", "AuthCode", "ExtData"})


def parse(data: bytes) -> Answer:
    """Parse an answer body; ProtocolError if oversized, not UTF-8 or not a SPIn response."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("answer is not bytes")
    if len(data) > MAX_ANSWER_BYTES:
        raise ProtocolError(f"answer too large ({len(data)} bytes)")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("answer is not UTF-8") from exc
    raw = xmlflat.children(text, "response")
    fields: dict[str, str] = {}
    for name, values in raw.items():
        if name in _DECISIVE and len(set(values)) > 1:
            raise ProtocolError(f"answer repeats {name} with different values")
        fields[name] = "".join(ch for ch in xmlflat.decode_text(values[0]) if ch.isprintable()).strip()
    ext = xmlflat.pairs(raw["ExtData"][0]) if "ExtData" in raw else {}
    emv = xmlflat.pairs(raw["EMVData"][0]) if "EMVData" in raw else {}
    return Answer(fields=fields, ext=ext, emv=emv)


class Kind(Enum):
    """What an answer means, from its ResultCode and its words."""

    APPROVED = "approved"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    BUSY = "busy"
    OFFLINE = "offline"
    UNKNOWN = "unknown"
    NOT_FOUND = "not_found"
    MISCONFIGURED = "misconfigured"


# Checked in this order, the first that matches decides: a "not found" or a duplicate answer
# says "Canceled" in Message too and is neither a cancel nor a decline; a cancel that says it timed
# out is a cancel (the lane asks again when it comes late); a timeout that is no cancel is Unknown.
_WORDS: list[tuple[re.Pattern[str], Kind]] = [
    (re.compile(r"(?i)duplicate"), Kind.UNKNOWN),
    (re.compile(r"(?i)(?:register|terminal|tpn|route|auth\s*key)(?:\s*id)?\s+not\s+found"), Kind.MISCONFIGURED),
    (re.compile(r"(?i)not\s*found|no\s+(?:such|matching)\s+transaction"), Kind.NOT_FOUND),
    (re.compile(r"(?i)\bbusy\b|in\s+use|in\s+progress|another\s+transaction"), Kind.BUSY),
    (re.compile(r"(?i)not\s+connected|\boffline\b|not\s+available|unreachable"), Kind.OFFLINE),
    (
        re.compile(
            r"(?i)auth\s*key|authenticat|unauthori[sz]ed|register(?:\s*id)?\s+not\s+found|invalid\s+register"
            r"|could\s+not\s+parse|invalid\s+request|bad\s+request|format\s+error|not\s+(?:implemented|supported)"
        ),
        Kind.MISCONFIGURED,
    ),
    (re.compile(r"(?i)declin|do\s+not\s+honou?r|mismatch|insufficient|not\s+allowed|invalid\s+card"), Kind.DECLINED),
    (re.compile(r"(?i)cancel"), Kind.CANCELLED),
    (re.compile(r"(?i)time\s*d?\s*out|timeout"), Kind.UNKNOWN),
]
# Words an approval (ResultCode 0) must not carry: then the answer contradicts itself.
_CONTRADICTS = re.compile(r"(?i)duplicate|not\s*found|declin|do\s+not\s+honou?r|cancel")


def classify(answer: Answer) -> Kind:
    """The kind of a payment or Status answer. ResultCode 0 is an approval (Unknown if its words
    say otherwise); 1 and 2 are read by their words; anything else, or words not recognised, is
    Unknown (never a decline)."""
    code = answer.get("ResultCode")
    said = answer.said
    if code == "0":
        return Kind.UNKNOWN if _CONTRADICTS.search(said) else Kind.APPROVED
    if code not in ("1", "2"):
        return Kind.UNKNOWN
    for pattern, kind in _WORDS:
        if pattern.search(said):
            return kind
    return Kind.UNKNOWN


def _amounts(answer: Answer) -> list[int]:
    """The amounts the answer states (ExtData `Amount`, `TotalAmt`), exact cents."""
    return [to_cents(answer.ext[k]) for k in ("Amount", "TotalAmt") if answer.ext.get(k)]


def _card(answer: Answer) -> tuple[str, str]:
    """Brand and last four digits only; BIN, Name and the rest of ExtData are never read."""
    brand = loose_text(answer.ext.get("CardType"), 20)
    last4 = loose_text(answer.ext.get("AcntLast4"), 4)
    return brand, (last4 if len(last4) == 4 and last4.isdigit() else "")


def card_receipt(answer: Answer) -> CardReceipt:
    """What a receipt needs: entry method, application label and AID, the host's reference.
    The XML answer carries no receipt copies."""
    reference = answer.ext.get("RRN") or answer.get("PNRef")
    return CardReceipt(
        entry_method=entry_method_of(answer.ext.get("EntryType")),
        application_label=loose_text(answer.emv.get("AppName"), 32),
        aid=aid_of(answer.emv.get("AID")),
        host_reference=host_reference_of(reference),
    )


def _transaction_type(answer: Answer) -> str:
    """sale | auth | capture | return | void, as the terminal names it ("Void Sale" is a void)."""
    said = answer.get("TransType").lower()
    if said.startswith("void"):
        return "void"
    return {"ticket": "capture", "refund": "return", "preauth": "auth"}.get(said, said)[:20]


def _approved(answer: Answer, ref: str, requested: int | None) -> Approved:
    amounts = _amounts(answer)
    if requested is not None:
        if any(a > requested for a in amounts):
            raise ProtocolError("approved for more than was asked")
        amount = min([requested, *amounts])
    elif amounts:
        amount = amounts[0]
    else:
        raise ProtocolError("approval without an amount")
    if amount < 0:
        raise ProtocolError("negative approved amount")
    brand, last4 = _card(answer)
    partial = requested is not None and amount < requested
    return Approved(
        reference_id=ref,
        amount=amount,
        requested_amount=requested if requested is not None else amount,
        auth_code=loose_text(answer.get("AuthCode"), 20),
        card_brand=brand,
        last4=last4,
        batch_number=loose_text(answer.ext.get("BatchNum"), 20),
        transaction_number=loose_text(answer.get("TransNum"), 20),
        status_code="0001" if partial else "0000",
        transaction_type=_transaction_type(answer),
        payment_type=payment_type_of(answer.get("PaymentType")),
        receipt=card_receipt(answer),
    )


def _check_reference(answer: Answer, ref: str) -> None:
    echoed = answer.get("RefId")
    if echoed and echoed != ref:
        raise ProtocolError("answer names another reference id")


def _voided(answer: Answer) -> bool:
    return answer.get("Voided").lower() in ("true", "1", "yes") or _transaction_type(answer) == "void"


def outcome_of(answer: Answer, *, op: str, ref: str, requested: int | None) -> Outcome:
    """Classify a parsed payment or Status answer into an outcome (`op`: sale, auth, capture,
    void, return or status)."""
    kind = classify(answer)
    code = answer.get("ResultCode")[:2]
    message = answer.said[:200]
    if kind is Kind.APPROVED:
        _check_reference(answer, ref)
        if op == "void" or _voided(answer):
            amounts = _amounts(answer)
            return Voided(reference_id=ref, amount=amounts[0] if amounts else (requested or 0), status_code=code)
        return _approved(answer, ref, requested)
    if kind in (Kind.DECLINED, Kind.CANCELLED):
        cancelled = kind is Kind.CANCELLED
        return Declined(
            reference_id=ref,
            status_code=code,
            message=loose_text(answer.get("Message"), 200) or message,
            cancelled=cancelled,
            reason=cancel_reason(message) if cancelled else "declined",
            host_code=loose_text(answer.ext.get("RespCode") or answer.get("HostResponseCode"), 10),
            host_message=loose_text(answer.get("RespMSG"), 200),
        )
    if kind is Kind.BUSY:
        return Busy(retry_after_s=_delay(answer), status_code=code, message=message)
    if kind is Kind.OFFLINE:
        return Offline(status_code=code, message=message)
    if kind is Kind.MISCONFIGURED:
        return Misconfigured(status_code=code, message=message)
    if kind is Kind.NOT_FOUND and op in ("status", "void", "capture"):
        return NotFound(reference_id=ref, status_code=code)
    return Unknown(reason=message or f"result code {code or 'missing'}", status_code=code)


def _delay(answer: Answer) -> float:
    """A busy answer's wait: `DelayBeforeNextRequest` if the terminal says (REST does; the XML
    dialect is not known to), else the default."""
    try:
        seconds = float(Decimal(answer.get("DelayBeforeNextRequest")))
    except (InvalidOperation, ValueError, ArithmeticError):
        return DEFAULT_BUSY_DELAY_S
    return min(seconds, MAX_BUSY_DELAY_S) if math.isfinite(seconds) and seconds >= 0 else DEFAULT_BUSY_DELAY_S


def parse_payment(data: bytes, *, op: str, ref: str, requested: int | None) -> Outcome:
    """Outcome of a Sale/Auth/Capture/Void/Return answer; ProtocolError if not understood."""
    return outcome_of(parse(data), op=op, ref=ref, requested=requested)


def parse_status(data: bytes, ref: str) -> Outcome:
    """Outcome of a Status inquiry: the original transaction's answer, or NotFound."""
    return outcome_of(parse(data), op="status", ref=ref, requested=None)


def parse_health(data: bytes) -> Health:
    """Health from the answer to a Status about a reference id that does not exist: any
    understood answer but busy, offline or refused credentials means the terminal is there."""
    answer = parse(data)
    kind = classify(answer)
    said = answer.said[:200]
    if kind is Kind.BUSY:
        return Health(state="busy", message=said)
    if kind is Kind.OFFLINE:
        return Health(state="offline", message=said or "terminal offline")
    if kind is Kind.MISCONFIGURED:
        return Health(state="offline", message=said or "refused", misconfigured=True)
    if kind is Kind.UNKNOWN:
        return Health(state="unknown", message=said)
    return Health(state="online")


def parse_settle(data: bytes) -> SettleResult:
    """SettleResult from a Settle answer; "no open batch" counts as settled. The batch number and
    totals come from ExtData (`BatchNum`, `Count`, `TotalAmt`) when the terminal gives them."""
    answer = parse(data)
    said = answer.said[:200]
    if re.search(r"(?i)no\s+(?:open\s+)?batch|batch\s+(?:is\s+)?empty|nothing\s+to\s+settle", said):
        return SettleResult(ok=True, message=said or "no open batch")
    if answer.get("ResultCode") != "0" or classify(answer) is not Kind.APPROVED:
        return SettleResult(ok=False, message=f"{answer.get('ResultCode')} {said}".strip())
    count = answer.ext.get("Count", "")
    total = answer.ext.get("TotalAmt", "")
    return SettleResult(
        ok=True,
        batch=loose_text(answer.ext.get("BatchNum"), 20),
        count=int(count) if count.isdigit() and len(count) < 10 else 0,
        total=to_cents(total) if total else 0,
        message=said,
    )
