"""protocols.nmea: the sentence framer (the shared framer suite, and what is particular to NMEA) and the
decoding of GGA, RMC, VTG and GSA through pynmeagps, with hypothesis on bad checksums, truncated sentences
and empty fields.

The reference sentences are the examples published with the NMEA 0183 sentence descriptions (the GGA and
RMC of the widely quoted "NMEA data" tutorial, gpsd's "NMEA Revealed", u-blox's interface description):
facts of the standard, checked here against what pynmeagps decodes."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols import nmea
from protocols.errors import DecodeError, EncodeError

from .framer_suite import FramerSuite

REFERENCE_GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
REFERENCE_RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
UBLOX_GGA = b"$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*5B\r\n"
UBLOX_VTG = b"$GPVTG,77.52,T,,M,0.004,N,0.008,K,A*06\r\n"
NO_FIX_GGA = b"$GPGGA,,,,,,0,00,99.99,,,,,,*48\r\n"


def _checksum(body: bytes) -> bytes:
    value = 0
    for byte in body:
        value ^= byte
    return f"{value:02X}".encode()


def _sentence(body: bytes) -> bytes:
    return b"$" + body + b"*" + _checksum(body) + b"\r\n"


# Sentence bodies: printable ASCII without $ and *, of any length that fits.
_BODY_CHARS = st.sampled_from([bytes([b]) for b in range(0x20, 0x7F) if b not in b"$*"])
_BODIES = st.lists(_BODY_CHARS, min_size=1, max_size=nmea.MAX_SENTENCE - 6).map(b"".join)
_ENDINGS = st.sampled_from([b"\r\n", b"\n"])


class TestNmeaFramer(FramerSuite[nmea.Sentence]):
    frames: ClassVar[st.SearchStrategy[bytes]] = st.builds(
        lambda body, ending: b"$" + body + b"*" + _checksum(body) + ending, _BODIES, _ENDINGS
    )
    flush = b"$\n"  # ends any candidate: it is cut short by this $, which its LF then rejects
    max_pending = nmea.MAX_SENTENCE

    def framer(self) -> nmea.NmeaFramer:
        return nmea.NmeaFramer()

    def encode(self, frame: bytes) -> bytes:
        return frame

    def decode(self, raw: bytes) -> bytes:
        framer = nmea.NmeaFramer()
        found = framer.feed(raw)
        if found != [raw] or framer.pending:
            raise DecodeError(f"not one whole sentence: {raw[:20]!r}")
        return raw

    def accidental(self, stream: bytes, spans: list[tuple[int, int]]) -> bool:
        # A $ in the garbage whose candidate (up to the next $, or its LF) is itself a valid sentence.
        for i, byte in enumerate(stream):
            if byte != 0x24 or any(start <= i < end for start, end in spans):
                continue
            candidate = stream[i : i + nmea.MAX_SENTENCE]
            cut = candidate.find(b"$", 1)
            if cut >= 0:
                candidate = candidate[:cut]
            lf = candidate.find(b"\n")
            if lf >= 0 and nmea.NmeaFramer().feed(candidate[: lf + 1]):
                return True
        return False

    def inert(self, garbage: bytes, frame: bytes) -> bytes:
        return garbage.replace(b"$", b"")

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        how = data.draw(st.sampled_from(["checksum", "flip", "cut"]), label="damage")
        star = raw.rindex(b"*")
        if how == "checksum":
            good = raw[star + 1 : star + 3]
            bad = data.draw(
                st.sampled_from([f"{n:02X}".encode() for n in range(256)]).filter(lambda b: b != good.upper())
            )
            return raw[: star + 1] + bad + raw[star + 3 :], ("bad_checksum",)
        if how == "flip":
            i = data.draw(st.integers(1, star - 1), label="at")
            flipped = raw[i] ^ data.draw(st.integers(1, 0x7F), label="bits")
            return raw[:i] + bytes([flipped]) + raw[i + 1 :], ("bad_checksum", "bad_length")
        cut = data.draw(st.integers(1, len(raw) - 2), label="cut")
        # Cut short: the next sentence's $ follows at once.
        return raw[:cut].replace(b"\n", b""), ("bad_length",)


# -- the framer's particular cases ------------------------------------------------------------------------


def test_reference_sentences_are_framed_and_decoded() -> None:
    framer = nmea.NmeaFramer()
    stream = REFERENCE_GGA + REFERENCE_RMC + UBLOX_GGA + UBLOX_VTG + NO_FIX_GGA
    assert framer.feed(stream) == [REFERENCE_GGA, REFERENCE_RMC, UBLOX_GGA, UBLOX_VTG, NO_FIX_GGA]
    gga = nmea.decode(REFERENCE_GGA)
    assert gga == nmea.Gga(
        talker="GP",
        time=dt.time(12, 35, 19),
        lat=round(48 + 7.038 / 60, 10),  # pynmeagps gives 10 decimals
        lon=round(11 + 31.0 / 60, 10),
        quality=1,
        satellites=8,
        hdop=0.9,
        alt_m=545.4,
    )
    rmc = nmea.decode(REFERENCE_RMC)
    assert isinstance(rmc, nmea.Rmc)
    assert rmc.valid and rmc.date == dt.date(1994, 3, 23) and rmc.speed_knots == 22.4
    assert rmc.course_deg == 84.4
    vtg = nmea.decode(UBLOX_VTG)
    assert vtg == nmea.Vtg(talker="GP", course_deg=77.52, speed_kmh=0.008)


def test_empty_fields_decode_to_none_never_to_zero() -> None:
    gga = nmea.decode(NO_FIX_GGA)
    assert isinstance(gga, nmea.Gga)
    assert (gga.time, gga.lat, gga.lon, gga.quality, gga.alt_m) == (None, None, None, 0, None)


def test_south_and_west_are_negative() -> None:
    gga = nmea.decode(nmea.gga(dt.time(1, 2, 3), -33.8688, -70.65, talker="GP"))
    assert isinstance(gga, nmea.Gga)
    assert gga.lat == pytest.approx(-33.8688, abs=1e-6) and gga.lon == pytest.approx(-70.65, abs=1e-6)
    raw = nmea.gga(dt.time(1, 2, 3), -33.8688, -70.65, talker="GP")
    assert b",S," in raw and b",W," in raw


@pytest.mark.parametrize("talker", ["GP", "GN", "BD", "GB", "GL", "GA"])
def test_every_talker_and_kind_round_trips(talker: str) -> None:
    when, day = dt.time(23, 59, 58, 500000), dt.date(2026, 12, 3)
    built = [
        nmea.gga(when, 30.1, 120.2, satellites=11, hdop=0.7, alt_m=-3.5, talker=talker),
        nmea.rmc(when, day, 30.1, 120.2, speed_knots=12.5, course_deg=359.9, talker=talker),
        nmea.vtg(359.9, 23.15, talker=talker),
        nmea.gsa([3, 7, 19], fix_type=3, talker=talker),
    ]
    framer = nmea.NmeaFramer()
    assert framer.feed(b"".join(built)) == built
    gga, rmc, vtg, gsa = (nmea.decode(s) for s in built)
    assert gga == nmea.Gga(talker, when, 30.1, 120.2, 1, 11, 0.7, -3.5)
    assert rmc == nmea.Rmc(talker, when, day, True, 30.1, 120.2, 12.5, 359.9)
    assert vtg == nmea.Vtg(talker, 359.9, 23.15)
    assert gsa == nmea.Gsa(talker, 3, 3, 1.5, 0.9, 1.2)


def test_a_sentence_cut_short_by_the_next_is_counted_and_the_next_found() -> None:
    framer = nmea.NmeaFramer()
    cut = REFERENCE_GGA[:30]
    assert framer.feed(cut + REFERENCE_RMC) == [REFERENCE_RMC]
    assert framer.stats.bad_length == 1 and framer.stats.bytes_skipped == len(cut)


def test_a_line_without_an_end_is_not_held_forever() -> None:
    framer = nmea.NmeaFramer()
    assert framer.feed(b"$" + b"A" * 500) == []
    assert framer.pending < nmea.MAX_SENTENCE and framer.stats.bad_length >= 1
    assert framer.feed(b"\r\n" + REFERENCE_GGA) == [REFERENCE_GGA]


def test_bad_checksum_is_counted_and_skipped() -> None:
    framer = nmea.NmeaFramer()
    bad = REFERENCE_GGA.replace(b"*47", b"*48")
    assert framer.feed(bad + REFERENCE_RMC) == [REFERENCE_RMC]
    assert framer.stats.bad_checksum == 1 and framer.stats.bytes_skipped == len(bad)


def test_lower_case_checksum_digits_are_accepted() -> None:
    body = b"GPVTG,77.52,T,,M,0.004,N,0.008,K,A"
    raw = b"$" + body + b"*" + _checksum(body).lower() + b"\r\n"
    assert nmea.NmeaFramer().feed(raw) == [raw]


def test_other_sentences_and_talkers_are_not_decoded() -> None:
    for raw in (
        _sentence(b"GPGSV,1,1,01,05,20,100,30"),
        _sentence(b"GNTXT,01,01,02,ANTENNA OK"),
        _sentence(b"PUBX,00,081350.00"),
        _sentence(b"XXGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
    ):
        with pytest.raises(DecodeError):
            nmea.decode(raw)


@pytest.mark.parametrize(
    "body",
    [
        b"GPGGA,123519,4807.038,N",  # truncated: the fields after the latitude are missing
        b"GPGGA,123519,48O7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # a letter in a number
        b"GPRMC,123519,A,4807.038,N,01131.000,E,fast,084.4,230394,003.1,W",
        b"GPGGA,123519,4807.038,N,,E,1,08,0.9,545.4,M,46.9,M,,",  # a latitude without a longitude
        b"GPGGA,123519,4807.038,,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # no hemisphere: no position
        b"GPRMC,123519,A,4807.038,N,01131.000,X,022.4,084.4,230394,003.1,W",
        b"GPGSA,A,9,,,,,,,,,,,,,1,1,1",  # fix type 9
        b"GPVTG,400.0,T,,M,0.004,N,0.008,K,A",  # a course out of range
    ],
)
def test_malformed_fix_sentences_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        nmea.decode(_sentence(body))


# -- hypothesis on the decoding path -----------------------------------------------------------------------

_FIELD = st.one_of(
    st.just(b""),
    st.from_regex(rb"\A-?[0-9]{1,6}(\.[0-9]{1,5})?\Z"),
    st.sampled_from([b"N", b"S", b"E", b"W", b"A", b"V", b"M", b"K", b"T"]),
    st.lists(_BODY_CHARS.filter(lambda c: c != b","), max_size=8).map(b"".join),
)


@given(
    talker=st.sampled_from(["GP", "GN", "BD", "GL", "GA", "ZZ"]),
    kind=st.sampled_from(["GGA", "RMC", "VTG", "GSA", "GSV"]),
    fields=st.lists(_FIELD, max_size=20),
)
def test_decoding_any_fields_raises_only_decode_error(talker: str, kind: str, fields: list[bytes]) -> None:
    """Empty fields, truncated sentences, garbage in any field: a record or a DecodeError, never a crash
    and never a position without its other half."""
    body = f"{talker}{kind}".encode() + b"," + b",".join(fields)
    assume(len(body) < nmea.MAX_SENTENCE - 6)
    try:
        decoded = nmea.decode(_sentence(body))
    except DecodeError:
        return
    if isinstance(decoded, nmea.Gga | nmea.Rmc):
        assert (decoded.lat is None) == (decoded.lon is None)
        if decoded.lat is not None:
            assert -90 <= decoded.lat <= 90 and decoded.lon is not None and -180 <= decoded.lon <= 180


@given(
    lat=st.floats(-89.9999, 89.9999),
    lon=st.floats(-179.9999, 179.9999),
    when=st.times(),
    motion=st.tuples(st.floats(0, 500), st.floats(0, 359.99)),
    talker=st.sampled_from(sorted(nmea.TALKERS)),
)
def test_built_sentences_decode_to_what_was_built(
    lat: float, lon: float, when: dt.time, motion: tuple[float, float], talker: str
) -> None:
    knots, course = motion
    when = when.replace(microsecond=when.microsecond // 10000 * 10000)
    day = dt.date(2026, 12, 3)
    knots, course = round(knots, 3), round(course, 2)
    gga = nmea.decode(nmea.gga(when, lat, lon, talker=talker))
    rmc = nmea.decode(nmea.rmc(when, day, lat, lon, speed_knots=knots, course_deg=course, talker=talker))
    assert isinstance(gga, nmea.Gga) and isinstance(rmc, nmea.Rmc)
    for decoded in (gga, rmc):
        assert decoded.lat == pytest.approx(lat, abs=2e-7) and decoded.lon == pytest.approx(lon, abs=2e-7)
        assert decoded.time is not None
    assert rmc.speed_knots == pytest.approx(knots) and rmc.course_deg == pytest.approx(course)


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_arbitrary_bytes_through_framer_and_decoder_never_raise_but_decode_error(
    data: bytes, cuts: list[int]
) -> None:
    framer = nmea.NmeaFramer()
    points = sorted({c for c in cuts if 0 < c < len(data)})
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        for sentence in framer.feed(data[a:b]):
            with contextlib.suppress(DecodeError):
                nmea.decode(sentence)


@pytest.mark.parametrize(
    ("text", "framed"),
    [
        ("PMTK220,1000", b"$PMTK220,1000*1F\r\n"),
        ("$PMTK220,1000*1f", b"$PMTK220,1000*1F\r\n"),
        ("  PUBX,40,GSV,0,0,0,0,0,0 ", b"$PUBX,40,GSV,0,0,0,0,0,0*59\r\n"),
    ],
)
def test_a_command_is_framed_with_its_checksum(text: str, framed: bytes) -> None:
    assert nmea.command(text) == framed
    assert nmea.NmeaFramer().feed(framed) == [framed]


@pytest.mark.parametrize("text", ["", "$", "PMTK$1", "PMTK*1", "$PMTK220,1000*00", "$PMTK220,1000", "x\x01"])
def test_what_cannot_be_a_command_is_refused(text: str) -> None:
    with pytest.raises(EncodeError):
        nmea.command(text)


VECTORS = Path(__file__).parents[1] / "vectors" / "gps"


@pytest.mark.parametrize("capture", ["beidou-gb.log", "neo-m8n.log"])
def test_receivers_recorded_in_the_field_frame_and_decode(capture: str) -> None:
    """gpsd's receiver logs (tests/vectors/gps): every sentence a whole one with a good checksum, every fix
    sentence of a known talker decoded, nothing skipped but the logs' comment lines."""
    data = (VECTORS / capture).read_bytes()
    sentences = [line for line in data.split(b"\n") if line.startswith(b"$")]
    framer = nmea.NmeaFramer()
    found = framer.feed(b"".join(s + b"\n" for s in sentences))
    assert found == [s + b"\n" for s in sentences]
    assert framer.stats.bytes_skipped == 0 and framer.stats.bad_checksum == framer.stats.bad_length == 0
    decoded = [nmea.decode(s) for s in found if nmea.kind_of(s)[1] in nmea.KINDS]
    assert decoded and all(isinstance(d, nmea.Gga | nmea.Rmc | nmea.Vtg | nmea.Gsa) for d in decoded)
    with_position = [d for d in decoded if isinstance(d, nmea.Gga | nmea.Rmc) and d.lat is not None]
    assert with_position and all(d.lon is not None for d in with_position)
