"""NMEA 0183 from GPS/GNSS receivers: the sentence framer, and the four sentences a fix is made of.

A receiver on a serial line sends, once a second (an *epoch*), a burst of ASCII sentences::

    $GNRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091226,,,A,V*2A\\r\\n
    ^ talker (GP GPS, GN multi-GNSS, BD/GB BeiDou, GL GLONASS, GA Galileo) + sentence type
                                                                         ^ XOR of the bytes between $ and *

Parsing is pynmeagps' (a maintained NMEA parser and generator, BSD-3): this module does not parse fields
itself. It adds what a stream needs and pynmeagps' blocking stream reader does not fit (an asyncio driver
feeds bytes as they arrive):

- :class:`NmeaFramer` splits a byte stream into whole sentences (``$`` to LF), checks each checksum
  (``pynmeagps.calc_checksum``), counts what it rejects (``bad_checksum``; ``bad_length`` for a sentence cut
  short by the next ``$``, too long, not printable ASCII, or without its checksum) and skips garbage,
  resynchronising at the next ``$``;
- :func:`decode` turns one whole sentence of the four kinds a fix is made of (GGA, RMC, VTG, GSA, from any
  talker) into a small typed record (:class:`Gga`, :class:`Rmc`, :class:`Vtg`, :class:`Gsa`) through
  ``pynmeagps.NMEAReader.parse``; a sentence pynmeagps cannot parse, or with a field the fix needs that is
  malformed, raises :class:`~protocols.errors.DecodeError`. Empty fields are ordinary (a receiver without a
  fix sends ``$GPGGA,,,,,,0,00,99.99,,,,,,*48``): they decode to None;
- :func:`gga`, :func:`rmc`, :func:`vtg`, :func:`gsa` build sentences (pynmeagps' generator) for the
  simulator and the tests.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Final

# pynmeagps ships no type information (no py.typed): its messages are Any at this boundary.
from pynmeagps import GET, NMEAMessage, NMEAReader  # type: ignore[import-untyped]
from pynmeagps.exceptions import (  # type: ignore[import-untyped]
    NMEAMessageError,
    NMEAParseError,
    NMEATypeError,
)
from pynmeagps.nmeahelpers import calc_checksum  # type: ignore[import-untyped]

from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer

__all__ = [
    "KINDS",
    "MAX_SENTENCE",
    "TALKERS",
    "Gga",
    "Gsa",
    "NmeaFramer",
    "Rmc",
    "Sentence",
    "Vtg",
    "command",
    "decode",
    "gga",
    "gsa",
    "kind_of",
    "rmc",
    "sentence",
    "vtg",
]

MAX_SENTENCE: Final = 120
"""The longest sentence accepted, ``$`` to LF. NMEA 0183 says 82 characters; receivers with high-precision
or proprietary fields exceed it a little, so there is room, but a line without an end is not held forever."""

TALKERS: Final = frozenset({"GP", "GN", "BD", "GB", "GL", "GA", "GQ", "GI"})
"""The talkers whose fix sentences are decoded: GPS, multi-GNSS, BeiDou (BD and the NMEA 4.11 GB), GLONASS,
Galileo, QZSS, NavIC."""

KINDS: Final = frozenset({"GGA", "RMC", "VTG", "GSA"})
"""The sentence types a fix is made of."""

_DOLLAR: Final = 0x24
_LF: Final = 0x0A
_CR: Final = 0x0D
_STAR: Final = 0x2A
_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")
_FORBIDDEN: Final = frozenset((_STAR, _DOLLAR))


def _valid(raw: bytes | bytearray) -> str | None:
    """Why one candidate sentence (``$`` to LF included) is rejected: ``bad_length`` (malformed),
    ``bad_checksum``, or None if it is whole and its checksum matches."""
    end = len(raw) - 1  # the LF
    if end > 0 and raw[end - 1] == _CR:
        end -= 1
    star = end - 3
    if star < 1 or raw[star] != _STAR or raw[star + 1] not in _HEX or raw[star + 2] not in _HEX:
        return "bad_length"
    body = raw[1:star]
    for byte in body:
        if byte < 0x20 or byte > 0x7E or byte in _FORBIDDEN:
            return "bad_length"
    if calc_checksum(body.decode("ascii")) != bytes(raw[star + 1 : star + 3]).decode("ascii").upper():
        return "bad_checksum"
    return None


Sentence = bytes
"""One whole sentence as it arrived, ``$`` to LF (CR LF or LF) included, its checksum verified."""


class NmeaFramer(Framer[Sentence]):
    """Splits a receiver's byte stream into whole sentences whose checksum matches (see the module
    docstring).

    A candidate runs from ``$`` to the next LF. One cut short by the next ``$`` (a receiver reset, a lost
    line), longer than :data:`MAX_SENTENCE`, with bytes that are not printable ASCII or without ``*HH``, is
    a ``bad_length``; one whose checksum does not match a ``bad_checksum``. Either way its bytes are skipped
    (``bytes_skipped``) and the framer looks for the next ``$``. Bytes before a ``$`` are skipped too. It
    never raises on input."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Sentence]:
        buffer = self._buffer
        buffer += data
        stats = self.stats
        found: list[Sentence] = []
        size = len(buffer)
        pos = 0
        while pos < size:
            start = buffer.find(_DOLLAR, pos)
            if start < 0:
                stats.bytes_skipped += size - pos
                pos = size
                break
            if start > pos:
                stats.bytes_skipped += start - pos
                pos = start
            limit = min(size, start + MAX_SENTENCE)
            lf = buffer.find(_LF, start + 1, limit)
            cut = buffer.find(_DOLLAR, start + 1, limit if lf < 0 else lf)
            if cut >= 0:  # another sentence starts before this one ended: this one was cut short
                stats.bad_length += 1
                stats.bytes_skipped += cut - start
                pos = cut
                continue
            if lf < 0:
                if limit - start >= MAX_SENTENCE:  # no end within the longest sentence
                    stats.bad_length += 1
                    stats.bytes_skipped += limit - start
                    pos = limit
                    continue
                break  # wait for the rest
            end = lf + 1
            raw = buffer[start:end]
            why = _valid(raw)
            if why is None:
                stats.frames += 1
                found.append(bytes(raw))
            else:
                if why == "bad_checksum":
                    stats.bad_checksum += 1
                else:
                    stats.bad_length += 1
                stats.bytes_skipped += end - start
            pos = end
        del buffer[:pos]
        return found


