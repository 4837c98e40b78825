"""What both SPIn dialects share, REST (Cloud) and XML (Local): pure tables and functions, no I/O.

Payment types and their SPIn spelling, money on the wire (exact decimal dollars), and the
lenient readers of what a receipt needs of an approved card (entry method, AID, the host's
reference) with the scrubbing of everything else of the card out of receipt text. The REST
codec (`spin.codec`, `spin.requests`) and the Local codec (`spin_local.codec`) both use these;
neither keeps a copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from gatewayd.errors import ProtocolError
from gatewayd.terminals.outcomes import PAYMENT_TYPES, DeclineReason, EntryMethod, PaymentType

MAX_DOLLARS = Decimal(10) ** 9
MAX_ANSWER_BYTES = 256 * 1024  # the most either dialect reads of one answer
DEFAULT_BUSY_DELAY_S = 2.0  # a busy answer that names no delay: resend after this
MAX_BUSY_DELAY_S = 300.0

# gatewayd's payment types as SPIn spells `PaymentType`; `Card` lets the customer choose on the
# terminal (credit or debit), and the answer's PaymentType says which was run.
SPIN_PAYMENT_TYPES: dict[PaymentType, str] = {
    "credit": "Credit",
    "debit": "Debit",
    "card": "Card",
    "ebt_food": "EBT_Food",
    "ebt_cash": "EBT_Cash",
    "gift": "Gift",
}


def spin_type(payment_type: PaymentType) -> str:
    """SPIn's spelling of a payment type."""
    return SPIN_PAYMENT_TYPES[payment_type]


def loose_text(value: object, limit: int) -> str:
    """A printable text field, or "" when it is missing or of another type (never an error)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return ""
    return "".join(ch for ch in value.strip() if ch.isprintable())[:limit].strip()


def payment_type_of(value: object) -> PaymentType | None:
    """A SPIn PaymentType ("Credit", "EBT_Food" ...) as gatewayd names it; None if not one of ours."""
    text = loose_text(value, 20).lower().replace(" ", "_")
    for name in PAYMENT_TYPES:
        if text == name:
            return name
    return None


# ---------------------------------------------------------------- money on the wire


def to_dollars(cents: int) -> Decimal:
    """Exact decimal dollars for an int of cents (1230 -> Decimal('12.30'))."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError("amount must be an int of cents")
    return Decimal(cents).scaleb(-2)


def to_cents(value: object) -> int:
    """Exact cents from a wire amount (Decimal, int or numeric string); ProtocolError otherwise."""
    if isinstance(value, bool):
        raise ProtocolError("amount is a boolean")
    try:
        if isinstance(value, Decimal | int):
            dollars = Decimal(value)
        elif isinstance(value, str):
            dollars = Decimal(value.strip())
        else:
            raise ProtocolError(f"amount has type {type(value).__name__}")
        if not dollars.is_finite() or abs(dollars) > MAX_DOLLARS:
            raise ProtocolError("amount out of range")
        scaled = dollars.scaleb(2)
        if scaled != scaled.to_integral_value():
            raise ProtocolError("amount is not a whole number of cents")
        return int(scaled)
    except (InvalidOperation, ValueError, ArithmeticError) as exc:
        raise ProtocolError("amount is not a number") from exc


# ---------------------------------------------------------------- what a receipt needs of a card

_ENTRY: dict[str, EntryMethod] = {
    "chip": "chip",
    "emv": "chip",
    "chipcontactless": "contactless",
    "contactless": "contactless",
    "contactlesschip": "contactless",
    "nfc": "contactless",
    "swipe": "swipe",
    "swiped": "swipe",
    "magstripe": "swipe",
    "fallbackswipe": "swipe",
    "manual": "manual",
    "keyed": "manual",
}
_AID = re.compile(r"^[0-9A-F]{10,32}$")


def entry_method_of(value: object) -> EntryMethod | None:
    """How the card was read, from the terminal's word for it (`ChipContactless`, `CHIP` ...)."""
    return _ENTRY.get(loose_text(value, 30).lower().replace(" ", "").replace("_", ""))


