"""``gps``: a GPS/GNSS receiver speaking NMEA 0183 on a serial line (or behind a serial-to-Ethernet
converter).

::

    - name: gps
      driver: gps
      port: /dev/ttyUSB2
      baudrate: 9600
      every_s: 10                # a fix at least this often while there is one
      every_m: 50                # and whenever the vehicle moved this far since the last one reported
      heading_change_deg: 30     # and whenever its course turned this much (above heading_min_speed_kmh)
      max_fix_age_s: 10          # how old a fix may be to stamp another device's events (position_from)

The receiver's sentences are framed and their checksums checked by :class:`protocols.nmea.NmeaFramer`
(bad checksums and sentences cut short are counted, ``frames_rejected``, and skipped; the stream
resynchronises at the next ``$``) and decoded by pynmeagps (:func:`protocols.nmea.decode`): GGA, RMC, VTG
and GSA from any talker (GP, GN, BD, GB, GL, GA...). Other sentences (GSV, GLL, TXT, proprietary) are
counted (``other_sentences``) and passed over; a fix sentence that does not decode (a field that is not
what it should be) is ``decode_errors``.

A receiver sends one burst of sentences per *epoch* (a second, usually), each timed sentence stamped with
the epoch's UTC time. The epoch's fix is made when its GGA and RMC are both in (or, for a receiver that
sends only one of them, when the next epoch begins), with the latest VTG and GSA filling what they lack.
It becomes a ``gps.fix`` event::

    {"lat": 47.2852332, "lon": -8.565265, "alt_m": 499.6, "speed_kmh": 36.2, "course_deg": 77.5,
     "fix_quality": 1, "satellites": 8, "hdop": 1.01, "time": "2026-12-03T09:27:25.000Z",
     "reason": "distance"}

whose ``ts`` is the receiver's time (``time``), not the gateway's. The first fix (after starting, or after a
loss) is reported at once; then a fix is reported when ``every_s`` passed since the last one reported, when
the position moved ``every_m`` (great-circle distance) or the course turned ``heading_change_deg``,
whichever comes first (``reason``: ``first``, ``period``, ``distance``, ``heading``). Fixes not due are
counted (``fixes_held``). Without a fix (GGA quality 0, RMC status V, no position) no ``gps.fix`` is made,
never a fix at 0,0: the driver emits ``device.status`` ``no_fix`` once when the fix is lost (or the
receiver starts without one), and ``fix`` when it is back, each with a ``detail``.

Every fix made, reported or not, is also shared with the gateway (the context's ``share_fix``, where it
has one: :data:`ShareFix`), so the devices stamped from this receiver (``position_from``) carry its latest
position, not only the latest reported.

The date comes from RMC; a receiver that sends GGA alone is dated by the gateway's clock (the date that puts
the fix nearest to now). A receiver that sends no whole sentence for ``read_timeout_s`` is a
:class:`~drivers.errors.DeviceTimeout` and the supervisor reconnects with backoff; the reason tells a silent
receiver (``receiver silent for 5 s``) from one whose bytes make no sentence (``no NMEA sentence in 5 s, only
bytes that make none (another baud rate than 9600?)``).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from pydantic import Field, field_validator

from protocols import nmea
from protocols.errors import DecodeError, EncodeError

from .base import DeviceContext
from .counters import DECODE_ERRORS
from .errors import DeviceTimeout
from .kinds import DEVICE_STATUS, GPS_FIX
from .link import LinkOptions, SerialOrTcpOptions
from .session import StreamDriver, StreamSession
from .transport import ByteLink

__all__ = ["DEFAULT_MAX_FIX_AGE_S", "FixMaker", "GpsDriver", "GpsOptions", "ShareFix", "distance_m"]

# The driver's own counters, on top of drivers.counters' (frames_rejected, bytes_skipped, decode_errors,
# overflow_bytes).
OTHER_SENTENCES: Final = "other_sentences"
"""Well-formed sentences that are not GGA, RMC, VTG or GSA (GSV, GLL, TXT, proprietary): passed over."""
FIXES: Final = "fixes"
"""Epochs with a fix."""
FIXES_HELD: Final = "fixes_held"
"""Epochs with a fix that was not due to be reported (every_s, every_m, heading_change_deg)."""
NO_FIX_EPOCHS: Final = "no_fix_epochs"
"""Epochs without a fix."""

DEFAULT_MAX_FIX_AGE_S: Final = 10.0

ShareFix = Callable[[Mapping[str, Any], float], None]
"""``share_fix(data, ts)``: what a device context may offer (the gateway's does) to be told of every fix the
receiver made, reported or not: ``data`` as a ``gps.fix`` event's, ``ts`` the receiver's time. Position
stamping (``position_from``) stamps with the latest of them, not only with the fixes reported upstream."""
_KNOTS_KMH: Final = 1.852
_EARTH_RADIUS_M: Final = 6_371_008.8


class GpsOptions(SerialOrTcpOptions):
    """A receiver's link and when its fixes are worth an event."""

    baudrate: Literal[4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800] = Field(
        default=9600, description="Serial line speed (NMEA 0183 says 4800; most receivers ship at 9600)."
    )
    every_s: float | None = Field(
        default=10.0,
        gt=0,
        le=86400,
        description="Report a fix at least this often (receiver time) while there is one; null: only by "
        "distance or heading.",
    )
    every_m: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Report a fix whenever the position moved this far (metres).",
    )
    heading_change_deg: float | None = Field(
        default=None, gt=0, le=180, description="Report a fix whenever the course turned this much (degrees)."
    )
    heading_min_speed_kmh: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="Below this speed the course is noise: heading_change_deg does not apply.",
    )
    max_fix_age_s: float = Field(
        default=DEFAULT_MAX_FIX_AGE_S,
        gt=0,
        le=86400,
        description="How old this receiver's latest fix may be (against an event's time) to stamp "
        "the events of a device with position_from naming it.",
    )
    read_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="A receiver silent this long (no byte) is reconnected."
    )
    init_sentences: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Sentences sent to the receiver on every connect, before reading (its configuration: "
        "'PMTK220,1000' for a 1 Hz MediaTek, 'PUBX,40,GSV,0,0,0,0,0,0' to silence a u-blox's GSV); without "
        "'$' and checksum, which the driver adds, or whole. None by default: the driver only listens.",
    )

    @field_validator("init_sentences")
    @classmethod
    def _sentences(cls, sentences: list[str]) -> list[str]:
        for text in sentences:
            try:
                nmea.command(text)
            except EncodeError as err:
                raise ValueError(str(err)) from None
        return sentences


