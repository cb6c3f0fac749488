"""A simulated Digi XBee ZigBee coordinator in API mode, with a network of ZCL sensors, on a pty or a TCP
port.

It speaks the module's side of :mod:`protocols.xbee` (API mode 2, escaped, or 1), with the ZCL and ZDO of
:mod:`protocols.zcl` and :mod:`protocols.zdo`, the same codecs the driver uses, and behaves as a host sees
a coordinator:

- local AT commands (0x08) are answered (0x88): the settings a host reads or writes (``AO``, ``AP``,
  ``SH``/``SL``, ``AI``, ``OP``, ``CH``, ``ID``, ``VR``, ``HV``, ``NI``, ``MY``, ``NJ``, ``CE``, ``BD``,
  ...; ``WR`` keeps them over a reset, ``AC`` applies them: a changed ``NJ`` opens joining); an unknown
  command gets status 2. ``AO`` starts at 0 unless written: a host must set it;
- explicit addressing commands (0x11) get their transmit status (0x8B; 0x24 "address not found" for a
  node not on the network) and are acted on: a ZDO permit-joining broadcast opens joining, a ZDO bind is
  answered, ZCL Read Attributes gets the sensor's values (or UNSUPPORTED_ATTRIBUTE), Configure Reporting
  its response;
- the sensors play a scenario: each on-network sensor reports its attributes every ``interval_s``
  (staggered), as explicit RX indicators (0x91, the host's AO must be 1 or 3: with AO=0 they come as 0x90);
  the IAS zones (door contacts, smoke detectors) report their battery, and raise and clear alarm1 every
  ``alarm_every_s`` with a zone status change notification (their zone attributes answer a read);
  sensors not yet on the network (``joined=False``) join when joining
  is open: a node identification (0x95) and a ZDO device announce.

Sensor kinds: ``climate`` (temperature 0x0402 and humidity 0x0405, battery 0x0001), ``door`` (IAS zone,
contact switch), ``smoke`` (IAS zone, fire sensor), ``meter`` (metering 0x0702 with its multiplier and
divisor, electrical measurement 0x0B04), ``occupancy`` (0x0406), ``plug`` (on/off 0x0006), ``pressure``
(0x0403), ``odd`` (a manufacturer's cluster 0xFC00 and an unknown attribute of a known cluster: what a
host must pass through raw).

Faults, per frame sent, with probabilities: noise (random bytes before it), a bad checksum, a truncated
frame (cut short, the next frame starts at once), a mis-escaped byte (API mode 2); and a coordinator reset
every ``reset_every_s`` (modem status "hardware reset" then "coordinator started"; unsaved settings are
lost). ``escapes`` picks 16-bit addresses and values full of the bytes API mode 2 escapes (0x7E, 0x7D,
0x11, 0x13), so that every frame carries escapes. :attr:`XBeeSimulator.stats` counts what happened,
:attr:`XBeeSimulator.sent` keeps every attribute value sent intact; a test waits with
:meth:`XBeeSimulator.wait_for`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from protocols import xbee, zcl, zdo
from protocols.errors import DecodeError
from protocols.xbee import Frame

from . import serving
from .serving import Link

__all__ = [
    "DEFAULT_SENSORS",
    "KINDS",
    "Faults",
    "SimOptions",
    "SimSensor",
    "SimStats",
    "XBeeSimulator",
    "add_parser",
    "run_from_args",
    "serve_pty",
    "serve_tcp",
]

COORDINATOR_IEEE: Final = 0x0013A20041000001
EXTENDED_PAN: Final = 0x00000000EDCE0001
CHANNEL: Final = 0x0F
FIRMWARE: Final = 0x4061
"""An XBee S2C Zigbee coordinator firmware (VR)."""
HARDWARE: Final = 0x2241
"""XB24C (S2C SMT), HV."""
SENT_KEPT: Final = 20000
MAX_BURST: Final = 500
"""Reports written at most per tick in a load test (``rate``)."""
KINDS: Final = ("climate", "door", "smoke", "meter", "occupancy", "plug", "pressure", "odd")

TEMPERATURE = zcl.ClusterId.TEMPERATURE
HUMIDITY = zcl.ClusterId.HUMIDITY
POWER = zcl.ClusterId.POWER_CONFIGURATION
IAS = zcl.ClusterId.IAS_ZONE
METERING = zcl.ClusterId.METERING
ELECTRICAL = zcl.ClusterId.ELECTRICAL_MEASUREMENT
MANUFACTURER_CLUSTER: Final = 0xFC00
T = zcl.DataType


@dataclass(frozen=True, slots=True)
class SimSensor:
    """One sensor of the network."""

    ieee: int
    kind: str
    nwk: int = 0
    """0: derived from the IEEE address."""
    endpoint: int = 1
    joined: bool = True
    """On the network from the start; False: joins once joining is open."""
    name: str = ""
    """Its node identifier (NI)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"sensor kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not 0 <= self.ieee < 1 << 64:
            raise ValueError(f"IEEE address {self.ieee:x} out of range")


