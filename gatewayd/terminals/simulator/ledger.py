"""The simulator's in-memory state: one record per terminal (Tpn), its open batch and settled batches.

Ledger vocabulary (what `GET /_sim/ledger` shows, one row per reference id):
a sale is `approved`/`declined`/`voided`; an auth is `approved` (a hold) until a
capture turns the row into type `capture`, status `captured`, amount the captured
amount; a return is `returned`/`declined`/`voided`. A void never adds a row: it
marks the original `voided`. Money that moved = approved sales + captured
captures − returned returns.

Each transaction has a card, made up from its reference id (brand, last four, BIN, cardholder
name, expiry) and read the way the cents of its amount say (`entry_method`), and the payment
type it ran as (`payment_type`; for a `card` sale the customer chooses: debit when the whole
dollars are odd, credit when even). A Return naming a known sale (its InvoiceNumber) is paid
back to the same card.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_BRANDS = ("VISA", "MASTERCARD", "AMEX", "DISCOVER")
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
# Each brand's first digits, its EMV application (label, AID) as credit and as debit.
_BINS = {"VISA": "4", "MASTERCARD": "5", "AMEX": "37", "DISCOVER": "6011"}
_APPS = {
    ("VISA", "credit"): ("VISA CREDIT", "A0000000031010"),
    ("VISA", "debit"): ("US DEBIT", "A0000000980840"),
    ("MASTERCARD", "credit"): ("MASTERCARD", "A0000000041010"),
    ("MASTERCARD", "debit"): ("DEBIT MASTERCARD", "A0000000042203"),
    ("AMEX", "credit"): ("AMERICAN EXPRESS", "A000000025010801"),
    ("DISCOVER", "credit"): ("DISCOVER", "A0000001523010"),
    ("DISCOVER", "debit"): ("US COMMON DEBIT", "A0000001524010"),
}
_NAMES = ("DOE/JANE", "SMITH/ALEX", "GARCIA/MARIA", "NGUYEN/MINH", "OKAFOR/CHIDI", "MULLER/ANNA")


def application(brand: str, payment_type: str) -> tuple[str, str]:
    """The EMV application a chip or tap selects: its label and AID."""
    return _APPS.get((brand, payment_type)) or _APPS[(brand, "credit")]


def entry_method_of(amount: int) -> str:
    """How the simulated card is read, by the last digit of the amount's cents: 0-3 chip,
    4-6 contactless, 7-8 swipe, 9 keyed in by hand."""
    digit = amount % 10
    return "chip" if digit <= 3 else "contactless" if digit <= 6 else "swipe" if digit <= 8 else "manual"


def effective_type(payment_type: str, amount: int) -> str:
    """The type a sale runs as: `card` lets the simulated customer choose (debit on odd whole
    dollars, credit on even ones); any other type as asked."""
    if payment_type != "card":
        return payment_type
    return "debit" if (amount // 100) % 2 else "credit"


@dataclass(frozen=True, slots=True)
class Card:
    """The simulated card of a transaction: everything a terminal reads of it."""

    brand: str
    last4: str
    bin: str
    name: str
    expiry: str  # MMYY

    @staticmethod
    def from_digest(digest: bytes) -> Card:
        brand = _BRANDS[digest[0] % len(_BRANDS)]
        prefix = _BINS[brand]
        middle = str(int.from_bytes(digest[3:9], "big")).zfill(12)
        return Card(
            brand=brand,
            last4=f"{int.from_bytes(digest[1:3], 'big') % 10000:04d}",
            bin=(prefix + middle)[:6],
            name=_NAMES[digest[9] % len(_NAMES)],
            expiry=f"{digest[10] % 12 + 1:02d}{27 + digest[11] % 5:02d}",
        )


@dataclass(slots=True)
class Txn:
    """One transaction in a terminal's ledger."""

    tpn: str
    reference_id: str
    type: str  # sale | auth | capture | return
    amount: int
    requested: int
    status: str  # approved | declined | voided | returned | captured
    status_code: str
    batch: int
    number: int
    auth_code: str = ""
    card_brand: str = ""
    last4: str = ""
    voided: bool = False
    card: Card | None = None
    entry_method: str = "chip"
    payment_type: str = "credit"  # what it ran as (for a `card` sale: the customer's choice)
    asked_type: str = "credit"  # what the request asked for
    receipts: str = "No"  # the copies the request asked back (SPIn GetReceipt)
    rrn: str = ""

    @property
    def card_types(self) -> frozenset[str]:
        """The payment types a Status of it may name: the one it was sent with, the one it ran as."""
        return frozenset({self.payment_type, self.asked_type})

    def row(self) -> dict[str, Any]:
        """The public ledger row."""
        return {
            "tpn": self.tpn,
            "reference_id": self.reference_id,
            "type": self.type,
            "amount": self.amount,
            "status": self.status,
            "batch": self.batch,
            "status_code": self.status_code,
            "auth_code": self.auth_code,
            "payment_type": self.payment_type,
            "entry_method": self.entry_method,
        }

    def void(self) -> bool:
        """Void it, as a SPIn Void or the clerk on the keypad does; False if declined (nothing to void)."""
        if self.status == "declined":
            return False
        self.voided, self.status = True, "voided"
        return True

    def net(self) -> int:
        """The money (cents) it moved: + approved sales and captures, − returns, 0 otherwise."""
        if self.type == "auth" or self.status not in ("approved", "captured", "returned"):
            return 0
        return -self.amount if self.type == "return" else self.amount


