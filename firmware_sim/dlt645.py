"""A simulated DL/T 645-2007 meter bus: several energy meters on one RS-485 line, on a pty or a TCP port
(a serial-to-Ethernet converter in front of the line).

It speaks the meters' side of :mod:`protocols.dlt645` (requests parsed, replies built with the codec the
driver uses) and answers:

- read data (0x11) to a meter's address: the value of every data identifier in the codec's table, from a
  three-phase model whose values change over time (voltages, currents and powers drift around a working
  point, energies grow with the power drawn); an identifier not in the table, or listed in
  ``SimOptions.unsupported``, gets the error reply 0xD1 "no such data";
- read address (0x13) to the wildcard address: the address, when one meter is alone on the line; with several
  live meters their replies collide and the line carries garbage, as on a real bus;
- read follow-up (0x12): error 0xD2 (no value here spans frames); any other function: its error reply
  ("other error"). Frames to the broadcast address, to an unknown or dead address are not answered; a
  broadcast time (0x08) sets the clock of every live meter (:attr:`Dlt645Simulator.clocks`). With
  ``SimOptions.echo`` the line also echoes the master's bytes back, as an RS-485 adapter without echo
  suppression does.

Faults: a dead address (never answers; :meth:`Dlt645Simulator.kill` / :meth:`~Dlt645Simulator.revive`), slow
replies (a per-meter delay before answering; the other meters answer meanwhile, so a late reply may land in
the middle of the next exchange, as on a real line), and per reply, with a probability: noise
(random bytes before it), a bad checksum, lost bytes, a wrong address or a wrong value length (both with a
valid checksum: only the driver's own checks catch them). Counters live in :attr:`Dlt645Simulator.stats`;
what each meter sent intact is in :attr:`Dlt645Simulator.sent`; a test waits with
:meth:`Dlt645Simulator.wait_for`, never by sleeping, and holds a value steady (or moves it) with
:meth:`Dlt645Simulator.pin`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final, TextIO

from protocols import dlt645
from protocols.errors import DecodeError

from . import serving
from .serving import Link

__all__ = [
    "DEFAULT_METERS",
    "Dlt645Simulator",
    "Faults",
    "MeterModel",
    "SimOptions",
    "SimStats",
    "add_parser",
    "parse_faults",
    "run_from_args",
    "serve_pty",
    "serve_tcp",
]

DEFAULT_METERS: Final = ("000000000001", "000000000002", "000000000003", "000000000004")
SENT_KEPT: Final = 1024
"""Values remembered per (meter, data identifier) in :attr:`Dlt645Simulator.sent`."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong on the line, per reply, with these probabilities (0..1)."""

    noise: float = 0.0
    """1..8 random bytes before the reply."""
    bad_checksum: float = 0.0
    """The reply's checksum corrupted."""
    drop: float = 0.0
    """Some of the reply's bytes lost."""
    wrong_address: float = 0.0
    """The reply carries another meter's address (with a valid checksum)."""
    wrong_length: float = 0.0
    """A data reply's value is one byte short or long (with a valid checksum)."""

    def __post_init__(self) -> None:
        serving.check_probabilities(self, ("noise", "bad_checksum", "drop", "wrong_address", "wrong_length"))

    @property
    def any(self) -> bool:
        return bool(self.noise or self.bad_checksum or self.drop or self.wrong_address or self.wrong_length)


