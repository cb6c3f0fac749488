"""A simulated R2000 "0xA0" UHF RFID reader, on a pty or a TCP port.

It speaks the reader's side of :mod:`protocols.r2000` (requests parsed, replies built with the same codec the
driver uses) and answers:

- cmd_reset: no reply (a real reader restarts and says nothing on success); the work antenna returns to 1;
- cmd_get_firmware_version: :class:`~protocols.r2000.FirmwareVersion` from the options;
- cmd_set_work_antenna / cmd_get_work_antenna: status 0x10 / the antenna;
- cmd_real_time_inventory: ``repeat`` rounds of tag frames on the work antenna, then the end-of-round frame
  (antenna, read rate, total read); if the work antenna is not connected, error 0x22;
- cmd_set_output_power / cmd_get_output_power: the power of each of 8 ports (30 dBm at start), set from one
  byte (every port) or one per port (4 or 8); read back as one byte when every port has the same power, else
  one per port (4, or 8 when a port above 4 is connected); a power above 33 dBm: error 0x48;
- cmd_fast_switch_ant_inventory: for each (antenna, stay) pair, ``stay`` rounds on that antenna (an antenna
  not connected gets the 2-byte "antenna missing" frame), ``repeat`` times over, then the end frame (total
  read, duration);
- anything else addressed to it: status 0x11 (fail). Frames for another address are ignored.

A reader handles one command at a time: commands that arrive during an inventory wait until it ends.

The tag population is deterministic from the seed (:func:`population`): 96-bit EPCs, PC 0x3000. Each round
lasts ``round_ms`` and carries ``rate * round_ms / 1000`` reads (fractions carried over), each a random tag of
the population with an RSSI drawn around a per-tag, per-antenna level; the carrier hops over the FCC points
per round.
Tag frames are cached once built, so rates of tens of thousands of reads a second are reachable.

Faults (:class:`Faults`): random bytes before a frame, corrupted checksums, dropped bytes, silences and
disconnects (periodic, or on demand with :meth:`R2000Simulator.silence` / :meth:`R2000Simulator.disconnect`).
Counters live in :attr:`R2000Simulator.stats`; a test waits for a condition with
:meth:`R2000Simulator.wait_for` (or ``wait_commands`` / ``wait_tag_frames`` / ``wait_rounds`` /
``wait_connections``), never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from protocols import r2000
from protocols.errors import DecodeError

from . import serving
from .serving import Link
from .tags import check_inventory, random_population, rssi_levels

__all__ = [
    "Faults",
    "R2000Simulator",
    "SimOptions",
    "SimStats",
    "population",
    "serve_pty",
    "serve_tcp",
]

PC_96_BITS: Final = 0x3000
FCC_POINTS: Final = tuple(range(7, 60))
RSSI_JITTER: Final = (-2, -1, 0, 1, 2)
CHUNK_FRAMES: Final = 1024
"""Tag frames handed to the link per write."""
CACHE_LIMIT: Final = 200_000
DEFAULT_POWER_DBM: Final = 30


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong, and how often. Probabilities are per frame sent."""

    noise: float = 0.0
    """Probability of 1..8 random bytes (which may include 0xA0) before a frame."""
    bad_checksum: float = 0.0
    """Probability of a frame's checksum being corrupted."""
    drop: float = 0.0
    """Probability of a frame losing some of its bytes."""
    silence_s: float = 0.0
    """Length of each periodic silence (no answers, no streaming)."""
    silence_every_s: float = 0.0
    """Period of silences; 0: only on demand."""
    disconnect_every_s: float = 0.0
    """Period of disconnects (pty closed and reopened, TCP connections closed); 0: only on demand."""
    disconnect_down_s: float = 0.0
    """How long the link stays down at a periodic disconnect."""

    def __post_init__(self) -> None:
        serving.check_probabilities(self, ("noise", "bad_checksum", "drop"))
        for name in ("silence_s", "silence_every_s", "disconnect_every_s", "disconnect_down_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"fault {name} must not be negative")

    @property
    def corrupts(self) -> bool:
        return bool(self.noise or self.bad_checksum or self.drop)


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How the simulated reader behaves."""

    address: int = 1
    tags: int = 20
    """Tag population size (of random SGTIN-96-headed EPCs; ignored when ``epcs`` is given)."""
    epcs: tuple[bytes, ...] = ()
    """The tag population, explicitly: 96-bit EPCs (12 bytes each, PC 0x3000 like the random ones)."""
    rate: float = 1000.0
    """Tag reads per second, overall (paced per round, so the average is right)."""
    rssi_mean: float = -60.0
    """dBm."""
    rssi_spread: float = 6.0
    """Standard deviation (dBm) of the per-tag, per-antenna RSSI level."""
    round_ms: float = 50.0
    """Duration of one inventory round."""
    antennas: tuple[int, ...] = (1, 2, 3, 4)
    """Antennas connected (1..8)."""
    seed: int = 0
    firmware: tuple[int, int] = (1, 7)
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFE:
            raise ValueError(f"address {self.address} out of range 0..254")
        check_inventory(self.tags, self.epcs, self.rate, self.round_ms)
        if any(not 1 <= a <= r2000.MAX_ANTENNAS for a in self.antennas):
            raise ValueError(f"antennas {self.antennas}: each is 1..{r2000.MAX_ANTENNAS}")


@dataclass(slots=True)
class SimStats:
    """Counters since the simulator started (monotonic)."""

    commands_received: int = 0
    """Valid frames addressed to this reader (or broadcast), silenced ones included."""
    commands_ignored: int = 0
    """Commands received while silent."""
    tag_frames_sent: int = 0
    """Tag frames written intact (decodable); corrupted ones are not counted here."""
    frames_sent: int = 0
    """Every frame written intact (tags, replies, end frames)."""
    frames_corrupted: int = 0
    """Frames written with a bad checksum or missing bytes."""
    noise_bytes: int = 0
    rounds: int = 0
    """Inventory commands completed (end frame written)."""
    by_command: Counter[int] = field(default_factory=Counter)
    """Commands received, by command code (0x76 set output power, 0x89 real-time inventory, ...)."""
    connections: int = 0
    """Sessions started (TCP connections accepted; pty opened or reopened)."""
    disconnects: int = 0


def population(tags: int, seed: int = 0) -> tuple[bytes, ...]:
    """The EPCs (12 bytes, distinct) of a simulated population, deterministic from ``seed``."""
    return random_population("r2000", tags, seed)


class _Aborted(Exception):
    """The current command stops without an answer (silence began)."""


class R2000Simulator(serving.LinkSimulator[SimStats]):
    """The reader's state, counters and controls; served by :func:`serve_pty` or :func:`serve_tcp`."""

    def __init__(self, options: SimOptions | None = None) -> None:
        super().__init__(SimStats())
        self.options = options or SimOptions()
        self.population = self.options.epcs or population(self.options.tags, self.options.seed)
        self.work_antenna = 1
        self.powers = [DEFAULT_POWER_DBM] * r2000.MAX_ANTENNAS
        """Output power of each port (antenna 1 first), in dBm."""
        self._rng = random.Random(f"edgegw-r2000-sim-{self.options.seed}")
        self._fault_rng = random.Random(f"edgegw-r2000-faults-{self.options.seed}")
        self._rssi_level = rssi_levels(
            "r2000",
            self.options.seed,
            tags=len(self.population),
            antennas=r2000.MAX_ANTENNAS,
            mean=self.options.rssi_mean,
            spread=self.options.rssi_spread,
        )
        self._frames: dict[tuple[int, int, int, int, int], bytes] = {}
        self._carry = 0.0
        self._clock = 0.0
        self._silent_until = 0.0

    # ---------------------------------------------------------------- controls for tests and the CLI

    @property
    def silent(self) -> bool:
        return asyncio.get_running_loop().time() < self._silent_until

    def silence(self, seconds: float) -> None:
        """Stop answering and streaming for ``seconds`` (an inventory in progress stops without its end)."""
        loop = asyncio.get_running_loop()
        self._silent_until = max(self._silent_until, loop.time() + seconds)

    def unsilence(self) -> None:
        """End a silence now."""
        self._silent_until = 0.0

    async def wait_commands(self, n: int) -> None:
        await self.wait_for(lambda s: s.commands_received >= n)

    async def wait_tag_frames(self, n: int) -> None:
        await self.wait_for(lambda s: s.tag_frames_sent >= n)

    async def wait_rounds(self, n: int) -> None:
        await self.wait_for(lambda s: s.rounds >= n)

    async def wait_connections(self, n: int) -> None:
        await self.wait_for(lambda s: s.connections >= n)

    # ---------------------------------------------------------------- one session (a connection or a pty)

    async def serve_link(self, link: Link) -> None:
        """Answer the commands arriving on ``link`` until it closes."""
        self.stats.connections += 1
        self._notify()
        framer = r2000.R2000Framer()
        try:
            while True:
                data = await link.read()
                if not data:
                    return
                for frame in framer.feed(data):
                    await self._handle(link, frame)
        except ConnectionError:
            return

    async def _handle(self, link: Link, frame: r2000.Frame) -> None:
        address = self.options.address
        if frame.address not in (address, r2000.BROADCAST):
            return
        self.stats.commands_received += 1
        self.stats.by_command[frame.command] += 1
        self._notify()
        if self.silent:
            self.stats.commands_ignored += 1
            return
        try:
            request = r2000.parse_request(frame)
        except DecodeError:
            await self._reply(link, r2000.CommandStatus(frame.command, r2000.ErrorCode.FAIL))
            return
        try:
            await self._execute(link, request)
        except _Aborted:
            return

    async def _execute(self, link: Link, request: r2000.Request) -> None:
        if isinstance(request, r2000.Reset):
            self.work_antenna = 1
        elif isinstance(request, r2000.GetFirmwareVersion):
            await self._reply(link, r2000.FirmwareVersion(*self.options.firmware))
        elif isinstance(request, r2000.SetWorkAntenna):
            self.work_antenna = request.antenna
            await self._reply(link, r2000.CommandStatus(request.command, r2000.ErrorCode.SUCCESS))
        elif isinstance(request, r2000.GetWorkAntenna):
            await self._reply(link, r2000.WorkAntenna(self.work_antenna))
        elif isinstance(request, r2000.RealTimeInventory):
            await self._real_time_inventory(link, request)
        elif isinstance(request, r2000.SetOutputPower):
            if any(p > r2000.MAX_POWER_DBM for p in request.powers):
                code = r2000.ErrorCode.OUTPUT_POWER_OUT_OF_RANGE
            else:
                given = request.powers * r2000.MAX_ANTENNAS if len(request.powers) == 1 else request.powers
                self.powers[: len(given)] = given
                code = r2000.ErrorCode.SUCCESS
            await self._reply(link, r2000.CommandStatus(request.command, code))
        elif isinstance(request, r2000.GetOutputPower):
            ports = 8 if max(self.options.antennas) > 4 else 4
            shown = self.powers[:ports]
            await self._reply(link, r2000.OutputPower((shown[0],) if len(set(shown)) == 1 else tuple(shown)))
        else:
            await self._fast_switch_inventory(link, request)

    async def _real_time_inventory(self, link: Link, request: r2000.RealTimeInventory) -> None:
        command = r2000.Command.REAL_TIME_INVENTORY
        antenna = self.work_antenna
        if antenna not in self.options.antennas:
            await self._reply(link, r2000.CommandStatus(command, r2000.ErrorCode.ANTENNA_MISSING))
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._clock = max(self._clock, start)
        total = 0
        for _ in range(max(1, request.repeat)):
            total += await self._round(link, antenna, command)
        elapsed = loop.time() - start
        read_rate = min(0xFFFF, round(total / elapsed)) if elapsed > 0 else 0
        end = r2000.InventoryEnd(command, min(total, 0xFFFFFFFF), antenna=antenna, read_rate=read_rate)
        await self._reply(link, end)
        self.stats.rounds += 1
        self._notify()

    async def _fast_switch_inventory(self, link: Link, request: r2000.FastSwitchInventory) -> None:
        command = r2000.Command.FAST_SWITCH_ANT_INVENTORY
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._clock = max(self._clock, start)
        total = 0
        for _ in range(max(1, request.repeat)):
            for antenna, stay in request.antennas:
                if antenna not in self.options.antennas:
                    await self._reply(link, r2000.AntennaMissing(antenna))
                    continue
                for _ in range(max(1, stay)):
                    total += await self._round(link, antenna, command)
                if request.interval_ms:
                    self._clock += request.interval_ms / 1000
                    await self._pace()
        duration_ms = round((loop.time() - start) * 1000)
        end = r2000.InventoryEnd(command, min(total, 0xFFFFFF), duration_ms=min(duration_ms, 0xFFFFFFFF))
        await self._reply(link, end)
        self.stats.rounds += 1
        self._notify()

    async def _round(self, link: Link, antenna: int, command: int) -> int:
        """One inventory round on ``antenna``: write its tag frames, then wait for the round's end."""
        options = self.options
        round_s = options.round_ms / 1000
        self._carry += options.rate * round_s
        count = int(self._carry)
        self._carry -= count
        if not self.population:
            count = 0
        rng = self._rng
        frequency = rng.choice(FCC_POINTS)
        tags = len(self.population)
        frame_for = self._tag_frame
        sent = 0
        while sent < count:
            batch = min(CHUNK_FRAMES, count - sent)
            frames = [
                frame_for(int(rng.random() * tags), antenna, frequency, int(rng.random() * 5), command)
                for _ in range(batch)
            ]
            await self._send(link, frames, tags=True)
            sent += batch
        self._clock += round_s
        await self._pace()
        return count

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._clock - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.silent:
            raise _Aborted

    def _tag_frame(self, tag: int, antenna: int, frequency: int, jitter: int, command: int) -> bytes:
        key = (tag, antenna, frequency, jitter, command)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) >= CACHE_LIMIT:
                self._frames.clear()
            base_key = (tag, antenna, 0, jitter, command)
            base = self._frames.get(base_key)
            if base is None:
                level = self._rssi_level[tag][antenna - 1] + RSSI_JITTER[jitter]
                read = r2000.TagRead(
                    antenna, 0, PC_96_BITS, self.population[tag], r2000.rssi_raw(level), command
                )
                base = self._frames[base_key] = r2000.encode_reply(read, self.options.address)
            # The same frame on another frequency point: FreqAnt grows by index << 2, the checksum shrinks by
            # as much (cheaper than encoding each of the ~50 hop channels; tested against encode_reply).
            delta = frequency << 2
            frame = self._frames[key] = b"".join(
                (base[:4], bytes((base[4] + delta,)), base[5:-1], bytes(((base[-1] - delta) & 0xFF,)))
            )
        return frame

    async def _reply(self, link: Link, reply: r2000.Reply) -> None:
        await self._send(link, [r2000.encode_reply(reply, self.options.address)], tags=False)

    async def _send(self, link: Link, frames: list[bytes], *, tags: bool) -> None:
        if self.silent:
            raise _Aborted
        stats = self.stats
        faults = self.options.faults
        if not faults.corrupts:
            data = b"".join(frames)
            good = len(frames)
        else:
            data, good = self._apply_faults(frames, faults)
        await link.write(data)
        stats.frames_sent += good
        if tags:
            stats.tag_frames_sent += good
        self._notify()

    def _apply_faults(self, frames: list[bytes], faults: Faults) -> tuple[bytes, int]:
        rng = self._fault_rng
        stats = self.stats
        out = bytearray()
        good = 0
        for frame in frames:
            if rng.random() < faults.noise:
                noise = rng.randbytes(rng.randint(1, 8))
                out += noise
                stats.noise_bytes += len(noise)
            if rng.random() < faults.bad_checksum:
                out += frame[:-1]
                out.append(frame[-1] ^ rng.randint(1, 0xFF))
                stats.frames_corrupted += 1
            elif rng.random() < faults.drop:
                cut = rng.randrange(1, len(frame))
                lost = rng.randint(1, len(frame) - cut)
                out += frame[:cut] + frame[cut + lost :]
                stats.frames_corrupted += 1
            else:
                out += frame
                good += 1
        return bytes(out), good

    # ---------------------------------------------------------------- periodic faults

    async def _periodic_faults(self) -> None:
        faults = self.options.faults
        tasks: list[asyncio.Task[None]] = []
        if faults.silence_every_s > 0 and faults.silence_s > 0:
            tasks.append(asyncio.create_task(self._every(faults.silence_every_s, self._periodic_silence)))
        if faults.disconnect_every_s > 0:
            tasks.append(
                asyncio.create_task(self._every(faults.disconnect_every_s, self._periodic_disconnect))
            )
        if not tasks:
            return
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    @staticmethod
    async def _every(period: float, action: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(period)
            result = action()
            if asyncio.iscoroutine(result):
                await result

    def _periodic_silence(self) -> None:
        self.silence(self.options.faults.silence_s)

    async def _periodic_disconnect(self) -> None:
        await self.disconnect(self.options.faults.disconnect_down_s)


@contextlib.asynccontextmanager
async def serve_pty(link: Path, options: SimOptions | None = None) -> AsyncIterator[R2000Simulator]:
    """Serve a simulated reader on a new pty whose slave ``link`` points to (removed on exit)."""
    sim = R2000Simulator(options)
    async with serving.on_pty(sim, link), serving.running(sim._periodic_faults()):
        yield sim


@contextlib.asynccontextmanager
async def serve_tcp(host: str, port: int, options: SimOptions | None = None) -> AsyncIterator[R2000Simulator]:
    """Serve a simulated reader on a TCP port (0: any free port, see ``sim.port``); a session a connection."""
    sim = R2000Simulator(options)
    async with serving.on_tcp(sim, host, port), serving.running(sim._periodic_faults()):
        yield sim
