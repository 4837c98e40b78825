"""Receipts: a checkout rendered for the customer (or the merchant) as plain text for a thermal
printer (40 or 48 columns) or as HTML. Pure: it reads the checkout view the API answers with,
the order's lines and the store's header from the config, and does no I/O.

A receipt is a list of slips, each printed on its own: the sale (lines, tax, discount, totals,
every tender with what its card's receipt needs, change due), then a slip for a void and one per
refund. A checkout that did not complete gets a single slip saying so, with each tender's fate.
The terminal's own receipt text, when it sent one, follows its card's tender (Dejavoo's tag
format rendered to lines).

Layout is decided once (`slips`: rows of a few kinds) and drawn twice: `render_text` (every line
at most `width` characters, amounts right-aligned to the width) and `render_html` (everything
escaped).
"""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gatewayd.checkout.model import CheckoutView, RefundView, TenderView

Copy = Literal["customer", "merchant"]
WIDTHS = (40, 48)

# ISO 4217 currencies without minor units (everything else: two decimals).
_ZERO_DECIMALS = frozenset({"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV"})
_ENTRY = {"chip": "Chip", "contactless": "Contactless", "swipe": "Swiped", "manual": "Keyed"}
_TYPES = {
    "credit": "Credit",
    "debit": "Debit",
    "card": "Card",
    "ebt_food": "EBT Food",
    "ebt_cash": "EBT Cash",
    "gift": "Gift",
}
_REASONS = {
    "declined": "DECLINED",
    "cancelled_by_customer": "CANCELLED BY CUSTOMER",
    "no_card_presented": "NO CARD PRESENTED",
    "partial_approval_reversed": "PARTIAL APPROVAL REVERSED",
    "terminal_offline": "TERMINAL OFFLINE",
    "terminal_busy": "TERMINAL BUSY",
    "terminal_misconfigured": "TERMINAL NOT SET UP",
    "voided_at_terminal": "VOIDED AT TERMINAL",
    "not_charged": "NOT CHARGED",
}


@dataclass(frozen=True)
class Header:
    """The store's header and footer ([receipt] in the config)."""

    name: str
    address: tuple[str, ...] = ()
    phone: str = ""
    footer: tuple[str, ...] = ()


@dataclass(frozen=True)
class Line:
    """One line of the order, with the name the store gives its SKU (if it stocks it)."""

    sku: str
    quantity: int
    unit_price: int
    name: str | None = None


@dataclass(frozen=True)
class Receipt:
    """Everything a receipt shows: the checkout as the API answers it, its lines, the store."""

    checkout: CheckoutView
    lines: tuple[Line, ...]
    header: Header
    voided_at: str | None = None  # when the order was voided (ISO), for the void slip


# ------------------------------------------------------------------ layout


Align = Literal["left", "center", "right"]


@dataclass(frozen=True)
class Text:
    """A line of text, wrapped to the width."""

    text: str
    align: Align = "left"
    bold: bool = False
    indent: int = 0


@dataclass(frozen=True)
class Amount:
    """A label with an amount right-aligned to the width."""

    label: str
    amount: str
    bold: bool = False
    indent: int = 0


@dataclass(frozen=True)
class Rule:
    """A full-width line."""

    char: str = "-"


@dataclass(frozen=True)
class Blank:
    pass


Row = Text | Amount | Rule | Blank


@dataclass
class Slip:
    """One printed slip (the sale, a void, a refund)."""

    kind: Literal["sale", "void", "refund", "failed"]
    rows: list[Row] = field(default_factory=list)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)


