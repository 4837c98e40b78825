"""The daemon's logging: lines written off the event loop, secrets masked, nothing lost at stop."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from gatewayd.observe import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        yield out
    finally:
        logs.stop()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def _wait_for(out: io.StringIO, text: str, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in out.getvalue():
            return out.getvalue()
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never written; got {out.getvalue()!r}")


def test_a_line_is_written_soon_with_its_secret_masked(stream: io.StringIO) -> None:
    logs.register_secrets(["sk-test-0123456789"])
    logs.setup("INFO", "plain", stream)
    logging.getLogger("gatewayd.test").warning("terminal %s refused key %s", "lane-1", "sk-test-0123456789")
    written = _wait_for(stream, "lane-1")
    assert "WARNING gatewayd.test: terminal lane-1 refused key ********" in written
    assert "sk-test-0123456789" not in written


def test_the_message_is_rendered_when_logged_not_when_written(stream: io.StringIO) -> None:
    logs.setup("INFO", "plain", stream)
    state = {"n": 1}
    logging.getLogger("gatewayd.test").info("state %s", state)
    state["n"] = 2  # the caller goes on and changes it before the writer wakes
    assert "state {'n': 1}" in _wait_for(stream, "state")


def test_stop_writes_every_line_still_waiting_in_order(stream: io.StringIO) -> None:
    logs.setup("INFO", "json", stream)
    log = logging.getLogger("gatewayd.test")
    for i in range(2000):
        log.info("line %d", i)
    logs.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in lines] == [f"line {i}" for i in range(2000)]
    assert {e["level"] for e in lines} == {"INFO"} and {e["logger"] for e in lines} == {"gatewayd.test"}


def test_levels_below_the_configured_one_are_not_written(stream: io.StringIO) -> None:
    logs.setup("WARNING", "plain", stream)
    log = logging.getLogger("gatewayd.test")
    log.info("quiet")
    log.error("loud")
    logs.stop()
    assert "loud" in stream.getvalue() and "quiet" not in stream.getvalue()


def test_an_exception_is_written_with_its_secret_masked(stream: io.StringIO) -> None:
    logs.register_secrets(["pw-abcdef-987654"])
    logs.setup("INFO", "plain", stream)
    try:
        raise RuntimeError("connect failed with password pw-abcdef-987654")
    except RuntimeError:
        logging.getLogger("gatewayd.test").exception("database")
    logs.stop()
    written = stream.getvalue()
    assert "RuntimeError: connect failed with password ********" in written
    assert "pw-abcdef-987654" not in written


def test_lines_logged_after_a_quiet_spell_are_written_too(stream: io.StringIO) -> None:
    """The writer sleeps while nothing is logged and wakes for the next burst."""
    logs.setup("INFO", "plain", stream)
    log = logging.getLogger("gatewayd.test")
    log.info("first")
    _wait_for(stream, "first")
    writer = logs._writer
    assert writer is not None
    deadline = time.monotonic() + 5.0
    while writer.wake.is_set() or writer.pending:  # until the writer has gone back to sleep
        assert time.monotonic() < deadline, "the writer never went back to sleep"
        time.sleep(0.01)
    log.info("second")
    _wait_for(stream, "second")
