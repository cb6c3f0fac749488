"""The driver contract.

A driver is a class registered under a name (the YAML ``driver:`` value, see :mod:`drivers.registry`) with a
pydantic model for its options. The runtime builds it with the device's name and validated options and calls
:meth:`Driver.run` with a :class:`DeviceContext`. ``run`` connects, reports :meth:`DeviceContext.connected`,
reads until cancelled, and raises on failure: a :class:`~drivers.errors.TransientError` (or ``OSError``) is
retried by the supervisor with backoff, a :class:`~drivers.errors.ConfigurationError` stops the device.

Most drivers do not write ``run`` themselves but stand on one of two templates, which own the lifecycle,
the counters and the timeouts, and fill in the few steps only their protocol knows:

- :class:`drivers.session.StreamDriver` / :class:`~drivers.session.StreamSession`, for a device that pushes
  frames (an RFID reader's reports, a GPS receiver's sentences): the framer, the backlog, the silence, the
  framer's counters, room in the pipeline;
- :class:`drivers.polled.PolledDriver` / :class:`~drivers.polled.PolledDevice`, for a device that is asked (a
  meter on a shared RS-485 line): the line (:mod:`drivers.bus`), the staggered schedule and its missed polls,
  connected on the first answer, the report-on-change event.

Where a device is reached is :class:`drivers.link.LinkOptions` (a serial port, a TCP host, TLS), opened by
:func:`drivers.link.open_link`; the counter names every driver shares are in :mod:`drivers.counters`, the
event kinds in :mod:`drivers.kinds`.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo

from .bus import SharedLine
from .commands import CommandArgs, CommandData, CommandRefused, CommandSpec

CONFIG_DIR: Final = "edgegw.config_dir"
"""The key, in the validation context the config loader gives a driver's options, of the directory of the
file that names the device: a driver's option that is a file (a CAN device's ``dbc``) is relative to it."""


def config_path(value: str | os.PathLike[str], info: ValidationInfo) -> Path:
    """``value`` (a path from a device's options) made absolute: relative to the directory of the config file
    that names the device, or to the current directory when the options are validated without the loader."""
    path = Path(value)
    if path.is_absolute():
        return path
    base = info.context.get(CONFIG_DIR) if isinstance(info.context, dict) else None
    return Path(os.path.abspath(Path(base) / path if base is not None else path))


class DriverOptions(BaseModel):
    """Base of every driver's options model: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def shared_line(self) -> SharedLine | None:
        """The shared bus (:mod:`drivers.bus`) this device's driver attaches to, with the settings every
        device on it must share; None for a driver that uses no shared bus. The config compares the lines
        of all devices before anything starts: two devices on one bus with different settings are a
        configuration error naming both, not a device stopped at run time. A listen-only interface
        (:mod:`drivers.interfaces`: a CAN channel, a ZigBee coordinator, a Bluetooth adapter) is a shared
        line too, keyed by the interface's identity, with the settings its subscribers must agree on."""
        return None

    def exclusive_link(self) -> str | None:
        """The key (:func:`drivers.bus.serial_key`, :func:`drivers.bus.tcp_key`) of a link this device opens
        for itself alone, such as an RFID reader's serial port or an LLRP reader's one client connection;
        None when it opens none (or shares its line, see :meth:`shared_line`). The config refuses a second
        device naming that link, whatever its driver: two readers on one port would each take half of the
        other's bytes."""
        return None


class DeviceContext(Protocol):
    """What the runtime gives a running driver."""

    @property
    def device(self) -> str:
        """The device's name from the config."""
        ...

    @property
    def log(self) -> logging.Logger:
        """A logger named for this device."""
        ...

    def emit(self, kind: str, data: Mapping[str, Any], ts: float | None = None) -> None:
        """Hand an event to the pipeline. Never blocks: when the pipeline's bounded queue is full the event
        is dropped and counted (a serial reader must keep reading, or the port overruns at the source).
        ``ts`` defaults to the receive time."""
        ...

    def emit_many(self, kind: str, items: Sequence[Mapping[str, Any]], ts: float | None = None) -> None:
        """One event of ``kind`` and time ``ts`` per mapping of ``items``, in order: exactly what calling
        :meth:`emit` for each would do, at a fraction of the cost per event (for a driver that decodes
        thousands of reads from one chunk of input; its items are best :class:`~drivers.event.Record`
        instances, which build their dict or their JSON only when asked)."""
        ...

    def connected(self, detail: str = "") -> None:
        """Report that the device answered: the supervisor emits ``device.status`` connected and resets its
        backoff."""
        ...

    async def room(self) -> None:
        """Return at once unless the pipeline is congested (its queue over half full); then wait until it
        has drained. A command-driven driver calls it before asking the device for more, so that overload
        slows the device down instead of reading events only to drop them. Reading what already arrived
        never waits."""
        ...

    def count(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to one of this device's named counters: a name of :mod:`drivers.counters`
        (``decode_errors``, ``bytes_skipped``, ...) where one means what is counted, else the driver's own."""
        ...


OptionsT = TypeVar("OptionsT", bound=DriverOptions)


class Driver(abc.ABC, Generic[OptionsT]):
    """Base of every driver. Subclasses set ``name`` and ``Options`` and implement :meth:`run`."""

    name: ClassVar[str]
    Options: ClassVar[type[DriverOptions]]
    emits: ClassVar[frozenset[str]] = frozenset()
    """The event kinds it produces itself (:mod:`drivers.kinds`; the supervisor's ``device.status`` aside,
    which every device has): every driver declares them. The config allows an RFID device's ``smoothing:``
    only on a driver that emits ``rfid.read``."""

    commands: ClassVar[Mapping[str, CommandSpec]] = {}
    """The commands it offers (:mod:`drivers.commands`), by name; none by default. A device's ``commands:``
    in the config may name only these."""

    def __init__(self, device: str, options: OptionsT) -> None:
        self.device = device
        self.options = options

    @abc.abstractmethod
    async def run(self, ctx: DeviceContext) -> None:
        """Connect, call ``ctx.connected()``, read and emit until cancelled; raise on failure."""

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        """Carry out one command on the running device and return the result's ``data``.

        Called by the runtime on the instance whose :meth:`run` is running, with ``name`` one of
        :attr:`commands` that the device's config allows and ``args`` already validated against its model,
        while :meth:`run` goes on in the same event loop: a driver shares its line between its own reads
        and commands (a command never waits behind a whole poll cycle). Raise
        :class:`~drivers.commands.CommandRefused` for a request that must not reach the device,
        :class:`~drivers.commands.CommandFailed` when the device was asked and failed."""
        raise CommandRefused(f"driver {self.name!r} has no command {name!r}")