def money(amount: int, currency: str) -> str:
    """Minor units as the currency writes them: 1234 USD -> "12.34", -100 -> "-1.00"."""
    if currency in _ZERO_DECIMALS:
        return f"{amount:,}"
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def _when(iso: str | None) -> str:
    """An ISO timestamp as the store's clock shows it (the daemon's local time)."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


_SEGMENT = re.compile(r"<(L|C|R)>(.*?)</\1>", re.S | re.I)
_DROPPED = re.compile(r"<(IMG|QR)>.*?</\1>", re.S | re.I)
_TAG = re.compile(r"</?[A-Za-z]+/?>")


def terminal_lines(text: str) -> list[Text]:
    """The terminal's receipt text (Dejavoo tags: <L>, <C>, <R> lines; <B>, <LG>, <INV>, <CD>
    styles; <BR> a blank line; <IMG>, <QR> dropped) as lines; untagged text as left lines."""
    text = _DROPPED.sub("", text)
    text = re.sub(r"<BR\s*/?>", "\n\n", text, flags=re.I)
    rows: list[Text] = []

    def loose(chunk: str) -> None:
        for part in _TAG.sub("", chunk).split("\n"):
            if part.strip():
                rows.append(Text(html.unescape(part.strip())))

    last = 0
    for m in _SEGMENT.finditer(text):
        loose(text[last : m.start()])
        align: Align = {"L": "left", "C": "center", "R": "right"}[m.group(1).upper()]  # type: ignore[assignment]
        inner = m.group(2)
        bold = bool(re.search(r"<B>", inner, re.I))
        for part in _TAG.sub("", inner).split("\n"):
            rows.append(Text(html.unescape(part.strip()), align=align, bold=bold))
        last = m.end()
    loose(text[last:])
    return rows


def _head(slip: Slip, r: Receipt, title: str) -> None:
    h = r.header
    slip.add(Text(h.name, "center", bold=True))
    slip.add(*(Text(line, "center") for line in h.address))
    if h.phone:
        slip.add(Text(h.phone, "center"))
    slip.add(Blank(), Text(title, "center", bold=True), Rule())
    c = r.checkout
    slip.add(Amount(f"Order {c.order_number}", _when(c.created_at)))
    if c.register_id:
        slip.add(Text(f"Register {c.register_id}"))


def _card_label(t: TenderView | RefundView) -> str:
    brand = (t.card_brand or "Card").upper()
    return f"{brand} ****{t.last4}" if t.last4 else brand


def _card_details(t: TenderView, currency: str) -> list[Row]:
    rows: list[Row] = []
    how = " ".join(x for x in (_TYPES.get(t.payment_type or ""), _ENTRY.get(t.entry_method or "")) if x)
    if how:
        rows.append(Text(how, indent=2))
    if t.application_label:
        rows.append(Text(t.application_label, indent=2))
    if t.aid:
        rows.append(Text(f"AID {t.aid}", indent=2))
    if t.auth_code:
        rows.append(Text(f"Auth {t.auth_code}", indent=2))
    if t.host_reference:
        rows.append(Text(f"Ref {t.host_reference}", indent=2))
    numbers = " ".join(
        x
        for x in (
            f"Batch {t.batch_number}" if t.batch_number else "",
            f"Txn {t.transaction_number}" if t.transaction_number else "",
        )
        if x
    )
    if numbers:
        rows.append(Text(numbers, indent=2))
    if t.approved_amount is not None and t.approved_amount != t.amount:
        rows.append(Amount("Approved for", money(t.approved_amount, currency), indent=2))
    return rows


def _status_words(t: TenderView) -> str:
    if t.failure is not None:
        return _REASONS.get(t.failure.reason, "NOT CHARGED")
    return {
        "approved": "APPROVED",
        "voided": "VOIDED",
        "refunded": "REFUNDED",
        "declined": "DECLINED",
        "failed": "NOT CHARGED",
    }.get(t.status, t.status.upper())


def _tenders(slip: Slip, r: Receipt, copy: Copy, *, failed: bool) -> None:
    c = r.checkout
    for t in c.tenders:
        if t.type == "cash":
            slip.add(Amount("Cash", money(t.amount, c.currency)))
            if t.tendered is not None and t.tendered != t.amount:
                slip.add(Amount("Tendered", money(t.tendered, c.currency), indent=2))
            if failed:
                slip.add(Text("NOT TAKEN" if t.status != "approved" else "TAKEN", indent=2))
            continue
        slip.add(Amount(_card_label(t), money(t.amount, c.currency)))
        slip.add(*_card_details(t, c.currency))
        slip.add(Text(_status_words(t), indent=2, bold=t.status != "approved"))
        if t.failure is not None and t.failure.message:
            slip.add(Text(t.failure.message, indent=2))
        if t.settled and c.status == "voided":
            slip.add(Text("SETTLED: NOT VOIDED, TO BE REFUNDED", indent=2, bold=True))
        own = t.terminal_receipt
        text = (own.merchant if copy == "merchant" else own.customer) if own is not None else None
        if text:
            slip.add(Rule("."))
            slip.add(*terminal_lines(text))
            slip.add(Rule("."))


def _sale(r: Receipt, copy: Copy) -> Slip:
    c = r.checkout
    failed = c.status in ("payment_failed", "cancelled")
    slip = Slip("failed" if failed else "sale")
    _head(slip, r, "NOT COMPLETED - NO SALE" if failed else "SALE")
    slip.add(Rule())
    for line in r.lines:
        slip.add(Text(line.name or line.sku))
        slip.add(
            Amount(
                f"{line.quantity} x {money(line.unit_price, c.currency)}",
                money(line.quantity * line.unit_price, c.currency),
                indent=2,
            )
        )
    slip.add(Rule(), Amount("Subtotal", money(c.subtotal, c.currency)))
    if c.discount:
        slip.add(Amount("Discount", money(-c.discount, c.currency)))
    slip.add(Amount("Tax", money(c.tax, c.currency)))
    slip.add(Amount("TOTAL", f"{c.currency} {money(c.total, c.currency)}", bold=True), Rule())
    _tenders(slip, r, copy, failed=failed)
    if failed:
        slip.add(Rule(), Text("NOTHING WAS CHARGED", "center", bold=True))
        if c.failure is not None and c.failure.message:
            slip.add(Text(c.failure.message, "center"))
    elif c.change:
        slip.add(Rule(), Amount("Change due", money(c.change, c.currency), bold=True))
    return slip


def _void(r: Receipt) -> Slip:
    c = r.checkout
    slip = Slip("void")
    _head(slip, r, "VOID")
    if r.voided_at:
        slip.add(Amount("Voided", _when(r.voided_at)))
    slip.add(Rule())
    kept = 0
    for t in c.tenders:
        label = "Cash" if t.type == "cash" else _card_label(t)
        slip.add(Amount(label, money(-t.amount, c.currency)))
        if t.type == "card":
            if t.status == "approved" and t.settled:
                kept += t.approved_amount or t.amount
                slip.add(Text("SETTLED: NOT VOIDED, TO BE REFUNDED", indent=2, bold=True))
            else:
                slip.add(Text(_status_words(t), indent=2))
    slip.add(Rule(), Amount("TOTAL VOIDED", f"{c.currency} {money(-(c.total - kept), c.currency)}", bold=True))
    return slip


def _refund(r: Receipt, refund: RefundView) -> Slip:
    c = r.checkout
    slip = Slip("refund")
    done = refund.status == "completed"
    _head(slip, r, "REFUND" if done else "REFUND NOT MADE" if refund.status == "failed" else "REFUND PENDING")
    if refund.completed_at or refund.created_at:
        slip.add(Amount("Refunded" if done else "Asked", _when(refund.completed_at or refund.created_at)))
    slip.add(Rule())
    if refund.type == "card":
        slip.add(Amount(_card_label(refund), money(-refund.amount, c.currency)))
        how = " ".join(x for x in (_TYPES.get(refund.payment_type or ""), _ENTRY.get(refund.entry_method or "")) if x)
        if how:
            slip.add(Text(how, indent=2))
        if refund.auth_code:
            slip.add(Text(f"Auth {refund.auth_code}", indent=2))
        if refund.host_reference:
            slip.add(Text(f"Ref {refund.host_reference}", indent=2))
    else:
        slip.add(Amount("Cash", money(-refund.amount, c.currency)))
    if refund.restock:
        slip.add(Text("Goods returned to stock", indent=2))
    if not done and refund.message:
        slip.add(Text(refund.message, indent=2))
    slip.add(
        Rule(),
        Amount(
            "TOTAL REFUNDED" if done else "NOT REFUNDED", f"{c.currency} {money(-refund.amount, c.currency)}", bold=True
        ),
    )
    return slip


def slips(r: Receipt, copy: Copy = "customer") -> list[Slip]:
    """The receipt's slips, each with the footer and which copy it is."""
    c = r.checkout
    out = [_sale(r, copy)]
    if c.status == "voided":
        out.append(_void(r))
    out += [_refund(r, refund) for refund in c.refunds]
    for slip in out:
        slip.add(Blank())
        slip.add(*(Text(line, "center") for line in r.header.footer))
        slip.add(Text(f"{copy.upper()} COPY", "center"))
    return out


