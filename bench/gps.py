"""GPS: NMEA sentences through the gps driver's path, and the cost of position stamping on the R2000 hot
path, on one core, in this process.

    python -m bench.gps [--runs 7] [--only nmea|stamping] [--epochs 20000] [--reads 200000]

- ``nmea``: a receiver's stream (``--epochs`` epochs of RMC, VTG, GGA, GSA, GSV and a TXT every tenth, as
  ``edgegw sim gps`` sends them, built outside the timed region) fed in 4 KiB chunks to
  :class:`protocols.nmea.NmeaFramer`, every fix sentence decoded by pynmeagps (:func:`protocols.nmea.decode`)
  and handed to the driver's :class:`drivers.gps.FixMaker` (fixes made, reporting decided; its events go
  nowhere). Printed: sentences/s and CPU microseconds per sentence. A receiver sends 5 to 10 sentences per
  second at 1 Hz, 50 to 100 at 10 Hz: the figure says how little of a core a receiver costs.
- ``stamping``: ``--reads`` R2000 ``rfid.read`` records (the driver's own lazy record, ``drivers.r2000``)
  emitted in batches of 100 through a :class:`gateway.supervisor.DeviceRunner` into a bounded
  :class:`gateway.pipeline.EventQueue`, then taken and encoded as the buffer does (``Record.json``); once
  with no ``position_from``, once with the device stamped from a receiver's fix. Runs of both alternate
  (ABAB...) so a shared machine's drift weighs on both alike. Printed: reads/s and CPU microseconds per
  read, each the median of ``--runs``, and the difference per read.

CPU time is ``time.process_time`` of this process; the machine is shared, figures are noisy: compare the
two columns of one run, and medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import time
from typing import Any

from drivers.event import Event
from drivers.gps import FixMaker, GpsOptions
from drivers.kinds import GPS_FIX, RFID_READ
from drivers.r2000 import _Read
from drivers.rfid import ReadShape, UriCache
from firmware_sim.gps import DEFAULT_ROUTE, Route
from gateway.backoff import Backoff
from gateway.pipeline import EventQueue
from gateway.positions import Positions
from gateway.supervisor import DeviceRunner
from protocols import nmea
from protocols.epc import encode_epc

CHUNK = 4096
BATCH = 100


def receiver_stream(epochs: int) -> bytes:
    """``epochs`` one-second epochs of a bus on the default route, as the simulator sends them."""
    route = Route(DEFAULT_ROUTE, 36.0, 20.0)
    start = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
    out = bytearray()
    for n in range(epochs):
        now = start + dt.timedelta(seconds=n)
        when = now.time().replace(tzinfo=None)
        lat, lon, kmh, course = route.at(float(n))
        lat, lon, course = round(lat, 7), round(lon, 7), round(course, 2)
        out += nmea.rmc(when, now.date(), lat, lon, speed_knots=round(kmh / 1.852, 3), course_deg=course)
        out += nmea.vtg(course, round(kmh, 2))
        out += nmea.gga(when, lat, lon, satellites=9, alt_m=12.0)
        out += nmea.gsa(list(range(1, 10)))
        out += b"$GPGSV,1,1,4,1,40,83,46,5,20,100,30,12,60,200,40,15,10,300,25,*5A\r\n"
        if n % 10 == 0:
            out += b"$GNTXT,1,1,2,ANTENNA OK*18\r\n"
    return bytes(out)


def nmea_once(stream: bytes) -> tuple[int, float]:
    """Sentences handled and the CPU seconds it took."""
    framer = nmea.NmeaFramer()
    fixes = FixMaker(
        GpsOptions(port="/dev/null", every_s=10, every_m=50),
        lambda *args, **kwargs: None,
        lambda name, n: None,
        time.time,
    )
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    count = 0
    gc.collect()
    started = time.process_time()
    for chunk in chunks:
        for sentence in framer.feed(chunk):
            count += 1
            talker, kind = nmea.kind_of(sentence)
            if kind in nmea.KINDS and talker in nmea.TALKERS:
                fixes.sentence(nmea.decode(sentence))
    return count, time.process_time() - started


def reads(n: int) -> list[tuple[int, int, int, int, int, bytes, int]]:
    base = int.from_bytes(encode_epc("urn:epc:tag:sgtin-96:1.0614141.812345.0"), "big")
    return [(1, 0x89, 1 + i % 2, i % 50, 0x3000, (base + i % 40).to_bytes(12, "big"), 60) for i in range(n)]


def stamping_once(tags: list[tuple[int, int, int, int, int, bytes, int]], stamped: bool) -> tuple[int, float]:
    """Reads emitted, queued, taken and encoded; the CPU seconds it took."""
    queue = EventQueue(len(tags) + 10)

    def never() -> Any:
        raise AssertionError("not run")

    runner = DeviceRunner("door-reader", never, queue, Backoff())
    if stamped:
        positions = Positions()
        positions.receiver("gps", 15.0)
        fix = {"lat": 30.2614, "lon": 120.1702, "time": "2026-12-03T08:00:00.000Z"}
        positions.record(Event("gps", GPS_FIX, 1_800_000_000.0, fix))
        runner.stamp = positions.stamper("gps", runner.count)
    shape = ReadShape({1: "front-door", 2: "rear-door"}, UriCache())
    batches = [[_Read(t, shape) for t in tags[i : i + BATCH]] for i in range(0, len(tags), BATCH)]
    gc.collect()
    started = time.process_time()
    for batch in batches:
        runner.emit_many(RFID_READ, batch, 1_800_000_001.0)
    size = 0
    for event in queue.take(len(tags)):
        size += len(event.data.json)  # type: ignore[attr-defined]  # a Record: what the buffer stores
    elapsed = time.process_time() - started
    assert size and runner.events_emitted == len(tags)
    return len(tags), elapsed


def median_rate(results: list[tuple[int, float]]) -> tuple[float, float]:
    """(per second, microseconds each), medians."""
    rates = [n / s for n, s in results]
    micros = [s / n * 1e6 for n, s in results]
    return statistics.median(rates), statistics.median(micros)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", choices=("nmea", "stamping"))
    parser.add_argument("--epochs", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=200_000)
    args = parser.parse_args()
    if args.only in (None, "nmea"):
        stream = receiver_stream(args.epochs)
        results = [nmea_once(stream) for _ in range(args.runs)]
        rate, micros = median_rate(results)
        sentences = results[0][0]
        print(
            f"nmea      {sentences:>8} sentences/run  {rate:>10,.0f} sentences/s  {micros:6.2f} us/sentence"
        )
    if args.only in (None, "stamping"):
        tags = reads(args.reads)
        plain: list[tuple[int, float]] = []
        stamped: list[tuple[int, float]] = []
        for _ in range(args.runs):  # interleaved: ABAB
            plain.append(stamping_once(tags, False))
            stamped.append(stamping_once(tags, True))
        p_rate, p_us = median_rate(plain)
        s_rate, s_us = median_rate(stamped)
        print(f"stamping  without position_from {p_rate:>10,.0f} reads/s  {p_us:6.2f} us/read")
        print(f"stamping  with position_from    {s_rate:>10,.0f} reads/s  {s_us:6.2f} us/read")
        print(
            f"stamping  cost                  {s_us - p_us:+6.2f} us/read ({(s_us / p_us - 1) * 100:+.0f} %)"
        )


if __name__ == "__main__":
    main()
