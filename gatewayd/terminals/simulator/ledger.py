"""The simulator's in-memory state: one record per terminal (Tpn), its open batch and settled batches.

Ledger vocabulary (what `GET /_sim/ledger` shows, one row per reference id):
a sale is `approved`/`declined`/`voided`; an auth is `approved` (a hold) until a
capture turns the row into type `capture`, status `captured`, amount the captured
amount; a return is `returned`/`declined`/`voided`. A void never adds a row: it
marks the original `voided`. Money that moved = approved sales + captured
captures − returned returns.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_BRANDS = ("VISA", "MASTERCARD", "AMEX", "DISCOVER")
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


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

    def record(self, ref: str, kind: str, amount: int, requested: int, status: str, code: str) -> Txn:
        """Add a transaction to the open batch, with fake card data derived from the reference id."""
        self.counter += 1
        digest = hashlib.sha256(f"{self.tpn}:{ref}".encode()).digest()
        approved = status != "declined"
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
            card_brand=_BRANDS[digest[0] % len(_BRANDS)],
            last4=f"{int.from_bytes(digest[1:3], 'big') % 10000:04d}",
        )
        self.open[ref] = txn
        return txn

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