class GpsDriver(StreamDriver[GpsOptions]):
    name: ClassVar[str] = "gps"
    Options: ClassVar[type[GpsOptions]] = GpsOptions
    emits: ClassVar[frozenset[str]] = frozenset({GPS_FIX, DEVICE_STATUS})

    def link(self) -> LinkOptions:
        return self.options.link

    def session(self, link: ByteLink, ctx: DeviceContext) -> _Session:
        return _Session(link, self.options, ctx, clock=time.time)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine on the mean Earth radius: within 0.5 % of the ellipsoid,
    plenty for a reporting distance)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _turn(a: float, b: float) -> float:
    """The smaller angle between two courses, 0..180 degrees."""
    d = abs(a - b) % 360
    return 360 - d if d > 180 else d


@dataclass(slots=True)
class _Epoch:
    """The timed sentences of one epoch so far."""

    time: dt.time
    gga: nmea.Gga | None = None
    rmc: nmea.Rmc | None = None
    done: bool = False


@dataclass(slots=True)
class _Reported:
    ts: float
    lat: float
    lon: float
    course: float | None


class FixMaker:
    """Makes fixes of decoded sentences and decides which are reported: the driver's logic without I/O
    (the session feeds it; tests drive it directly). ``emit`` is the device context's; ``share``, when
    given, is told of every fix, reported or not (see :data:`ShareFix`)."""

    def __init__(
        self,
        options: GpsOptions,
        emit: Callable[..., None],
        count: Callable[[str, int], None],
        clock: Callable[[], float],
        share: ShareFix | None = None,
    ) -> None:
        self.options = options
        self._emit = emit
        self._share = share
        self._count = count
        self._clock = clock
        self._epoch: _Epoch | None = None
        self._vtg: nmea.Vtg | None = None
        self._gsa: nmea.Gsa | None = None
        self._date: dt.date | None = None
        self._has_fix: bool | None = None  # unknown until the first epoch
        self._reported: _Reported | None = None

    def sentence(self, decoded: nmea.Decoded) -> None:
        """Take one decoded sentence."""
        if isinstance(decoded, nmea.Vtg):
            self._vtg = decoded
            return
        if isinstance(decoded, nmea.Gsa):
            self._gsa = decoded
            return
        if isinstance(decoded, nmea.Rmc) and decoded.date is not None:
            self._date = decoded.date
        when = decoded.time
        if when is None:
            # Before the receiver knows the time: no fix, whatever else it says.
            if decoded.lat is not None and (
                (isinstance(decoded, nmea.Gga) and decoded.quality > 0)
                or (isinstance(decoded, nmea.Rmc) and decoded.valid)
            ):
                self._count(DECODE_ERRORS, 1)  # a position without a time is no fix to report
                return
            self._no_fix("no time yet")
            return
        epoch = self._epoch
        if epoch is None or epoch.time != when:
            if epoch is not None and not epoch.done:
                self._conclude(epoch)  # a receiver that sends only one of GGA and RMC
            epoch = self._epoch = _Epoch(when)
        if isinstance(decoded, nmea.Gga):
            epoch.gga = decoded
        else:
            epoch.rmc = decoded
        if not epoch.done and epoch.gga is not None and epoch.rmc is not None:
            self._conclude(epoch)

    # -- an epoch's fix --------------------------------------------------------------------------------
    def _conclude(self, epoch: _Epoch) -> None:
        epoch.done = True
        gga, rmc = epoch.gga, epoch.rmc
        if gga is not None:
            ok = gga.quality > 0 and gga.lat is not None
            lat, lon = gga.lat, gga.lon
            if rmc is not None and not rmc.valid and rmc.lat is None:
                ok = False
        else:
            assert rmc is not None
            ok = rmc.valid and rmc.lat is not None
            lat, lon = rmc.lat, rmc.lon
        if not ok or lat is None or lon is None:
            reason = "fix quality 0" if gga is not None and gga.quality == 0 else "no position"
            self._no_fix(reason)
            return
        self._count(FIXES, 1)
        ts, stamp = self._time(epoch.time)
        speed_kmh: float | None = None
        course: float | None = None
        if rmc is not None and rmc.valid:
            if rmc.speed_knots is not None:
                speed_kmh = rmc.speed_knots * _KNOTS_KMH
            course = rmc.course_deg
        vtg = self._vtg
        if vtg is not None:
            if speed_kmh is None:
                speed_kmh = vtg.speed_kmh
            if course is None:
                course = vtg.course_deg
        gsa = self._gsa
        satellites = gga.satellites if gga is not None else None
        hdop = gga.hdop if gga is not None else None
        if gsa is not None:
            if satellites is None and gsa.fix_type not in (None, 1):
                satellites = gsa.satellites
            if hdop is None:
                hdop = gsa.hdop
        data: dict[str, Any] = {
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "alt_m": gga.alt_m if gga is not None else None,
            "speed_kmh": None if speed_kmh is None else round(speed_kmh, 2),
            "course_deg": course,
            "fix_quality": gga.quality if gga is not None else 1,
            "satellites": satellites,
            "hdop": hdop,
            "time": stamp,
        }
        if self._share is not None:
            self._share(data, ts)
        if self._has_fix is not True:
            first = self._has_fix is None
            self._has_fix = True
            detail = f"fix (quality {data['fix_quality']}, {satellites} satellites)"
            self._emit(
                DEVICE_STATUS, {"state": "fix", "detail": detail if not first else f"first {detail}"}, ts
            )
            self._reported = None  # report the first fix after a loss at once
        why = self._due(ts, lat, lon, course, speed_kmh)
        if why is None:
            self._count(FIXES_HELD, 1)
            return
        data["reason"] = why
        self._reported = _Reported(ts, lat, lon, course)
        self._emit(GPS_FIX, data, ts)

    def _due(
        self, ts: float, lat: float, lon: float, course: float | None, speed: float | None
    ) -> str | None:
        last = self._reported
        opts = self.options
        if last is None or ts < last.ts:  # the first, or the receiver's clock went back (a reset)
            return "first"
        if opts.every_s is not None and ts - last.ts >= opts.every_s - 1e-6:
            return "period"
        if opts.every_m is not None and distance_m(last.lat, last.lon, lat, lon) >= opts.every_m:
            return "distance"
        if (
            opts.heading_change_deg is not None
            and course is not None
            and last.course is not None
            and speed is not None
            and speed >= opts.heading_min_speed_kmh
            and _turn(course, last.course) >= opts.heading_change_deg
        ):
            return "heading"
        return None

    def _no_fix(self, reason: str) -> None:
        self._count(NO_FIX_EPOCHS, 1)
        if self._has_fix is False:
            return
        self._has_fix = False
        self._emit(DEVICE_STATUS, {"state": "no_fix", "detail": f"receiver has no fix ({reason})"}, None)

    def _time(self, when: dt.time) -> tuple[float, str]:
        """The epoch's UTC time as epoch seconds and ISO 8601 (``2026-12-03T09:27:25.000Z``)."""
        date = self._date
        if date is None:  # no RMC yet: the gateway's date, the one that puts the fix nearest to now
            now = self._clock()
            today = dt.datetime.fromtimestamp(now, dt.UTC).date()
            candidates = [today + dt.timedelta(days=d) for d in (-1, 0, 1)]
            date = min(
                candidates,
                key=lambda d: abs(dt.datetime.combine(d, when.replace(tzinfo=dt.UTC)).timestamp() - now),
            )
        moment = dt.datetime.combine(date, when.replace(tzinfo=dt.UTC))
        stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return moment.timestamp(), stamp


