"""The driver side of commands: what a driver offers, and how it answers.

A driver that can be controlled lists its commands in the class attribute ``commands``, a mapping of name to
:class:`CommandSpec` (the pydantic model of the command's ``args`` and a one-line description), and
implements :meth:`drivers.base.Driver.command`. The runtime (``gateway/commands``) does everything that is
the same for every device before a driver sees a request: the MQTT protocol, the allow-list of the device's
``commands:``, validating ``args`` against the spec's model, expiry, de-duplication, in-flight and rate
limits, the audit events. The driver then checks what only it knows (is this point writable, is the value
in range for its type) and talks to its device.

The outcome of :meth:`~drivers.base.Driver.command`:

- it returns the result's ``data`` (a JSON-able mapping, or None): status ``ok``;
- it raises :class:`CommandRefused`: status ``refused``, nothing reached the device (the value was out of
  range, the point is not writable, the device is not in a state to do it);
- it raises :class:`CommandFailed` (or a :class:`~drivers.errors.DriverError`, or ``OSError``): status
  ``error``, the device was asked and it failed, or the exchange failed;
- the runtime's deadline passes: status ``timeout``.

``commands`` is read by the config loader (a device's ``commands:`` may name only these) and by the JSON
Schema generator (which documents each command's ``args``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class CommandArgs(BaseModel):
    """Base of every command's ``args`` model: unknown keys are errors, values immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(CommandArgs):
    """A command that takes no arguments."""


@dataclass(frozen=True)
class CommandSpec:
    """One command a driver offers: its ``args`` model and what it does, in one line."""

    args: type[CommandArgs]
    doc: str


class CommandRefused(Exception):
    """The request is not acceptable; nothing was sent to the device. The message is the result's reason."""


class CommandFailed(Exception):
    """The device was asked, and the exchange failed. The message is the result's reason."""


CommandData = Mapping[str, Any] | None
"""What a command returns: the result's ``data``."""