def _sensors(*kinds: str, start: int = 0x0013A20041A7B200) -> tuple[SimSensor, ...]:
    return tuple(SimSensor(start + n, kind) for n, kind in enumerate(kinds))


DEFAULT_SENSORS: Final = (
    *_sensors("climate", "door", "smoke", "meter", "occupancy", "odd"),
    SimSensor(0x0013A20041A7B2FF, "climate", joined=False),
)
"""Six sensors on the network and one waiting to join."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong on the line, per frame sent (probabilities 0..1), and resets."""

    noise: float = 0.0
    bad_checksum: float = 0.0
    truncate: float = 0.0
    mis_escape: float = 0.0
    reset_every_s: float = 0.0
    """A coordinator reset this often (0: never)."""

    def __post_init__(self) -> None:
        serving.check_probabilities(self, ("noise", "bad_checksum", "truncate", "mis_escape"))
        if self.reset_every_s < 0:
            raise ValueError("reset_every_s must not be negative")


@dataclass(frozen=True, slots=True)
class SimOptions:
    sensors: tuple[SimSensor, ...] = DEFAULT_SENSORS
    api_mode: int = 2
    interval_s: float = 5.0
    """Each sensor's report period."""
    alarm_every_s: float = 20.0
    """Each IAS zone's alarm period (raised, then cleared half a period later; 0: never)."""
    rate: float = 0.0
    """Reports per second across the network, instead of interval_s (0: interval_s): a load test, one
    attribute per frame, from frames built once (no faults applied to them)."""
    escapes: bool = False
    """Addresses and values full of the bytes API mode 2 escapes."""
    seed: int = 0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if self.api_mode not in (1, 2):
            raise ValueError("api_mode is 1 or 2")
        if self.interval_s <= 0 or self.alarm_every_s < 0 or self.rate < 0:
            raise ValueError("interval_s must be positive, alarm_every_s and rate not negative")
        ieees = [s.ieee for s in self.sensors]
        if len(set(ieees)) != len(ieees):
            raise ValueError("two sensors have the same IEEE address")


@dataclass(slots=True)
class SimStats:
    connections: int = 0
    disconnects: int = 0
    frames_in: int = 0
    at_commands: Counter[str] = field(default_factory=Counter)
    transmits: int = 0
    binds: int = 0
    reporting_configured: int = 0
    reads: int = 0
    enrolls: int = 0
    reports: int = 0
    """Attribute records sent intact."""
    report_frames: int = 0
    alarms: int = 0
    """Zone status change notifications sent intact."""
    joins: int = 0
    permit_joins: int = 0
    resets: int = 0
    corrupted: int = 0
    """Frames sent damaged (bad checksum, truncated, mis-escaped)."""
    noise_bytes: int = 0


_ESCAPE_RICH: Final = (0x7E7D, 0x1113, 0x7D7E, 0x137E, 0x117D, 0x7E13, 0x7D11, 0x1311)


