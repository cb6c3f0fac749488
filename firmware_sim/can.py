"""A LAWICEL (slcan) CAN adapter on a pty, on a city bus's J1939 network: ``edgegw sim can --link PATH``.

The adapter answers what python-can's slcan interface (and slcand) send: ``C`` close, ``S0``-``S8`` bitrate
(only while closed), ``O`` open, ``L`` open listen-only (a second ``O`` while open is an error: BEL), ``V``
version, ``N`` serial number, ``F`` status flags, empty lines (CR), ``Z`` timestamps, and ``t``/``T`` transmit
(refused while closed or listen-only; else ``z``/``Z`` and the frame counted). Unknown commands get BEL.

While open it plays a drive (:class:`CityBus`): a city bus accelerating to 50 km/h, cruising, braking to a
station, doors open and closed, again; its engine (source address 0x00), instrument cluster (0x17) and door
controller (0x4A) broadcast their PGNs at the standard's rates (EEC1 every 20 ms, EEC2 50 ms, CCVS, LFE and
DC1 100 ms, ET1, DD, VD and AMB every second, HOURS every 10 s), DM1 every second (a coolant code appears,
then a fuel-level code makes the DM1 two codes long and a BAM, then both clear), and every 10 s the engine
sends its VIN to a diagnostic tool (0xF9) in an RTS/CTS session (the tool's CTS and acknowledgement heard
too). With ``--load`` it plays a fully loaded 1 Mbit/s bus instead: ``--rate`` frames per second (8,000 by
default, about all 29-bit 8-byte frames a 1 Mbit/s bus carries) of the same PGNs from many sources.

Faults: ``garbage=P`` (a line of junk before a frame), ``bad-dlc=P`` (a frame line whose DLC disagrees with
its data), ``bel=P`` (a stray BEL), ``unplug=EVERY[/DOWN]`` (the adapter pulled out and plugged back).
The frames are built with :mod:`protocols.j1939` and :mod:`protocols.slcan`, the codecs the tests check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from protocols import j1939, slcan

from . import serving

__all__ = [
    "CityBus",
    "Faults",
    "PeriodicFrame",
    "SimOptions",
    "SimStats",
    "SlcanSimulator",
    "add_parser",
    "run_from_args",
    "serve_pty",
]

ENGINE: Final = 0x00
CLUSTER: Final = 0x17
DOORS: Final = 0x4A
TOOL: Final = 0xF9
VIN: Final = "LZYTBGBW5K1000123"
TICK_S: Final = 0.01
"""The simulator writes what is due every 10 ms, in one write."""

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas):
  garbage=P          a line of junk before a frame, with probability P per frame (0..1)
  bad-dlc=P          a frame line whose DLC disagrees with its data, with probability P
  bel=P              a stray BEL (0x07) before a frame, with probability P
  unplug=EVERY[/DOWN]
                     the adapter is unplugged every EVERY seconds (the pty closed, the link re-pointed to a
                     new one) and stays out DOWN seconds (default 0)
example: --fault garbage=0.01,bad-dlc=0.005 --fault unplug=30/2
"""


@dataclass(frozen=True)
class Faults:
    garbage: float = 0.0
    bad_dlc: float = 0.0
    bel: float = 0.0
    unplug_every_s: float = 0.0
    unplug_down_s: float = 0.0


@dataclass(frozen=True)
class PeriodicFrame:
    """A frame more on the drive's bus (another ECU, a body controller), every ``period_s``: its data is
    ``payload(story_s)``, the story's time in seconds (a test encodes it with its own DBC, say)."""

    period_s: float
    arbitration_id: int
    payload: Callable[[float], bytes]


@dataclass(frozen=True)
class SimOptions:
    load: bool = False
    """A fully loaded bus instead of the drive."""
    rate: float = 8000.0
    """Frames per second in load mode."""
    time_scale: float = 1.0
    """How much faster than real time the drive's story runs (its frames keep their real rates)."""
    seed: int = 0
    faults: Faults = field(default_factory=Faults)
    extra: tuple[PeriodicFrame, ...] = ()
    """Frames played beside the drive's own (not in load mode)."""
    progress: TextIO | None = None
    """Where a loaded bus prints ``frames N`` (the frames written so far) every second (a benchmark reads
    it)."""