# -- the four sentences of a fix --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gga:
    """GGA, the fix: position, quality (0 none, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 dead
    reckoning...), satellites used, HDOP, altitude above mean sea level (m). Empty fields are None."""

    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    quality: int
    satellites: int | None
    hdop: float | None
    alt_m: float | None


@dataclass(frozen=True, slots=True)
class Rmc:
    """RMC, the recommended minimum: time and date, valid (status A) or not (V), position, speed over
    ground (knots), course over ground (degrees true)."""

    talker: str
    time: dt.time | None
    date: dt.date | None
    valid: bool
    lat: float | None
    lon: float | None
    speed_knots: float | None
    course_deg: float | None


@dataclass(frozen=True, slots=True)
class Vtg:
    """VTG, course and speed over ground (km/h, degrees true)."""

    talker: str
    course_deg: float | None
    speed_kmh: float | None


@dataclass(frozen=True, slots=True)
class Gsa:
    """GSA, the satellites of the solution: fix type (1 none, 2 2D, 3 3D), how many are used, and the
    dilutions of precision."""

    talker: str
    fix_type: int | None
    satellites: int
    pdop: float | None
    hdop: float | None
    vdop: float | None


Decoded = Gga | Rmc | Vtg | Gsa


def kind_of(sentence: bytes) -> tuple[str, str]:
    """(talker, type) of a framed sentence, without parsing it: ``(b"GN", b"RMC")`` as str."""
    return sentence[1:3].decode("ascii", "replace"), sentence[3:6].decode("ascii", "replace")