# ------------------------------------------------------------------ plain text


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def _text_rows(rows: Iterable[Row], width: int) -> list[str]:
    out: list[str] = []
    for row in rows:
        if isinstance(row, Blank):
            out.append("")
        elif isinstance(row, Rule):
            out.append(row.char * width)
        elif isinstance(row, Amount):
            amount = row.amount[:width]
            pad = " " * row.indent
            label = _wrap(row.label, width - row.indent) if row.label else [""]
            out += [pad + part for part in label[:-1]]  # a long label: on lines of its own first
            last = pad + label[-1]
            if len(last) + 1 + len(amount) > width:
                out.append(last)
                last = ""
            out.append(last + " " * (width - len(last) - len(amount)) + amount)
        else:
            for part in _wrap(row.text, width - row.indent):
                if row.align == "center":
                    out.append(part.center(width).rstrip())
                elif row.align == "right":
                    out.append(part.rjust(width))
                else:
                    out.append(" " * row.indent + part)
    return out


def render_text(r: Receipt, width: int = 48, copy: Copy = "customer") -> str:
    """The receipt as plain text: every line at most `width` columns, slips cut apart."""
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {WIDTHS}")
    cut = "\n" + "- " * (width // 2 - 1) + "-\n\n"  # a line to cut along between slips
    return cut.join("\n".join(_text_rows(s.rows, width)) + "\n" for s in slips(r, copy))


# ------------------------------------------------------------------ HTML

_CSS = (
    "body{font-family:ui-monospace,Menlo,Consolas,monospace;background:#eee;margin:0;padding:1em}"
    ".slip{background:#fff;max-width:26em;margin:0 auto 1.5em;padding:1em 1.2em;box-shadow:0 1px 3px #999}"
    ".row{display:flex;justify-content:space-between;gap:1em;white-space:pre-wrap}"
    ".center{text-align:center}.right{text-align:right}.b{font-weight:bold}.i2{padding-left:2ch}"
    "hr{border:0;border-top:1px dashed #999}hr.dot{border-top-style:dotted}"
)


def _html_rows(rows: Iterable[Row]) -> list[str]:
    e = html.escape
    out: list[str] = []
    for row in rows:
        if isinstance(row, Blank):
            out.append("<br>")
        elif isinstance(row, Rule):
            out.append('<hr class="dot">' if row.char == "." else "<hr>")
        elif isinstance(row, Amount):
            classes = " ".join(c for c in ("row", "b" if row.bold else "", "i2" if row.indent else "") if c)
            out.append(
                f'<div class="{classes}"><span>{e(row.label)}</span><span class="amount">{e(row.amount)}</span></div>'
            )
        else:
            classes = " ".join(
                c
                for c in (
                    "" if row.align == "left" else row.align,
                    "b" if row.bold else "",
                    "i2" if row.indent else "",
                )
                if c
            )
            out.append(f'<div class="{classes}">{e(row.text)}</div>' if classes else f"<div>{e(row.text)}</div>")
    return out


def render_html(r: Receipt, copy: Copy = "customer") -> str:
    """The receipt as an HTML page, one <section class="slip"> per slip; every text escaped."""
    title = html.escape(f"{r.header.name} - order {r.checkout.order_number}")
    body = "\n".join(
        f'<section class="slip {s.kind}">\n' + "\n".join(_html_rows(s.rows)) + "\n</section>" for s in slips(r, copy)
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