@dataclass
class SimStats:
    frames: int = 0
    """Frame lines written."""
    commands: int = 0
    """Command lines received (the empty ones included)."""
    errors: int = 0
    """Commands answered with BEL."""
    transmitted: int = 0
    """Frames the host transmitted (accepted)."""
    refused: int = 0
    """Frames the host tried to transmit while closed or listen-only (answered BEL)."""
    opens: int = 0
    listen_only: bool = False
    open: bool = False
    bitrate: int | None = None
    disconnects: int = 0
    faults: int = 0
    """Fault lines injected (garbage, bad DLC, BEL)."""
    dm1: int = 0
    """DM1 messages sent (single frame or BAM)."""
    bam: int = 0
    """BAM sessions sent."""
    rts_cts: int = 0
    """RTS/CTS sessions played."""
    host_frames: list[slcan.CanFrame] = field(default_factory=list)
    """What the host transmitted (the last 100)."""


# -- the drive ----------------------------------------------------------------------------------------------


class CityBus:
    """The vehicle: a story in time (seconds since the start of the drive) and the frames it broadcasts."""

    CYCLE_S: Final = 70.0
    """Accelerate 15 s, cruise 20 s, brake 10 s, stand at the station 25 s (doors open 5..20 s into it)."""
    DM1_STORY_S: Final = 120.0
    """A coolant code at 20 s, a fuel-level code at 40 s, both cleared at 80 s, every 120 s."""

    def __init__(self) -> None:
        self.distance_km = 182_340.0
        self.hours = 6_512.0
        self.fuel_pct = 72.0
        self._last_t = 0.0

    def speed_kmh(self, t: float) -> float:
        c = t % self.CYCLE_S
        if c < 15:
            return 50.0 * c / 15
        if c < 35:
            return 50.0 + 2.0 * math.sin(c)
        if c < 45:
            return 50.0 * (45 - c) / 10
        return 0.0

    def doors_open(self, t: float) -> bool:
        c = t % self.CYCLE_S
        return 50 <= c < 65

    def dtcs(self, t: float) -> list[j1939.Dtc]:
        c = t % self.DM1_STORY_S
        codes = []
        if 20 <= c < 80:
            codes.append(j1939.Dtc(110, 0, 1))  # coolant temperature above normal, most severe
        if 40 <= c < 80:
            codes.append(j1939.Dtc(96, 18, 2))  # fuel level below normal, moderately severe
        return codes

    def advance(self, t: float) -> None:
        dt = max(0.0, t - self._last_t)
        self._last_t = t
        self.distance_km += self.speed_kmh(t) * dt / 3600
        self.hours += dt / 3600
        self.fuel_pct = max(5.0, self.fuel_pct - dt * 0.0005)

    def values(self, pgn: int, t: float) -> dict[str, float | str]:
        v = self.speed_kmh(t)
        rpm = 600.0 if v == 0 else min(2200.0, 800.0 + v * 28)
        accelerating = (t % self.CYCLE_S) < 15
        if pgn == 61444:
            return {
                "engine_speed": round(rpm * 8) / 8,
                "actual_engine_percent_torque": 70 if accelerating else 25,
                "drivers_demand_engine_percent_torque": 72 if accelerating else 24,
            }
        if pgn == 61443:
            return {"accelerator_pedal_position_1": 60.0 if accelerating else 14.0}
        if pgn == 65265:
            return {
                "wheel_based_vehicle_speed": round(v * 256) / 256,
                "parking_brake_switch": 1 if v == 0 else 0,
                "brake_switch": 1 if 35 <= (t % self.CYCLE_S) < 45 else 0,
            }
        if pgn == 65266:
            return {
                "fuel_rate": round((4.0 + v * 0.5) * 20) / 20,
                "throttle_position": 60.0 if accelerating else 14.0,
            }
        if pgn == 65262:
            return {"engine_coolant_temperature": min(88, 20 + int(t / 4)), "fuel_temperature": 31}
        if pgn == 65276:
            return {"fuel_level_1": round(self.fuel_pct / 0.4) * 0.4}
        if pgn == 65248:
            return {
                "total_vehicle_distance": round(self.distance_km * 8) / 8,
                "trip_distance": round(t * 0.004 * 8) / 8,
            }
        if pgn == 65253:
            return {"engine_total_hours": round(self.hours * 20) / 20}
        if pgn == 65269:
            return {"ambient_air_temperature": 18.5, "barometric_pressure": 101.0}
        if pgn == 65102:
            return {"position_of_doors": 0 if self.doors_open(t) else 2}
        return {}

    SCHEDULE: Final = (
        (61444, ENGINE, 0.02, 3),
        (61443, ENGINE, 0.05, 3),
        (65265, ENGINE, 0.1, 6),
        (65266, ENGINE, 0.1, 6),
        (65102, DOORS, 0.1, 6),
        (65262, ENGINE, 1.0, 6),
        (65276, CLUSTER, 1.0, 6),
        (65248, CLUSTER, 1.0, 6),
        (65269, ENGINE, 1.0, 6),
        (65253, ENGINE, 10.0, 6),
    )
    """(PGN, source, period in seconds, priority)."""

    def frames(self, t0: float, t1: float, story: float) -> Iterator[tuple[int, bytes]]:
        """The single frames due in the real time (t0, t1], the story at ``story`` seconds."""
        self.advance(story)
        for pgn, source, period, priority in self.SCHEDULE:
            if math.floor(t1 / period) > math.floor(t0 / period):
                data = j1939.PGNS[pgn].encode(self.values(pgn, story))
                yield j1939.can_id(pgn, source, priority=priority), data


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for its end, without swallowing a cancellation of the caller itself (which
    ``serving.cancel_all`` would: a session stopping its stream as the server stops must still stop)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a stream ends with the link's ConnectionError


