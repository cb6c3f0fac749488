"""A simulated GPS/GNSS receiver: NMEA 0183 sentences on a pty or a TCP port, for a vehicle driving a route.

Every ``epoch_s`` (a second, as a receiver's default) it sends one epoch's burst, built with pynmeagps'
generator (:mod:`protocols.nmea`): RMC, VTG, GGA, GSA, then the sentences a driver must pass over (GSV, and
a TXT now and then), each stamped with the gateway machine's UTC (a receiver's clock is the satellites',
which is what the wall clock follows). The vehicle drives :class:`Route` at ``speed_kmh``, stopping
``dwell_s`` at each of its stations (a bus stop), round and round; ``speedup`` makes it drive that many
route seconds per real second (the receiver's clock stays real). Headings and speeds come from the route.

Faults, per sentence with a probability: a bad checksum, a truncated sentence (cut short, the next one
following at once, as when a receiver resets mid-line), noise (random bytes between sentences); and a loss
of fix (``no_fix``: S seconds every EVERY, or on demand with :meth:`GpsSimulator.lose_fix` /
:meth:`~GpsSimulator.regain_fix`), during which GGA has quality 0 and empty fields and RMC status V, as a
receiver in a tunnel sends; silences and disconnects (unplugged) like the other simulators.

Counters live in :attr:`GpsSimulator.stats`; the fixes sent intact are in :attr:`GpsSimulator.sent` (time,
lat, lon, speed, course): a test waits with :meth:`GpsSimulator.wait_for`, never by sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from protocols import nmea

from . import serving
from .serving import Link

__all__ = [
    "DEFAULT_ROUTE",
    "Faults",
    "GpsSimulator",
    "Route",
    "SentFix",
    "SimOptions",
    "SimStats",
    "add_parser",
    "parse_faults",
    "run_from_args",
    "serve_pty",
    "serve_tcp",
]

DEFAULT_ROUTE: Final = (
    (30.25890, 120.16480),
    (30.26250, 120.16610),
    (30.26590, 120.16950),
    (30.26620, 120.17560),
    (30.26310, 120.17890),
    (30.25870, 120.17720),
    (30.25700, 120.17100),
)
"""A city bus loop (about 4.5 km; the stations are its corners), in decimal degrees."""

SENT_KEPT: Final = 4096
_EARTH_RADIUS_M: Final = 6_371_008.8


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong, per sentence with these probabilities (0..1), and in time."""

    bad_checksum: float = 0.0
    """The sentence's checksum corrupted."""
    truncate: float = 0.0
    """The sentence cut short (its end and CR LF lost)."""
    noise: float = 0.0
    """1..16 random bytes before the sentence."""
    no_fix_s: float = 0.0
    """Length of each periodic loss of fix."""
    no_fix_every_s: float = 0.0
    """Period of the losses of fix; 0: only on demand."""
    silence_s: float = 0.0
    """Length of each periodic silence (nothing sent)."""
    silence_every_s: float = 0.0
    disconnect_every_s: float = 0.0
    """The link drops every this many seconds (0: only on demand)."""
    disconnect_down_s: float = 0.0

    def __post_init__(self) -> None:
        serving.check_probabilities(self, ("bad_checksum", "truncate", "noise"))
        for name in ("no_fix", "silence"):
            length, every = getattr(self, f"{name}_s"), getattr(self, f"{name}_every_s")
            if length < 0 or every < 0 or (every and length >= every):
                raise ValueError(f"{name}: S/EVERY with 0 <= S < EVERY")


@dataclass(frozen=True, slots=True)
class SimOptions:
    route: tuple[tuple[float, float], ...] = DEFAULT_ROUTE
    """Waypoints (lat, lon), driven in order and round; each is a station."""
    speed_kmh: float = 36.0
    dwell_s: float = 20.0
    """Seconds stopped at each station."""
    epoch_s: float = 1.0
    """Real seconds between epochs."""
    speedup: float = 1.0
    """Route seconds driven per real second."""
    talker: str = "GN"
    alt_m: float = 12.0
    satellites: int = 9
    seed: int = 0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if len(self.route) < 2:
            raise ValueError("a route needs at least two waypoints")
        for lat, lon in self.route:
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"waypoint {lat},{lon} is not a position")
        if self.speed_kmh <= 0 or self.dwell_s < 0 or self.epoch_s <= 0 or self.speedup <= 0:
            raise ValueError("speed, epoch and speedup must be positive, dwell not negative")
        if self.talker not in nmea.TALKERS:
            raise ValueError(f"talker {self.talker!r}: one of {', '.join(sorted(nmea.TALKERS))}")
        if not 4 <= self.satellites <= 12:
            raise ValueError("satellites: 4..12")


