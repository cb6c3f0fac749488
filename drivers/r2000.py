"""``uhf-r2000``: UHF RFID readers speaking the R2000 "0xA0" serial protocol, on a serial port or through a
serial-to-Ethernet converter (TCP).

The driver asks the reader for its firmware version (a reader that answers is *connected*), then runs
inventory rounds without pause: in ``realtime`` mode it selects each configured antenna in turn (0x74) and
runs a real-time inventory (0x89) on it; in ``fast_switch`` mode one fast-switch-antenna inventory (0x8A)
covers every configured antenna. Each tag frame becomes an ``rfid.read`` event::

    {"epc": "300833B2DDD9014000000001", "pc": "3000", "antenna": 1, "antenna_name": "lane1-in",
     "rssi_dbm": -75, "frequency_mhz": 916.0, "reader_address": 1,
     "epc_uri": "urn:epc:id:sgtin:0867360217.005.1"}

``epc_uri`` (EPC Tag Data Standard, :mod:`protocols.epc`) is there when the EPC decodes to one.

Corrupt frames are counted and skipped by the framer; a reader silent for ``read_timeout_s`` is a
:class:`~drivers.errors.DeviceTimeout`, and the supervisor reconnects with backoff.

Commands (:mod:`drivers.commands`), each carried out between two inventory exchanges (never cutting one):

- ``set_power``: ``{"dbm": 30}`` for every antenna, or ``{"antennas": {"1": 30, "2": 25}}`` for some (the
  others keep theirs: read with cmd_get_output_power first); the reader's powers read back in ``data``;
- ``inventory``: ``{"action": "stop"}`` pauses the inventory after the round in progress (the reader is then
  asked its firmware version every ``read_timeout_s / 2``, so a reader that vanishes is still noticed),
  ``{"action": "start"}`` resumes it; a reconnected reader inventories again;
- ``read``: one inventory round over the configured antennas, whether inventory runs or not; its tags are in
  ``data`` (not emitted as events): ``{"tags": [{"epc", "antenna", "antenna_name", "rssi_dbm", "count"}],
  "reads": N}``, one entry per tag and antenna with its strongest RSSI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import Field, model_validator

from protocols import r2000
from protocols.errors import DecodeError

from .base import DeviceContext
from .commands import CommandArgs, CommandData, CommandFailed, CommandRefused, CommandSpec, NoArgs
from .counters import DECODE_ERRORS
from .errors import ProtocolFailure
from .event import Record, encode
from .kinds import RFID_READ
from .link import LinkOptions, SerialOrTcpOptions
from .rfid import ReadShape, UriCache
from .session import StreamDriver, StreamSession
from .transport import ByteLink

AntennaNumber = Annotated[int, Field(ge=1, le=8)]
AntennaName = Annotated[str, Field(min_length=1, max_length=64)]

# The driver's own counters, on top of drivers.counters' (decode_errors, bytes_skipped, frames_rejected,
# overflow_bytes).
FOREIGN_FRAMES: Final = "foreign_frames"
"""Frames from (or to) another bus address."""
IMPLAUSIBLE_FRAMES: Final = "implausible_frames"
"""Tag frames that passed the 8-bit checksum yet cannot be real: an antenna not being inventoried, a
frequency index out of the table (about 1 damaged frame in 256 passes the checksum)."""
REPLY_TIMEOUTS: Final = "reply_timeouts"
"""Commands sent again because their reply did not come within ``reply_timeout_s`` (lost on the line)."""
ANTENNA_MISSING: Final = "antenna_missing"
"""Fast-switch rounds that found an antenna port with nothing connected."""
READER_ERRORS: Final = "reader_errors"
"""Commands the reader answered with an error code."""
UNEXPECTED_FRAMES: Final = "unexpected_frames"
"""Well-formed replies to no command of ours."""


class R2000Options(SerialOrTcpOptions):
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = Field(115200, description="Serial line speed.")
    address: int = Field(1, ge=0, le=254, description="The reader's address on the bus (0xFF is broadcast).")
    antennas: dict[AntennaNumber, AntennaName] = Field(
        default_factory=lambda: {1: "antenna-1"},
        description="Antenna ports to inventory (1-8) and their names (lane or zone).",
    )
    inventory: Literal["realtime", "fast_switch"] = Field(
        "realtime",
        description="realtime: 0x89 per antenna in turn; fast_switch: one 0x8A round over all antennas.",
    )
    repeat: int = Field(1, ge=1, le=255, description="Inventory repetitions per command.")
    reply_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="No byte for this long while a reply is awaited: the reply was lost on the line "
        "(a corrupt end-of-round frame, say) and the command is sent again.",
    )
    read_timeout_s: float = Field(5.0, gt=0, le=300, description="Silence longer than this reconnects.")

    @model_validator(mode="after")
    def _some_antenna(self) -> R2000Options:
        if not self.antennas:
            raise ValueError("antennas: at least one antenna is needed")
        return self


PowerDbm = Annotated[int, Field(ge=0, le=r2000.MAX_POWER_DBM)]


class SetPowerArgs(CommandArgs):
    """``{"dbm": 30}`` (every antenna) or ``{"antennas": {"1": 30, "2": 25}}``."""

    dbm: PowerDbm | None = Field(None, description="Output power of every antenna, in dBm (0-33).")
    antennas: dict[AntennaNumber, PowerDbm] | None = Field(
        None,
        min_length=1,
        description="Output power per antenna (1-8, configured ones only), in dBm; the others keep theirs.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> SetPowerArgs:
        if (self.dbm is None) == (self.antennas is None):
            raise ValueError("give dbm (every antenna) or antennas (some): one of them")
        return self


class InventoryArgs(CommandArgs):
    """``{"action": "start"}`` or ``{"action": "stop"}``."""

    action: Literal["start", "stop"] = Field(description="start or stop the continuous inventory.")


class UhfR2000Driver(StreamDriver[R2000Options]):
    name: ClassVar[str] = "uhf-r2000"
    Options: ClassVar[type[R2000Options]] = R2000Options
    emits: ClassVar[frozenset[str]] = frozenset({RFID_READ})
    commands: ClassVar[Mapping[str, CommandSpec]] = {
        "set_power": CommandSpec(SetPowerArgs, "Set the output power of every antenna or of some (dBm)."),
        "inventory": CommandSpec(InventoryArgs, "Start or stop the continuous inventory."),
        "read": CommandSpec(NoArgs, "One inventory round over the configured antennas; its tags in data."),
    }
    inventory_on: bool = True
    """Whether the session inventories (the inventory command stops and starts it)."""

    def link(self) -> LinkOptions:
        return self.options.link

    def session(self, link: ByteLink, ctx: DeviceContext) -> _Session:
        return _Session(link, self.options, ctx, self)

    def _session(self) -> _Session:
        session = self.live_session()
        assert isinstance(session, _Session)
        return session

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        if name == "set_power":
            assert isinstance(args, SetPowerArgs)
            if args.antennas is not None:
                unknown = sorted(set(args.antennas) - set(self.options.antennas))
                if unknown:
                    configured = ", ".join(str(a) for a in sorted(self.options.antennas))
                    raise CommandRefused(
                        f"antenna {unknown[0]} is not configured on this reader ({configured})"
                    )
            session = self._session()
            return await session.call(lambda: session.set_power(args))
        if name == "inventory":
            assert isinstance(args, InventoryArgs)
            session = self._session()

            async def switch() -> CommandData:
                self.inventory_on = args.action == "start"
                return {"inventory": "running" if self.inventory_on else "stopped"}

            return await session.call(switch)
        if name == "read":
            session = self._session()
            return await session.call(session.one_round)
        return await super().command(name, args)


_Item = r2000.Frame | r2000.RawTag
"""What the backlog holds: a frame, or a tag frame as a light tuple (:meth:`r2000.R2000Framer.feed_reads`)."""


class _Session(StreamSession[_Item, R2000Options]):
    """One connection's exchange with the reader: writes requests and consumes every frame that arrives,
    emitting tag reads as they come and returning when the awaited reply is seen."""

    device_noun: ClassVar[str] = "reader"

    def __init__(
        self, link: ByteLink, options: R2000Options, ctx: DeviceContext, driver: UhfR2000Driver
    ) -> None:
        self._framer = r2000.R2000Framer()
        super().__init__(link, options, ctx, self._framer, silence_s=options.read_timeout_s)
        self.driver = driver
        self._sink: list[Mapping[str, Any]] | None = None
        """Where the reads of a command's round go instead of the pipeline."""
        # Antennas a tag frame may plausibly come from: in realtime mode only the selected work antenna.
        self._expected_antennas = frozenset(options.antennas)
        self._shape = ReadShape(options.antennas, UriCache())

    def feed(self, data: bytes) -> list[_Item]:
        return self._framer.feed_reads(data)

    async def start(self) -> str:
        version = await self.exchange(
            r2000.get_firmware_version(address=self.options.address),
            lambda reply: isinstance(reply, r2000.FirmwareVersion),
        )
        assert isinstance(version, r2000.FirmwareVersion)
        return f"firmware {version.major}.{version.minor}"

    async def stream(self) -> None:
        await self.inventory_forever()

    async def inventory_forever(self) -> None:
        """Inventory exchanges without pause (one per antenna in realtime mode, one over every antenna in
        fast_switch mode), the commands waiting served before each; while the inventory is stopped, only
        the commands, and a question every ``read_timeout_s / 2`` to notice a reader that vanished."""
        opts = self.options
        steps = _steps(opts)
        while True:
            for antenna in steps:
                await self.serve_calls()
                while not self.driver.inventory_on:
                    await self._idle()
                await self.room()
                await self._inventory(antenna)

    async def _inventory(self, antenna: int | None) -> None:
        """One inventory exchange: on ``antenna`` (realtime), or over every antenna (None: fast switch)."""
        opts = self.options
        address = opts.address
        antennas = sorted(opts.antennas)
        if antenna is None:
            request = r2000.fast_switch_inventory(
                [(a, 1) for a in antennas], repeat=opts.repeat, address=address
            )
            self._expected_antennas = frozenset(antennas)
            await self.exchange(request, _is_round_end)
            return
        if len(antennas) > 1:
            status = await self.exchange(
                r2000.set_work_antenna(antenna, address=address), _is_set_antenna_status
            )
            if isinstance(status, r2000.CommandStatus) and not status.ok:
                raise ProtocolFailure(
                    f"reader refused to select antenna {antenna} (error 0x{status.code:02X})"
                )
        self._expected_antennas = frozenset((antenna,))
        await self.exchange(r2000.real_time_inventory(opts.repeat, address=address), _is_round_end)

    async def _idle(self) -> None:
        """Inventory stopped: wait for a command; ask the reader something now and then meanwhile."""
        try:
            async with asyncio.timeout(self.options.read_timeout_s / 2):
                await self.called.wait()
        except TimeoutError:
            await self.exchange(
                r2000.get_firmware_version(address=self.options.address),
                lambda reply: isinstance(reply, r2000.FirmwareVersion),
            )
        await self.serve_calls()

    # -- commands (run by serve_calls, in the session's task) -------------------------------------------
    async def one_round(self) -> CommandData:
        """One inventory exchange per step of the configured mode; the tags seen, not emitted."""
        opts = self.options
        steps = _steps(opts)
        reads: list[Mapping[str, Any]] = []
        self._sink = reads
        try:
            for antenna in steps:
                await self._inventory(antenna)
        finally:
            self._sink = None
        tags: dict[tuple[str, int], dict[str, Any]] = {}
        for read in reads:
            key = (read["epc"], read["antenna"])
            seen = tags.get(key)
            if seen is None:
                tags[key] = {
                    "epc": read["epc"],
                    "antenna": read["antenna"],
                    "antenna_name": read["antenna_name"],
                    "rssi_dbm": read["rssi_dbm"],
                    "count": 1,
                }
            else:
                seen["count"] += 1
                seen["rssi_dbm"] = max(seen["rssi_dbm"], read["rssi_dbm"])
        return {"tags": sorted(tags.values(), key=lambda t: (t["antenna"], t["epc"])), "reads": len(reads)}

    async def set_power(self, args: SetPowerArgs) -> CommandData:
        """cmd_set_output_power (the other antennas' powers read first when only some are given), then the
        powers read back."""
        address = self.options.address
        if args.dbm is not None:
            powers: tuple[int, ...] = (args.dbm,)
        else:
            assert args.antennas is not None
            now = await self._output_power()
            ports = 8 if max(args.antennas) > 4 or len(now.powers) == 8 else 4
            current = [now.for_antenna(a) for a in range(1, ports + 1)]
            for antenna, dbm in args.antennas.items():
                current[antenna - 1] = dbm
            powers = tuple(current)
        status = await self.exchange(r2000.SetOutputPower(powers).encode(address), _is_status_of(0x76))
        assert isinstance(status, r2000.CommandStatus)
        if not status.ok:
            raise CommandFailed(f"the reader refused the output power: {_error_text(status.code)}")
        after = await self._output_power()
        return {"power_dbm": {str(a): after.for_antenna(a) for a in sorted(self.options.antennas)}}

    async def _output_power(self) -> r2000.OutputPower:
        reply = await self.exchange(
            r2000.GetOutputPower().encode(self.options.address), lambda r: isinstance(r, r2000.OutputPower)
        )
        assert isinstance(reply, r2000.OutputPower)
        return reply

    async def exchange(self, request: bytes, done: Callable[[r2000.Reply], bool]) -> r2000.Reply:
        """Send ``request``; handle frames until one satisfies ``done``, which is returned.

        A reply lost on the line (its frame corrupt) would leave the reader idle, waiting for a command:
        after ``reply_timeout_s`` without a byte the request is sent again. Only ``read_timeout_s`` of
        silence across retries means the reader is gone."""
        opts = self.options
        asked = self.loop.time()
        while True:
            await self.write(request)
            try:
                return await self._handle_until(done, min(opts.reply_timeout_s, opts.read_timeout_s))
            except TimeoutError:
                self.check_silence(asked)
                self.ctx.count(REPLY_TIMEOUTS, 1)

    async def _handle_until(self, done: Callable[[r2000.Reply], bool], timeout: float) -> r2000.Reply:
        ctx = self.ctx
        count = ctx.count
        sink = self._sink
        emit_many = ctx.emit_many if sink is None else lambda _kind, items, _ts: sink.extend(items)
        reads: list[Mapping[str, object]] = []
        receive = self.receive
        shape = self._shape
        address = self.options.address
        broadcast = r2000.BROADCAST
        frequencies = r2000.FREQUENCY_MHZ
        backlog = self.backlog
        now = self.received_at
        try:
            async with asyncio.timeout(timeout) as deadline:
                while True:
                    if not backlog:
                        await receive()
                        deadline.reschedule(self.last_received + timeout)
                    now = self.received_at
                    expected = self._expected_antennas
                    while backlog:
                        # Frames after the awaited reply stay in the backlog for the next exchange.
                        item = backlog.popleft()
                        if type(item) is tuple:  # a tag frame, the hot path (see R2000Framer.feed_reads)
                            frame_address, _, antenna, frequency, _, _, _ = item
                            mhz = frequencies[frequency]
                            if frame_address not in (address, broadcast):
                                count(FOREIGN_FRAMES, 1)
                            elif antenna not in expected or mhz is None:
                                # The 8-bit checksum passes 1 in 256 damaged frames; these cannot be real.
                                count(IMPLAUSIBLE_FRAMES, 1)
                            else:
                                reads.append(_Read(item, shape))
                            continue
                        assert isinstance(item, r2000.Frame)
                        if item.address not in (address, broadcast):
                            count(FOREIGN_FRAMES, 1)
                            continue
                        try:
                            reply = r2000.parse_reply(item)
                        except DecodeError as err:
                            count(DECODE_ERRORS, 1)
                            ctx.log.debug("undecodable frame: %s", err)
                            continue
                        if done(reply):
                            return reply  # the reads before it are emitted first (finally, below)
                        if isinstance(reply, r2000.AntennaMissing):
                            # A fast-switch round skips it and goes on to its end frame.
                            count(ANTENNA_MISSING, 1)
                            continue
                        if isinstance(reply, r2000.CommandStatus):
                            if not reply.ok:
                                count(READER_ERRORS, 1)
                                ctx.log.debug(
                                    "reader error 0x%02X for command 0x%02X", reply.code, reply.command
                                )
                                if reply.command in (
                                    r2000.Command.REAL_TIME_INVENTORY,
                                    r2000.Command.FAST_SWITCH_ANT_INVENTORY,
                                ):
                                    # An inventory that failed (no tag, antenna missing) ends its round.
                                    return reply
                            continue
                        count(UNEXPECTED_FRAMES, 1)
                    # The reads of one chunk go to the pipeline together, in order, before the next read.
                    if reads:
                        emit_many(RFID_READ, reads, now)
                        reads = []
        finally:
            if reads:  # decoded before the reply that ends this exchange, or a timeout: never lost
                emit_many(RFID_READ, reads, now)


