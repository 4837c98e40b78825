"""What the SPIn Cloud and SPIn Local drivers share: one terminal over HTTP with aiohttp.

Its session (the fleet's shared one, or its own keep-alive pool of two), reading an answer no
larger than MAX_ANSWER_BYTES, the auth key masked in every message, and the one rule for a
request that failed: one that certainly did not leave (connection refused, no route, connect
timeout) is `Offline`; one that may have reached the terminal is `Unknown`, never a decline.
"""

from __future__ import annotations

import urllib.parse

import aiohttp

from gatewayd.errors import ProtocolError, TerminalError
from gatewayd.terminals.outcomes import Offline, Outcome, Unknown
from gatewayd.terminals.spin.shared import MAX_ANSWER_BYTES

# Exceptions raised before a byte of the request left: nothing can have started.
NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# What the network may raise once the request may have left (NOT_SENT among them).
NETWORK = (aiohttp.ClientError, TimeoutError, OSError)


def never_resend(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Stop aiohttp from resending a GET on its own when the connection drops (it does so for
    idempotent methods since 3.9): a Local Sale is a GET, and only the lane decides what is sent
    again. aiohttp offers no public switch; its own test client turns the same attribute off."""
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


class HttpTerminal:
    """The transport half of a SPIn driver. `resend_gets = False`: aiohttp never sends a GET
    again by itself (SPIn Local, whose every operation is a GET)."""

    __slots__ = ("_authkey", "_closed", "_own_session", "_resend_gets", "_session", "_terminal_id")

    def __init__(
        self, terminal_id: str, authkey: str, session: aiohttp.ClientSession | None, *, resend_gets: bool = True
    ) -> None:
        self._terminal_id = terminal_id
        self._authkey = authkey
        self._resend_gets = resend_gets
        self._session = session if session is None or resend_gets else never_resend(session)
        self._own_session = session is None
        self._closed = False

    @property
    def terminal_id(self) -> str:
        """The gateway's id for this terminal."""
        return self._terminal_id

    def _redact(self, text: str) -> str:
        """`text` with the auth key masked, as it is and URL-encoded once or twice."""
        key = self._authkey
        if not key:
            return text
        once = urllib.parse.quote(key, safe="")
        for form in {key, once, urllib.parse.quote(once, safe="")}:
            text = text.replace(form, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")[:300]

    def _failed(self, exc: ProtocolError | aiohttp.ClientError | TimeoutError | OSError) -> Outcome:
        """A transaction or an inquiry that got no answer it could read: Offline only when the
        request certainly did not leave, else Unknown (the terminal may have acted on it)."""
        if isinstance(exc, NOT_SENT):
            return Offline(message=self._describe(exc))
        if isinstance(exc, ProtocolError):
            return Unknown(reason=f"protocol error: {self._redact(exc.message)}")
        return Unknown(reason=self._describe(exc))

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise TerminalError("driver is closed", terminal_id=self._terminal_id)
        if self._session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2, keepalive_timeout=30))
            self._session = session if self._resend_gets else never_resend(session)
        return self._session

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The answer's body; a ProtocolError past MAX_ANSWER_BYTES (read no further)."""
        if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
            raise ProtocolError("answer too large", terminal_id=self._terminal_id)
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > MAX_ANSWER_BYTES:
                raise ProtocolError("answer too large", terminal_id=self._terminal_id)
        return bytes(buf)

    async def aclose(self) -> None:
        """Close the session if this driver owns it (idempotent)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._own_session:
            await session.close()
