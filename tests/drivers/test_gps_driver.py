"""The gps driver against the simulated NMEA receiver (firmware_sim.gps) over a real pseudo-terminal and a
real TCP socket, run as the gateway runs it (drivers.testing); and its fix-making logic (FixMaker) fed
decoded sentences directly, where the receiver's clock must be chosen (midnight, reporting by distance and
heading)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import os
import time
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.counters import BYTES_SKIPPED, DECODE_ERRORS, FRAMES_REJECTED
from drivers.gps import (
    FIXES,
    FIXES_HELD,
    NO_FIX_EPOCHS,
    OTHER_SENTENCES,
    FixMaker,
    GpsDriver,
    GpsOptions,
    distance_m,
)
from drivers.kinds import DEVICE_STATUS, GPS_FIX
from drivers.testing import Harness, running
from firmware_sim.gps import Faults, GpsSimulator, SimOptions, serve_pty, serve_tcp
from gateway.config import ConfigError, load_config
from protocols import nmea
from protocols.errors import DecodeError

pytestmark = pytest.mark.timeout(60)

FIX_KEYS = {"lat", "lon", "alt_m", "speed_kmh", "course_deg", "fix_quality", "satellites", "hdop", "time"}
FAST = SimOptions(epoch_s=0.05, speedup=20.0, dwell_s=5.0)
"""Epochs every 50 ms, the bus driving 20 times faster than real time."""


def fast(**changes: Any) -> SimOptions:
    return dataclasses.replace(FAST, **changes)


class Gps(Harness):
    def fixes(self) -> list[dict[str, Any]]:
        return self.data(GPS_FIX)


@asynccontextmanager
async def gps(**options: Any) -> AsyncIterator[Gps]:
    opts = GpsOptions(**options)
    async with running({"gps": lambda: GpsDriver("gps", opts)}, Gps, timeout=30) as run:
        yield run


def check_fix(fix: dict[str, Any], event_ts: float, sim: GpsSimulator, *, whole: bool = True) -> None:
    """The fix is one the receiver sent intact, with the receiver's time as the event's; ``whole``: its
    speed and course too (when no sentence of the epoch was lost)."""
    assert set(fix) >= FIX_KEYS
    when = dt.datetime.fromisoformat(fix["time"].replace("Z", "+00:00"))
    assert when.timestamp() == pytest.approx(event_ts, abs=1e-6)
    sent = {s.time: s for s in sim.sent}
    assert when in sent, fix
    source = sent[when]
    assert fix["lat"] == pytest.approx(source.lat, abs=2e-7)
    assert fix["lon"] == pytest.approx(source.lon, abs=2e-7)
    if whole:
        assert fix["speed_kmh"] == pytest.approx(source.speed_kmh, abs=0.01)
        assert fix["course_deg"] == pytest.approx(source.course_deg, abs=0.01)
        assert (fix["fix_quality"], fix["satellites"], fix["hdop"], fix["alt_m"]) == (1, 9, 0.9, 12.0)


# ------------------------------------------------------------------------------------------ options


def test_options_the_issue_shape_and_defaults() -> None:
    opts = GpsOptions.model_validate({"port": "/dev/ttyUSB2", "baudrate": 9600})
    assert (opts.every_s, opts.every_m, opts.heading_change_deg, opts.max_fix_age_s) == (
        10.0,
        None,
        None,
        10.0,
    )
    assert opts.link.port == "/dev/ttyUSB2" and opts.link.baudrate == 9600
    assert GpsOptions(host="10.0.0.9", tcp_port=4001).link.where == "10.0.0.9:4001"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"baudrate": 1234}, "baudrate"),
        ({"every_s": 0}, "every_s"),
        ({"every_m": -5}, "every_m"),
        ({"heading_change_deg": 200}, "heading_change_deg"),
        ({"max_fix_age_s": 0}, "max_fix_age_s"),
        ({"port": None}, "give port"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_options_reject_what_cannot_work(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GpsOptions.model_validate({"port": "/dev/ttyUSB2", **options})


def test_the_config_shape_of_the_issue_loads_and_a_bad_key_names_its_line(tmp_path: Path) -> None:
    head = """gateway: {id: bus-1}