@dataclass(frozen=True, slots=True)
class SimOptions:
    """The meters on the line and how they behave."""

    meters: tuple[str, ...] = DEFAULT_METERS
    """Addresses, 12 BCD digits each."""
    dead: frozenset[str] = frozenset()
    """Meters that never answer (from the start; see also :meth:`Dlt645Simulator.kill`)."""
    delays: tuple[tuple[str, float], ...] = ()
    """(address, seconds): meters that answer late (the others answer meanwhile)."""
    reply_delay_s: float = 0.0
    """Every meter's turnaround before answering."""
    preamble: int = 4
    """0xFE bytes before each reply (real meters send 0 to 4)."""
    echo: bool = False
    """The line echoes what the master sends (an RS-485 adapter without echo suppression)."""
    unsupported: frozenset[int] = frozenset()
    """Data identifiers of the table that these meters refuse (error reply "no such data")."""
    seed: int = 0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.meters:
            raise ValueError("at least one meter is needed")
        for address in (*self.meters, *self.dead, *(a for a, _ in self.delays)):
            if not dlt645.is_meter_address(address):
                raise ValueError(f"meter address {address!r}: 12 decimal digits, not the broadcast address")
        if len(set(self.meters)) != len(self.meters):
            raise ValueError("meter addresses must be distinct")
        unknown = (self.dead | {a for a, _ in self.delays}) - set(self.meters)
        if unknown:
            raise ValueError(f"not a meter on this line: {', '.join(sorted(unknown))}")
        if any(delay < 0 for _, delay in self.delays) or self.reply_delay_s < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.preamble <= dlt645.MAX_PREAMBLE:
            raise ValueError(f"preamble {self.preamble}: 0..{dlt645.MAX_PREAMBLE} bytes")


@dataclass(slots=True)
class SimStats:
    """Counters since the simulator started (monotonic)."""

    frames_received: int = 0
    """Valid frames seen on the line (any address)."""
    requests: Counter[str] = field(default_factory=Counter)
    """Requests addressed to each meter (by address), dead ones included."""
    replies: int = 0
    """Replies written intact (data, error and address replies)."""
    error_replies: int = 0
    """Of which abnormal replies (0xD1, ...)."""
    ignored: int = 0
    """Frames no meter answered: broadcast, unknown or dead address, a reply seen on the line."""
    corrupted: int = 0
    """Replies written with a bad checksum or lost bytes."""
    misleading: int = 0
    """Replies written with a wrong address or value length (valid checksum)."""
    noise_bytes: int = 0
    collisions: int = 0
    """Read-address requests that several live meters answered at once."""
    time_syncs: int = 0
    """Broadcast-time frames (0x08 to 999999999999) the live meters set their clocks by."""
    connections: int = 0
    disconnects: int = 0