@dataclass(frozen=True, slots=True)
class Settlement:
    """A closed batch: its number, how many transactions it held and the money (cents) it moved."""

    batch: int
    count: int
    amount: int


@dataclass(slots=True)
class Terminal:
    """One simulated terminal."""

    tpn: str
    batch: int = 1
    open: dict[str, Txn] = field(default_factory=dict)
    settled: list[Txn] = field(default_factory=list)
    offline: bool = False
    active: int = 0
    max_active: int = 0
    counter: int = 0
    busy_seen: set[str] = field(default_factory=set)
    transports: set[asyncio.Transport] = field(default_factory=set)
    # Set by /_sim/terminals/{tpn}/busy: every transaction is answered 2008 with this delay.
    busy_delay_s: int | None = None

    def record(
        self,
        ref: str,
        kind: str,
        amount: int,
        requested: int,
        status: str,
        code: str,
        *,
        payment_type: str = "credit",
        receipts: str = "No",
        sale: Txn | None = None,
    ) -> Txn:
        """Add a transaction to the open batch, with a made-up card derived from the reference id
        (a Return of a known `sale`: that sale's card)."""
        self.counter += 1
        digest = hashlib.sha256(f"{self.tpn}:{ref}".encode()).digest()
        approved = status != "declined"
        card = sale.card if sale is not None and sale.card is not None else Card.from_digest(digest)
        txn = Txn(
            tpn=self.tpn,
            reference_id=ref,
            type=kind,
            amount=amount,
            requested=requested,
            status=status,
            status_code=code,
            batch=self.batch,
            number=len(self.open) + 1,
            auth_code=_auth_code(digest, self.counter) if approved else "",
            card_brand=card.brand,
            last4=card.last4,
            card=card,
            entry_method=entry_method_of(requested),
            payment_type=effective_type(payment_type, requested),
            asked_type=payment_type,
            receipts=receipts,
            rrn=f"{int.from_bytes(digest[12:18], 'big') % 10**12:012d}" if approved else "",
        )
        self.open[ref] = txn
        return txn

    def find(self, ref: str) -> Txn | None:
        """A transaction of this terminal by reference id, in the open batch or a settled one."""
        return self.open.get(ref) or next((t for t in reversed(self.settled) if t.reference_id == ref), None)

    def settle(self) -> Settlement | None:
        """Close the open batch (a SPIn Settle, or the terminal on its own); None if it is empty."""
        if not self.open:
            return None
        closed = list(self.open.values())
        settlement = Settlement(batch=self.batch, count=len(closed), amount=sum(t.net() for t in closed))
        self.settled.extend(closed)
        self.open.clear()
        self.busy_seen.clear()
        self.batch += 1
        return settlement

    def drop_connections(self) -> None:
        """Reset every connection currently serving a transaction for this terminal."""
        for transport in list(self.transports):
            transport.abort()


