"""The SPIn Local driver: one terminal on the LAN, one HTTP GET per operation, typed outcomes,
never raises for the network.

Same interface and the same rules as the REST driver (`gatewayd.terminals.driver`): a request
that certainly did not leave is `Offline` (connection refused, no route, connect timeout), one
that may have reached the terminal is `Unknown`. There is no proxy in between: a terminal that
is switched off or off the network refuses or never accepts the connection; an HTTP 503 without
a SPIn answer (a terminal's web service, or something in front of it, refusing the request) is
read as not sent either. What Local cannot do: list the open batch (`batch` raises; the XML
dialect's batch report has no documented answer layout), and tell "busy" with a delay (a busy
answer is resent after the default delay, within the lane's busy budget).
"""

from __future__ import annotations

import logging
import math
import uuid

import aiohttp
from yarl import URL

from gatewayd.errors import ProtocolError, TerminalError
from gatewayd.terminals.outcomes import BatchEntry, Health, Offline, Outcome, PaymentType, SettleResult
from gatewayd.terminals.spin.transport import NETWORK, HttpTerminal
from gatewayd.terminals.spin_local import codec

log = logging.getLogger("gatewayd.terminals.spin_local")

_HEADERS = {"Accept": "text/html, text/xml, */*"}


class Unavailable(Exception):
    """HTTP 503 with no SPIn answer: the request was refused before any transaction started."""


