"""The SPIn REST driver: one terminal, aiohttp keep-alive, typed outcomes, never raises for the network."""

from __future__ import annotations

import logging
import math
import uuid

import aiohttp
import yarl

from gatewayd.errors import ProtocolError, TerminalError
from gatewayd.terminals.outcomes import BatchEntry, Health, Outcome, PaymentType, SettleResult
from gatewayd.terminals.spin import codec
from gatewayd.terminals.spin.transport import NETWORK, HttpTerminal

log = logging.getLogger("gatewayd.terminals.spin")

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class SpinDriver(HttpTerminal):
    """Drives one Dejavoo terminal through SPIn REST; share `session` across terminals at scale."""

    __slots__ = (
        "_base",
        "_cred",
        "_margin_s",
        "_proxy_timeout_s",
        "_settle_timeout_s",
        "_status_timeout_s",
        "_status_url",
    )

    def __init__(
        self,
        terminal_id: str,
        base_url: str,
        tpn: str,
        authkey: str,
        timeout_s: float,
        *,
        session: aiohttp.ClientSession | None = None,
        http_margin_s: float = 10.0,
        status_timeout_s: float = 5.0,
        settle_timeout_s: float | None = None,
    ) -> None:
        if not 1 <= timeout_s <= 720:
            raise ValueError("timeout_s must be within SPIn's 1..720 s")
        if http_margin_s <= 0 or status_timeout_s < 2:
            raise ValueError("http_margin_s must be > 0 and status_timeout_s >= 2")
        super().__init__(terminal_id, authkey, session)
        self._base = base_url.rstrip("/")
        self._cred = codec.Credentials(tpn=tpn, authkey=authkey)
        self._proxy_timeout_s = float(math.ceil(timeout_s))
        self._margin_s = http_margin_s
        self._status_timeout_s = status_timeout_s
        self._settle_timeout_s = float(math.ceil(min(720.0, settle_timeout_s or timeout_s)))
        # TerminalStatus' URL with its query, encoded once: the health sweep asks it of every
        # terminal every interval, and encoding the query was a quarter of an idle daemon's CPU.
        self._status_url: yarl.URL | None = None

    def __repr__(self) -> str:
        return f"SpinDriver(terminal_id={self._terminal_id!r}, base_url={self._base!r}, tpn={self._cred.tpn!r})"

    @property
    def timeout_s(self) -> float:
        """SPInProxyTimeout sent with every transaction."""
        return self._proxy_timeout_s

    @property
    def transaction_timeout_s(self) -> float:
        """The HTTP timeout of a transaction: the proxy timeout plus the margin, always longer."""
        return self._proxy_timeout_s + self._margin_s

    # ------------------------------------------------------------ transport

    async def _post(self, op: str, body: bytes, http_timeout_s: float) -> bytes:
        timeout = aiohttp.ClientTimeout(total=http_timeout_s)
        url = f"{self._base}/v2/Payment/{op}"
        async with self._get_session().post(url, data=body, headers=_HEADERS, timeout=timeout) as resp:
            return await self._read(resp)

    async def _get_status(self) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self._status_timeout_s)
        url = self._status_url
        if url is None:
            url = yarl.URL(f"{self._base}/v2/Common/TerminalStatus").with_query(
                codec.terminal_status_params(self._cred)
            )
            self._status_url = url
        async with self._get_session().get(url, headers=_HEADERS, timeout=timeout) as resp:
            return await self._read(resp)

    # ------------------------------------------------------------ money

    async def _money(self, op: str, body: bytes, ref: str, requested: int | None) -> Outcome:
        try:
            data = await self._post(op, body, self.transaction_timeout_s)
            outcome = codec.parse_payment(data, op=op.lower(), ref=ref, requested=requested)
        except (ProtocolError, *NETWORK) as exc:
            outcome = self._failed(exc)
        log.debug("terminal %s: %s ref=%s -> %s", self._terminal_id, op, ref, _tag(outcome))
        return outcome

    async def sale(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Charge `amount` cents under reference id `ref`."""
        body = codec.sale_body(self._cred, ref, amount, self._proxy_timeout_s, payment_type=payment_type)
        return await self._money("Sale", body, ref, amount)

    async def auth(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Authorize `amount` cents under reference id `ref`."""
        body = codec.auth_body(self._cred, ref, amount, self._proxy_timeout_s, payment_type=payment_type)
        return await self._money("Auth", body, ref, amount)

    async def capture(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Capture `amount` cents of the authorization `ref`."""
        body = codec.capture_body(self._cred, ref, amount, self._proxy_timeout_s, payment_type)
        return await self._money("Capture", body, ref, amount)

    async def void(self, ref: str, amount: int | None = None, *, payment_type: PaymentType = "credit") -> Outcome:
        """Void transaction `ref` (open batch only), with the payment type the sale used."""
        body = codec.void_body(self._cred, ref, self._proxy_timeout_s, amount, payment_type)
        return await self._money("Void", body, ref, amount)

    async def refund(
        self, ref: str, amount: int, *, payment_type: PaymentType = "credit", sale_ref: str | None = None
    ) -> Outcome:
        """SPIn Return of `amount` cents under the new reference id `ref`, with the sale's payment
        type; `sale_ref` goes as its invoice number."""
        body = codec.return_body(
            self._cred, ref, amount, self._proxy_timeout_s, invoice=sale_ref, payment_type=payment_type
        )
        return await self._money("Return", body, ref, amount)

    # ------------------------------------------------------------ inquiries and batch

    def _short_proxy_timeout_s(self) -> float:
        return max(1.0, math.floor(self._status_timeout_s / 2))

    async def status(self, ref: str, *, payment_type: PaymentType = "credit") -> Outcome:
        """Inquire about `ref` with a short timeout, with the payment type it was sent with."""
        body = codec.status_body(self._cred, ref, self._short_proxy_timeout_s(), payment_type)
        try:
            outcome = codec.parse_status(await self._post("Status", body, self._status_timeout_s), ref)
        except (ProtocolError, *NETWORK) as exc:
            outcome = self._failed(exc)
        log.debug("terminal %s: status ref=%s -> %s", self._terminal_id, ref, _tag(outcome))
        return outcome

    async def health(self) -> Health:
        """TerminalStatus with a short timeout."""
        try:
            return codec.parse_terminal_status(await self._get_status())
        except ProtocolError as exc:
            return Health(state="unknown", message=self._redact(exc.message))
        except NETWORK as exc:
            return Health(state="offline", message=self._describe(exc))

    async def settle(self) -> SettleResult:
        """Close the open batch; a lost answer is reported as not ok with the reason."""
        body = codec.settle_body(self._cred, uuid.uuid4().hex, self._settle_timeout_s)
        try:
            return codec.parse_settle(await self._post("Settle", body, self._settle_timeout_s + self._margin_s))
        except ProtocolError as exc:
            return SettleResult(ok=False, message=f"outcome unknown: {self._redact(exc.message)}")
        except NETWORK as exc:
            return SettleResult(ok=False, message=f"outcome unknown: {self._describe(exc)}")

    async def batch(self) -> list[BatchEntry]:
        """The open batch (StatusList); raises TerminalError when the terminal cannot answer."""
        body = codec.status_list_body(self._cred, self._proxy_timeout_s)
        try:
            return codec.parse_status_list(await self._post("StatusList", body, self.transaction_timeout_s))
        except ProtocolError as exc:
            raise ProtocolError(self._redact(exc.message), terminal_id=self._terminal_id) from exc
        except NETWORK as exc:
            raise TerminalError(f"batch unavailable: {self._describe(exc)}", terminal_id=self._terminal_id) from exc


def _tag(outcome: object) -> str:
    return type(outcome).__name__