def _auth_code(digest: bytes, counter: int) -> str:
    mixed = hashlib.sha256(digest + counter.to_bytes(8, "big")).digest()
    return "".join(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in mixed[:6])


class Ledger:
    """All simulated terminals; any Tpn is served unless an allow-list is given.

    `authkeys` binds Tpns to their keys for good (a reset keeps them); any other Tpn is
    bound to the first key it is sent until a reset.
    """

    def __init__(
        self, tpns: set[str] | frozenset[str] | None = None, authkeys: Mapping[str, str] | None = None
    ) -> None:
        self.allowed = frozenset(tpns) if tpns is not None else None
        self.terminals: dict[str, Terminal] = {}
        self._given_keys = dict(authkeys or {})
        self._keys = dict(self._given_keys)

    def serves(self, tpn: str) -> bool:
        """Whether `tpn` is served (any non-empty Tpn unless an allow-list is given)."""
        return bool(tpn) and (self.allowed is None or tpn in self.allowed)

    def terminal(self, tpn: str) -> Terminal | None:
        """The terminal for `tpn`, created on first use; None if not served."""
        if not self.serves(tpn):
            return None
        term = self.terminals.get(tpn)
        if term is None:
            term = self.terminals[tpn] = Terminal(tpn=tpn)
        return term

    def admit(self, tpn: str, authkey: str) -> Terminal | None:
        """The terminal for a request signed with `authkey`; None if `tpn` is not served, or the key
        is empty or not the one bound to `tpn` (a Tpn with no key yet is bound to this one)."""
        if not authkey or not self.serves(tpn) or self._keys.setdefault(tpn, authkey) != authkey:
            return None
        return self.terminal(tpn)

    def bind(self, tpn: str, authkey: str) -> bool:
        """Bind `tpn` to a new key (key rotation); False if `tpn` is not served."""
        if not authkey or not self.serves(tpn):
            return False
        self._keys[tpn] = authkey
        return True

    def set_offline(self, tpn: str, offline: bool = True) -> bool:
        """Take a terminal offline (dropping its open connections) or back online; False if unknown."""
        term = self.terminal(tpn)
        if term is None:
            return False
        term.offline = offline
        if offline:
            term.drop_connections()
        return True

    def reset(self) -> None:
        """Forget every terminal, transaction and learned key (given keys stay), dropping open connections."""
        for term in self.terminals.values():
            term.drop_connections()
        self.terminals.clear()
        self._keys = dict(self._given_keys)

    def transactions(self, tpn: str | None = None) -> list[dict[str, Any]]:
        """Every transaction (settled batches first), optionally for one Tpn."""
        if tpn is None:
            terms = list(self.terminals.values())
        else:
            terms = [self.terminals[tpn]] if tpn in self.terminals else []
        return [t.row() for term in terms for t in [*term.settled, *term.open.values()]]

    def max_concurrency(self) -> dict[str, int]:
        """Per Tpn, the most transactions ever seen running at once (1 is the correct answer)."""
        return {tpn: term.max_active for tpn, term in self.terminals.items()}

    def snapshot(self) -> dict[str, Any]:
        """What `GET /_sim/ledger` answers."""
        return {"transactions": self.transactions(), "max_concurrency": self.max_concurrency()}