# -- the simulator ----------------------------------------------------------------------------------------


class SlcanSimulator(serving.LinkSimulator[SimStats]):
    def __init__(self, options: SimOptions | None = None) -> None:
        super().__init__(SimStats())
        self.options = options or SimOptions()
        self.random = random.Random(self.options.seed)
        self.bus = CityBus()

    async def serve_link(self, link: serving.Link) -> None:
        stats = self.stats
        stats.open = False
        framer = slcan.LineFramer()
        streaming: asyncio.Task[None] | None = None
        try:
            while True:
                data = await link.read()
                if not data:
                    return
                for line in framer.feed(data):
                    stats.commands += 1
                    reply = self._command(line)
                    if reply == b"\x07":
                        stats.errors += 1
                    await link.write(reply)
                    if stats.open and streaming is None:
                        streaming = asyncio.create_task(self._stream(link))
                    elif not stats.open and streaming is not None:
                        await _stop(streaming)
                        streaming = None
                self._notify()
        except ConnectionError:
            return
        finally:
            stats.open = False
            if streaming is not None:
                await _stop(streaming)

    def _command(self, line: bytes) -> bytes:
        stats = self.stats
        ok, error = b"\r", b"\x07"
        if not line:
            return ok
        head = line[:1]
        if head == b"C":
            stats.open = False
            return ok
        if head in (b"O", b"L"):
            if stats.open or len(line) != 1:  # python-can opens twice (set_bitrate, then __init__)
                return error
            stats.open = True
            stats.listen_only = head == b"L"
            stats.opens += 1
            return ok
        if head == b"S":
            rate = slcan.BITRATES.get(line.decode("ascii", "replace"))
            if stats.open or rate is None:
                return error
            stats.bitrate = rate
            return ok
        if head == b"s":
            return error if stats.open else ok
        if head == b"V":
            return b"V1013\r"
        if head == b"N":
            return b"NSIM1\r"
        if head == b"F":
            return b"F00\r" if stats.open else error
        if head == b"Z":
            return ok if line[1:] in (b"0", b"1") else error
        if head in (b"t", b"T", b"r", b"R"):
            if not stats.open or stats.listen_only:
                stats.refused += 1
                return error
            try:
                frame = slcan.decode_frame(line)
            except Exception:
                return error
            stats.transmitted += 1
            stats.host_frames = [*stats.host_frames[-99:], frame]
            return b"Z\r" if head in (b"T", b"R") else b"z\r"
        return error

    # -- what the bus says -----------------------------------------------------------------------------
    def _line(self, arbitration_id: int, data: bytes) -> bytes:
        faults = self.options.faults
        rnd = self.random
        prefix = b""
        if faults.garbage and rnd.random() < faults.garbage:
            prefix += bytes(rnd.choice(b"GHIJKLMQUWXY0123456789") for _ in range(rnd.randint(1, 12))) + b"\r"
            self.stats.faults += 1
        if faults.bel and rnd.random() < faults.bel:
            prefix += b"\x07"
            self.stats.faults += 1
        if faults.bad_dlc and rnd.random() < faults.bad_dlc and len(data) > 1:
            self.stats.faults += 1
            return prefix + slcan.encode_frame(slcan.CanFrame(arbitration_id, data[:-1], dlc=len(data)))
        return prefix + slcan.encode_frame(slcan.CanFrame(arbitration_id, data))

    async def _stream(self, link: serving.Link) -> None:
        if self.options.load:
            await self._stream_load(link)
        else:
            await self._stream_drive(link)

    async def _stream_drive(self, link: serving.Link) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        scale = self.options.time_scale
        bus = self.bus
        last = 0.0
        multi: list[tuple[float, int, bytes]] = []
        """Multi-packet frames waiting for their time (real seconds since start)."""
        next_dm1 = 0.0
        next_vin = 5.0
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time() - start
            story = now * scale
            out = bytearray()
            count = 0
            for arbitration_id, data in bus.frames(last, now, story):
                out += self._line(arbitration_id, data)
                count += 1
            for extra in self.options.extra:
                if math.floor(now / extra.period_s) > math.floor(last / extra.period_s):
                    out += self._line(extra.arbitration_id, extra.payload(story))
                    count += 1
            if now >= next_dm1:
                next_dm1 = now + 1.0
                codes = tuple(bus.dtcs(story))
                lamps = j1939.Lamps(False, False, bool(codes), False)
                payload = j1939.encode_dm1(lamps, codes)
                self.stats.dm1 += 1
                if len(payload) <= 8:
                    out += self._line(j1939.can_id(j1939.DM1, ENGINE, priority=6), payload)
                    count += 1
                else:
                    self.stats.bam += 1
                    for i, (cid, frame) in enumerate(j1939.bam_frames(j1939.DM1, ENGINE, payload)):
                        multi.append((now + 0.05 * i, cid, frame))
            if now >= next_vin:
                next_vin = now + 10.0
                self.stats.rts_cts += 1
                vi = j1939.PGNS[65260].encode({"vehicle_identification_number": VIN})
                for i, (cid, frame) in enumerate(j1939.rts_cts_frames(65260, ENGINE, TOOL, vi, window=2)):
                    multi.append((now + 0.01 * i, cid, frame))
            while multi and multi[0][0] <= now:
                _, cid, frame = multi.pop(0)
                out += self._line(cid, frame)
                count += 1
            multi.sort(key=lambda item: item[0])
            last = now
            if out:
                await link.write(bytes(out))
                self.stats.frames += count
                self._notify()

    def _load_lines(self) -> list[bytes]:
        """A few thousand frames of a loaded bus: the drive's PGNs from 8 engines' worth of sources, values
        moving, so that a decoder has work and a rate control has changes to see."""
        lines: list[bytes] = []
        bus = CityBus()
        for step in range(400):
            t = step * 0.7
            for pgn, _, _, priority in CityBus.SCHEDULE:
                for source in range(8):
                    data = j1939.PGNS[pgn].encode(bus.values(pgn, t + source))
                    lines.append(self._line(j1939.can_id(pgn, source, priority=priority), data))
        return lines

    async def _stream_load(self, link: serving.Link) -> None:
        loop = asyncio.get_running_loop()
        lines = self._load_lines()
        start = loop.time()
        sent = 0
        index = 0
        rate = self.options.rate
        next_progress = start + 1.0
        while True:
            await asyncio.sleep(TICK_S)
            due = int((loop.time() - start) * rate) - sent
            if due <= 0:
                continue
            due = min(due, int(rate * 0.1) + 1)  # a stalled writer does not burst more than 100 ms worth
            chunk = [lines[(index + i) % len(lines)] for i in range(due)]
            index = (index + due) % len(lines)
            await link.write(b"".join(chunk))
            sent += due
            self.stats.frames += due
            self._notify()
            progress = self.options.progress
            if progress is not None and loop.time() >= next_progress:
                next_progress += 1.0
                print(f"frames {self.stats.frames}", file=progress, flush=True)

    async def unplug_forever(self) -> None:
        faults = self.options.faults
        while True:
            await asyncio.sleep(faults.unplug_every_s)
            await self.disconnect(faults.unplug_down_s)