@dataclass(slots=True)
class SimStats:
    epochs: int = 0
    fix_epochs: int = 0
    no_fix_epochs: int = 0
    sentences: int = 0
    """Sentences sent intact."""
    corrupted: int = 0
    """Sentences sent with a bad checksum."""
    truncated: int = 0
    noise_bytes: int = 0
    connections: int = 0
    disconnects: int = 0
    commands: int = 0
    """Lines the host sent (configuration sentences: read, counted, not acted on)."""


@dataclass(frozen=True, slots=True)
class SentFix:
    """A fix the receiver sent, with its GGA or its RMC (or both) intact."""

    time: dt.datetime
    lat: float
    lon: float
    speed_kmh: float
    course_deg: float


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _bearing(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360


class Route:
    """Where the vehicle is ``t`` route seconds after it left the first station: it drives each leg at the
    cruising speed and waits ``dwell_s`` at the next station, round the loop."""

    def __init__(self, waypoints: tuple[tuple[float, float], ...], speed_kmh: float, dwell_s: float) -> None:
        self.waypoints = waypoints
        self.speed_ms = speed_kmh / 3.6
        self.dwell_s = dwell_s
        self.legs = [
            (a, b, _distance(a, b), _bearing(a, b))
            for a, b in zip(waypoints, (*waypoints[1:], waypoints[0]), strict=True)
        ]
        self.lap_s = sum(d / self.speed_ms + dwell_s for _, _, d, _ in self.legs)

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, speed km/h, course degrees) at route time ``t``."""
        t %= self.lap_s
        course = self.legs[0][3]
        for a, b, length, bearing in self.legs:
            drive = length / self.speed_ms
            if t < drive:
                f = t / drive
                return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, self.speed_ms * 3.6, bearing
            t -= drive
            course = bearing
            if t < self.dwell_s:
                return b[0], b[1], 0.0, course
            t -= self.dwell_s
        last = self.waypoints[0]
        return last[0], last[1], 0.0, course


class GpsSimulator(serving.LinkSimulator[SimStats]):
    """The receiver, its counters and controls; served by :func:`serve_pty` or :func:`serve_tcp`."""

    def __init__(self, options: SimOptions | None = None, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(SimStats())
        self.options = options or SimOptions()
        self.route = Route(self.options.route, self.options.speed_kmh, self.options.dwell_s)
        self.sent: deque[SentFix] = deque(maxlen=SENT_KEPT)
        self.received = bytearray()
        """The last bytes the host sent (at most SENT_KEPT)."""
        self.fix_lost = False
        """On demand (:meth:`lose_fix`): no fix until :meth:`regain_fix`."""
        self._clock = clock
        self._start: float | None = None
        self._rng = random.Random(f"edgegw-gps-{self.options.seed}")
        self._silent_until = 0.0

    # -- controls ----------------------------------------------------------------------------------------
    def lose_fix(self) -> None:
        """The receiver loses its fix (a tunnel) until :meth:`regain_fix`."""
        self.fix_lost = True

    def regain_fix(self) -> None:
        self.fix_lost = False

    def silence(self, seconds: float) -> None:
        """Send nothing for ``seconds`` from now."""
        self._silent_until = time.monotonic() + seconds

    def _elapsed(self) -> float:
        if self._start is None:
            self._start = time.monotonic()
        return time.monotonic() - self._start

    def _in_window(self, length: float, every: float) -> bool:
        return every > 0 and self._elapsed() % every >= every - length

    # -- serving -----------------------------------------------------------------------------------------
    async def serve_link(self, link: Link) -> None:
        self.stats.connections += 1
        self._notify()
        reader = asyncio.create_task(self._drain(link))
        try:
            await self._stream(link, reader)
        except ConnectionError:
            pass
        finally:
            await serving.cancel_all((reader,))

    async def _drain(self, link: Link) -> None:
        """Read what the host sends (configuration sentences: counted, not acted on), until the link ends."""
        while data := await link.read():
            self.received += data
            del self.received[:-SENT_KEPT]
            self.stats.commands += data.count(b"\n")
            self._notify()

    async def _stream(self, link: Link, reader: asyncio.Task[None]) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        next_epoch = loop.time()
        while not reader.done():
            next_epoch += opts.epoch_s
            faults = opts.faults
            silent = time.monotonic() < self._silent_until or self._in_window(
                faults.silence_s, faults.silence_every_s
            )
            if not silent:
                await self._epoch(link)
            delay = next_epoch - loop.time()
            if delay < -opts.epoch_s:  # fell behind (a slow reader): do not burst to catch up
                next_epoch = loop.time()
                delay = 0.0
            try:
                async with asyncio.timeout(max(delay, 0.0)):
                    await asyncio.shield(reader)
            except TimeoutError:
                pass

    async def _epoch(self, link: Link) -> None:
        opts = self.options
        stats = self.stats
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        now = now.replace(microsecond=now.microsecond // 10000 * 10000)  # centiseconds, as receivers
        when = now.time().replace(tzinfo=None)
        lat, lon, speed_kmh, course = self.route.at(self._elapsed() * opts.speedup)
        lat, lon = round(lat, 7), round(lon, 7)
        talker = opts.talker
        faults = opts.faults
        has_fix = not self.fix_lost and not self._in_window(faults.no_fix_s, faults.no_fix_every_s)
        sats = list(range(1, opts.satellites + 1))
        if has_fix:
            sentences = [
                nmea.rmc(
                    when,
                    now.date(),
                    lat,
                    lon,
                    speed_knots=round(speed_kmh / 1.852, 3),
                    course_deg=round(course, 2),
                    talker=talker,
                ),
                nmea.vtg(round(course, 2), round(speed_kmh, 2), talker=talker),
                nmea.gga(
                    when, lat, lon, satellites=opts.satellites, hdop=0.9, alt_m=opts.alt_m, talker=talker
                ),
                nmea.gsa(sats, talker=talker),
            ]
        else:
            sentences = [
                nmea.rmc(when, now.date(), None, None, talker=talker),
                nmea.vtg(None, None, talker=talker),
                nmea.gga(when, None, None, talker=talker),
                nmea.gsa([], fix_type=1, talker=talker),
            ]
        sentences.append(self._gsv(talker))
        if stats.epochs % 10 == 0:
            sentences.append(nmea.sentence(talker, "TXT", numMsg=1, msgNum=1, msgType=2, text="ANTENNA OK"))
        out = bytearray()
        intact_fix = 0
        rng = self._rng
        for i, sentence in enumerate(sentences):
            if faults.noise and rng.random() < faults.noise:
                noise = bytes(
                    rng.choice(b"0123456789ABCDEF,.*\r\n\x00\xff") for _ in range(rng.randint(1, 16))
                )
                out += noise
                stats.noise_bytes += len(noise)
            if faults.bad_checksum and rng.random() < faults.bad_checksum:
                star = sentence.rindex(b"*")
                good = sentence[star + 1 : star + 3]
                bad = good
                while bad == good:
                    bad = f"{rng.randrange(256):02X}".encode()
                out += sentence[: star + 1] + bad + sentence[star + 3 :]
                stats.corrupted += 1
                continue
            if faults.truncate and rng.random() < faults.truncate:
                out += sentence[: rng.randrange(1, len(sentence) - 3)]
                stats.truncated += 1
                continue
            out += sentence
            stats.sentences += 1
            if has_fix and i in (0, 2):  # RMC and GGA
                intact_fix += 1
        await link.write(bytes(out))
        stats.epochs += 1
        if has_fix:
            stats.fix_epochs += 1
            if intact_fix:  # its GGA or its RMC came through: a driver may make a fix of it
                self.sent.append(SentFix(now, lat, lon, round(speed_kmh, 2), round(course, 2)))
        else:
            stats.no_fix_epochs += 1
        self._notify()

    def _gsv(self, talker: str) -> bytes:
        fields: dict[str, object] = {"numMsg": 1, "msgNum": 1, "numSV": 4, "signalID": ""}
        for n, (sv, elv, az, cno) in enumerate(
            ((1, 40, 83, 46), (5, 20, 100, 30), (12, 60, 200, 40), (15, 10, 300, 25)), start=1
        ):
            fields |= {f"svid_{n:02d}": sv, f"elv_{n:02d}": elv, f"az_{n:02d}": az, f"cno_{n:02d}": cno}
        return nmea.sentence("GP" if talker == "GN" else talker, "GSV", **fields)


async def _disconnect_periodically(sim: GpsSimulator, every: float, down: float) -> None:
    while True:
        await asyncio.sleep(every)
        await sim.disconnect(down)


@contextlib.asynccontextmanager
async def serve_pty(link: Path, options: SimOptions | None = None) -> AsyncIterator[GpsSimulator]:
    """Serve a simulated receiver on a new pty whose slave ``link`` points to (removed on exit)."""
    sim = GpsSimulator(options)
    async with serving.on_pty(sim, link), _periodic(sim):
        yield sim


@contextlib.asynccontextmanager
async def serve_tcp(host: str, port: int, options: SimOptions | None = None) -> AsyncIterator[GpsSimulator]:
    """Serve a simulated receiver on a TCP port (0: any free port, see ``sim.port``): a
    serial-to-Ethernet converter in front of it; every connection gets the sentences."""
    sim = GpsSimulator(options)
    async with serving.on_tcp(sim, host, port), _periodic(sim):
        yield sim


@contextlib.asynccontextmanager
async def _periodic(sim: GpsSimulator) -> AsyncIterator[None]:
    faults = sim.options.faults
    if faults.disconnect_every_s > 0:
        async with serving.running(
            _disconnect_periodically(sim, faults.disconnect_every_s, faults.disconnect_down_s)
        ):
            yield
    else:
        yield


# ----------------------------------------------------------------------------------------------------
# Command line: `edgegw sim gps ...`

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas):
  bad-checksum=P     a sentence's checksum corrupted, with probability P (0..1)
  truncate=P         a sentence cut short, with probability P
  noise=P            random bytes before a sentence, with probability P
  no-fix=S/EVERY     no fix (GGA quality 0, RMC status V) for S seconds every EVERY seconds
  silence=S/EVERY    nothing sent for S seconds every EVERY seconds
  disconnect=EVERY[/DOWN]
                     unplugged every EVERY seconds, for DOWN seconds (default 0)
example: --fault bad-checksum=0.02,truncate=0.01 --fault no-fix=10/60
"""


