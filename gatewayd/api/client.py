"""A Python client for the local API (used by the CLI, the tests, and POS developers).

async with GatewayClient("/run/gatewayd/gatewayd.sock") as gw:
    answer = await gw.checkout({...})
    if answer.status == 200: ...

Over the store network, with TLS and the store CA (`gatewayd tls-init` makes it):

async with GatewayClient(base_url="https://192.168.1.20:8470", token=TOKEN, ca_file="ca.pem") as gw: ...
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec


@dataclass(frozen=True)
class Answer:
    """One API answer: HTTP status and decoded JSON body."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code"))
        return None


class ApiError(Exception):
    """A non-2xx answer, for callers that prefer exceptions (`Answer.raise_for_error`)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"{answer.status} {answer.error_code}: {answer.body}")
        self.answer = answer


class GatewayClient:
    """HTTP/JSON over the daemon's unix socket (or a TCP URL with a bearer token).

    An https `base_url` is verified against `ca_file` (the store CA's PEM), or against the given
    `ssl_context`, else against the system's trusted CAs; the certificate must name the URL's host.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        timeout_s: float = 150.0,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if socket_path is None and base_url is None:
            raise ValueError("give socket_path or base_url")
        if ca_file is not None and ssl_context is not None:
            raise ValueError("give ca_file or ssl_context, not both")
        if (ca_file is not None or ssl_context is not None) and not (base_url or "").startswith("https://"):
            raise ValueError("ca_file and ssl_context are for an https:// base_url")
        self._ssl = ssl_context or (ssl.create_default_context(cafile=ca_file) if ca_file is not None else None)
        self._socket_path = socket_path
        self._base = (base_url or "http://gatewayd").rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        connector: aiohttp.BaseConnector | None = None
        if self._socket_path:
            connector = aiohttp.UnixConnector(path=self._socket_path)
        elif self._ssl is not None:
            connector = aiohttp.TCPConnector(ssl=self._ssl)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request; the body is JSON-encoded with msgspec (or sent as `raw` bytes)."""
        if self._session is None:
            await self.__aenter__()
        assert self._session is not None
        data = raw if raw is not None else (None if body is None else msgspec.json.encode(body))
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self._session.request(method, self._base + path, data=data, params=params, headers=headers) as resp:
            payload = await resp.read()
            try:
                decoded = msgspec.json.decode(payload) if payload else None
            except msgspec.DecodeError:
                decoded = payload.decode(errors="replace")
            return Answer(resp.status, decoded)

    async def health(self) -> Answer:
        return await self.request("GET", "/v1/health")

    async def terminals(self) -> Answer:
        return await self.request("GET", "/v1/terminals")

    async def terminal(self, terminal_id: str) -> Answer:
        return await self.request("GET", f"/v1/terminals/{terminal_id}")

    async def settle(self, terminal_id: str) -> Answer:
        return await self.request("POST", f"/v1/terminals/{terminal_id}/settle")

    async def checkout(self, body: dict[str, Any]) -> Answer:
        return await self.request("POST", "/v1/checkouts", body)

    async def get_checkout(self, checkout_id: str) -> Answer:
        return await self.request("GET", f"/v1/checkouts/{checkout_id}")

    async def find_checkout(self, idempotency_key: str) -> Answer:
        return await self.request("GET", "/v1/checkouts", params={"idempotency_key": idempotency_key})

    async def receipt(
        self, checkout_id: str, *, width: int | None = None, copy: str | None = None, html: bool = False
    ) -> Answer:
        """The checkout's receipt: plain text (`width` 40 or 48 columns) or, with `html`, an HTML
        page; the body is the text itself (an error answer is decoded JSON as usual)."""
        if self._session is None:
            await self.__aenter__()
        assert self._session is not None
        params = {k: str(v) for k, v in (("width", width), ("copy", copy)) if v is not None}
        headers = {"Accept": "text/html" if html else "text/plain"}
        url = f"{self._base}/v1/checkouts/{checkout_id}/receipt"
        async with self._session.get(url, params=params, headers=headers) as resp:
            payload = await resp.read()
            if resp.content_type == "application/json":
                return Answer(resp.status, msgspec.json.decode(payload) if payload else None)
            return Answer(resp.status, payload.decode("utf-8"))

    async def void(self, checkout_id: str) -> Answer:
        return await self.request("POST", f"/v1/checkouts/{checkout_id}/void")

    async def refund(
        self,
        checkout_id: str,
        idempotency_key: str,
        amount: int,
        restock: bool = False,
        lines: list[dict[str, Any]] | None = None,
    ) -> Answer:
        """A refund; with `restock`, a partial one names the `lines` ({sku, quantity}) it puts back."""
        body: dict[str, Any] = {"idempotency_key": idempotency_key, "amount": amount, "restock": restock}
        if lines is not None:
            body["lines"] = lines
        return await self.request("POST", f"/v1/checkouts/{checkout_id}/refunds", body)

    async def orphans(self) -> Answer:
        return await self.request("GET", "/v1/orphans")

    async def reconcile(self, terminal_id: str | None = None) -> Answer:
        return await self.request("POST", "/v1/reconcile", {"terminal_id": terminal_id} if terminal_id else {})

    async def cleanup(self, older_than_minutes: int) -> Answer:
        return await self.request("POST", "/v1/maintenance/cleanup", {"older_than_minutes": older_than_minutes})