class _Read(Record):
    """An ``rfid.read`` as the framer decoded it (:data:`r2000.RawTag`): its mapping or its JSON is built
    when first asked for (a processor reads the one, the buffer stores the other)."""

    __slots__ = ("_shape", "_tag")

    def __init__(self, tag: r2000.RawTag, shape: ReadShape) -> None:
        self._encoded = None
        self._decoded = None
        self._tag = tag
        self._shape = shape

    def _build(self) -> dict[str, Any]:
        address, _, antenna, frequency, pc, epc, rssi = self._tag
        shape = self._shape
        data: dict[str, Any] = {
            "epc": epc.hex().upper(),
            "pc": f"{pc:04X}",
            "antenna": antenna,
            "antenna_name": shape.names.get(antenna),
            "rssi_dbm": _RSSI_DBM[rssi],
            "frequency_mhz": _FREQUENCY_MHZ[frequency],
            "reader_address": address,
        }
        uri = shape.uris.get(epc)
        if uri:
            data["epc_uri"] = uri
        return data

    def _encode(self) -> bytes:
        address, _, antenna, frequency, pc, epc, rssi = self._tag
        shape = self._shape
        text = _READ_JSON % (
            epc.hex().upper(),
            pc,
            antenna,
            shape.names_json.get(antenna, "null"),
            _RSSI_DBM[rssi],
            _FREQUENCY_JSON[frequency],
            address,
        )
        uri = shape.uris.get(epc)
        if uri:
            # Pure-identity URIs of the 96-bit schemes are digits, dots, colons and letters: nothing JSON
            # escapes.
            text = f'{text[:-1]},"epc_uri":"{uri}"}}'
        return text.encode()