def _number(value: Any, what: str, low: float, high: float) -> float | None:
    """A field pynmeagps gave (a number, or "" when empty) as a finite float in [low, high], None when
    empty; anything else is a DecodeError."""
    if value == "" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{what}: {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise DecodeError(f"{what}: {number} is out of range [{low}, {high}]")
    return number


def _count(value: Any, what: str, high: int) -> int | None:
    number = _number(value, what, 0, high)
    return None if number is None else int(number)


def _time(value: Any) -> dt.time | None:
    if value == "" or value is None:
        return None
    if not isinstance(value, dt.time):
        raise DecodeError(f"time: {value!r} is not a time of day")
    return value


def _date(value: Any) -> dt.date | None:
    if value == "" or value is None:
        return None
    if not isinstance(value, dt.date):
        raise DecodeError(f"date: {value!r} is not a date")
    return value


def _position(msg: NMEAMessage) -> tuple[float | None, float | None]:
    """Latitude and longitude, decimal degrees (negative south and west): both or neither."""
    lat = _number(getattr(msg, "lat", ""), "latitude", -90, 90)
    lon = _number(getattr(msg, "lon", ""), "longitude", -180, 180)
    if (lat is None) != (lon is None):
        raise DecodeError("a latitude without a longitude, or the reverse")
    if lat is not None and (
        getattr(msg, "NS", "") not in ("N", "S") or getattr(msg, "EW", "") not in ("E", "W")
    ):
        # pynmeagps takes a missing hemisphere for north or east: a position on the wrong side of the world
        raise DecodeError("a position without its hemispheres (N/S, E/W)")
    return lat, lon


def decode(sentence: bytes) -> Decoded:
    """One whole sentence (as :class:`NmeaFramer` returns it) of a kind in :data:`KINDS`, from a talker in
    :data:`TALKERS`, decoded by pynmeagps. Raises :class:`DecodeError` for anything else, or a sentence
    whose fields are not what its kind says (a truncated sentence, letters in a number)."""
    talker, kind = kind_of(sentence)
    if talker not in TALKERS or kind not in KINDS:
        raise DecodeError(f"not a fix sentence: {sentence[:7]!r}")
    try:
        msg = NMEAReader.parse(bytes(sentence), validate=0x01)
    except (NMEAParseError, NMEAMessageError, NMEATypeError, ValueError, IndexError, TypeError) as err:
        raise DecodeError(f"{talker}{kind}: {err}") from err
    if msg is None:
        raise DecodeError(f"{talker}{kind}: not an NMEA sentence")
    try:
        return _fields(talker, kind, msg)
    except AttributeError as err:  # a sentence with fewer fields than its kind has
        raise DecodeError(f"{talker}{kind}: truncated ({err})") from err


def _fields(talker: str, kind: str, msg: NMEAMessage) -> Decoded:
    if kind == "GGA":
        lat, lon = _position(msg)
        quality = _count(msg.quality, "fix quality", 9)
        return Gga(
            talker=talker,
            time=_time(msg.time),
            lat=lat,
            lon=lon,
            quality=0 if quality is None else quality,
            satellites=_count(msg.numSV, "satellites", 99),
            hdop=_number(msg.HDOP, "hdop", 0, 99.99),
            alt_m=_number(msg.alt, "altitude", -10000, 1_000_000),
        )
    if kind == "RMC":
        lat, lon = _position(msg)
        return Rmc(
            talker=talker,
            time=_time(msg.time),
            date=_date(msg.date),
            valid=msg.status == "A",
            lat=lat,
            lon=lon,
            speed_knots=_number(msg.spd, "speed", 0, 100_000),
            course_deg=_number(msg.cog, "course", 0, 360),
        )
    if kind == "VTG":
        return Vtg(
            talker=talker,
            course_deg=_number(msg.cogt, "course", 0, 360),
            speed_kmh=_number(msg.sogk, "speed", 0, 200_000),
        )
    used = sum(1 for n in range(1, 13) if getattr(msg, f"svid_{n:02d}", "") not in ("", None))
    fix_type = _count(msg.navMode, "fix type", 3)
    return Gsa(
        talker=talker,
        fix_type=fix_type,
        satellites=used,
        pdop=_number(msg.PDOP, "pdop", 0, 99.99),
        hdop=_number(msg.HDOP, "hdop", 0, 99.99),
        vdop=_number(msg.VDOP, "vdop", 0, 99.99),
    )


# -- building sentences (the simulator, the tests, commands to a receiver) ---------------------------------


def command(text: str) -> bytes:
    """A sentence to send to a receiver (a proprietary configuration command such as MediaTek's
    ``PMTK220,1000`` or u-blox's ``PUBX,40,GSV,0,0,0,0,0,0``): ``text`` without ``$`` and checksum, or a whole
    sentence whose checksum is then verified; returns it framed, ``$`` to CR LF with its checksum. Raises
    :class:`EncodeError` for what cannot be a sentence (not printable ASCII, ``$`` or ``*`` inside, a wrong
    checksum, too long)."""
    body = text.strip()
    if body.startswith("$"):
        body = body[1:]
        head, star, given = body.rpartition("*")
        if not star or len(given) != 2:
            raise EncodeError(f"{text!r}: a whole sentence ends with *HH")
        if calc_checksum(head) != given.upper():
            raise EncodeError(f"{text!r}: its checksum should be {calc_checksum(head)}")
        body = head
    if not body or any(not 0x20 <= ord(c) <= 0x7E or c in "$*" for c in body):
        raise EncodeError(f"{text!r}: a sentence is printable ASCII without '$' or '*'")
    framed = f"${body}*{calc_checksum(body)}\r\n".encode("ascii")
    if len(framed) > MAX_SENTENCE:
        raise EncodeError(f"{text!r}: longer than {MAX_SENTENCE} characters")
    return framed


def sentence(talker: str, kind: str, **fields: Any) -> bytes:
    """One sentence built by pynmeagps' generator (``$`` to CR LF, checksum included)."""
    try:
        out: bytes = NMEAMessage(talker, kind, GET, **fields).serialize()
    except (NMEAMessageError, NMEATypeError, ValueError, TypeError) as err:
        raise EncodeError(f"{talker}{kind}: {err}") from err
    return out


def _hemispheres(lat: float | None, lon: float | None) -> dict[str, Any]:
    if lat is None or lon is None:
        return {"lat": "", "NS": "", "lon": "", "EW": ""}
    return {"lat": lat, "NS": "N" if lat >= 0 else "S", "lon": lon, "EW": "E" if lon >= 0 else "W"}


def _hms(time: dt.time | None) -> Any:
    return "" if time is None else time


def gga(
    time: dt.time | None,
    lat: float | None,
    lon: float | None,
    *,
    quality: int = 1,
    satellites: int = 8,
    hdop: float = 0.9,
    alt_m: float = 0.0,
    talker: str = "GN",
) -> bytes:
    """A GGA sentence; ``lat``/``lon`` None (and quality 0) for no fix."""
    if lat is None:
        return sentence(
            talker,
            "GGA",
            time=_hms(time),
            **_hemispheres(None, None),
            quality=0,
            numSV=0,
            HDOP=99.99,
            alt="",
            altUnit="",
            sep="",
            sepUnit="",
            diffAge="",
            diffStation="",
        )
    return sentence(
        talker,
        "GGA",
        time=_hms(time),
        **_hemispheres(lat, lon),
        quality=quality,
        numSV=satellites,
        HDOP=hdop,
        alt=alt_m,
        altUnit="M",
        sep=0.0,
        sepUnit="M",
        diffAge="",
        diffStation="",
    )


def rmc(
    time: dt.time | None,
    date: dt.date | None,
    lat: float | None,
    lon: float | None,
    *,
    speed_knots: float = 0.0,
    course_deg: float = 0.0,
    talker: str = "GN",
) -> bytes:
    """An RMC sentence, valid (A) with a position, not valid (V) without one."""
    valid = lat is not None
    return sentence(
        talker,
        "RMC",
        time=_hms(time),
        status="A" if valid else "V",
        **_hemispheres(lat, lon),
        spd=speed_knots if valid else "",
        cog=course_deg if valid else "",
        date="" if date is None else date,
        mv="",
        mvEW="",
        posMode="A" if valid else "N",
        navStatus="V",
    )


def vtg(course_deg: float | None, speed_kmh: float | None, *, talker: str = "GN") -> bytes:
    """A VTG sentence (course true; speed in knots and km/h)."""
    knots: Any = "" if speed_kmh is None else round(speed_kmh / 1.852, 3)
    return sentence(
        talker,
        "VTG",
        cogt="" if course_deg is None else course_deg,
        cogtUnit="T",
        cogm="",
        cogmUnit="M",
        sogn=knots,
        sognUnit="N",
        sogk="" if speed_kmh is None else speed_kmh,
        sogkUnit="K",
        posMode="A" if speed_kmh is not None else "N",
    )


def gsa(
    satellites: list[int],
    *,
    fix_type: int = 3,
    pdop: float = 1.5,
    hdop: float = 0.9,
    vdop: float = 1.2,
    talker: str = "GN",
) -> bytes:
    """A GSA sentence with up to 12 satellite ids."""
    ids: dict[str, Any] = {f"svid_{n:02d}": "" for n in range(1, 13)}
    for n, sv in enumerate(satellites[:12], start=1):
        ids[f"svid_{n:02d}"] = sv
    return sentence(
        talker, "GSA", opMode="A", navMode=fix_type, **ids, PDOP=pdop, HDOP=hdop, VDOP=vdop, systemId=""
    )
