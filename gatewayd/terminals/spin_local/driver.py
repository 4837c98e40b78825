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
import urllib.parse
import uuid

import aiohttp
from yarl import URL

from gatewayd.errors import ProtocolError, TerminalError
from gatewayd.terminals.outcomes import BatchEntry, Health, Offline, Outcome, PaymentType, SettleResult, Unknown
from gatewayd.terminals.spin_local import codec

log = logging.getLogger("gatewayd.terminals.spin_local")

# Exceptions raised before a byte of the request left: nothing can have started.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_NETWORK = (aiohttp.ClientError, TimeoutError, OSError)
_HEADERS = {"Accept": "text/html, text/xml, */*"}


def never_resend(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Stop aiohttp from resending a GET on its own when the connection drops (it does so for
    idempotent methods since 3.9): a Local Sale is a GET, and only the lane decides what is sent
    again. aiohttp offers no public switch; its own test client turns the same attribute off."""
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


class Unavailable(Exception):
    """HTTP 503 with no SPIn answer: the request was refused before any transaction started."""


class SpinLocalDriver:
    """Drives one Dejavoo terminal in SPIn Local mode (`base_url`: the terminal's own address,
    `http://host:port`, optionally with a path prefix; `/cgi.html` is added)."""

    __slots__ = (
        "_cgi",
        "_closed",
        "_cred",
        "_margin_s",
        "_own_session",
        "_session",
        "_settle_timeout_s",
        "_status_timeout_s",
        "_terminal_id",
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
        self._terminal_id = terminal_id
        self._cgi = base_url.rstrip("/") + "/cgi.html"
        self._cred = codec.Credentials(register_id=register_id, authkey=authkey, tpn=tpn)
        self._timeout_s = float(math.ceil(timeout_s))
        self._margin_s = http_margin_s
        self._status_timeout_s = status_timeout_s
        self._settle_timeout_s = float(math.ceil(min(720.0, settle_timeout_s or timeout_s)))
        self._session = never_resend(session) if session is not None else None
        self._own_session = session is None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"SpinLocalDriver(terminal_id={self._terminal_id!r}, url={self._cgi!r}, "
            f"register_id={self._cred.register_id!r})"
        )

    @property
    def terminal_id(self) -> str:
        """The gateway's id for this terminal."""
        return self._terminal_id

    @property
    def timeout_s(self) -> float:
        """The terminal's own time for a transaction, sent as OperationalTimeout."""
        return self._timeout_s

    @property
    def transaction_timeout_s(self) -> float:
        """The HTTP timeout of a transaction: the terminal's timeout plus the margin, always longer."""
        return self._timeout_s + self._margin_s

    # ------------------------------------------------------------ transport

    def _redact(self, text: str) -> str:
        key = self._cred.authkey
        if not key:
            return text
        for form in {key, urllib.parse.quote(key, safe=""), urllib.parse.quote(urllib.parse.quote(key, safe=""))}:
            text = text.replace(form, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")[:300]

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise TerminalError("driver is closed", terminal_id=self._terminal_id)
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=2, keepalive_timeout=30)
            self._session = never_resend(aiohttp.ClientSession(connector=connector))
        return self._session

    async def _get(self, xml: str, http_timeout_s: float) -> bytes:
        timeout = aiohttp.ClientTimeout(total=http_timeout_s)
        url = URL(f"{self._cgi}?{codec.query(xml)}", encoded=True)
        async with self._get_session().get(url, headers=_HEADERS, timeout=timeout) as resp:
            if resp.content_length is not None and resp.content_length > codec.MAX_ANSWER_BYTES:
                raise ProtocolError("answer too large", terminal_id=self._terminal_id)
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                buf += chunk
                if len(buf) > codec.MAX_ANSWER_BYTES:
                    raise ProtocolError("answer too large", terminal_id=self._terminal_id)
            if resp.status == 503 and b"<response>" not in buf.lower():
                raise Unavailable(f"HTTP 503 {resp.reason or ''}".strip())
            return bytes(buf)

    # ------------------------------------------------------------ money

    async def _money(self, op: str, xml: str, ref: str, requested: int | None) -> Outcome:
        try:
            data = await self._get(xml, self.transaction_timeout_s)
            outcome = codec.parse_payment(data, op=op, ref=ref, requested=requested)
        except _NOT_SENT as exc:
            outcome = Offline(message=self._describe(exc))
        except Unavailable as exc:
            outcome = Offline(message=str(exc))
        except ProtocolError as exc:
            outcome = Unknown(reason=f"protocol error: {self._redact(exc.message)}")
        except _NETWORK as exc:
            outcome = Unknown(reason=self._describe(exc))
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
        except _NOT_SENT as exc:
            outcome = Offline(message=self._describe(exc))
        except Unavailable as exc:
            outcome = Offline(message=str(exc))
        except ProtocolError as exc:
            outcome = Unknown(reason=f"protocol error: {self._redact(exc.message)}")
        except _NETWORK as exc:
            outcome = Unknown(reason=self._describe(exc))
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
        except _NETWORK as exc:
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
        except _NETWORK as exc:
            return SettleResult(ok=False, message=f"outcome unknown: {self._describe(exc)}")

    async def batch(self) -> list[BatchEntry]:
        """SPIn Local cannot list the open batch: always raises TerminalError (reconcile reports it
        for this terminal; its charges are still resolved one by one with Status)."""
        raise TerminalError(
            "SPIn Local cannot list the terminal's open batch: reconcile this terminal in SPIn Cloud"
            " mode, or from the terminal's own batch report",
            terminal_id=self._terminal_id,
        )

    async def aclose(self) -> None:
        """Close the session if this driver owns it (idempotent)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._own_session:
            await session.close()