# An rfid.read's data as drivers.event.encode writes it (compact, no ASCII escaping; float repr), filled in
# instead of encoding a dict per read. Tested against encode_data of the same mapping.
_READ_JSON: Final = (
    '{"epc":"%s","pc":"%04X","antenna":%d,"antenna_name":%s,"rssi_dbm":%d,"frequency_mhz":%s,'
    '"reader_address":%d}'
)
_RSSI_DBM: Final = r2000.RSSI_DBM
_FREQUENCY_MHZ: Final = r2000.FREQUENCY_MHZ
_FREQUENCY_JSON: Final = tuple("null" if mhz is None else encode(mhz) for mhz in r2000.FREQUENCY_MHZ)


def _is_round_end(reply: r2000.Reply) -> bool:
    return isinstance(reply, r2000.InventoryEnd)


def _is_set_antenna_status(reply: r2000.Reply) -> bool:
    return isinstance(reply, r2000.CommandStatus) and reply.command == r2000.Command.SET_WORK_ANTENNA


def _steps(options: R2000Options) -> list[int | None]:
    """The inventory exchanges of one round: each antenna in turn (realtime), or one over all (None)."""
    steps: list[int | None] = []
    if options.inventory == "fast_switch":
        steps.append(None)
    else:
        steps.extend(sorted(options.antennas))
    return steps


def _is_status_of(command: int) -> Callable[[r2000.Reply], bool]:
    return lambda reply: isinstance(reply, r2000.CommandStatus) and reply.command == command


def _error_text(code: int) -> str:
    try:
        return f"error 0x{code:02X} ({r2000.ErrorCode(code).name.lower().replace('_', ' ')})"
    except ValueError:
        return f"error 0x{code:02X}"
