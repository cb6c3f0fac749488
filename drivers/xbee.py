"""``xbee``: a Digi XBee ZigBee coordinator in API mode, and the ZCL sensors of its network.

The coordinator sits on a serial port (a USB stick) and speaks API frames (:mod:`protocols.xbee`), mode 2
(escaped, the default) or mode 1. At start-up the driver reads and, if need be, sets ``AO=3`` (explicit RX
indicators, ZDO passed through), reads the coordinator's address (``SH``/``SL``), network (``AI``, ``OP``,
``CH``) and firmware (``VR``), and reports them as the ``connected`` detail and a ``device.status``
``network`` event. It then opens joining if the config asks (``permit_join_s``), binds and configures
reporting for the sensors the config lists under ``reporting:``, and reads every frame the coordinator
passes on:

- an explicit RX indicator (0x91) with ZCL (:mod:`protocols.zcl`): Report Attributes and Read Attributes
  Responses become one ``zigbee.report`` per attribute, named and scaled (a report of an IAS zone's
  ``zone_status`` attribute too); an IAS Zone status change notification a ``zigbee.alarm``; a Configure
  Reporting Response is
  counted; an IAS zone's enroll request is answered;
- with ZDO (endpoint 0, :mod:`protocols.zdo`): a device announce is a ``zigbee.joined`` (and its sensors'
  bindings and reporting are configured again: a sleepy sensor listens right after joining);
- a node identification indicator (0x95): ``zigbee.joined`` (a join seen both ways within
  ``JOIN_REPEAT_S`` is one event);
- a modem status (0x8A) saying the coordinator reset: the session ends and starts over (the supervisor
  reports it disconnected and reconnects; start-up checks ``AO`` again);
- AT responses (0x88) and transmit statuses (0x8B) answer the driver's own requests.

Commands (:mod:`drivers.commands`): ``permit_join`` (open joining for N seconds) and ``read_attribute``
(read attributes of a sensor now; the values also go out as ``zigbee.report`` events).

Damage is counted and skipped: what the framer rejects (``frames_rejected``: bad checksum, bad length,
bad escape, truncated) and skips (``bytes_skipped``), frames or ZCL payloads that do not decode
(``decode_errors``: a length that lies, an unknown data type; the records before the damage are still
emitted), and the counters below.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from functools import partial
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from protocols import xbee, zcl, zdo
from protocols.errors import DecodeError

from .base import DeviceContext
from .commands import CommandArgs, CommandData, CommandFailed, CommandRefused, CommandSpec
from .counters import DECODE_ERRORS, TIMEOUTS
from .errors import ConfigurationError, ConnectionLost, DeviceTimeout, ProtocolFailure
from .kinds import DEVICE_STATUS, ZIGBEE_ALARM, ZIGBEE_JOINED, ZIGBEE_REPORT
from .link import LinkOptions, SerialOrTcpOptions
from .session import StreamDriver, StreamSession
from .transport import ByteLink

__all__ = ["PermitJoinArgs", "ReadAttributeArgs", "Reporting", "XbeeDriver", "XbeeOptions"]

# The driver's own counters, on top of drivers.counters'.
UNEXPECTED_FRAMES: Final = "unexpected_frames"
"""Well-formed frames that answer nothing of ours or that a coordinator host has no use for (a 0x90
without AO=3, a reply to a request already given up)."""
UNHANDLED_ZCL: Final = "unhandled_zcl"
"""ZCL commands other than reports, read responses, reporting configuration responses and IAS zone
notifications (a default response, a cluster's own command): read and ignored."""
TRANSMIT_FAILURES: Final = "transmit_failures"
"""Frames the coordinator could not deliver to a sensor (a transmit status other than success)."""
REPORTING_CONFIGURED: Final = "reporting_configured"
"""Configure Reporting Responses with success."""
REPORTING_REFUSED: Final = "reporting_refused"
"""Configure Reporting (or bind) Responses with a failure status."""
COORDINATOR_RESETS: Final = "coordinator_resets"
"""Modem statuses saying the coordinator reset (hardware or watchdog): the session starts over."""

API_OPTIONS: Final = 3
"""AO=3: explicit RX indicators (0x91) with ZDO requests passed to the host."""
JOIN_REPEAT_S: Final = 10.0
"""A join seen as a node identification and a device announce within this many seconds is one event."""
REMEMBERED: Final = 4096
"""Sensors whose join time, 16-bit address and scaling factors are kept (oldest forgotten first)."""
AT_ATTEMPTS: Final = 3
"""Sends of a local AT command before the coordinator counts as silent."""

_IEEE = re.compile(r"^[0-9a-fA-F]{16}$")
SensorName = Annotated[str, Field(min_length=1, max_length=64)]


def _ieee_key(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{value!r}: an IEEE address is 16 hex digits in quotes (YAML reads bare digits as a number)"
        )
    if not _IEEE.match(value):
        raise ValueError(f"{value!r}: an IEEE address is 16 hex digits")
    return value.lower()


_CLUSTER_NAMES: Final = tuple(cluster.name for cluster in zcl.CLUSTERS.values())


def _cluster_id(value: object) -> object:
    if isinstance(value, str):
        for number, cluster in zcl.CLUSTERS.items():
            if cluster.name == value:
                return number
        raise ValueError(f"unknown cluster {value!r} (a number, or one of {', '.join(_CLUSTER_NAMES)})")
    return value


class Reporting(BaseModel):
    """A sensor's attribute to bind to the coordinator and have reported (Configure Reporting), for
    sensors that do not report by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: str = Field(description="The sensor: its IEEE address (16 hex digits) or its name in sensors:.")
    endpoint: int = Field(default=1, ge=1, le=240, description="The sensor's endpoint.")
    cluster: Annotated[
        int,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 0xFFFF},
                    {"enum": list(_CLUSTER_NAMES)},
                ],
                "description": "Cluster id (0x0402) or name (temperature_measurement).",
            }
        ),
    ] = Field(ge=0, le=0xFFFF, description="Cluster id (0x0402) or name (temperature_measurement).")
    attribute: int = Field(default=0, ge=0, le=0xFFFF, description="Attribute id.")
    type: str | None = Field(
        default=None,
        description="ZCL data type (int16, uint16, bitmap8...); known attributes have a default.",
    )
    min_interval_s: int = Field(default=10, ge=0, le=0xFFFF, description="Shortest time between reports.")
    max_interval_s: int = Field(default=300, ge=0, le=0xFFFF, description="Longest time without a report.")
    change: float = Field(default=0, ge=0, description="Reportable change, in the attribute's raw units.")
    bind: bool = Field(default=True, description="Bind the cluster to the coordinator first (ZDO Bind_req).")

    _cluster = field_validator("cluster", mode="before")(_cluster_id)

    @model_validator(mode="after")
    def _type_known(self) -> Reporting:
        self.data_type()
        if self.max_interval_s and self.min_interval_s > self.max_interval_s:
            raise ValueError("min_interval_s is above max_interval_s")
        return self

    def data_type(self) -> int:
        """The ZCL data type to configure."""
        if self.type is not None:
            for number in zcl.DataType:
                if zcl.type_name(number) == self.type:
                    return int(number)
            raise ValueError(f"type {self.type!r}: not a ZCL data type name (int16, uint8, bitmap16...)")
        cluster = zcl.CLUSTERS.get(self.cluster)
        spec = cluster.attributes.get(self.attribute) if cluster else None
        if spec is None or spec.data_type is None:
            raise ValueError(
                f"cluster 0x{self.cluster:04x} attribute 0x{self.attribute:04x}: give its type (int16, ...)"
            )
        return spec.data_type


class XbeeOptions(SerialOrTcpOptions):
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400] = Field(
        default=9600, description="Serial line speed (the module's BD)."
    )
    api_mode: Literal[1, 2] = Field(default=2, description="The module's AP: 2 escaped (recommended), 1 not.")
    sensors: dict[str, SensorName] = Field(
        default_factory=dict, description='Names of sensors by IEEE address: {"0013a20041a7b2c3": cabinet-3}.'
    )
    permit_join_s: int = Field(
        default=0, ge=0, le=254, description="Open joining for this long at start-up (0: no)."
    )
    endpoint: int = Field(
        default=1, ge=1, le=240, description="The coordinator's endpoint sensors report to."
    )
    reporting: list[Reporting] = Field(
        default_factory=list, description="Attributes to bind and configure reporting for, per sensor."
    )
    reply_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Wait for the coordinator's AT answers."
    )
    read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Wait for a sensor's Read Attributes Response (read_attribute).",
    )
    keepalive_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Ask the coordinator (AT AI) after this long without a frame.",
    )

    @field_validator("sensors", mode="before")
    @classmethod
    def _sensor_keys(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {_ieee_key(key): name for key, name in value.items()}
        return value

    @model_validator(mode="after")
    def _sensors_known(self) -> XbeeOptions:
        names = list(self.sensors.values())
        if len(set(names)) != len(names):
            raise ValueError("sensors: two sensors have the same name")
        for n, reporting in enumerate(self.reporting):
            if self.sensor_ieee(reporting.sensor) is None:
                raise ValueError(
                    f"reporting[{n}].sensor {reporting.sensor!r}: an IEEE address or a name in sensors:"
                )
        return self

    def sensor_ieee(self, sensor: str) -> int | None:
        """The IEEE address of ``sensor`` (an address or a configured name), None if neither."""
        if _IEEE.match(sensor):
            return int(sensor, 16)
        for ieee, name in self.sensors.items():
            if name == sensor:
                return int(ieee, 16)
        return None


class PermitJoinArgs(CommandArgs):
    seconds: int = Field(default=60, ge=0, le=254, description="How long joining stays open (0 closes it).")


class ReadAttributeArgs(CommandArgs):
    sensor: str = Field(description="IEEE address (16 hex digits) or configured name.")
    endpoint: int = Field(default=1, ge=1, le=240)
    cluster: int = Field(ge=0, le=0xFFFF)
    attributes: list[Annotated[int, Field(ge=0, le=0xFFFF)]] = Field(min_length=1, max_length=16)


class CoordinatorReset(ConnectionLost):
    """The coordinator said it reset: its settings must be checked again."""


class XbeeDriver(StreamDriver[XbeeOptions]):
    name: ClassVar[str] = "xbee"
    Options: ClassVar[type[XbeeOptions]] = XbeeOptions
    emits: ClassVar[frozenset[str]] = frozenset({ZIGBEE_REPORT, ZIGBEE_ALARM, ZIGBEE_JOINED, DEVICE_STATUS})
    commands: ClassVar[Mapping[str, CommandSpec]] = {
        "permit_join": CommandSpec(
            PermitJoinArgs, "Open the network for joining for N seconds (0 closes it)."
        ),
        "read_attribute": CommandSpec(ReadAttributeArgs, "Read attributes of a sensor now."),
    }

    live: _Session | None = None

    def link(self) -> LinkOptions:
        return self.options.link

    def session(self, link: ByteLink, ctx: DeviceContext) -> _Session:
        self.live = _Session(link, self.options, ctx)
        return self.live

    async def run(self, ctx: DeviceContext) -> None:
        try:
            await super().run(ctx)
        finally:
            self.live = None

    async def command(self, name: str, args: CommandArgs) -> CommandData:
        session = self.live
        if session is None or not session.streaming:
            raise CommandFailed(f"device {self.device!r}: the coordinator is not connected")
        if isinstance(args, PermitJoinArgs):
            return await session.permit_join(args.seconds)
        if isinstance(args, ReadAttributeArgs):
            ieee = self.options.sensor_ieee(args.sensor)
            if ieee is None:
                raise CommandRefused(f"sensor {args.sensor!r}: an IEEE address or a name in sensors:")
            return await session.read_attributes(ieee, args.endpoint, args.cluster, args.attributes)
        return await super().command(name, args)


class _Session(StreamSession[xbee.Frame, XbeeOptions]):
    rejections: ClassVar[tuple[str, ...]] = xbee.REJECTIONS
    device_noun: ClassVar[str] = "coordinator"

    def __init__(self, link: ByteLink, options: XbeeOptions, ctx: DeviceContext) -> None:
        super().__init__(link, options, ctx, xbee.XBeeFramer(escaped=options.api_mode == 2))
        self.escaped = options.api_mode == 2
        self.streaming = False
        self.coordinator_ieee = 0
        self._frame_id = 0
        self._sequence = 0
        self._pending: dict[int, tuple[type[xbee.Message], asyncio.Future[xbee.Message]]] = {}
        """Requests awaiting their answer by frame id: what answers them (an AT response, a transmit
        status) and its future."""
        self._reader = asyncio.Lock()
        """Held by whoever reads the link: the stream loop, or a request while nobody else reads."""
        self._failure: CoordinatorReset | None = None
        """A reset seen while a request read the link: the stream loop raises it."""
        self._reads: dict[tuple[int, int], asyncio.Future[list[zcl.ReadRecord]]] = {}
        self._names = {int(ieee, 16): name for ieee, name in options.sensors.items()}
        self._nwk: OrderedDict[int, int] = OrderedDict()
        self._joined: OrderedDict[int, float] = OrderedDict()
        self._factors: OrderedDict[tuple[int, int, int], dict[int, int]] = OrderedDict()
        self._reporting: dict[int, list[Reporting]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        for reporting in options.reporting:
            ieee = options.sensor_ieee(reporting.sensor)
            assert ieee is not None  # checked by the options
            self._reporting.setdefault(ieee, []).append(reporting)

    # -- the lifecycle --------------------------------------------------------------------------------
    async def start(self) -> str:
        ao = await self.at("AO")
        if not ao.data or ao.data[-1] != API_OPTIONS:
            await self.at("AO", bytes((API_OPTIONS,)))
            await self.at("WR")
        high = await self.at("SH")
        low = await self.at("SL")
        self.coordinator_ieee = int.from_bytes(high.data + low.data, "big")
        association = (await self.at("AI")).data
        pan = (await self.at("OP")).data
        channel = (await self.at("CH")).data
        firmware = (await self.at("VR")).data
        network = {
            "state": "network",
            "ieee": f"{self.coordinator_ieee:016x}",
            "association": association[0] if association else None,
            "pan_id": pan.hex(),
            "channel": channel[0] if channel else None,
            "firmware": firmware.hex(),
        }
        detail = (
            f"coordinator {network['ieee']}, firmware {network['firmware']}, PAN {network['pan_id']}, "
            f"channel {network['channel']}, AI 0x{network['association'] or 0:02x}"
        )
        network["detail"] = detail
        self.ctx.emit(DEVICE_STATUS, network)
        if association and association[0] != 0:
            self.ctx.log.warning("coordinator not on a network yet (AI 0x%02x)", association[0])
        return detail

    async def stream(self) -> None:
        self.streaming = True
        if self.options.permit_join_s:
            await self.permit_join(self.options.permit_join_s)
        for ieee in self._reporting:
            await self.configure(ieee)
        while True:
            async with self._reader:
                self.check()  # a reset a command's exchange saw ends the session here
                frame = await self.recv(self.loop.time() + self.options.keepalive_s)
            if frame is None:
                await self.at("AI")  # DeviceTimeout if the coordinator is gone
                continue
            self.handle(frame)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            for task in self._tasks:
                task.cancel()

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` (a send) beside the reader, cancelled with the session."""
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.ctx.log.debug("a send failed: %s", task.exception())

    # -- requests -------------------------------------------------------------------------------------
    def _next_frame_id(self) -> int:
        for _ in range(255):
            self._frame_id = self._frame_id % 255 + 1
            if self._frame_id not in self._pending:
                return self._frame_id
        raise ProtocolFailure("255 requests awaiting their answer")

    def next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFF
        return self._sequence

    async def send(self, message: xbee.Message) -> None:
        await self.write(xbee.encode_frame(xbee.encode_message(message), escaped=self.escaped))

    async def at(self, command: str, parameter: bytes = b"") -> xbee.AtResponse:
        """A local AT command's response (an error status raises ProtocolFailure); sent again after
        ``reply_timeout_s`` (a response damaged on the line), DeviceTimeout after every attempt."""
        frame_id = self._next_frame_id()
        future: asyncio.Future[xbee.Message] = self.loop.create_future()
        self._pending[frame_id] = (xbee.AtResponse, future)
        try:
            for _ in range(AT_ATTEMPTS):
                await self.send(xbee.AtCommand(frame_id, command, parameter))
                if await self._answered(future, self.options.reply_timeout_s):
                    break
            else:
                self.ctx.count(TIMEOUTS, 1)
                raise DeviceTimeout(f"coordinator did not answer AT {command} ({AT_ATTEMPTS} attempts)")
        finally:
            self._pending.pop(frame_id, None)
        response = future.result()
        assert isinstance(response, xbee.AtResponse)
        if not response.ok:
            if parameter:  # a setting the coordinator refuses: the config asks what it cannot do
                raise ConfigurationError(f"coordinator refused AT {command} (status {response.status})")
            raise ProtocolFailure(f"coordinator answered AT {command} with status {response.status}")
        return response

    async def _answered(self, future: asyncio.Future[Any], timeout: float) -> bool:
        """Wait up to ``timeout`` for ``future``: reading the link meanwhile when nobody else is (start-up,
        the keepalive, a command while the stream loop is elsewhere), else letting the reader resolve it.
        One reader at a time (:attr:`_reader`)."""
        if future.done():
            return True
        if self._reader.locked():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(future)
            except TimeoutError:
                return False
            return True
        deadline = self.loop.time() + timeout
        async with self._reader:
            while not future.done():
                frame = await self.recv(deadline)
                if frame is None:
                    return False
                self.handle(frame)
        return True

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def transmit(
        self, ieee: int, endpoint: int, cluster: int, profile: int, payload: bytes, *, source_endpoint: int
    ) -> asyncio.Future[xbee.Message]:
        """Send ``payload`` to a sensor (an explicit addressing command); the future of its transmit status
        (a failed one is counted when it comes)."""
        frame_id = self._next_frame_id()
        future: asyncio.Future[xbee.Message] = self.loop.create_future()
        self._pending[frame_id] = (xbee.TransmitStatus, future)
        future.add_done_callback(lambda _: self._pending.pop(frame_id, None))
        self.loop.call_later(60.0, lambda: None if future.done() else future.cancel())
        await self.send(
            xbee.ExplicitCommand(
                frame_id, ieee, self._nwk.get(ieee, xbee.UNKNOWN_16), source_endpoint, endpoint, cluster,
                profile, payload,
            )
        )  # fmt: skip
        return future

    async def permit_join(self, seconds: int) -> dict[str, Any]:
        """Open joining for ``seconds`` on the coordinator (NJ, applied) and every router (a ZDO permit
        joining broadcast)."""
        await self.at("NJ", bytes((seconds,)))
        await self.at("AC")
        cluster, payload = zdo.encode(zdo.PermitJoinRequest(self.next_sequence(), seconds))
        await self.send(
            xbee.ExplicitCommand(
                0, xbee.BROADCAST_64, zdo.BROADCAST_ROUTERS, zdo.ENDPOINT, zdo.ENDPOINT, cluster, zdo.PROFILE,
                payload,
            )
        )  # fmt: skip
        self.ctx.emit(
            DEVICE_STATUS,
            {"state": "permit_join", "seconds": seconds, "detail": f"joining open for {seconds} s"},
        )
        return {"seconds": seconds}

    async def configure(self, ieee: int) -> None:
        """Bind and configure reporting of ``ieee``'s attributes listed in the config (answers counted)."""
        by_cluster: dict[tuple[int, int], list[Reporting]] = {}
        for reporting in self._reporting.get(ieee, ()):
            by_cluster.setdefault((reporting.endpoint, reporting.cluster), []).append(reporting)
        for (endpoint, cluster), entries in by_cluster.items():
            if any(entry.bind for entry in entries):
                zdo_cluster, payload = zdo.encode(
                    zdo.BindRequest(
                        self.next_sequence(),
                        ieee,
                        endpoint,
                        cluster,
                        self.coordinator_ieee,
                        self.options.endpoint,
                    )
                )
                await self.transmit(
                    ieee, zdo.ENDPOINT, zdo_cluster, zdo.PROFILE, payload, source_endpoint=zdo.ENDPOINT
                )
            records = [
                zcl.ReportingRecord(
                    entry.attribute,
                    entry.data_type(),
                    entry.min_interval_s,
                    entry.max_interval_s,
                    _change(entry),
                )
                for entry in entries
            ]
            payload = zcl.configure_reporting(self.next_sequence(), records)
            await self.transmit(
                ieee, endpoint, cluster, zcl.PROFILE_HA, payload, source_endpoint=self.options.endpoint
            )

    async def read_attributes(
        self, ieee: int, endpoint: int, cluster: int, attributes: list[int]
    ) -> dict[str, Any]:
        """Read ``attributes`` of a sensor; their values by name (or hex id), units, and errors."""
        sequence = self.next_sequence()
        future: asyncio.Future[list[zcl.ReadRecord]] = self.loop.create_future()
        key = (ieee, sequence)
        self._reads[key] = future
        try:
            sent = await self.transmit(
                ieee,
                endpoint,
                cluster,
                zcl.PROFILE_HA,
                zcl.read_attributes(sequence, attributes),
                source_endpoint=self.options.endpoint,
            )
            sent.add_done_callback(partial(_undelivered, future, ieee))
            try:
                async with asyncio.timeout(self.options.read_timeout_s):
                    records = await future
            except TimeoutError:
                self.ctx.count(TIMEOUTS, 1)
                raise CommandFailed(
                    f"sensor {ieee:016x} did not answer within {self.options.read_timeout_s:g} s"
                ) from None
        finally:
            self._reads.pop(key, None)
        values: dict[str, Any] = {}
        units: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        factors = self._factors.get((ieee, endpoint, cluster))
        for record in records:
            if record.status != zcl.Status.SUCCESS or record.data_type is None:
                errors[f"0x{record.attribute:04x}"] = _status_name(record.status)
                continue
            shown = zcl.describe(
                cluster, record.attribute, record.data_type, record.value, raw=record.raw, factors=factors
            )
            name = shown.name or f"0x{record.attribute:04x}"
            values[name] = shown.value
            units[name] = shown.unit
        result: dict[str, Any] = {"ieee": f"{ieee:016x}", "endpoint": endpoint, "cluster": cluster}
        result |= {"values": values, "units": units}
        if errors:
            result["errors"] = errors
        return result

    # -- what arrives ---------------------------------------------------------------------------------
    def handle(self, frame: xbee.Frame) -> None:
        """Act on one frame from the coordinator."""
        try:
            message = xbee.parse_message(frame)
        except DecodeError as err:
            self.ctx.count(DECODE_ERRORS, 1)
            self.ctx.log.debug("undecodable frame: %s", err)
            return
        if isinstance(message, xbee.ExplicitRx):
            if message.profile == zdo.PROFILE and message.source_endpoint == zdo.ENDPOINT:
                self._zdo(message)
            else:
                self._zcl(message)
            return
        if isinstance(message, xbee.AtResponse | xbee.TransmitStatus):
            if isinstance(message, xbee.TransmitStatus) and not message.ok:
                self.ctx.count(TRANSMIT_FAILURES, 1)
            entry = self._pending.get(message.frame_id)
            if entry is None or entry[1].done() or not isinstance(message, entry[0]):
                self.ctx.count(UNEXPECTED_FRAMES, 1)  # late, or an answer to another kind of request
            else:
                entry[1].set_result(message)
            return
        if isinstance(message, xbee.NodeIdentification):
            self._joined_event(message.remote64, message.remote16, "node_identification", {
                "device_type": _DEVICE_TYPES.get(message.device_type, "unknown"),
                "identifier": message.identifier,
                "parent": message.parent16,
                "capability": None,
            })  # fmt: skip
            return
        if isinstance(message, xbee.ModemStatus):
            self._modem_status(message.status)
            return
        self.ctx.count(UNEXPECTED_FRAMES, 1)

    def _modem_status(self, status: int) -> None:
        try:
            name = xbee.ModemStatusCode(status).name.lower()
        except ValueError:
            name = f"0x{status:02x}"
        if status in (xbee.ModemStatusCode.HARDWARE_RESET, xbee.ModemStatusCode.WATCHDOG_RESET):
            self.ctx.count(COORDINATOR_RESETS, 1)
            self._failure = CoordinatorReset(f"coordinator reset (modem status {name})")
            raise self._failure
        self.ctx.emit(
            DEVICE_STATUS, {"state": "modem_status", "status": name, "detail": f"modem status {name}"}
        )

    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > REMEMBERED:
            table.popitem(last=False)

    def _joined_event(self, ieee: int, nwk: int, via: str, extra: dict[str, Any]) -> None:
        self._remember(self._nwk, ieee, nwk)
        now = self.loop.time()
        last = self._joined.get(ieee)
        self._remember(self._joined, ieee, now)
        if last is not None and now - last < JOIN_REPEAT_S:
            return
        data = {"ieee": f"{ieee:016x}", "nwk": nwk, "sensor": self._names.get(ieee), "via": via} | extra
        self.ctx.emit(ZIGBEE_JOINED, data, self.received_at)
        if ieee in self._reporting:
            self._background(self.configure(ieee))

    def _zdo(self, message: xbee.ExplicitRx) -> None:
        try:
            parsed = zdo.parse(message.cluster, message.payload)
        except DecodeError as err:
            self.ctx.count(DECODE_ERRORS, 1)
            self.ctx.log.debug("undecodable ZDO message: %s", err)
            return
        if isinstance(parsed, zdo.DeviceAnnounce):
            self._joined_event(parsed.ieee, parsed.nwk, "device_announce", {
                "device_type": "router" if parsed.capability & 0x02 else "end_device",
                "identifier": None,
                "parent": None,
                "capability": parsed.capability,
            })  # fmt: skip
        elif isinstance(parsed, zdo.BindResponse) and parsed.status:
            self.ctx.count(REPORTING_REFUSED, 1)
            self.ctx.log.info("sensor %016x refused a bind (status 0x%02x)", message.source64, parsed.status)

    def _zcl(self, message: xbee.ExplicitRx) -> None:
        ctx = self.ctx
        payload = message.payload
        ieee = message.source64
        if self._nwk.get(ieee) != message.source16:
            self._remember(self._nwk, ieee, message.source16)
        try:
            header, offset = zcl.parse_header(payload)
        except DecodeError as err:
            ctx.count(DECODE_ERRORS, 1)
            ctx.log.debug("undecodable ZCL frame from %016x: %s", ieee, err)
            return
        cluster = message.cluster
        if header.cluster_specific:
            if cluster == zcl.ClusterId.IAS_ZONE and header.server_to_client:
                if header.command == zcl.ZONE_STATUS_CHANGE_NOTIFICATION:
                    try:
                        change = zcl.parse_zone_status_change(payload, offset)
                    except DecodeError as err:
                        ctx.count(DECODE_ERRORS, 1)
                        ctx.log.debug("undecodable zone status from %016x: %s", ieee, err)
                        return
                    self._alarm(message, change)
                    return
                if header.command == zcl.ZONE_ENROLL_REQUEST:
                    response = zcl.zone_enroll_response(header.sequence, zone_id=message.source16 & 0xFF)
                    self._background(
                        self.transmit(
                            ieee,
                            message.source_endpoint,
                            cluster,
                            message.profile,
                            response,
                            source_endpoint=message.dest_endpoint,
                        )
                    )
                    return
            ctx.count(UNHANDLED_ZCL, 1)
            return
        command = header.command
        if command == zcl.Command.REPORT_ATTRIBUTES:
            try:
                records: list[Any] = zcl.parse_report(payload, offset)
            except zcl.RecordError as err:
                records = err.records
                ctx.count(DECODE_ERRORS, 1)
                ctx.log.debug("ZCL report from %016x: %s", ieee, err)
            self._reports(message, header, records)
            return
        if command == zcl.Command.READ_ATTRIBUTES_RESPONSE:
            damaged = False
            try:
                read = zcl.parse_read_response(payload, offset)
            except zcl.RecordError as err:
                read = err.records
                damaged = True
                ctx.count(DECODE_ERRORS, 1)
                ctx.log.debug("ZCL read response from %016x: %s", ieee, err)
            self._reports(
                message,
                header,
                [r for r in read if r.status == zcl.Status.SUCCESS and r.data_type is not None],
            )
            future = self._reads.get((ieee, header.sequence))
            if future is not None and not future.done():
                if damaged and not read:
                    future.set_exception(CommandFailed("the sensor's answer did not decode"))
                else:
                    future.set_result(read)
            return
        if command == zcl.Command.CONFIGURE_REPORTING_RESPONSE:
            try:
                statuses = zcl.parse_configure_reporting_response(payload, offset)
            except DecodeError as err:
                ctx.count(DECODE_ERRORS, 1)
                ctx.log.debug("configure reporting response from %016x: %s", ieee, err)
                return
            for status, attribute in statuses:
                if status == zcl.Status.SUCCESS:
                    ctx.count(REPORTING_CONFIGURED, 1)
                else:
                    ctx.count(REPORTING_REFUSED, 1)
                    ctx.log.info(
                        "sensor %016x refused reporting of 0x%04x/%s: %s",
                        ieee, cluster, "all" if attribute is None else f"0x{attribute:04x}",
                        _status_name(status),
                    )  # fmt: skip
            return
        ctx.count(UNHANDLED_ZCL, 1)

    def _reports(self, message: xbee.ExplicitRx, header: zcl.Header, records: list[Any]) -> None:
        if not records:
            return
        ieee = message.source64
        cluster = message.cluster
        endpoint = message.source_endpoint
        key = (ieee, endpoint, cluster)
        manufacturer = header.manufacturer is not None
        known = zcl.SCALING_ATTRIBUTES
        factors = self._factors.get(key)
        for record in records:
            if (cluster, record.attribute) in known and isinstance(record.value, int) and not manufacturer:
                if factors is None:
                    factors = {}
                    self._remember(self._factors, key, factors)
                factors[record.attribute] = record.value
        ieee_hex = f"{ieee:016x}"
        sensor = self._names.get(ieee)
        nwk = message.source16
        items = []
        for record in records:
            if manufacturer:  # a manufacturer's attribute ids mean what the manufacturer says: raw
                shown = zcl.Described(None, None, record.raw.hex(), None)
            else:
                shown = zcl.describe(
                    cluster, record.attribute, record.data_type, record.value, raw=record.raw, factors=factors
                )
            items.append(
                {
                    "ieee": ieee_hex,
                    "nwk": nwk,
                    "endpoint": endpoint,
                    "cluster": cluster,
                    "cluster_name": shown.cluster_name,
                    "attribute": record.attribute,
                    "name": shown.name,
                    "value": shown.value,
                    "unit": shown.unit,
                    "type": zcl.type_name(record.data_type),
                    "sensor": sensor,
                }
            )
        self.ctx.emit_many(ZIGBEE_REPORT, items, self.received_at)

    def _alarm(self, message: xbee.ExplicitRx, change: zcl.ZoneStatusChange) -> None:
        """A zone status change notification (an IAS zone sends one on every change of its status; a
        report of its zone_status attribute, if configured, is a zigbee.report like any other)."""
        status = change.zone_status
        bits = zcl.zone_status_bits(status)
        self.ctx.emit(
            ZIGBEE_ALARM,
            {
                "ieee": f"{message.source64:016x}",
                "nwk": message.source16,
                "endpoint": message.source_endpoint,
                "sensor": self._names.get(message.source64),
                "zone_status": bits,
                "alarm": bits["alarm1"] or bits["alarm2"],
                "zone_id": change.zone_id,
                "extended_status": change.extended_status,
                "delay_s": change.delay_qs / 4,
            },
            self.received_at,
        )


_DEVICE_TYPES: Final = {0: "coordinator", 1: "router", 2: "end_device"}


def _undelivered(read: asyncio.Future[Any], ieee: int, sent: asyncio.Future[xbee.Message]) -> None:
    """A read whose request the coordinator could not deliver fails at once (not after its timeout)."""
    if read.done() or sent.cancelled():
        return
    status = sent.result()
    if isinstance(status, xbee.TransmitStatus) and not status.ok:
        try:
            why = xbee.DeliveryStatus(status.delivery).name.lower()
        except ValueError:
            why = f"0x{status.delivery:02x}"
        read.set_exception(CommandFailed(f"the coordinator could not deliver to {ieee:016x}: {why}"))


def _status_name(status: int) -> str:
    try:
        return zcl.Status(status).name.lower()
    except ValueError:
        return f"0x{status:02x}"


def _change(entry: Reporting) -> int | float:
    data_type = entry.data_type()
    if data_type in (zcl.DataType.SEMI, zcl.DataType.SINGLE, zcl.DataType.DOUBLE):
        return entry.change
    return round(entry.change)
