"""Logging for ``edgegw run``: one line per record on stderr, levels per logger from the config.

One record is one line, always: a traceback's lines are joined with `` | `` (journald would otherwise make
each line a record of its own, the first with the record's priority and the rest at the default). Under
systemd, with stderr connected to the journal (``$JOURNAL_STREAM`` names stderr's device and inode), the
line has no timestamp (journald stamps every line itself) and starts with the syslog priority (``<3>``
error ... ``<7>`` debug), which journald turns into the record's ``PRIORITY=``, so ``journalctl -p warning``
works. Elsewhere (a terminal, a file, the tests) lines start with a timestamp.

Levels: ``gateway.log_level`` for the root logger (``--log-level`` on the command line overrides it), and
``gateway.log_levels`` for single loggers (``{edgegw.forwarder: DEBUG}``); a reload applies both again, and
a logger dropped from ``log_levels`` goes back to following the root.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Final, TextIO

__all__ = ["LogSetup", "OneLineFormatter", "under_journald"]

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"
_PRIORITY: Final = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_journald(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal's stream socket (systemd's ``JOURNAL_STREAM=DEV:INODE``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor behind it (a test's StringIO)
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


class OneLineFormatter(logging.Formatter):
    """The formatter of both modes (see the module docstring)."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__(JOURNAL_FORMAT if journal else PLAIN_FORMAT)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" in text or "\r" in text:
            text = " | ".join(line for line in text.splitlines() if line.strip())
        if self.journal:
            priority = _PRIORITY.get(record.levelno, 7 if record.levelno < logging.INFO else 6)
            if record.levelno > logging.CRITICAL:
                priority = 2
            return f"<{priority}>{text}"
        return text


class LogSetup:
    """The process's logging: one handler on the root logger, and the levels it was last told."""

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
        override: str | None = None,
    ) -> None:
        """``override``: the root level from ``--log-level``, which wins over the config's."""
        self.stream = sys.stderr if stream is None else stream
        self.journal = under_journald(self.stream, environ)
        self.override = override.upper() if override else None
        self._levels: dict[str, str] = {}
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(OneLineFormatter(journal=self.journal))
        self.handler = handler
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)

    def apply(self, level: str, levels: Mapping[str, str] | None = None) -> None:
        """Set the root level (unless overridden) and the per-logger levels; loggers set by an earlier call
        and absent now follow the root again."""
        logging.getLogger().setLevel((self.override or level).upper())
        wanted = {name: value.upper() for name, value in (levels or {}).items()}
        for name in self._levels.keys() - wanted.keys():
            logging.getLogger(name).setLevel(logging.NOTSET)
        for name, value in wanted.items():
            logging.getLogger(name).setLevel(value)
        self._levels = wanted
