"""The counters every driver shares, each name with one meaning.

A driver counts what it had to throw away or could not do with :meth:`DeviceContext.count
<drivers.base.DeviceContext.count>`. The names below mean the same thing in every driver, so one metric
family shows them for every device (``edgegw_decode_errors``, ``edgegw_framer_bytes_skipped``,
``edgegw_framer_frames_rejected`` read the first three; every counter is also in ``edgegw_driver_counter``
and the shutdown summary). A driver uses these constants, never the strings; what only one device family
has (an R2000 frame from another bus address, a Modbus exception code) is named by that driver, at the top
of its module, on top of these: a damaged Modbus reply counts ``bad_crc`` *and* ``frames_rejected``.

:class:`FramerTally` charges a framer's and a link's own counters (monotonic, per connection) to the
device's, as they grow.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Final, Protocol

from protocols.framing import FramerStats

__all__ = [
    "BYTES_SKIPPED",
    "DECODE_ERRORS",
    "EMPTY_POLLS",
    "FRAMES_REJECTED",
    "OVERFLOW_BYTES",
    "POLLS",
    "POLLS_MISSED",
    "POLLS_UNCHANGED",
    "REJECTIONS",
    "TIMEOUTS",
    "Count",
    "FramerTally",
]

# -- what arrived damaged, or could not be used ------------------------------------------------------------

BYTES_SKIPPED: Final = "bytes_skipped"
"""Bytes a framer discarded to find the next frame: line noise, the rest of a damaged frame, a frame cut
short by a reconnect. Never a frame's own preamble (DL/T 645's wake-up bytes)."""

FRAMES_REJECTED: Final = "frames_rejected"
"""Candidate frames a framer threw away as damaged: a bad checksum or CRC, an impossible length, a header
of another protocol version; also a frame that passed its check but held a whole valid frame inside it."""

DECODE_ERRORS: Final = "decode_errors"
"""Whole frames (they passed the framer's checks) that did not decode into what the protocol says: an
unknown or truncated message, a reply whose length does not fit the request, a value that is not a value
(not BCD, say). Counted and skipped; never turned into an event."""

OVERFLOW_BYTES: Final = "overflow_bytes"
"""Bytes the link discarded, oldest first, because the driver fell behind (a serial port cannot be paused:
what is not read in time is lost here, counted, rather than held without bound)."""

# -- requests and polls ------------------------------------------------------------------------------------

TIMEOUTS: Final = "timeouts"
"""Requests left without an answer after every attempt (the device is silent or the reply was lost)."""

POLLS: Final = "polls"
"""Polls the device answered (a poll is every request of one schedule)."""

POLLS_MISSED: Final = "polls_missed"
"""Polls that did not happen because the one before overran its period: the schedule skips them (it never
bursts to catch up), so a poll period too short for the line shows here."""

POLLS_UNCHANGED: Final = "polls_unchanged"
"""Polls answered with values of which none was due to be reported (report on change, deadbands): no
event."""

EMPTY_POLLS: Final = "empty_polls"
"""Polls the device answered without one usable value (every reply damaged or refused): no event."""


Count = Callable[[str, int], None]
"""How a counter is added to: :meth:`DeviceContext.count <drivers.base.DeviceContext.count>`."""

REJECTIONS: Final = ("bad_checksum", "bad_length", "overlapping")
"""The fields of :class:`~protocols.framing.FramerStats` that count rejected candidates (a framer with
more kinds of rejection, such as LLRP's ``bad_version``, names its own)."""


class _Overflowing(Protocol):
    @property
    def overflow_bytes(self) -> int: ...


class FramerTally:
    """Charges to a device's counters what a framer (and the link it reads) dropped since the last charge:
    :data:`BYTES_SKIPPED`, :data:`FRAMES_REJECTED` (the sum of the ``rejections`` fields of the framer's
    stats) and the link's :data:`OVERFLOW_BYTES`.

    A framer's stats grow for as long as it lives (one connection); a device's counters for as long as the
    device. Call :meth:`charge` after each feed (cheap when nothing changed: three comparisons). On a line
    shared by several devices, the device whose exchange is running is charged."""

    __slots__ = ("_link", "_overflow", "_rejected", "_rejections", "_skipped", "_stats")

    def __init__(
        self, stats: FramerStats, link: _Overflowing | None = None, rejections: tuple[str, ...] = REJECTIONS
    ) -> None:
        self._stats = stats
        self._link = link
        self._rejections = attrgetter(*rejections)
        self._skipped = stats.bytes_skipped
        self._rejected = self._rejected_now()
        self._overflow = link.overflow_bytes if link is not None else 0

    def _rejected_now(self) -> int:
        got: int | tuple[int, ...] = self._rejections(self._stats)
        return got if isinstance(got, int) else sum(got)

    def rejected_since(self) -> int:
        """Candidate frames rejected since the last charge (they are charged at the next)."""
        return self._rejected_now() - self._rejected

    def charge(self, count: Count) -> None:
        """Add what grew since the last charge to ``count``."""
        stats = self._stats
        skipped = stats.bytes_skipped
        if skipped != self._skipped:
            count(BYTES_SKIPPED, skipped - self._skipped)
            self._skipped = skipped
        rejected = self._rejected_now()
        if rejected != self._rejected:
            count(FRAMES_REJECTED, rejected - self._rejected)
            self._rejected = rejected
        link = self._link
        if link is not None:
            overflow = link.overflow_bytes
            if overflow != self._overflow:
                count(OVERFLOW_BYTES, overflow - self._overflow)
                self._overflow = overflow