buffer: {path: buffer.db}
upstream: {mqtt: {url: "mqtt://127.0.0.1:1883"}}
devices:
"""
    (tmp_path / "gateway.yaml").write_text(
        head + "  - {name: gps, driver: gps, port: /dev/ttyUSB2, baudrate: 9600}\n"
    )
    (device,) = load_config(tmp_path / "gateway.yaml").devices
    assert device.driver == "gps" and isinstance(device.options, GpsOptions)
    (tmp_path / "gateway.yaml").write_text(
        head + "  - name: gps\n    driver: gps\n    port: /dev/ttyUSB2\n    every_m: fifty\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert "gateway.yaml:8: devices[0].every_m" in str(caught.value)


# ------------------------------------------------------------------------------------------ on a pty


async def test_fixes_from_the_receiver_on_a_pty(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    async with serve_pty(link, FAST) as sim, gps(port=str(link), every_s=0.2) as run:
        await run.until("5 fixes", lambda: len(run.fixes()) >= 5)
        await sim.wait_for(lambda s: s.epochs >= 1)
    assert run.states()[:2] == ["connected", "fix"]
    assert run.statuses()[0]["detail"] == "NMEA 0183, talker GN"
    events = run.of(GPS_FIX)
    for event in events:
        check_fix(dict(event.data), event.ts, sim)
    assert [e.data["reason"] for e in events][:2] == ["first", "period"]
    times = [e.ts for e in events]
    assert times == sorted(times) and all(b - a >= 0.2 - 1e-6 for a, b in itertools.pairwise(times))
    counters = run.counters()
    assert counters.get(FRAMES_REJECTED, 0) == 0 and counters.get(DECODE_ERRORS, 0) == 0
    assert counters[OTHER_SENTENCES] > 0  # GSV and TXT passed over
    assert counters[FIXES_HELD] > 0  # epochs every 0.05 s, reported every 0.2 s


async def test_init_sentences_are_sent_on_every_connect(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    init = ["PMTK220,1000", "$PUBX,40,GSV,0,0,0,0,0,0*59"]
    async with serve_pty(link, FAST) as sim, gps(port=str(link), init_sentences=init) as run:
        await run.until_events(GPS_FIX)
        await sim.wait_for(lambda s: s.commands >= 2)
        await sim.disconnect()
        await run.until_state("connected", 2)
        await sim.wait_for(lambda s: s.commands >= 4)  # sent again on the new connection
    assert bytes(sim.received).startswith(b"$PMTK220,1000*1F\r\n$PUBX,40,GSV,0,0,0,0,0,0*59\r\n")
    assert bytes(sim.received).count(b"$PMTK220,1000*1F\r\n") == 2


@pytest.mark.parametrize("bad", ["PMTK$220", "$PMTK220,1000*00", "PMTK*220", "", "É", "X" * 200])
def test_init_sentences_that_cannot_be_sent_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="init_sentences"):
        GpsOptions(port="/dev/ttyUSB2", init_sentences=[bad])


async def test_bad_checksums_truncated_sentences_and_noise_are_counted_and_skipped(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    faults = Faults(bad_checksum=0.1, truncate=0.1, noise=0.1)
    async with (
        serve_pty(link, fast(faults=faults, seed=3)) as sim,
        gps(port=str(link), every_s=0.1) as run,
    ):
        await run.until(
            "fixes and rejected sentences",
            lambda: len(run.fixes()) >= 10 and run.counters().get(FRAMES_REJECTED, 0) >= 5,
        )
    for event in run.of(GPS_FIX):
        check_fix(dict(event.data), event.ts, sim, whole=False)  # only what the receiver sent intact
    counters = run.counters()
    assert counters[BYTES_SKIPPED] > 0
    assert sim.stats.corrupted > 0 and sim.stats.truncated > 0
    assert not any(f["lat"] == 0 and f["lon"] == 0 for f in run.fixes())


async def test_a_loss_of_fix_is_a_status_never_a_fix_at_zero(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    async with serve_pty(link, FAST) as sim, gps(port=str(link), every_s=60) as run:
        await run.until_state("fix")
        sim.lose_fix()
        await run.until_state("no_fix")
        before = len(run.fixes())
        lost_at = sim.stats.no_fix_epochs
        await sim.wait_for(lambda s: s.no_fix_epochs >= lost_at + 10)
        assert len(run.fixes()) == before  # nothing reported while the fix is lost
        sim.regain_fix()
        await run.until_state("fix", 2)
        await run.until("a fix after the loss", lambda: len(run.fixes()) > before)
    states = [s for s in run.states() if s != "connected"]
    assert states == ["fix", "no_fix", "fix"]
    assert [f["reason"] for f in run.fixes()] == ["first", "first"]  # every_s 60: only the first each time
    assert run.counters()[NO_FIX_EPOCHS] >= 10
    no_fix = run.statuses()[states.index("no_fix") + 1]
    assert no_fix["detail"].startswith("receiver has no fix")


async def test_a_receiver_that_starts_without_a_fix(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    async with serve_pty(link, FAST) as sim:
        sim.lose_fix()
        async with gps(port=str(link)) as run:
            await run.until_state("no_fix")
            sim.regain_fix()
            await run.until_events(GPS_FIX)
    assert run.states() == ["connected", "no_fix", "fix"]


async def test_reporting_by_distance(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    async with (
        serve_pty(link, FAST) as sim,
        gps(port=str(link), every_s=None, every_m=40) as run,
    ):
        await run.until("6 fixes", lambda: len(run.fixes()) >= 6)
    fixes = run.fixes()
    assert fixes[0]["reason"] == "first" and {f["reason"] for f in fixes[1:]} == {"distance"}
    for a, b in itertools.pairwise(fixes):
        assert distance_m(a["lat"], a["lon"], b["lat"], b["lon"]) >= 40
    assert run.counters()[FIXES_HELD] > 0
    del sim


async def test_unplugged_and_silent_receivers_are_reconnected(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    async with (
        serve_pty(link, FAST) as sim,
        gps(port=str(link), every_s=0.1, read_timeout_s=0.5) as run,
    ):
        await run.until_events(GPS_FIX)
        await sim.disconnect()
        await run.until_state("connected", 2)
        sim.silence(1.5)
        await run.until_state("disconnected", 2)
        await run.until_state("connected", 3)
        n = len(run.fixes())
        await run.until("fixes after the silence", lambda: len(run.fixes()) > n)
    reasons = [s.get("reason", "") for s in run.statuses() if s["state"] == "disconnected"]
    assert "silent" in reasons[1]


async def test_a_receiver_sending_only_damage_is_told_from_a_silent_one(tmp_path: Path) -> None:
    """Every sentence damaged (as from a receiver at another baud rate): the device is not connected, and
    the reason says bytes came but no sentence, not that the receiver is silent."""
    link = tmp_path / "ttyGPS"
    async with (
        serve_pty(link, fast(faults=Faults(bad_checksum=1.0))) as sim,
        gps(port=str(link), read_timeout_s=0.3) as run,
    ):
        await run.until_state("disconnected", 2)
    reasons = {s["reason"] for s in run.statuses() if s["state"] == "disconnected"}
    assert reasons == {"no NMEA sentence in 0.3 s, only bytes that make none (another baud rate than 9600?)"}
    assert "connected" not in run.states() and sim.stats.corrupted > 0
    assert run.counters()[FRAMES_REJECTED] > 0


async def test_behind_a_serial_to_ethernet_converter() -> None:
    async with serve_tcp("127.0.0.1", 0, fast(talker="BD")) as sim:
        assert sim.port is not None
        async with gps(host="127.0.0.1", tcp_port=sim.port, every_s=0.1) as run:
            await run.until("3 fixes", lambda: len(run.fixes()) >= 3)
    assert run.statuses()[0]["detail"] == "NMEA 0183, talker BD"
    for event in run.of(GPS_FIX):
        check_fix(dict(event.data), event.ts, sim)


# ------------------------------------------------------------------------------------------ FixMaker


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], float | None]] = []
        self.counts: dict[str, int] = {}

    def emit(self, kind: str, data: dict[str, Any], ts: float | None = None) -> None:
        self.events.append((kind, dict(data), ts))

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def fixes(self) -> list[dict[str, Any]]:
        return [data for kind, data, _ in self.events if kind == GPS_FIX]


def maker(clock: float = time.time(), **options: Any) -> tuple[FixMaker, Recorder]:
    record = Recorder()
    opts = GpsOptions(port="/dev/null", **options)
    return FixMaker(opts, record.emit, record.count, lambda: clock), record


def feed(fixes: FixMaker, *sentences: bytes) -> None:
    for sentence in sentences:
        fixes.sentence(nmea.decode(sentence))


def epoch(t: dt.datetime, lat: float, lon: float, kmh: float = 30.0, course: float = 90.0) -> list[bytes]:
    when = t.time()
    return [
        nmea.rmc(when, t.date(), lat, lon, speed_knots=kmh / 1.852, course_deg=course),
        nmea.gga(when, lat, lon),
    ]


def test_a_gga_only_receiver_is_dated_by_the_gateway_clock_across_midnight() -> None:
    # The gateway's clock is just past midnight; the receiver's fix is from just before it.
    now = dt.datetime(2026, 12, 4, 0, 0, 2, tzinfo=dt.UTC)
    fixes, record = maker(clock=now.timestamp())
    feed(fixes, nmea.gga(dt.time(23, 59, 59), 30.0, 120.0), nmea.gga(dt.time(0, 0, 0), 30.0, 120.0))
    (fix,) = record.fixes()
    assert fix["time"] == "2026-12-03T23:59:59.000Z"
    assert fix["speed_kmh"] is None and fix["course_deg"] is None  # no RMC, no VTG


def test_vtg_and_gsa_fill_what_the_epoch_lacks_in_any_order() -> None:
    t = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
    fixes, record = maker()
    when = t.time()
    feed(
        fixes,
        nmea.vtg(45.0, 50.0),
        nmea.gsa([1, 2, 3, 4, 5], hdop=1.3),
        nmea.gga(when, 30.0, 120.0, satellites=5, hdop=1.1),
        nmea.rmc(when, t.date(), 30.0, 120.0, speed_knots=27.0, course_deg=46.0),
    )
    (fix,) = record.fixes()
    assert (fix["speed_kmh"], fix["course_deg"], fix["hdop"], fix["satellites"]) == (50.0, 46.0, 1.1, 5)
    assert fix["time"] == "2026-12-03T08:00:00.000Z"
    (_, _, ts), *_ = [e for e in record.events if e[0] == GPS_FIX]
    assert ts == t.timestamp()


def test_heading_change_reports_above_the_minimum_speed_only() -> None:
    t = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
    fixes, record = maker(every_s=None, heading_change_deg=30, heading_min_speed_kmh=5)
    feed(fixes, *epoch(t, 30.0, 120.0, course=90.0))
    feed(fixes, *epoch(t + dt.timedelta(seconds=1), 30.0, 120.00001, course=110.0))  # turned 20
    feed(fixes, *epoch(t + dt.timedelta(seconds=2), 30.0, 120.00002, course=125.0))  # 35 since reported
    feed(fixes, *epoch(t + dt.timedelta(seconds=3), 30.0, 120.00002, kmh=2.0, course=300.0))  # too slow
    feed(fixes, *epoch(t + dt.timedelta(seconds=4), 30.0, 120.00003, course=85.0))  # 40 across north
    assert [f["reason"] for f in record.fixes()] == ["first", "heading", "heading"]
    assert record.counts[FIXES_HELD] == 2


def test_whichever_comes_first_and_a_receiver_clock_going_back() -> None:
    t = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
    fixes, record = maker(every_s=5, every_m=100)
    feed(fixes, *epoch(t, 30.0, 120.0))
    feed(fixes, *epoch(t + dt.timedelta(seconds=1), 30.0, 120.0005))  # 48 m
    feed(fixes, *epoch(t + dt.timedelta(seconds=2), 30.0, 120.0011))  # 106 m
    feed(fixes, *epoch(t + dt.timedelta(seconds=7), 30.0, 120.0012))  # 5 s later
    feed(fixes, *epoch(t - dt.timedelta(seconds=60), 30.0, 120.0012))  # the receiver was reset
    assert [f["reason"] for f in record.fixes()] == ["first", "distance", "period", "first"]


def test_a_position_without_time_is_no_fix_and_no_time_yet_is_a_status() -> None:
    fixes, record = maker()
    feed(fixes, b"$GPGGA,,,,,,0,00,99.99,,,,,,*48\r\n")
    assert [(k, d["state"]) for k, d, _ in record.events] == [(DEVICE_STATUS, "no_fix")]
    body = b"GPGGA,,3000.000,N,12000.000,E,1,08,0.9,5.0,M,0.0,M,,"
    checksum = 0
    for byte in body:
        checksum ^= byte
    feed(fixes, b"$" + body + f"*{checksum:02X}\r\n".encode())
    assert record.fixes() == [] and record.counts[DECODE_ERRORS] == 1


# -- hypothesis on the parsing path: a damaged stream through framer, decoder and fix maker ----------------

_EPOCH = b"".join(
    [
        nmea.rmc(dt.time(8, 0, 1), dt.date(2026, 12, 3), 30.25, 120.16, speed_knots=19.4, course_deg=17.3),
        nmea.vtg(17.3, 36.0),
        nmea.gga(dt.time(8, 0, 1), 30.25, 120.16),
        nmea.gsa([1, 2, 3, 4, 5]),
        nmea.gga(dt.time(8, 0, 2), None, None),
        nmea.rmc(dt.time(8, 0, 2), dt.date(2026, 12, 3), None, None),
        nmea.gga(dt.time(8, 0, 3), -33.9, -70.6),
    ]
)


@given(
    damage=st.lists(
        st.tuples(st.integers(0, len(_EPOCH) - 1), st.sampled_from(["flip", "cut", "blank", "insert"])),
        max_size=6,
    ),
    seed=st.binary(min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, len(_EPOCH)), max_size=5),
)
@settings(max_examples=300)
def test_a_damaged_stream_makes_only_real_fixes(
    damage: list[tuple[int, str]], seed: bytes, cuts: list[int]
) -> None:
    """Bad checksums, truncated sentences, emptied fields, inserted junk, in any chunks: never a raise, never
    a fix at 0,0 or without a position, and every fix a position that a sentence passing its checksum carried:
    one sent, unless the damage was of a kind NMEA's 8-bit XOR cannot see (two flips of the same bits:
    hypothesis made "3015" into "2115" that way; a cut of two equal characters), a limit of the protocol."""
    stream = bytearray(_EPOCH)
    for where, how in sorted(damage, reverse=True):
        at = min(where, len(stream) - 1)
        if how == "flip":
            stream[at] ^= seed[at % len(seed)] | 1
        elif how == "cut":
            del stream[at : at + 1 + seed[0] % 40]
        elif how == "blank":  # an emptied field (the whole field: a receiver's), checksum fixed up
            line_start = stream.rfind(b"$", 0, at + 1)
            star = stream.find(b"*", at)
            field = stream.rfind(b",", 0, at + 1) + 1
            comma = stream.find(b",", at)
            if 0 <= line_start < field <= comma < star:
                del stream[field:comma]
                star = stream.find(b"*", line_start)
                body = bytes(stream[line_start + 1 : star])
                checksum = 0
                for byte in body:
                    checksum ^= byte
                stream[star + 1 : star + 3] = f"{checksum:02X}".encode()
        else:
            stream[at:at] = seed
    fixes, record = maker(clock=dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC).timestamp(), every_s=0.5)
    framer = nmea.NmeaFramer()
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    for a, b in itertools.pairwise([0, *points, len(stream)]):
        for sentence in framer.feed(bytes(stream[a:b])):
            with suppress(DecodeError):
                fixes.sentence(nmea.decode(sentence))
    sent = {(30.25, 120.16), (-33.9, -70.6)}
    delivered = set(sent)  # and what a damaged sentence whose checksum still matched said
    for sentence in nmea.NmeaFramer().feed(bytes(stream)):
        with suppress(DecodeError):
            decoded = nmea.decode(sentence)
            if isinstance(decoded, nmea.Gga | nmea.Rmc) and decoded.lat is not None:
                assert decoded.lon is not None
                delivered.add((decoded.lat, decoded.lon))
    if not damage:
        assert delivered == sent
    for fix in record.fixes():
        assert fix["lat"] is not None and fix["lon"] is not None
        assert (fix["lat"], fix["lon"]) != (0, 0)
        assert any(abs(fix["lat"] - lat) < 1e-6 and abs(fix["lon"] - lon) < 1e-6 for lat, lon in delivered), (
            fix
        )


def test_every_fix_is_shared_reported_or_not() -> None:
    t = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
    shared: list[tuple[dict[str, Any], float]] = []
    record = Recorder()
    fixes = FixMaker(
        GpsOptions(port="/dev/null", every_s=60),
        record.emit,
        record.count,
        time.time,
        lambda data, ts: shared.append((dict(data), ts)),
    )
    for n in range(3):
        feed(fixes, *epoch(t + dt.timedelta(seconds=n), 30.0, 120.0 + n * 1e-5))
    feed(fixes, nmea.gga(dt.time(8, 0, 3), None, None))  # no fix: nothing shared
    assert [f["reason"] for f in record.fixes()] == ["first"]
    assert [round(data["lon"], 5) for data, _ in shared] == [120.0, 120.00001, 120.00002]
    assert [ts for _, ts in shared] == [(t + dt.timedelta(seconds=n)).timestamp() for n in range(3)]


# -- receivers recorded in the field (gpsd's test logs, tests/vectors/gps/README.md) -----------------------

VECTORS = Path(__file__).parents[1] / "vectors" / "gps"


@asynccontextmanager
async def replaying(capture: str, tmp_path: Path, **options: Any) -> AsyncIterator[Gps]:
    """The gps driver on a real pty that plays a receiver's recorded sentences (its comment lines left out)
    once the driver has opened the port (it sends its init sentence first: nothing is lost to the open)."""
    sentences = b"".join(
        line + b"\n" for line in (VECTORS / capture).read_bytes().split(b"\n") if line.startswith(b"$")
    )
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    link = tmp_path / "ttyGPS"
    link.symlink_to(os.ttyname(slave))
    try:
        async with gps(port=str(link), init_sentences=["PSRF103,00,01,00,01"], **options) as run:
            said = b""
            while b"\n" not in said:  # the driver's first words: the port is open
                said += await asyncio.to_thread(os.read, master, 256)
            assert said.startswith(b"$PSRF103,00,01,00,01*")
            await asyncio.to_thread(_write_all, master, sentences)
            yield run
    finally:
        os.close(master)
        os.close(slave)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def test_a_sirf_trig_receiver_with_beidou_gb_sentences(tmp_path: Path) -> None:
    """AtlasVI/PrimaII, SiRF-TriG with NMEA 4.00 (gpsd's beidou-gb.log): GP, GN and GB talkers side by side,
    proprietary PSRFEPE and GNGNS passed over, three epochs without a fix, then a fix near Shanghai."""
    async with replaying("beidou-gb.log", tmp_path, every_s=60) as run:
        await run.until("the fix, and the second epoch's", lambda: run.counters().get(FIXES, 0) >= 2)
    assert run.states() == ["connected", "no_fix", "fix"]
    (fix,) = run.of(GPS_FIX)
    assert dict(fix.data) == {
        "lat": 31.2479817,
        "lon": 121.5874033,
        "alt_m": 153.8,
        "speed_kmh": 0.48,
        "course_deg": 167.42,
        "fix_quality": 1,
        "satellites": 6,
        "hdop": 1.2,
        "time": "2015-03-02T05:32:32.438Z",
        "reason": "first",
    }
    assert fix.ts == dt.datetime(2015, 3, 2, 5, 32, 32, 438000, tzinfo=dt.UTC).timestamp()
    counters = run.counters()
    assert counters.get(FRAMES_REJECTED, 0) == 0 and counters.get(DECODE_ERRORS, 0) == 0
    assert counters[NO_FIX_EPOCHS] == 3 and counters[FIXES_HELD] == 1
    assert counters[OTHER_SENTENCES] == 5 + 5 + 29 + 12  # PSRFEPE, GNGNS, GPGSV, GBGSV


async def test_a_ublox_neo_m8n_west_of_greenwich_without_a_course(tmp_path: Path) -> None:
    """BN-880 with a u-blox NEO-M8N (gpsd's neo-m8n.log): GN fixes in Oregon (west: negative longitudes),
    standing still so RMC and VTG leave the course empty (null, never 0), GLL and GLONASS GSV passed over."""
    async with replaying("neo-m8n.log", tmp_path, every_s=5) as run:
        await run.until("every epoch's fix", lambda: run.counters().get(FIXES, 0) >= 22)
    fixes = run.data(GPS_FIX)
    assert fixes[0] == {
        "lat": 44.0690105,
        "lon": -121.3142463,
        "alt_m": 1147.2,
        "speed_kmh": 0.22,
        "course_deg": None,
        "fix_quality": 1,
        "satellites": 12,
        "hdop": 0.91,
        "time": "2015-03-18T17:19:26.000Z",
        "reason": "first",
    }
    assert [f["reason"] for f in fixes] == ["first"] + ["period"] * (len(fixes) - 1)
    assert all(44.06 < f["lat"] < 44.07 and -121.32 < f["lon"] < -121.31 for f in fixes)
    counters = run.counters()
    assert counters.get(FRAMES_REJECTED, 0) == 0 and counters.get(DECODE_ERRORS, 0) == 0
    assert counters.get(NO_FIX_EPOCHS, 0) == 0