class SpinLocalDriver(HttpTerminal):
    """Drives one Dejavoo terminal in SPIn Local mode (`base_url`: the terminal's own address,
    `http://host:port`, optionally with a path prefix; `/cgi.html` is added)."""

    __slots__ = (
        "_cgi",
        "_cred",
        "_margin_s",
        "_settle_timeout_s",
        "_status_timeout_s",
        "_timeout_s",
    )

    def __init__(
        self,
        terminal_id: str,
        base_url: str,
        register_id: str,
        authkey: str,
        timeout_s: float,
        *,
        tpn: str | None = None,
        session: aiohttp.ClientSession | None = None,
        http_margin_s: float = 10.0,
        status_timeout_s: float = 5.0,
        settle_timeout_s: float | None = None,
    ) -> None:
        if not 1 <= timeout_s <= 720:
            raise ValueError("timeout_s must be within 1..720 s")
        if http_margin_s <= 0 or status_timeout_s < 2:
            raise ValueError("http_margin_s must be > 0 and status_timeout_s >= 2")
        super().__init__(terminal_id, authkey, session, resend_gets=False)
        self._cgi = base_url.rstrip("/") + "/cgi.html"
        self._cred = codec.Credentials(register_id=register_id, authkey=authkey, tpn=tpn)
        self._timeout_s = float(math.ceil(timeout_s))
        self._margin_s = http_margin_s
        self._status_timeout_s = status_timeout_s
        self._settle_timeout_s = float(math.ceil(min(720.0, settle_timeout_s or timeout_s)))

    def __repr__(self) -> str:
        return (
            f"SpinLocalDriver(terminal_id={self._terminal_id!r}, url={self._cgi!r}, "
            f"register_id={self._cred.register_id!r})"
        )

    @property
    def timeout_s(self) -> float:
        """The terminal's own time for a transaction, sent as OperationalTimeout."""
        return self._timeout_s

    @property
    def transaction_timeout_s(self) -> float:
        """The HTTP timeout of a transaction: the terminal's timeout plus the margin, always longer."""
        return self._timeout_s + self._margin_s

    # ------------------------------------------------------------ transport

    async def _get(self, xml: str, http_timeout_s: float) -> bytes:
        timeout = aiohttp.ClientTimeout(total=http_timeout_s)
        url = URL(f"{self._cgi}?{codec.query(xml)}", encoded=True)
        async with self._get_session().get(url, headers=_HEADERS, timeout=timeout) as resp:
            body = await self._read(resp)
            if resp.status == 503 and b"<response>" not in body.lower():
                raise Unavailable(f"HTTP 503 {resp.reason or ''}".strip())
            return body

    # ------------------------------------------------------------ money

    async def _money(self, op: str, xml: str, ref: str, requested: int | None) -> Outcome:
        try:
            data = await self._get(xml, self.transaction_timeout_s)
            outcome = codec.parse_payment(data, op=op, ref=ref, requested=requested)
        except Unavailable as exc:
            outcome = Offline(message=str(exc))
        except (ProtocolError, *NETWORK) as exc:
            outcome = self._failed(exc)
        log.debug("terminal %s: %s ref=%s -> %s", self._terminal_id, op, ref, type(outcome).__name__)
        return outcome

    async def sale(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Charge `amount` cents under reference id `ref`."""
        xml = codec.sale_request(self._cred, ref, amount, self._timeout_s, payment_type)
        return await self._money("sale", xml, ref, amount)

    async def auth(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Authorize `amount` cents under reference id `ref`."""
        xml = codec.auth_request(self._cred, ref, amount, self._timeout_s, payment_type)
        return await self._money("auth", xml, ref, amount)

    async def capture(self, ref: str, amount: int, *, payment_type: PaymentType = "credit") -> Outcome:
        """Capture `amount` cents of the authorization `ref`."""
        xml = codec.capture_request(self._cred, ref, amount, self._timeout_s, payment_type)
        return await self._money("capture", xml, ref, amount)

    async def void(self, ref: str, amount: int | None = None, *, payment_type: PaymentType = "credit") -> Outcome:
        """Void transaction `ref` (open batch only), with the payment type the sale used."""
        xml = codec.void_request(self._cred, ref, self._timeout_s, payment_type, amount)
        return await self._money("void", xml, ref, amount)

    async def refund(
        self, ref: str, amount: int, *, payment_type: PaymentType = "credit", sale_ref: str | None = None
    ) -> Outcome:
        """A Return of `amount` cents under the new reference id `ref`, with the sale's payment
        type; `sale_ref` goes as its invoice number."""
        xml = codec.return_request(self._cred, ref, amount, self._timeout_s, payment_type, sale_ref)
        return await self._money("return", xml, ref, amount)

    # ------------------------------------------------------------ inquiries and batch

    async def status(self, ref: str, *, payment_type: PaymentType = "credit") -> Outcome:
        """Inquire about `ref` with a short timeout, with the payment type it was sent with."""
        xml = codec.status_request(self._cred, ref, payment_type)
        try:
            outcome = codec.parse_status(await self._get(xml, self._status_timeout_s), ref)
        except Unavailable as exc:
            outcome = Offline(message=str(exc))
        except (ProtocolError, *NETWORK) as exc:
            outcome = self._failed(exc)
        log.debug("terminal %s: status ref=%s -> %s", self._terminal_id, ref, type(outcome).__name__)
        return outcome

    async def health(self) -> Health:
        """A Status about a reference id that cannot exist: "not found" means the terminal is
        there and takes our credentials (Local has no documented status page)."""
        xml = codec.status_request(self._cred, "HEALTH" + uuid.uuid4().hex[:14].upper(), "credit")
        try:
            return codec.parse_health(await self._get(xml, self._status_timeout_s))
        except Unavailable as exc:
            return Health(state="offline", message=str(exc))
        except ProtocolError as exc:
            return Health(state="unknown", message=self._redact(exc.message))
        except NETWORK as exc:
            return Health(state="offline", message=self._describe(exc))

    async def settle(self) -> SettleResult:
        """Close the open batch; a lost answer is reported as not ok with the reason."""
        xml = codec.settle_request(self._cred, self._settle_timeout_s)
        try:
            return codec.parse_settle(await self._get(xml, self._settle_timeout_s + self._margin_s))
        except Unavailable as exc:
            return SettleResult(ok=False, message=f"not sent: {exc}")
        except ProtocolError as exc:
            return SettleResult(ok=False, message=f"outcome unknown: {self._redact(exc.message)}")
        except NETWORK as exc:
            return SettleResult(ok=False, message=f"outcome unknown: {self._describe(exc)}")

    async def batch(self) -> list[BatchEntry]:
        """SPIn Local cannot list the open batch: always raises TerminalError (reconcile reports it
        for this terminal; its charges are still resolved one by one with Status)."""
        raise TerminalError(
            "SPIn Local cannot list the terminal's open batch: reconcile this terminal in SPIn Cloud"
            " mode, or from the terminal's own batch report",
            terminal_id=self._terminal_id,
        )