def parse_faults(specs: list[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    return Faults(**serving.parse_fault_specs(specs, _fault_fields))


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{text}: must be a number >= 0")
    return value


def _fault_fields(name: str, value: str | None) -> dict[str, float]:
    if not value:
        raise ValueError("expected NAME=VALUE")
    if name in ("bad-checksum", "truncate", "noise"):
        p = _number(value)
        if p > 1:
            raise ValueError("a probability is 0..1")
        return {name.replace("-", "_"): p}
    if name in ("no-fix", "silence"):
        length, slash, every = value.partition("/")
        if not slash:
            raise ValueError(f"{name}=S/EVERY")
        key = name.replace("-", "_")
        return {f"{key}_s": _number(length), f"{key}_every_s": _number(every)}
    if name == "disconnect":
        every, _, down = value.partition("/")
        period = _number(every)
        if period <= 0:
            raise ValueError("disconnect period must be positive")
        return {"disconnect_every_s": period, "disconnect_down_s": _number(down) if down else 0.0}
    raise ValueError(f"unknown fault {name!r} (bad-checksum, truncate, noise, no-fix, silence, disconnect)")


def _waypoint(text: str) -> tuple[float, float]:
    lat, _sep, lon = text.partition(",")
    try:
        return float(lat), float(lon)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LAT,LON in decimal degrees") from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``gps`` to the ``edgegw sim`` subcommands."""
    parser = sub.add_parser(
        "gps",
        help="GPS/GNSS receiver, NMEA 0183, driving a route",
        description="Simulated NMEA 0183 receiver on a vehicle driving a route, on a pty or a TCP port.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_link_or_tcp(parser)
    parser.add_argument(
        "--waypoint",
        dest="route",
        type=_waypoint,
        action="append",
        metavar="LAT,LON",
        help="a station of the route (repeat, at least two; default: a 4.5 km city bus loop)",
    )
    parser.add_argument("--speed", type=float, default=36.0, metavar="KMH", help="cruising speed (36)")
    parser.add_argument("--dwell", type=float, default=20.0, metavar="S", help="stop at each station (20)")
    parser.add_argument("--epoch", type=float, default=1.0, metavar="S", help="seconds between epochs (1)")
    parser.add_argument("--speedup", type=float, default=1.0, help="route seconds per real second (1)")
    parser.add_argument("--talker", default="GN", help="talker id: GN, GP, BD, GB, GL, GA (GN)")
    serving.add_seed_and_faults(parser, "gps", parse_faults)
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """The simulator options of parsed ``edgegw sim gps`` arguments; ValueError if inconsistent."""
    return SimOptions(
        route=tuple(args.route) if args.route else DEFAULT_ROUTE,
        speed_kmh=args.speed,
        dwell_s=args.dwell,
        epoch_s=args.epoch,
        speedup=args.speedup,
        talker=args.talker.upper(),
        seed=args.seed,
        faults=parse_faults(args.gps_faults),
    )


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    """Serve the receiver described by ``args`` until ``stop`` is set (or the task is cancelled)."""
    options = options_from_args(args)
    what = f"gps simulator (talker {options.talker}, {len(options.route)} stations)"
    await serving.serve_until_stopped(what, args, options, serve_pty, serve_tcp, stop=stop, out=out)