@contextlib.asynccontextmanager
async def serve_pty(link: Path, options: SimOptions | None = None) -> AsyncIterator[SlcanSimulator]:
    """The adapter on a new pty that ``link`` points to, until the block ends."""
    sim = SlcanSimulator(options)
    async with serving.on_pty(sim, link):
        if sim.options.faults.unplug_every_s > 0:
            async with serving.running(sim.unplug_forever()):
                yield sim
        else:
            yield sim


@contextlib.asynccontextmanager
async def serve_tcp(host: str, port: int, options: SimOptions | None = None) -> AsyncIterator[SlcanSimulator]:
    """The adapter behind a TCP port (a serial-to-Ethernet converter; python-can reaches it with
    ``socket://HOST:PORT`` as the channel)."""
    sim = SlcanSimulator(options)
    async with serving.on_tcp(sim, host, port):
        yield sim


# -- command line -----------------------------------------------------------------------------------------


def _probability(name: str, text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={text}: a probability is 0..1")
    return value


def _fault_fields(name: str, value: str | None) -> dict[str, float]:
    if not value:
        raise ValueError("expected NAME=VALUE")
    if name in ("garbage", "bad-dlc", "bel"):
        return {name.replace("-", "_"): _probability(name, value)}
    if name == "unplug":
        every, _, down = value.partition("/")
        fields = {"unplug_every_s": float(every), "unplug_down_s": float(down) if down else 0.0}
        if fields["unplug_every_s"] <= 0 or fields["unplug_down_s"] < 0:
            raise ValueError("unplug=EVERY[/DOWN], EVERY > 0")
        return fields
    raise ValueError(f"unknown fault {name!r}")


def parse_faults(specs: list[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    return Faults(**serving.parse_fault_specs(specs, _fault_fields))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``can`` to the ``edgegw sim`` subcommands."""
    parser = sub.add_parser(
        "can",
        help="slcan (LAWICEL) CAN adapter on a city bus's J1939 network",
        description="Simulated slcan CAN adapter on a pty (or a TCP port): a city bus drive in J1939.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_link_or_tcp(parser)
    parser.add_argument(
        "--load", action="store_true", help="a fully loaded 1 Mbit/s bus instead of the drive"
    )
    parser.add_argument(
        "--rate", type=float, default=8000.0, help="frames per second with --load (default 8000)"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="the drive's story runs this much faster (default 1)"
    )
    serving.add_seed_and_faults(parser, "can", parse_faults)
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    if args.rate <= 0 or args.time_scale <= 0:
        raise ValueError("--rate and --time-scale must be positive")
    return SimOptions(
        progress=sys.stdout if args.load else None,
        load=args.load,
        rate=args.rate,
        time_scale=args.time_scale,
        seed=args.seed,
        faults=parse_faults(args.can_faults),
    )


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    """Serve the adapter described by ``args`` until ``stop`` is set (or the task is cancelled)."""
    options = options_from_args(args)
    what = "can (slcan) simulator" + (f" (bus load, {options.rate:g} frames/s)" if options.load else "")
    await serving.serve_until_stopped(what, args, options, serve_pty, serve_tcp, stop=stop, out=out)