class XBeeSimulator(serving.LinkSimulator[SimStats]):
    """The coordinator, its settings and its network; served by :func:`serve_pty` or :func:`serve_tcp`."""

    def __init__(self, options: SimOptions | None = None) -> None:
        super().__init__(SimStats())
        self.options = options or SimOptions()
        opts = self.options
        self.escaped = opts.api_mode == 2
        self.sensors = {s.ieee: s for s in opts.sensors}
        self.nwk = {s.ieee: s.nwk or self._nwk_for(n, s) for n, s in enumerate(opts.sensors)}
        self.joined = {s.ieee for s in opts.sensors if s.joined}
        self.alarm_state: dict[int, bool] = {}
        self.configured: set[tuple[int, int, int, int]] = set()
        """(ieee, endpoint, cluster, attribute) that a host configured reporting for."""
        self.sent: deque[tuple[int, int, int, Any]] = deque(maxlen=SENT_KEPT)
        """(ieee, cluster, attribute, value as encoded) of every record sent intact, oldest first."""
        self.nvram: dict[str, bytes] = self._factory_settings()
        self.settings = dict(self.nvram)
        self.join_open_until = 0.0
        self._rng = random.Random(f"edgegw-xbee-{opts.seed}")
        self._sequence = 0
        self._start = 0.0
        self._links: set[Link] = set()
        self.silent = False
        """A hung coordinator: nothing answered, nothing sent (a test sets it)."""
        self._pool: dict[tuple[int, bool], list[tuple[bytes, int, int, Any]]] = {}

    def _nwk_for(self, index: int, sensor: SimSensor) -> int:
        if self.options.escapes:
            return _ESCAPE_RICH[index % len(_ESCAPE_RICH)]
        return 0x1000 + (sensor.ieee * 2654435761 + index) % 0xE000

    def _factory_settings(self) -> dict[str, bytes]:
        return {
            "AO": b"\x00",
            "AP": bytes((self.options.api_mode,)),
            "SH": (COORDINATOR_IEEE >> 32).to_bytes(4, "big"),
            "SL": (COORDINATOR_IEEE & 0xFFFFFFFF).to_bytes(4, "big"),
            "AI": b"\x00",
            "OP": EXTENDED_PAN.to_bytes(8, "big"),
            "ID": EXTENDED_PAN.to_bytes(8, "big"),
            "OI": b"\x3a\x5c",
            "CH": bytes((CHANNEL,)),
            "VR": FIRMWARE.to_bytes(2, "big"),
            "HV": HARDWARE.to_bytes(2, "big"),
            "NI": b"EDGEGW-SIM",
            "MY": b"\x00\x00",
            "MP": b"\xff\xfe",
            "NJ": b"\xff",
            "CE": b"\x01",
            "SM": b"\x00",
            "BD": b"\x03",
            "NP": b"\x00\xff",
            "ZS": b"\x00",
            "EE": b"\x00",
            "SC": b"\x7f\xff",
            "DD": b"\x00\x0a\x00\x00",
            "%V": b"\x0c\xe4",
            "NR": b"",
            "CB": b"",
            "WR": b"",
            "AC": b"",
            "FR": b"",
            "RE": b"",
        }

    # ---------------------------------------------------------------- the sensors' values

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._start

    def values(self, sensor: SimSensor) -> dict[int, list[tuple[int, int, Any]]]:
        """What ``sensor`` reports now: cluster -> [(attribute, type, value)]."""
        t = self._now()
        phase = (sensor.ieee % 97) / 97 * 2 * math.pi
        wave = math.sin(2 * math.pi * t / 60 + phase)
        escapes = self.options.escapes
        kind = sensor.kind
        battery: list[tuple[int, int, Any]] = [
            (0x0021, T.UINT8, 180 - sensor.ieee % 40),
            (0x0020, T.UINT8, 29),
        ]
        if kind == "climate":
            temperature = 0x137E if escapes else round(2150 + 350 * wave)  # 49.9 °C if escapes
            humidity = 0x7D11 if escapes else round(4800 + 1200 * wave)
            return {
                TEMPERATURE: [(0x0000, T.INT16, temperature)],
                HUMIDITY: [(0x0000, T.UINT16, humidity)],
                POWER: battery,
            }
        if kind in ("door", "smoke"):
            zone_type = 0x0015 if kind == "door" else 0x0028
            status = 0x0001 if self.alarm_state.get(sensor.ieee) else 0x0000
            return {  # what it reports (its zone changes it notifies), then what it answers to a read
                POWER: battery,
                IAS: [(0x0000, T.ENUM8, 1), (0x0001, T.ENUM16, zone_type), (0x0002, T.BITMAP16, status)],
            }
        if kind == "meter":
            energy = 1_250_000 + round(t * 10)
            return {
                METERING: [
                    (0x0000, T.UINT48, energy),
                    (0x0301, T.UINT24, 1),
                    (0x0302, T.UINT24, 1000),
                    (0x0400, T.INT24, round(1500 + 200 * wave)),
                ],
                ELECTRICAL: [
                    (0x0505, T.UINT16, round(2300 + 40 * wave)),
                    (0x0600, T.UINT16, 1),
                    (0x0601, T.UINT16, 10),
                    (0x050B, T.INT16, round(1500 + 200 * wave)),
                    (0x0604, T.UINT16, 1),
                    (0x0605, T.UINT16, 1),
                ],
            }
        if kind == "occupancy":
            return {zcl.ClusterId.OCCUPANCY: [(0x0000, T.BITMAP8, int(wave > 0)), (0x0001, T.ENUM8, 0)]}
        if kind == "plug":
            return {zcl.ClusterId.ON_OFF: [(0x0000, T.BOOL, wave > 0)]}
        if kind == "pressure":
            return {zcl.ClusterId.PRESSURE: [(0x0000, T.INT16, round(1013 + 5 * wave))]}
        return {  # odd
            MANUFACTURER_CLUSTER: [(0x0001, T.UINT16, 0x7E7D), (0x0002, T.CHARACTER_STRING, "edgegw")],
            TEMPERATURE: [(0x0000, T.INT16, 2000), (0x4000, T.OCTET_STRING, b"\x01\x02")],
        }

    # ---------------------------------------------------------------- sending

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFF
        return self._sequence

    def _wire(self, message: xbee.Message) -> tuple[bytes, bool]:
        """``message`` on the wire, maybe damaged (faults); and whether it went intact."""
        raw = xbee.encode_frame(xbee.encode_message(message), escaped=self.escaped)
        faults = self.options.faults
        rng = self._rng
        out = b""
        if faults.noise and rng.random() < faults.noise:
            noise = rng.randbytes(rng.randint(1, 8)).replace(b"\x7e", b"\x00")
            out += noise
            self.stats.noise_bytes += len(noise)
        if faults.bad_checksum and rng.random() < faults.bad_checksum:
            self.stats.corrupted += 1
            bad = raw[-1] ^ rng.randint(1, 0xFF)
            if self.escaped and bad in xbee.ESCAPED:
                bad ^= 0x01 if bad ^ 0x01 not in xbee.ESCAPED else 0x40
            if self.escaped and raw[-2] == xbee.ESCAPE:
                return out + raw[:-2] + bytes((bad,)), False
            return out + raw[:-1] + bytes((bad,)), False
        if faults.truncate and rng.random() < faults.truncate:
            self.stats.corrupted += 1
            return out + raw[: rng.randrange(1, len(raw))], False
        if self.escaped and faults.mis_escape and rng.random() < faults.mis_escape:
            self.stats.corrupted += 1
            cut = rng.randrange(3, len(raw))
            return out + raw[:cut] + b"\x7d\x00" + raw[cut:], False
        return out + raw, True

    async def _send(self, link: Link, messages: list[xbee.Message]) -> list[bool]:
        chunks = [self._wire(m) for m in messages]
        await link.write(b"".join(chunk for chunk, _ in chunks))
        return [intact for _, intact in chunks]

    def _rx(
        self, sensor: SimSensor, cluster: int, payload: bytes, *, profile: int = zcl.PROFILE_HA
    ) -> xbee.Message:
        endpoint = zdo.ENDPOINT if profile == zdo.PROFILE else sensor.endpoint
        if self.settings["AO"][-1] & 0x01:
            return xbee.ExplicitRx(
                sensor.ieee,
                self.nwk[sensor.ieee],
                endpoint,
                endpoint if profile == zdo.PROFILE else 1,
                cluster,
                profile,
                0x01,
                payload,
            )
        return xbee.RxPacket(sensor.ieee, self.nwk[sensor.ieee], 0x01, payload)

    def _report_messages(
        self, sensor: SimSensor
    ) -> list[tuple[xbee.Message, list[tuple[int, int, Any]], int]]:
        out = []
        values = self.values(sensor)
        if sensor.kind in ("door", "smoke"):  # an IAS zone reports its battery; zone changes are notified
            values = {POWER: values[POWER]}
        for cluster, records in values.items():
            header: dict[str, Any] = {"manufacturer": 0x1234} if cluster >= 0xFC00 else {}
            payload = zcl.report_attributes(self._next_sequence(), records, **header)
            out.append((self._rx(sensor, cluster, payload), records, cluster))
        return out

    async def report(self, link: Link, sensors: list[SimSensor]) -> None:
        """Every attribute of ``sensors``, now."""
        batch = [(sensor, item) for sensor in sensors for item in self._report_messages(sensor)]
        intact = await self._send(link, [message for _, (message, _, _) in batch])
        for ok, (sensor, (_, records, cluster)) in zip(intact, batch, strict=True):
            if ok:
                self.stats.report_frames += 1
                self.stats.reports += len(records)
                for attribute, _, value in records:
                    self.sent.append((sensor.ieee, cluster, attribute, value))
        self._notify()

    async def _load(self, link: Link, sensors: list[SimSensor], first: int, count: int) -> None:
        """``count`` one-attribute reports for the load test (``rate``), round robin from ``first``: taken
        from frames built once per sensor (64 values each), so that the simulator can offer more than the
        driver under test takes. No faults are applied to them."""
        pool = self._pool
        explicit = bool(self.settings["AO"][-1] & 0x01)  # what the host asked for: 0x91 or 0x90
        frames = bytearray()
        sent = self.sent
        for n in range(first, first + count):
            sensor = sensors[n % len(sensors)]
            built = pool.get((sensor.ieee, explicit))
            if built is None:
                built = pool[sensor.ieee, explicit] = self._build_pool(sensor)
            raw, cluster, attribute, value = built[n % len(built)]
            frames += raw
            sent.append((sensor.ieee, cluster, attribute, value))
        await link.write(bytes(frames))
        self.stats.report_frames += count
        self.stats.reports += count
        self._notify()

    def _build_pool(self, sensor: SimSensor) -> list[tuple[bytes, int, int, Any]]:
        pool = []
        cluster, records = next(iter(self.values(sensor).items()))
        attribute, data_type, value = records[0]
        for step in range(64):
            varied = value + step if isinstance(value, int) and not isinstance(value, bool) else value
            payload = zcl.report_attributes(step, [(attribute, data_type, varied)])
            raw = xbee.encode_frame(
                xbee.encode_message(self._rx(sensor, cluster, payload)), escaped=self.escaped
            )
            pool.append((raw, cluster, attribute, varied))
        return pool

    async def alarm(self, link: Link, sensor: SimSensor, raised: bool) -> None:
        """An IAS zone's status change notification (alarm1 raised or cleared)."""
        self.alarm_state[sensor.ieee] = raised
        status = 0x0001 if raised else 0x0000
        change = zcl.ZoneStatusChange(status, 0, sensor.ieee & 0xFF, 0)
        payload = zcl.zone_status_change(self._next_sequence(), change)
        (ok,) = await self._send(link, [self._rx(sensor, IAS, payload)])
        if ok:
            self.stats.alarms += 1
            self.sent.append((sensor.ieee, IAS, -1, status))
        self._notify()

    async def join(self, link: Link, sensor: SimSensor) -> None:
        """``sensor`` joins: a node identification indicator and a device announce."""
        self.joined.add(sensor.ieee)
        nwk = self.nwk[sensor.ieee]
        identifier = sensor.name or f"{sensor.kind}-{sensor.ieee & 0xFFFF:04x}"
        identification = xbee.NodeIdentification(
            sensor.ieee, nwk, 0x02, nwk, sensor.ieee, identifier, 0x0000, 2, 2
        )
        _, announce = zdo.encode(zdo.DeviceAnnounce(self._next_sequence(), nwk, sensor.ieee, 0x80))
        await self._send(
            link,
            [identification, self._rx(sensor, zdo.ZdoCluster.DEVICE_ANNOUNCE, announce, profile=zdo.PROFILE)],
        )
        self.stats.joins += 1
        self._notify()

    async def reset(self, link: Link) -> None:
        """The coordinator resets: unsaved settings are lost, joining closes."""
        self.settings = dict(self.nvram)
        self.join_open_until = 0.0
        self.stats.resets += 1
        await link.write(
            b"".join(
                xbee.encode_frame(xbee.encode_message(xbee.ModemStatus(code)), escaped=self.escaped)
                for code in (xbee.ModemStatusCode.HARDWARE_RESET, xbee.ModemStatusCode.COORDINATOR_STARTED)
            )
        )
        self._notify()

    async def send_rx(
        self, ieee: int, cluster: int, payload: bytes, *, profile: int = zcl.PROFILE_HA
    ) -> None:
        """``payload`` (any bytes: a test's damaged ZCL, a ZDO message) from sensor ``ieee`` on ``cluster``
        of ``profile`` (ZDO: 0), to every connected host."""
        message = self._rx(self.sensors[ieee], cluster, payload, profile=profile)
        for link in list(self._links):
            await self._send(link, [message])

    def open_joining(self, seconds: int) -> None:
        self.join_open_until = self._now() + seconds if seconds else 0.0
        self.stats.permit_joins += 1
        self._notify()

    # ---------------------------------------------------------------- one session

    async def serve_link(self, link: Link) -> None:
        self.stats.connections += 1
        self._links.add(link)
        self._notify()
        framer = xbee.XBeeFramer(escaped=self.escaped)
        scenario = asyncio.create_task(self._scenario(link))
        try:
            while True:
                data = await link.read()
                if not data:
                    return
                for frame in framer.feed(data):
                    await self._handle(link, frame)
        except ConnectionError:
            return
        finally:
            self._links.discard(link)
            await serving.cancel_all((scenario,))

    async def _scenario(self, link: Link) -> None:
        opts = self.options
        tick = 0.01 if opts.rate else min(0.1, opts.interval_s / 4)
        next_report = {
            ieee: self._now() + opts.interval_s * n / max(1, len(self.sensors))
            for n, ieee in enumerate(self.sensors)
        }
        next_alarm = {
            ieee: self._now() + opts.alarm_every_s / 2
            for ieee, s in self.sensors.items()
            if s.kind in ("door", "smoke")
        }
        next_reset = self._now() + opts.faults.reset_every_s if opts.faults.reset_every_s else math.inf
        order = list(self.sensors.values())
        cursor = 0
        owed = 0.0
        last = self._now()
        try:
            while True:
                await asyncio.sleep(tick)
                now = self._now()
                if now >= next_reset:
                    await self.reset(link)
                    next_reset = now + opts.faults.reset_every_s
                if now < self.join_open_until:
                    for sensor in order:
                        if sensor.ieee not in self.joined:
                            await self.join(link, sensor)
                if self.silent:
                    continue
                on_network = [s for s in order if s.ieee in self.joined]
                if not on_network:
                    continue
                if opts.rate:
                    owed += opts.rate * (now - last)  # by the clock: a sleep overshoots its tick
                    last = now
                    count = int(owed)
                    owed -= count
                    if count > MAX_BURST:  # fell behind (a busy machine): offer less, never a flood
                        count = MAX_BURST
                        owed = 0.0
                    if count:
                        await self._load(link, on_network, cursor, count)
                        cursor += count
                    continue
                due = [s for s in on_network if now >= next_report[s.ieee]]
                for sensor in due:
                    next_report[sensor.ieee] = now + opts.interval_s
                if due:
                    await self.report(link, due)
                if opts.alarm_every_s:
                    for ieee, when in next_alarm.items():
                        if now >= when and ieee in self.joined:
                            await self.alarm(link, self.sensors[ieee], not self.alarm_state.get(ieee, False))
                            next_alarm[ieee] = now + opts.alarm_every_s / 2
        except ConnectionError:
            return

    async def _handle(self, link: Link, frame: Frame) -> None:
        self.stats.frames_in += 1
        if self.silent:
            return
        try:
            message = xbee.parse_message(frame)
        except DecodeError:
            return
        if isinstance(message, xbee.AtCommand):
            await self._at(link, message)
        elif isinstance(message, xbee.ExplicitCommand):
            await self._transmit(link, message)
        self._notify()

    async def _at(self, link: Link, command: xbee.AtCommand) -> None:
        name = command.command.upper()
        self.stats.at_commands[name] += 1
        status = xbee.AtStatus.OK
        data = b""
        if name not in self.settings:
            status = xbee.AtStatus.INVALID_COMMAND
        elif name == "WR":
            self.nvram = dict(self.settings)
        elif name == "AC":
            nj = self.settings["NJ"][-1]
            if nj:
                self.open_joining(nj)
        elif name == "FR":
            self.settings = dict(self.nvram)
        elif command.parameter:
            if name in ("SH", "SL", "AI", "OP", "VR", "HV", "MY", "%V", "DD"):
                status = xbee.AtStatus.INVALID_PARAMETER  # read-only
            elif name == "AO" and command.parameter[-1] not in (0, 1, 3):
                status = xbee.AtStatus.INVALID_PARAMETER
            else:
                self.settings[name] = bytes(command.parameter)
        else:
            data = self.settings[name]
        if command.frame_id:
            response = xbee.AtResponse(command.frame_id, name, status, data)
            await link.write(xbee.encode_frame(xbee.encode_message(response), escaped=self.escaped))

    async def _transmit(self, link: Link, command: xbee.ExplicitCommand) -> None:
        self.stats.transmits += 1
        sensor = self.sensors.get(command.dest64)
        broadcast = command.dest64 == xbee.BROADCAST_64
        reachable = broadcast or (sensor is not None and sensor.ieee in self.joined)
        if command.frame_id:
            delivery = xbee.DeliveryStatus.SUCCESS if reachable else xbee.DeliveryStatus.ADDRESS_NOT_FOUND
            nwk = self.nwk.get(command.dest64, 0xFFFD)
            status = xbee.TransmitStatus(command.frame_id, nwk, 0, delivery, 0)
            await link.write(xbee.encode_frame(xbee.encode_message(status), escaped=self.escaped))
        if not reachable:
            return
        if command.profile == zdo.PROFILE:
            try:
                request = zdo.parse(command.cluster, command.payload)
            except DecodeError:
                return
            if isinstance(request, zdo.PermitJoinRequest):
                self.open_joining(request.duration_s)
            elif isinstance(request, zdo.BindRequest) and sensor is not None:
                self.stats.binds += 1
                _, payload = zdo.encode(zdo.BindResponse(request.sequence, 0))
                await self._send(
                    link, [self._rx(sensor, zdo.ZdoCluster.BIND_RESPONSE, payload, profile=zdo.PROFILE)]
                )
            return
        if sensor is None:
            return
        try:
            header, offset = zcl.parse_header(command.payload)
        except DecodeError:
            return
        values = {(c, a): (t, v) for c, records in self.values(sensor).items() for a, t, v in records}
        reply: bytes | None = None
        if header.cluster_specific:
            if command.cluster == IAS and header.command == 0x00:
                self.stats.enrolls += 1
        elif header.command == zcl.Command.READ_ATTRIBUTES:
            self.stats.reads += 1
            try:
                attributes = zcl.parse_read_attributes(command.payload, offset)
            except DecodeError:
                return
            records: list[tuple[int, int, int | None, Any]] = []
            for attribute in attributes:
                got = values.get((command.cluster, attribute))
                if got is None:
                    records.append((attribute, zcl.Status.UNSUPPORTED_ATTRIBUTE, None, None))
                else:
                    records.append((attribute, zcl.Status.SUCCESS, got[0], got[1]))
                    self.sent.append((sensor.ieee, command.cluster, attribute, got[1]))
            reply = zcl.read_response(header.sequence, records)
        elif header.command == zcl.Command.CONFIGURE_REPORTING:
            try:
                wanted = zcl.parse_configure_reporting(command.payload, offset)
            except DecodeError:
                return
            statuses: list[tuple[int, int]] = []
            for record in wanted:
                known = (command.cluster, record.attribute) in values
                statuses.append(
                    (zcl.Status.SUCCESS if known else zcl.Status.UNSUPPORTED_ATTRIBUTE, record.attribute)
                )
                if known:
                    self.configured.add(
                        (sensor.ieee, command.dest_endpoint, command.cluster, record.attribute)
                    )
                    self.stats.reporting_configured += 1
            reply = zcl.configure_reporting_response(header.sequence, statuses)
        if reply is not None:
            await self._send(link, [self._rx(sensor, command.cluster, reply)])