def aid_of(value: object) -> str:
    """An EMV application identifier (10 to 32 hex digits), or ""."""
    aid = loose_text(value, 40).upper()
    return aid if _AID.match(aid) else ""


def host_reference_of(value: object) -> str:
    """The processor's retrieval reference, letters, digits and dashes only."""
    return re.sub(r"[^A-Za-z0-9-]", "", loose_text(value, 50))[:50]


# 13 to 19 digits standing alone: a card number (an AID, "A000...", or a longer code is not one)
_PAN = re.compile(r"(?<![0-9A-Za-z])[0-9](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z])")
_EXPIRY = re.compile(r"(?i)\b(exp[a-z.]*\s*(?:date)?\s*:?\s*)[0-9]{2}\s*/?\s*[0-9]{2,4}")
MAX_RECEIPT_CHARS = 8000


def _secrets(card: Mapping[str, Any]) -> list[str]:
    """The card's values that must never be kept, however a receipt text prints them."""
    found: list[str] = []
    name = loose_text(card.get("Name"), 100)
    if len(name) >= 3:
        found.append(name)
        if "/" in name:  # track data order LAST/FIRST: receipts print it either way
            last, _, first = name.partition("/")
            found += [f"{first.strip()} {last.strip()}".strip(), last.strip(), first.strip()]
    for key, shortest in (("BIN", 6), ("First4", 4), ("ExpirationDate", 4)):
        value = re.sub(r"[^0-9]", "", loose_text(card.get(key), 20))
        if len(value) >= shortest:
            found.append(value)
    expiry = re.sub(r"[^0-9]", "", loose_text(card.get("ExpirationDate"), 20))
    if len(expiry) == 4:
        found += [f"{expiry[:2]}/{expiry[2:]}", f"{expiry[2:]}/{expiry[:2]}"]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def mask_secret(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` that stands alone (no ASCII letter or digit on
    either side), in any case, replaced by ***: exactly
    `re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text, flags=re.IGNORECASE)`,
    without compiling a pattern for every card (a compile per secret was most of the cost of an
    approval's answer). Text or secret beyond ASCII goes through that very expression."""
    if not (text.isascii() and secret.isascii()) or not secret:
        return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text, flags=re.IGNORECASE)
    upper, target, size = text.upper(), secret.upper(), len(secret)
    parts: list[str] = []
    start, at = 0, upper.find(target)
    while at >= 0:
        end = at + size
        if (at == 0 or text[at - 1] not in _WORD) and (end == len(text) or text[end] not in _WORD):
            parts += (text[start:at], "***")
            start = end
            at = upper.find(target, end)
        else:
            at = upper.find(target, at + 1)
    if not parts:
        return text
    parts.append(text[start:])
    return "".join(parts)


def scrub_receipt(text: str, card: Mapping[str, Any]) -> str:
    """A terminal's receipt text with nothing of the card left but what a receipt may show: the
    cardholder's name, the expiry, the BIN and first digits taken out, any full card number
    masked to its last four. `card` names them as SPIn REST's CardData does (Name, BIN, First4,
    ExpirationDate)."""
    clean = text[:MAX_RECEIPT_CHARS]
    for secret in _secrets(card):
        clean = mask_secret(clean, secret)
    clean = _PAN.sub(lambda m: "*" * (len(re.sub(r"[^0-9]", "", m.group(0))) - 4) + m.group(0)[-4:], clean)
    return _EXPIRY.sub(lambda m: m.group(1) + "**/**", clean)


# ---------------------------------------------------------------- why a card flow was cancelled

_TIMED_OUT = re.compile(r"(?i)time\s*d?\s*out|timeout|no card|card not (?:presented|read|inserted)")


def cancel_reason(said: str) -> DeclineReason:
    """A cancel that says it timed out waiting for the card is `no_card_presented`; any other
    cancel is the customer's."""
    return "no_card_presented" if _TIMED_OUT.search(said) else "cancelled_by_customer"