class _Session(StreamSession[nmea.Sentence, GpsOptions]):
    """One connection to a receiver: frames, decodes and hands sentences to the :class:`FixMaker`."""

    device_noun: ClassVar[str] = "receiver"

    def __init__(
        self, link: ByteLink, options: GpsOptions, ctx: DeviceContext, *, clock: Callable[[], float]
    ) -> None:
        super().__init__(link, options, ctx, nmea.NmeaFramer(), silence_s=options.read_timeout_s)
        # The runtime's context shares every fix with the devices stamped from this receiver; another
        # context (drivers.testing's) has no share_fix, and the fixes go only where the events go.
        share: ShareFix | None = getattr(ctx, "share_fix", None)
        self.fixes = FixMaker(options, ctx.emit, ctx.count, clock, share)

    async def start(self) -> str:
        """Send the receiver its ``init_sentences``; it is connected once a whole sentence with a good
        checksum arrived."""
        for text in self.options.init_sentences:
            await self.write(nmea.command(text))
        began = self.loop.time()
        first = await self.recv(began + self.options.read_timeout_s)
        if first is None:
            raise DeviceTimeout(self._no_sentence(began))
        self.backlog.appendleft(first)
        talker, _ = nmea.kind_of(first)
        return f"NMEA 0183, talker {talker}"

    def _no_sentence(self, since: float) -> str:
        """Why no sentence came since ``since`` (loop time): silence, or bytes that made none (a receiver
        at another baud rate sends nothing else)."""
        timeout = self.options.read_timeout_s
        if self.last_received > since:
            return (
                f"no NMEA sentence in {timeout:g} s, only bytes that make none (another baud rate than "
                f"{self.options.baudrate}?)"
            )
        return f"receiver silent for {timeout:g} s"

    async def stream(self) -> None:
        timeout = self.options.read_timeout_s
        ctx = self.ctx
        fixes = self.fixes
        loop = self.loop
        last_sentence = loop.time()
        while True:
            sentence = await self.recv(last_sentence + timeout)
            if sentence is None:
                raise DeviceTimeout(self._no_sentence(last_sentence))
            last_sentence = loop.time()
            talker, kind = nmea.kind_of(sentence)
            if kind not in nmea.KINDS or talker not in nmea.TALKERS:
                ctx.count(OTHER_SENTENCES, 1)
                continue
            try:
                decoded = nmea.decode(sentence)
            except DecodeError as err:
                ctx.count(DECODE_ERRORS, 1)
                ctx.log.debug("undecodable sentence %r: %s", sentence[:40], err)
                continue
            fixes.sentence(decoded)