@contextlib.asynccontextmanager
async def serve_pty(link: Path, options: SimOptions | None = None) -> AsyncIterator[XBeeSimulator]:
    """Serve a simulated coordinator on a new pty whose slave ``link`` points to (removed on exit)."""
    sim = XBeeSimulator(options)
    sim._start = asyncio.get_running_loop().time()
    async with serving.on_pty(sim, link):
        yield sim


@contextlib.asynccontextmanager
async def serve_tcp(host: str, port: int, options: SimOptions | None = None) -> AsyncIterator[XBeeSimulator]:
    """Serve a simulated coordinator on a TCP port (a serial-to-Ethernet converter in front of it)."""
    sim = XBeeSimulator(options)
    sim._start = asyncio.get_running_loop().time()
    async with serving.on_tcp(sim, host, port):
        yield sim


# ----------------------------------------------------------------------------------------------------
# Command line: `edgegw sim xbee ...`

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas), probabilities per frame (0..1):
  noise=P            random bytes before a frame
  bad-checksum=P     the frame's checksum corrupted
  truncate=P         the frame cut short (the next one starts at once)
  mis-escape=P       a 0x7D before a byte that is never escaped (API mode 2)
  reset=S            the coordinator resets every S seconds (modem status; unsaved settings lost)
example: --fault bad-checksum=0.01,truncate=0.01 --fault reset=60 --escapes
"""

_PROBABILITIES: Final = ("noise", "bad-checksum", "truncate", "mis-escape")


def parse_faults(specs: list[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    return Faults(**serving.parse_fault_specs(specs, _fault_fields))


def _fault_fields(name: str, text: str | None) -> dict[str, float]:
    if not text:
        raise ValueError("expected NAME=VALUE")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if name == "reset":
        if value <= 0:
            raise ValueError("reset period must be positive")
        return {"reset_every_s": value}
    if name not in _PROBABILITIES:
        raise ValueError(f"unknown fault {name!r} ({', '.join((*_PROBABILITIES, 'reset'))})")
    if not 0.0 <= value <= 1.0:
        raise ValueError("a probability is 0..1")
    return {name.replace("-", "_"): value}


def _sensor(text: str) -> SimSensor:
    kind, sep, rest = text.partition("=")
    joined = True
    if rest.endswith(":later"):
        rest, joined = rest[: -len(":later")], False
    try:
        ieee = int(rest, 16)
        if not sep or len(rest) != 16:
            raise ValueError(text)
        return SimSensor(ieee, kind, joined=joined)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND=IEEE[:later] ({err})") from err


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``xbee`` to the ``edgegw sim`` subcommands."""
    parser = sub.add_parser(
        "xbee",
        help="Digi XBee ZigBee coordinator (API mode) with ZCL sensors",
        description="A simulated XBee ZigBee coordinator and its sensors, on a pty or a TCP port.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_link_or_tcp(parser)
    parser.add_argument(
        "--sensor",
        dest="sensors",
        type=_sensor,
        action="append",
        metavar="KIND=IEEE[:later]",
        help=f"a sensor ({', '.join(KINDS)}), 16 hex digits; :later joins when joining opens (repeat)",
    )
    parser.add_argument("--api-mode", type=int, choices=(1, 2), default=2, help="AP: 2 escaped (default), 1")
    parser.add_argument(
        "--interval", type=float, default=5.0, metavar="S", help="each sensor reports every S s"
    )
    parser.add_argument("--alarm-every", type=float, default=20.0, metavar="S", help="IAS zone alarm period")
    parser.add_argument("--rate", type=float, default=0.0, help="reports/s across the network (load test)")
    parser.add_argument("--escapes", action="store_true", help="addresses and values full of escaped bytes")
    serving.add_seed_and_faults(parser, "xbee", parse_faults)
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        sensors=tuple(args.sensors or DEFAULT_SENSORS),
        api_mode=args.api_mode,
        interval_s=args.interval,
        alarm_every_s=args.alarm_every,
        rate=args.rate,
        escapes=args.escapes,
        seed=args.seed,
        faults=parse_faults(args.xbee_faults),
    )


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    """Serve the coordinator described by ``args`` until ``stop`` is set (or the task is cancelled)."""
    options = options_from_args(args)
    what = f"xbee simulator (coordinator {COORDINATOR_IEEE:016x}, {len(options.sensors)} sensors)"
    await serving.serve_until_stopped(what, args, options, serve_pty, serve_tcp, stop=stop, out=out)