class MeterModel:
    """One meter's three-phase working point, deterministic from its address and the seed.

    Phases draw currents that drift slowly (periods of tens of seconds) around a few amperes at a voltage
    near 220 V; powers follow from V, I and a power factor; energies grow with the mean power, so they never
    run backwards."""

    def __init__(self, address: str, seed: int = 0) -> None:
        rng = random.Random(f"edgegw-dlt645-{address}-{seed}")
        self.address = address
        self._voltage = [rng.uniform(218.0, 232.0) for _ in range(3)]
        self._current = [rng.uniform(2.0, 30.0) for _ in range(3)]
        self._pf = [rng.uniform(0.85, 0.99) for _ in range(3)]
        self._phase = [rng.uniform(0.0, 2 * math.pi) for _ in range(3)]
        self._period = rng.uniform(20.0, 90.0)
        self._energy = rng.uniform(1000.0, 90000.0)
        self._reverse = rng.uniform(0.0, 50.0)
        self._frequency = rng.uniform(49.97, 50.03)
        self._temperature = rng.uniform(25.0, 45.0)
        self._runtime_min = rng.randrange(0, 500000)

    def snapshot(self, t: float) -> dict[str, float]:
        """Every table value at ``t`` seconds since the line started, by table name."""
        values: dict[str, float] = {}
        total_p = total_q = total_s = 0.0
        mean_p = 0.0
        for n, phase in enumerate("abc"):
            wave = math.sin(2 * math.pi * t / self._period + self._phase[n])
            voltage = self._voltage[n] + 2.0 * wave
            current = self._current[n] * (1.0 + 0.2 * wave)
            pf = self._pf[n]
            p = voltage * current * pf / 1000
            s = voltage * current / 1000
            q = s * math.sin(math.acos(pf))
            values |= {
                f"voltage_{phase}": voltage,
                f"current_{phase}": current,
                f"power_active_{phase}": p,
                f"power_reactive_{phase}": q,
                f"power_apparent_{phase}": s,
                f"power_factor_{phase}": pf,
                f"phase_angle_{phase}": math.degrees(math.acos(pf)),
                f"voltage_thd_{phase}": 1.5 + 0.5 * n,
                f"current_thd_{phase}": 4.0 + n,
            }
            total_p += p
            total_q += q
            total_s += s
            mean_p += self._voltage[n] * self._current[n] * pf / 1000
        hours = t / 3600
        forward = self._energy + mean_p * hours
        reverse = self._reverse
        reactive = self._energy * 0.3 + mean_p * 0.4 * hours
        values |= {
            "power_active": total_p,
            "power_reactive": total_q,
            "power_apparent": total_s,
            "power_factor": total_p / total_s,
            "current_neutral": 0.1 * abs(self._current[0] - self._current[1]),
            "frequency": self._frequency + 0.02 * math.sin(2 * math.pi * t / 37.0),
            "power_active_1min": mean_p,
            "demand_active": mean_p,
            "demand_reactive": mean_p * 0.4,
            "demand_apparent": mean_p * 1.08,
            "temperature": self._temperature,
            "clock_battery_voltage": 3.6,
            "reading_battery_voltage": 6.0,
            "battery_runtime": self._runtime_min + int(t // 60),
            "energy_reactive_q1": reactive,
            "energy_reactive_q2": 0.0,
            "energy_reactive_q3": 0.0,
            "energy_reactive_q4": reactive * 0.05,
            "energy_apparent_forward": forward * 1.08,
            "energy_apparent_reverse": reverse * 1.08,
        }
        registers = {
            "energy_active_forward": forward,
            "energy_active_reverse": reverse,
            "energy_active_combined": forward + reverse,
            "energy_reactive_combined_1": reactive,
            "energy_reactive_combined_2": reactive * 0.05,
        }
        for name, total in registers.items():
            values[name] = total
            for tariff, share in enumerate((0.1, 0.4, 0.3, 0.2), start=1):
                values[f"{name}_t{tariff}"] = total * share
        for item in _REGISTERS:
            # A register rolls over to zero when full, as a meter's does (after years, or from a high start).
            scale = 10**item.decimals
            values[item.name] = round(values[item.name] * scale) % (round(item.largest * scale) + 1) / scale
        return values


_REGISTERS: Final = tuple(item for item in dlt645.ITEMS if item.unit.endswith("h"))
"""Energy registers (kWh, kvarh, kVAh)."""


class Dlt645Simulator(serving.LinkSimulator[SimStats]):
    """The line's meters, counters and controls; served by :func:`serve_pty` or :func:`serve_tcp`."""

    def __init__(
        self, options: SimOptions | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        super().__init__(SimStats())
        self.options = options or SimOptions()
        self.models = {address: MeterModel(address, self.options.seed) for address in self.options.meters}
        self.dead: set[str] = set(self.options.dead)
        self.delays: dict[str, float] = dict(self.options.delays)
        self.pinned: dict[str, dict[str, float]] = {address: {} for address in self.options.meters}
        """Meter -> table name -> the value it reports instead of its model's (see :meth:`pin`)."""
        self.sent: dict[tuple[str, int], deque[float]] = {}
        """(meter, data identifier) -> the values it sent intact, oldest first (the last SENT_KEPT)."""
        self.clocks: dict[str, datetime] = {}
        """Meter -> the date and time the last broadcast time set its clock to (none answers it)."""
        self._clock = clock
        self._start: float | None = None
        self._fault_rng = random.Random(f"edgegw-dlt645-faults-{self.options.seed}")

    # ---------------------------------------------------------------- controls for tests and the CLI

    def kill(self, address: str) -> None:
        """The meter at ``address`` stops answering."""
        self._known(address)
        self.dead.add(address)

    def revive(self, address: str) -> None:
        """The meter at ``address`` answers again."""
        self._known(address)
        self.dead.discard(address)

    def set_delay(self, address: str, seconds: float) -> None:
        """The meter at ``address`` answers ``seconds`` late (0: at once)."""
        self._known(address)
        self.delays[address] = seconds

    def pin(self, address: str, name: str, value: float) -> None:
        """The meter at ``address`` reports ``value`` for table item ``name`` until :meth:`unpin`."""
        self._known(address)
        item = dlt645.find_item(name)
        if item is None or item.name != name:
            raise KeyError(f"no data item named {name!r} in the table")
        self.pinned[address][name] = value

    def unpin(self, address: str, name: str) -> None:
        """The meter at ``address`` reports its model's value for ``name`` again."""
        self._known(address)
        self.pinned[address].pop(name, None)

    def _known(self, address: str) -> None:
        if address not in self.models:
            raise KeyError(f"no meter {address} on this line")

    def values(self, address: str, t: float | None = None) -> dict[str, float]:
        """What the meter at ``address`` would report at ``t`` (default: now), by table name."""
        return self.models[address].snapshot(self._now() if t is None else t) | self.pinned[address]

    async def wait_requests(self, address: str, n: int) -> None:
        await self.wait_for(lambda s: s.requests[address] >= n)

    def _now(self) -> float:
        now = self._clock() if self._clock is not None else asyncio.get_running_loop().time()
        if self._start is None:
            self._start = now
        return now - self._start

    # ---------------------------------------------------------------- one session (a connection or a pty)

    async def serve_link(self, link: Link) -> None:
        """Answer the requests arriving on ``link`` until it closes.

        Every meter hears every request as it arrives; a meter with a delay answers later, in a task of its
        own (one reply at a time per meter), while the others go on answering theirs, as on a real line."""
        self.stats.connections += 1
        self._notify()
        framer = dlt645.Dlt645Framer()
        late: set[asyncio.Task[None]] = set()
        turns: dict[str, asyncio.Lock] = {}
        try:
            while True:
                data = await link.read()
                if not data:
                    return
                if self.options.echo:
                    await link.write(data)
                for frame in framer.feed(data):
                    await self._handle(link, frame, late, turns)
        except ConnectionError:
            return
        finally:
            for task in late:
                task.cancel()

    async def _handle(
        self,
        link: Link,
        frame: dlt645.Frame,
        late: set[asyncio.Task[None]],
        turns: dict[str, asyncio.Lock],
    ) -> None:
        stats = self.stats
        stats.frames_received += 1
        if frame.address == dlt645.BROADCAST and frame.control == dlt645.Control.BROADCAST_TIME:
            self._set_clocks(frame)
            return
        addressed = [
            meter
            for meter in self.options.meters
            if frame.address != dlt645.BROADCAST and dlt645.address_matches(meter, frame.address)
        ]
        for meter in addressed:
            stats.requests[meter] += 1
        live = [meter for meter in addressed if meter not in self.dead]
        if not live or frame.control & dlt645.REPLY_BIT:
            stats.ignored += 1
            self._notify()
            return
        self._notify()
        try:
            request = dlt645.parse_request(frame)
        except DecodeError:
            request = None
        if len(live) > 1:
            # Several meters answer at once (a wildcard address): their bytes collide on the line.
            await self._collide(link, [self._answer(meter, request, frame.control) for meter in live])
            return
        meter = live[0]
        delay = self.options.reply_delay_s + self.delays.get(meter, 0.0)
        if delay <= 0:
            await self._send(link, meter, self._answer(meter, request, frame.control))
            return
        turn = turns.setdefault(meter, asyncio.Lock())

        async def answer_late() -> None:
            async with turn:
                await asyncio.sleep(delay)
                if meter in self.dead:  # killed while thinking
                    return
                with contextlib.suppress(ConnectionError):
                    await self._send(link, meter, self._answer(meter, request, frame.control))

        task = asyncio.create_task(answer_late())
        late.add(task)
        task.add_done_callback(late.discard)

    def _set_clocks(self, frame: dlt645.Frame) -> None:
        """Broadcast time: every live meter sets its clock; none answers (a malformed one: ignored)."""
        try:
            request = dlt645.parse_request(frame)
        except DecodeError:
            self.stats.ignored += 1
        else:
            assert isinstance(request, dlt645.BroadcastTime)
            when = datetime(
                request.year, request.month, request.day, request.hour, request.minute, request.second
            )
            for meter in self.options.meters:
                if meter not in self.dead:
                    self.clocks[meter] = when
            self.stats.time_syncs += 1
        self._notify()

    def _answer(self, meter: str, request: dlt645.Request | None, control: int) -> dlt645.Reply:
        if isinstance(request, dlt645.ReadAddress):
            return dlt645.AddressReply(meter)
        if isinstance(request, dlt645.ReadData):
            item = dlt645.item_for(request.di)
            if item is None or request.di in self.options.unsupported:
                return dlt645.ErrorReply(dlt645.Control.READ_DATA, dlt645.ErrorFlag.NO_DATA)
            value = self.values(meter)[item.name]
            value = max(-item.largest if item.signed else 0.0, min(item.largest, value))
            return dlt645.DataReply(item.di, dlt645.encode_value(item, value))
        if isinstance(request, dlt645.ReadFollowUp):
            return dlt645.ErrorReply(dlt645.Control.READ_FOLLOW_UP, dlt645.ErrorFlag.NO_DATA)
        return dlt645.ErrorReply(control & dlt645.FUNCTION_MASK, dlt645.ErrorFlag.OTHER)

    async def _send(self, link: Link, meter: str, reply: dlt645.Reply) -> None:
        stats = self.stats
        faults = self.options.faults
        preamble = self.options.preamble
        rng = self._fault_rng
        out = bytearray()
        if faults.noise and rng.random() < faults.noise:
            noise = rng.randbytes(rng.randint(1, 8))
            out += noise
            stats.noise_bytes += len(noise)
        intact = False
        if faults.wrong_address and rng.random() < faults.wrong_address:
            others = [m for m in self.options.meters if m != meter] or [f"{(int(meter) + 1) % 10**12:012d}"]
            out += dlt645.encode_reply(reply, rng.choice(others), preamble)
            stats.misleading += 1
        elif (
            faults.wrong_length and isinstance(reply, dlt645.DataReply) and rng.random() < faults.wrong_length
        ):
            payload = reply.payload[:-1] if rng.random() < 0.5 else reply.payload + b"\x00"
            out += dlt645.encode_reply(dlt645.DataReply(reply.di, payload), meter, preamble)
            stats.misleading += 1
        else:
            raw = dlt645.encode_reply(reply, meter, preamble)
            if faults.bad_checksum and rng.random() < faults.bad_checksum:
                out += raw[:-2] + bytes((raw[-2] ^ rng.randint(1, 0xFF), raw[-1]))
                stats.corrupted += 1
            elif faults.drop and rng.random() < faults.drop:
                cut = rng.randrange(preamble + 1, len(raw))
                lost = rng.randint(1, len(raw) - cut)
                out += raw[:cut] + raw[cut + lost :]
                stats.corrupted += 1
            else:
                out += raw
                intact = True
        await link.write(bytes(out))
        if intact:
            stats.replies += 1
            if isinstance(reply, dlt645.ErrorReply):
                stats.error_replies += 1
            elif isinstance(reply, dlt645.DataReply):
                item = dlt645.item_for(reply.di)
                if item is not None:
                    sent = self.sent.setdefault((meter, reply.di), deque(maxlen=SENT_KEPT))
                    sent.append(dlt645.decode_value(item, reply.payload))
        self._notify()

    async def _collide(self, link: Link, replies: list[dlt645.Reply]) -> None:
        frames = [
            dlt645.encode_reply(reply, self.options.meters[0], self.options.preamble) for reply in replies
        ]
        garbled = bytearray(max(len(frame) for frame in frames))
        for frame in frames:
            for i, byte in enumerate(frame):
                garbled[i] |= byte  # RS-485 drivers fighting: a dominant state wins, bit by bit
        self.stats.collisions += 1
        await link.write(bytes(garbled))
        self._notify()


@contextlib.asynccontextmanager
async def serve_pty(link: Path, options: SimOptions | None = None) -> AsyncIterator[Dlt645Simulator]:
    """Serve a simulated meter line on a new pty whose slave ``link`` points to (removed on exit)."""
    sim = Dlt645Simulator(options)
    async with serving.on_pty(sim, link):
        sim._now()  # the meters' values move from when the line comes up
        yield sim


@contextlib.asynccontextmanager
async def serve_tcp(
    host: str, port: int, options: SimOptions | None = None
) -> AsyncIterator[Dlt645Simulator]:
    """Serve a simulated meter line on a TCP port (0: any free port, see ``sim.port``). Every connection
    reaches the same meters, one request at a time per connection."""
    sim = Dlt645Simulator(options)
    async with serving.on_tcp(sim, host, port):
        sim._now()
        yield sim


# ----------------------------------------------------------------------------------------------------
# Command line: `edgegw sim dlt645 ...`

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas), probabilities per reply (0..1):
  noise=P            random bytes before a reply
  bad-checksum=P     the reply's checksum corrupted
  drop=P             some bytes of the reply lost
  wrong-address=P    the reply carries another meter's address (valid checksum)
  wrong-length=P     the value is a byte short or long (valid checksum)
example: --fault noise=0.01,bad-checksum=0.01 --dead 000000000003 --slow 000000000002=0.8
"""

_FAULT_NAMES: Final = ("noise", "bad-checksum", "drop", "wrong-address", "wrong-length")


def parse_faults(specs: list[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    return Faults(**serving.parse_fault_specs(specs, _fault_fields))


def _fault_fields(name: str, text: str | None) -> dict[str, float]:
    if not text:
        raise ValueError("expected NAME=P")
    if name not in _FAULT_NAMES:
        raise ValueError(f"unknown fault {name!r} ({', '.join(_FAULT_NAMES)})")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("a probability is 0..1")
    return {name.replace("-", "_"): value}


def _meter_address(text: str) -> str:
    if not dlt645.is_meter_address(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a meter address is 12 decimal digits (not 999999999999)")
    return text


def _slow(text: str) -> tuple[str, float]:
    address, sep, seconds = text.partition("=")
    try:
        delay = float(seconds)
    except ValueError:
        delay = -1.0
    if not sep or delay < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ADDRESS=SECONDS")
    return _meter_address(address), delay


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``dlt645`` to the ``edgegw sim`` subcommands."""
    parser = sub.add_parser(
        "dlt645",
        help="DL/T 645-2007 energy meters on one RS-485 line",
        description="Simulated DL/T 645-2007 meters sharing one line, on a pty or a TCP port.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_link_or_tcp(parser)
    parser.add_argument(
        "--meter",
        dest="meters",
        type=_meter_address,
        action="append",
        metavar="ADDRESS",
        help=f"a meter's address, 12 digits (repeat; default {', '.join(DEFAULT_METERS)})",
    )
    parser.add_argument(
        "--dead", type=_meter_address, action="append", default=[], metavar="ADDRESS", help="never answers"
    )
    parser.add_argument(
        "--slow", type=_slow, action="append", default=[], metavar="ADDRESS=S", help="answers S seconds late"
    )
    parser.add_argument(
        "--reply-delay", type=float, default=0.0, metavar="S", help="every meter's turnaround"
    )
    parser.add_argument(
        "--preamble", type=int, choices=range(5), default=4, help="0xFE bytes before each reply (default 4)"
    )
    parser.add_argument("--echo", action="store_true", help="echo the master's bytes (RS-485 adapter)")
    serving.add_seed_and_faults(
        parser, "dlt645", parse_faults, seed="seed of the meters' values and the faults"
    )
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """The simulator options of parsed ``edgegw sim dlt645`` arguments; ValueError if inconsistent."""
    return SimOptions(
        meters=tuple(args.meters or DEFAULT_METERS),
        dead=frozenset(args.dead),
        delays=tuple(args.slow),
        reply_delay_s=args.reply_delay,
        preamble=args.preamble,
        echo=args.echo,
        seed=args.seed,
        faults=parse_faults(args.dlt645_faults),
    )


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    """Serve the line described by ``args`` until ``stop`` is set (or the task is cancelled)."""
    options = options_from_args(args)
    what = f"dlt645 simulator (meters {', '.join(options.meters)})"
    await serving.serve_until_stopped(what, args, options, serve_pty, serve_tcp, stop=stop, out=out)
