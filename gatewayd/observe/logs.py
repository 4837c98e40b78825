"""Logging: plain lines for the journal or JSON lines, with every known secret redacted."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
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


class _Enqueue(logging.handlers.QueueHandler):
    """Hands each record to the writer thread as it is: the queue stays in this process, so the
    record needs no pickling, and the redaction, the formatting and the write (a pipe to the
    journal, which may block) all happen off the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is rendered now: its arguments may change once the caller goes on.
        record.msg = record.getMessage()
        record.args = None
        return record


_listener: logging.handlers.QueueListener | None = None


def stop() -> None:
    """Write out every line still queued and stop the writer thread (also run at exit)."""
    global _listener
    if _listener is not None:
        listener, _listener = _listener, None
        listener.stop()


def setup(level: str = "INFO", fmt: str = "plain", stream: object = None) -> None:
    """Configure the root logger once for the daemon: records go through a queue to one writer
    thread (logging never blocks the event loop), which redacts, formats and writes them."""
    global _listener
    stop()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_Enqueue(records))
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    _listener.start()


atexit.register(stop)
