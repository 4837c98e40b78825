"""SPIn REST (v2) answers: pure decoding and status-code classification, no I/O.

Request bodies live in `spin.requests` (re-exported here). Answers are parsed
loosely (both `ResultCode` spellings, `DelayBeforeNextRequest` as number, string
or null) into the typed outcomes. Anything that cannot be understood raises
`ProtocolError`; the driver turns that into `Unknown` for money ops. Card data is
reduced at once to what a receipt needs (`CardReceipt`: brand, last four, entry method,
application label, AID, the host's reference, the terminal's receipt copies): the BIN, first
digits, cardholder name and expiry are never kept, and are taken out of the receipt text.
Receipt details are read leniently: an odd one is dropped, never a reason to doubt an approval.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

import msgspec

from gatewayd.errors import ProtocolError
from gatewayd.terminals.outcomes import (
    Approved,
    BatchEntry,
    Busy,
    CardReceipt,
    Declined,
    DeclineReason,
    Health,
    Misconfigured,
    NotFound,
    Offline,
    Outcome,
    SettleResult,
    Unknown,
    Voided,
)
from gatewayd.terminals.spin.requests import (
    MAX_DOLLARS,
    SPIN_PAYMENT_TYPES,
    Credentials,
    auth_body,
    capture_body,
    return_body,
    sale_body,
    settle_body,
    status_body,
    status_list_body,
    terminal_status_params,
    to_cents,
    to_dollars,
    void_body,
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
    scrub_receipt,
)

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_DOLLARS",
    "SPIN_PAYMENT_TYPES",
    "CodeClass",
    "Credentials",
    "General",
    "auth_body",
    "capture_body",
    "classify",
    "decode",
    "outcome_of",
    "parse_general",
    "parse_payment",
    "parse_settle",
    "parse_status",
    "parse_status_list",
    "parse_terminal_status",
    "payment_type_of",
    "return_body",
    "sale_body",
    "scrub_receipt",
    "settle_body",
    "status_body",
    "status_list_body",
    "terminal_status_params",
    "to_cents",
    "to_dollars",
    "void_body",
]

_decoder = msgspec.json.Decoder(float_hook=Decimal)


class CodeClass(Enum):
    """What a SPIn StatusCode means to the gateway."""

    APPROVED = "approved"
    PARTIAL = "partial"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    BUSY = "busy"
    OFFLINE = "offline"
    UNKNOWN = "unknown"
    NOT_FOUND = "not_found"
    MISCONFIGURED = "misconfigured"


_CODE_CLASSES: dict[str, CodeClass] = {
    "0000": CodeClass.APPROVED,
    "0001": CodeClass.PARTIAL,
    "1015": CodeClass.DECLINED,
    "1016": CodeClass.DECLINED,
    "1012": CodeClass.CANCELLED,
    "1000": CodeClass.BUSY,
    "2008": CodeClass.BUSY,
    "2001": CodeClass.OFFLINE,
    "2011": CodeClass.OFFLINE,
    "1001": CodeClass.NOT_FOUND,
    "2009": CodeClass.NOT_FOUND,
    **{c: CodeClass.UNKNOWN for c in ("1011", "2007", "2010", "1006", "1014", "1018", "1030", "1999")},
    **{c: CodeClass.MISCONFIGURED for c in ("1009", "2002", "2003", "2004", "2005", "2006", "1013", "2201")},
}


def classify(status_code: str) -> CodeClass:
    """Class of a 4-digit StatusCode; anything unrecognised is UNKNOWN (never declined)."""
    return _CODE_CLASSES.get(status_code, CodeClass.UNKNOWN)


# ---------------------------------------------------------------- answers: generic


class General(msgspec.Struct, frozen=True, kw_only=True):
    """The parsed `GeneralResponse` block."""

    result: str  # ok | terminal | proxy | other
    status_code: str
    message: str = ""
    delay_s: float | None = None
    host_code: str = ""  # HostResponseCode: the processor's own code ("00", "05" ...)
    host_message: str = ""  # HostResponseMessage: the processor's words ("DO NOT HONOR")


_RESULT_CODES = {
    "0": "ok",
    "ok": "ok",
    "1": "terminal",
    "terminalerror": "terminal",
    "2": "proxy",
    "apierror": "proxy",
}


def decode(data: bytes) -> dict[str, Any]:
    """Decode an answer body into a JSON object; ProtocolError if oversized or malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("answer is not bytes")
    if len(data) > MAX_ANSWER_BYTES:
        raise ProtocolError(f"answer too large ({len(data)} bytes)")
    try:
        obj = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError, ArithmeticError) as exc:
        raise ProtocolError("answer is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("answer is not a JSON object")
    return obj


def _text(value: object, name: str, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        return str(value)
    raise ProtocolError(f"{name} has type {type(value).__name__}")


def _obj(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} is not an object")
    return value


def _delay(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(Decimal(value.strip()) if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (InvalidOperation, ValueError, TypeError, ArithmeticError):
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_BUSY_DELAY_S)


def _status_code(value: object) -> str:
    code = _text(value, "StatusCode")
    if not code:
        return ""
    if not code.isdigit() or len(code) > 4:
        raise ProtocolError("StatusCode is not a 4-digit code")
    return code.zfill(4)


def parse_general(answer: dict[str, Any]) -> General:
    """The `GeneralResponse` of a decoded answer."""
    general = answer.get("GeneralResponse")
    if not isinstance(general, dict):
        raise ProtocolError("answer has no GeneralResponse")
    result = _RESULT_CODES.get(_text(general.get("ResultCode"), "ResultCode").lower(), "other")
    code = _status_code(general.get("StatusCode"))
    if not code:
        if result != "ok":
            raise ProtocolError("answer has no StatusCode")
        code = "0000"
    message = _text(general.get("Message"), "Message")[:200]
    detail = _text(general.get("DetailedMessage"), "DetailedMessage")[:200]
    text = f"{message}: {detail}" if message and detail and detail != message else (message or detail)
    return General(
        result=result,
        status_code=code,
        message=text,
        delay_s=_delay(general.get("DelayBeforeNextRequest")),
        host_code=loose_text(general.get("HostResponseCode"), 10),
        host_message=loose_text(general.get("HostResponseMessage"), 200),
    )


# ---------------------------------------------------------------- answers: payments


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return False


def _amounts(answer: dict[str, Any]) -> list[int]:
    amounts = _obj(answer.get("Amounts"), "Amounts")
    return [to_cents(amounts[k]) for k in ("Amount", "TotalAmount") if amounts.get(k) is not None]


def _loose_obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _card(answer: dict[str, Any]) -> tuple[str, str]:
    """Brand and last four digits only; the rest of CardData is dropped unread."""
    card = answer.get("CardData")
    if not isinstance(card, dict):
        return "", ""
    brand = card.get("CardType")
    last4 = card.get("Last4")
    brand_s = brand.strip()[:20] if isinstance(brand, str) else ""
    last4_s = last4.strip() if isinstance(last4, str) else ""
    return brand_s, (last4_s if len(last4_s) == 4 and last4_s.isdigit() else "")


def card_receipt(answer: dict[str, Any]) -> CardReceipt:
    """What a receipt needs from CardData, EMVData, RRN and Receipts; nothing else of the card."""
    card, emv, receipts = (_loose_obj(answer.get(k)) for k in ("CardData", "EMVData", "Receipts"))
    reference = loose_text(answer.get("RRN"), 50) or loose_text(answer.get("PNReferenceId"), 50)

    def copy(key: str) -> str:
        value = receipts.get(key)
        return scrub_receipt(value, card).strip() if isinstance(value, str) else ""

    return CardReceipt(
        entry_method=entry_method_of(card.get("EntryType")),
        application_label=loose_text(emv.get("ApplicationName"), 32),
        aid=aid_of(emv.get("AID")),
        host_reference=host_reference_of(reference),
        customer_copy=copy("Customer"),
        merchant_copy=copy("Merchant"),
    )


def decline_reason(code_class: CodeClass, general: General) -> DeclineReason:
    """Why the terminal said no, as its answer tells: a cancel that says it timed out waiting for
    the card is `no_card_presented`, any other cancel the customer's; everything else declined."""
    if code_class is not CodeClass.CANCELLED:
        return "declined"
    return cancel_reason(f"{general.message} {general.host_message}")


def _approved(answer: dict[str, Any], general: General, ref: str, requested: int | None, partial: bool) -> Approved:
    amounts = _amounts(answer)
    if partial:
        candidates = amounts + ([requested] if requested is not None else [])
        if not amounts:
            raise ProtocolError("partial approval without Amounts")
        amount = min(candidates)
    elif requested is not None:
        amount = requested
    elif amounts:
        amount = amounts[0]
    else:
        raise ProtocolError("approval without Amounts")
    if amount < 0:
        raise ProtocolError("negative approved amount")
    brand, last4 = _card(answer)
    return Approved(
        reference_id=ref,
        amount=amount,
        requested_amount=requested if requested is not None else amount,
        auth_code=_text(answer.get("AuthCode"), "AuthCode")[:20],
        card_brand=brand,
        last4=last4,
        batch_number=_text(answer.get("BatchNumber"), "BatchNumber")[:20],
        transaction_number=_text(answer.get("TransactionNumber"), "TransactionNumber")[:20],
        status_code=general.status_code,
        transaction_type=_text(answer.get("TransactionType"), "TransactionType").lower()[:20],
        payment_type=payment_type_of(answer.get("PaymentType")),
        receipt=card_receipt(answer),
    )


def _check_reference(answer: dict[str, Any], ref: str) -> None:
    echoed = _text(answer.get("ReferenceId"), "ReferenceId")
    if echoed and echoed != ref:
        raise ProtocolError("answer names another reference id")


def outcome_of(answer: dict[str, Any], *, op: str, ref: str, requested: int | None) -> Outcome:
    """Classify a decoded payment or Status answer into an outcome."""
    general = parse_general(answer)
    code, cls = general.status_code, classify(general.status_code)
    if cls in (CodeClass.APPROVED, CodeClass.PARTIAL):
        if general.result != "ok":
            return Unknown(reason="approval code with an error ResultCode", status_code=code)
        _check_reference(answer, ref)
        outcome = _approved(answer, general, ref, requested, cls is CodeClass.PARTIAL)
        if op == "void" or _bool(answer.get("Voided")):
            return Voided(reference_id=ref, amount=outcome.amount, status_code=code)
        return outcome
    if cls in (CodeClass.DECLINED, CodeClass.CANCELLED):
        return Declined(
            reference_id=ref,
            status_code=code,
            message=general.message,
            cancelled=cls is CodeClass.CANCELLED,
            reason=decline_reason(cls, general),
            host_code=general.host_code,
            host_message=general.host_message,
        )
    if cls is CodeClass.BUSY:
        delay = general.delay_s if general.delay_s is not None else DEFAULT_BUSY_DELAY_S
        return Busy(retry_after_s=delay, status_code=code, message=general.message)
    if cls is CodeClass.OFFLINE:
        return Offline(status_code=code, message=general.message)
    if cls is CodeClass.MISCONFIGURED:
        return Misconfigured(status_code=code, message=general.message)
    if cls is CodeClass.NOT_FOUND and op in ("status", "void", "capture"):
        return NotFound(reference_id=ref, status_code=code)
    return Unknown(reason=general.message or f"status code {code}", status_code=code)


def parse_payment(data: bytes, *, op: str, ref: str, requested: int | None) -> Outcome:
    """Outcome of a Sale/Auth/Capture/Void/Return answer; ProtocolError if not understood."""
    return outcome_of(decode(data), op=op, ref=ref, requested=requested)


def parse_status(data: bytes, ref: str) -> Outcome:
    """Outcome of a Status inquiry: the original transaction's answer, or NotFound."""
    return outcome_of(decode(data), op="status", ref=ref, requested=None)


# ---------------------------------------------------------------- answers: the rest


def parse_terminal_status(data: bytes) -> Health:
    """Health from a TerminalStatus answer (`Online` / `Offline` / `NotFound`)."""
    answer = decode(data)
    state = _text(answer.get("TerminalStatus"), "TerminalStatus").lower()
    error = _text(answer.get("ErrorDescription"), "ErrorDescription")[:200]
    if state == "online":
        return Health(state="online", message=error)
    if state == "offline":
        return Health(state="offline", message=error or "terminal offline")
    if state == "notfound":
        return Health(state="offline", message=error or "terminal not found", misconfigured=True)
    raise ProtocolError("TerminalStatus missing or not recognised")


def _entry_status(entry: dict[str, Any], kind: str) -> str:
    general = parse_general(entry) if "GeneralResponse" in entry else None
    if _bool(entry.get("Voided")):
        return "voided"
    if general is not None and classify(general.status_code) not in (CodeClass.APPROVED, CodeClass.PARTIAL):
        return "declined" if classify(general.status_code) in (CodeClass.DECLINED, CodeClass.CANCELLED) else "unknown"
    return {"return": "returned", "capture": "captured"}.get(kind, "approved")


def _batch_entry(entry: object) -> BatchEntry:
    item = _obj(entry, "Transactions[]")
    kind = _text(item.get("TransactionType"), "TransactionType").lower()
    amounts = _amounts(item)
    return BatchEntry(
        reference_id=_text(item.get("ReferenceId"), "ReferenceId"),
        type=kind,
        amount=amounts[0] if amounts else 0,
        status=_entry_status(item, kind),
        batch=_text(item.get("BatchNumber"), "BatchNumber"),
        auth_code=_text(item.get("AuthCode"), "AuthCode"),
    )


def parse_status_list(data: bytes) -> list[BatchEntry]:
    """The open batch from a StatusList answer; not found (no transactions) is an empty list."""
    answer = decode(data)
    general = parse_general(answer)
    cls = classify(general.status_code)
    if cls is CodeClass.NOT_FOUND:
        return []
    if cls is not CodeClass.APPROVED:
        raise ProtocolError(f"StatusList answered {general.status_code}")
    transactions = answer.get("Transactions") or []
    if not isinstance(transactions, list):
        raise ProtocolError("Transactions is not a list")
    return [_batch_entry(t) for t in transactions]


def _settle_totals(answer: dict[str, Any]) -> tuple[int, int]:
    count = total = 0
    details = answer.get("SettleDetails") or []
    if not isinstance(details, list):
        raise ProtocolError("SettleDetails is not a list")
    for detail in details:
        reports = _obj(detail, "SettleDetails[]").get("TransactionsReports") or []
        if not isinstance(reports, list):
            raise ProtocolError("TransactionsReports is not a list")
        for report in reports:
            item = _obj(report, "TransactionsReports[]")
            raw_count = item.get("Count", 0)
            if isinstance(raw_count, bool) or not isinstance(raw_count, int) or not 0 <= raw_count < 10**9:
                raise ProtocolError("Count is not a small int")
            count += raw_count
            if item.get("Amount") is not None:
                total += to_cents(item["Amount"])
    return count, total


def parse_settle(data: bytes) -> SettleResult:
    """SettleResult from a Settle answer; 1020 (no open batch) counts as settled."""
    answer = decode(data)
    general = parse_general(answer)
    if general.status_code == "1020":
        return SettleResult(ok=True, message=general.message or "no open batch")
    if classify(general.status_code) is not CodeClass.APPROVED or general.result != "ok":
        return SettleResult(ok=False, message=f"{general.status_code} {general.message}".strip())
    count, total = _settle_totals(answer)
    batch = _text(answer.get("BatchNumber"), "BatchNumber")
    return SettleResult(ok=True, batch=batch, count=count, total=total, message=general.message)
