"""Logging: plain lines for the journal or JSON lines, with every known secret redacted."""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from collections.abc import Iterable

import msgspec

_SECRETS: set[str] = set()
MASK = "********"


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never reach a log line (auth keys, tokens, passwords)."""
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    """`text` with every registered secret masked."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Renders the message once, masks secrets in it and in any exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return redact(msgspec.json.encode(entry).decode())


class _Deferred(logging.Handler):
    """Keeps each record (its message rendered now: its arguments may change once the caller goes
    on) for the writer thread. An append costs the event loop next to nothing; a queue that woke
    the writer for every record cost a thread switch, and a fight for the GIL, per log line."""

    def __init__(self, pending: collections.deque[logging.LogRecord], wake: threading.Event) -> None:
        super().__init__()
        self.pending = pending
        self.wake = wake

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.getMessage()
        record.args = None
        self.pending.append(record)
        if not self.wake.is_set():  # the first line of a burst wakes the writer; the rest ride along
            self.wake.set()


class _Writer(threading.Thread):
    """Woken by the first line of a burst, waits WRITE_EVERY_S for the rest of it, then redacts,
    formats and writes them (a pipe to the journal may block: never on the event loop). With
    nothing logged it sleeps: an idle daemon pays nothing for it."""

    def __init__(
        self, pending: collections.deque[logging.LogRecord], wake: threading.Event, handler: logging.Handler
    ) -> None:
        super().__init__(name="gatewayd-log-writer", daemon=True)
        self.pending = pending
        self.wake = wake
        self.handler = handler
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            self.wake.wait()
            if not self.stopping:
                time.sleep(WRITE_EVERY_S)
            # Cleared before the drain: a line added after it wakes the next round.
            self.wake.clear()
            self.write()
        self.write()

    def write(self) -> None:
        while self.pending:
            record = self.pending.popleft()
            if record.levelno >= self.handler.level:
                self.handler.handle(record)


# How long a line waits before the writer thread writes it.
WRITE_EVERY_S = 0.05
_writer: _Writer | None = None


def stop() -> None:
    """Write out every line still waiting and stop the writer thread (also run at exit)."""
    global _writer
    if _writer is not None:
        writer, _writer = _writer, None
        writer.stopping = True
        writer.wake.set()
        writer.join(timeout=5.0)


def setup(level: str = "INFO", fmt: str = "plain", stream: object = None) -> None:
    """Configure the root logger once for the daemon: records wait in memory for one writer thread
    (logging never blocks the event loop), which redacts, formats and writes them."""
    global _writer
    stop()
    # Neither format prints the caller's file and line, its thread or process: a record need not
    # walk the stack for them (findCaller was most of the cost of a log line on the event loop).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    pending: collections.deque[logging.LogRecord] = collections.deque()
    wake = threading.Event()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_Deferred(pending, wake))
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _writer = _Writer(pending, wake, handler)
    _writer.start()


atexit.register(stop)
