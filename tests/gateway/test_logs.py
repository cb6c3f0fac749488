"""Logging of ``edgegw run`` (gateway/logs.py): one line per record, journald's priority prefix, levels per
logger that a reload can change and take back."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ops.logs import LogSetup, OneLineFormatter, under_journald


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("edgegw.test.a", "edgegw.test.b"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def record(level: int, message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nthing")
        except ValueError as err:
            exc_info = (type(err), err, err.__traceback__)
    return logging.LogRecord("edgegw.x", level, __file__, 1, message, None, exc_info)


def test_a_traceback_and_newlines_stay_on_one_line() -> None:
    for journal in (False, True):
        text = OneLineFormatter(journal=journal).format(record(logging.ERROR, "two\nlines", exc=True))
        assert "\n" not in text and "\r" not in text
        assert "two | lines | Traceback (most recent call last): | " in text
        assert text.endswith("ValueError: bad | thing")


def test_journald_lines_carry_the_priority_and_no_timestamp() -> None:
    formatter = OneLineFormatter(journal=True)
    levels = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
    for level, priority in levels.items():
        name = logging.getLevelName(level)
        assert formatter.format(record(level, "m")) == f"<{priority}>{name} edgegw.x: m"
    plain = OneLineFormatter(journal=False).format(record(logging.INFO, "m"))
    assert plain.endswith(" INFO edgegw.x: m") and plain[:4].isdigit()


def test_journald_is_recognised_by_the_stream_itself(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with path.open("w") as stream, (tmp_path / "other").open("w") as other:
        st = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journald(stream, environ)
        assert not under_journald(other, environ)  # a child whose stderr was redirected elsewhere
        assert not under_journald(stream, {})
        assert not under_journald(stream, {"JOURNAL_STREAM": "garbage"})
        assert not under_journald(io.StringIO(), environ)


def test_levels_per_logger_are_applied_and_taken_back(restore_logging: None) -> None:
    stream = io.StringIO()
    logs = LogSetup(stream=stream, environ={})
    logs.apply("warning", {"edgegw.test.a": "debug"})
    a, b = logging.getLogger("edgegw.test.a"), logging.getLogger("edgegw.test.b")
    a.debug("a-debug")
    b.info("b-info")
    b.warning("b-warning")
    logs.apply("error", {"edgegw.test.b": "info"})
    a.debug("a-debug-after")  # a follows the root (error) again
    b.info("b-info-after")
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["a-debug", "b-warning", "b-info-after"]
    assert logging.getLogger().level == logging.ERROR


def test_the_command_line_level_wins_over_the_config(restore_logging: None) -> None:
    logs = LogSetup(stream=io.StringIO(), environ={}, override="debug")
    logs.apply("error")
    assert logging.getLogger().level == logging.DEBUG
