"""SAE J1939 on CAN, as a passive tap hears it: the 29-bit identifier, the transport protocol's multi-packet
messages (reassembled, never answered), a table of common PGNs with their SPNs' scaling, and DM1.

What is here and where it comes from (SAE J1939-21 data link layer, J1939-71 application layer, J1939-73
diagnostics; the values are the standards' published field positions and scalings):

- :func:`parse_id` / :func:`can_id`: priority, PGN (PDU1 with a destination address, PDU2 broadcast),
  source and destination of an identifier, and back.
- :class:`Reassembler`: the transport protocol (TP.CM, PGN 60416; TP.DT, PGN 60160) heard from the side.
  BAM sessions (TP.CM 0x20, then TP.DT to the global address) and RTS/CTS sessions (0x10 RTS, 0x11 CTS,
  0x13 end of message acknowledgement, 0xFF abort) between two other nodes, keyed by (source, destination,
  PGN), up to 1,785 bytes (255 packets of 7). It only listens: it never sends a CTS nor an abort (a J1939
  stack that takes part would disturb the vehicle, and drops what is not addressed to it). Packets are kept
  by sequence number, so a retransmission (a CTS asking again) or a reordering adapter costs nothing; a
  session completes when every packet is in, and times out with the standard's timers (T1 = 0.75 s between
  packets; T2/T3 = 1.25 s around a CTS; T4 = 1.05 s after a CTS that holds the connection open). A second
  BAM (or RTS) from a source that has one running replaces it, as J1939-21 says a receiver does.
- :data:`PGNS`: a table of common PGNs (CCVS, EEC1, ET1, LFE, DD, VD, HOURS, AMB, EEC2, DC1) and their SPNs:
  position, length, resolution, offset, unit. :meth:`Pgn.decode` leaves out what the standard says is not a
  value: "not available" (all ones) and "error" (0xFE in the top byte, or all ones but one in a bit field),
  and the reserved range in between.
- :func:`decode_dm1` / :func:`encode_dm1`: DM1 (PGN 65226), the lamps and the active DTCs.

Hand-written, not on construct and not on a J1939 library: the bit fields of a PGN are a few shifts and
masks from one 64-bit integer, which is what a decoder running on every frame of a loaded bus must cost (a
construct BitStruct costs tens of microseconds a frame), and the J1939 stacks for Python (``can-j1939``)
take part in the protocol (they send CTS and aborts and drop traffic not addressed to them), which a tap
must not. Pure: no clock (times are given), no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal, NamedTuple

from .errors import DecodeError, EncodeError

__all__ = [
    "BAM",
    "DM1",
    "GLOBAL",
    "MAX_TP_SIZE",
    "PGNS",
    "TP_CM",
    "TP_DT",
    "Dm1",
    "Dtc",
    "J1939Id",
    "Lamps",
    "Message",
    "Pgn",
    "Reassembler",
    "ReassemblerStats",
    "Spn",
    "bam_frames",
    "can_id",
    "decode_dm1",
    "encode_dm1",
    "parse_id",
    "rts_cts_frames",
]

GLOBAL: Final = 0xFF
"""The global (broadcast) destination address."""
TP_CM: Final = 0xEC00
"""Transport protocol, connection management (PGN 60416)."""
TP_DT: Final = 0xEB00
"""Transport protocol, data transfer (PGN 60160)."""
DM1: Final = 65226
"""Active diagnostic trouble codes."""
MAX_TP_SIZE: Final = 1785
"""The largest message the transport protocol carries: 255 packets of 7 bytes."""

RTS: Final = 0x10
CTS: Final = 0x11
EOMA: Final = 0x13
BAM: Final = 0x20
ABORT: Final = 0xFF

T1: Final = 0.75
"""Seconds a receiver waits for the next TP.DT (and for the first after a BAM)."""
T2: Final = 1.25
"""Seconds a receiver waits for data after it sent a CTS."""
T3: Final = 1.25
"""Seconds a sender waits for a CTS or the acknowledgement (after an RTS, after a window's last packet)."""
T4: Final = 1.05
"""Seconds a sender waits after a CTS that holds the connection open (0 packets)."""


# -- identifiers ------------------------------------------------------------------------------------------


class J1939Id(NamedTuple):
    """A 29-bit identifier, taken apart."""

    priority: int
    pgn: int
    source: int
    destination: int | None
    """The destination address of a PDU1 PGN; None for a PDU2 PGN or the global address (broadcast)."""


def parse_id(arbitration_id: int) -> J1939Id:
    """The J1939 fields of a 29-bit CAN identifier."""
    pf = (arbitration_id >> 16) & 0xFF
    ps = (arbitration_id >> 8) & 0xFF
    dp = (arbitration_id >> 16) & 0x300  # extended data page and data page, in place above PF
    if pf < 240:  # PDU1: PS is the destination address
        return J1939Id(
            (arbitration_id >> 26) & 7,
            (dp | pf) << 8,
            arbitration_id & 0xFF,
            None if ps == GLOBAL else ps,
        )
    return J1939Id((arbitration_id >> 26) & 7, (dp | pf) << 8 | ps, arbitration_id & 0xFF, None)


def can_id(pgn: int, source: int, *, priority: int = 6, destination: int | None = None) -> int:
    """The 29-bit identifier of ``pgn`` from ``source`` (to ``destination`` for a PDU1 PGN; None: global)."""
    if not 0 <= pgn < 1 << 18:
        raise EncodeError(f"PGN {pgn} is not 18 bits")
    if not 0 <= source <= 0xFF or not 0 <= priority <= 7:
        raise EncodeError("source is 0..255 and priority 0..7")
    pf = (pgn >> 8) & 0xFF
    if pf < 240:
        if pgn & 0xFF:
            raise EncodeError(f"PDU1 PGN {pgn} has a non-zero low byte")
        da = GLOBAL if destination is None else destination
        if not 0 <= da <= 0xFF:
            raise EncodeError("destination is 0..255")
        pgn |= da
    elif destination is not None:
        raise EncodeError(f"PDU2 PGN {pgn} has no destination")
    return priority << 26 | pgn << 8 | source


# -- transport protocol -----------------------------------------------------------------------------------


class Message(NamedTuple):
    """A whole J1939 message: one frame's, or a transport session's reassembled."""

    pgn: int
    source: int
    destination: int | None
    data: bytes
    priority: int = 6


@dataclass(slots=True)
class ReassemblerStats:
    """What the reassembler has seen (monotonic counters)."""

    completed: int = 0
    """Multi-packet messages reassembled whole."""
    timed_out: int = 0
    """Sessions dropped because a packet did not come in time (a TP.DT lost, a sender gone)."""
    aborted: int = 0
    """RTS/CTS sessions that one side aborted (TP.CM 0xFF)."""
    replaced: int = 0
    """Sessions dropped because their source started another (a second BAM before the first ended)."""
    incomplete: int = 0
    """Sessions acknowledged (end of message) while packets were still missing here: the tap missed them."""
    invalid: int = 0
    """TP.CM frames that make no sense (a size over 1,785 bytes or not matching the packet count, too
    short), and TP.DT frames with sequence number 0 or past the session's packets."""
    orphans: int = 0
    """TP.DT frames of no session this tap knows (it started listening mid-session, or the session ended)."""
    evicted: int = 0
    """Sessions dropped because ``max_sessions`` were open."""

    @property
    def dropped(self) -> int:
        """Sessions that did not complete, whatever the reason."""
        return self.timed_out + self.aborted + self.replaced + self.incomplete + self.evicted


@dataclass(slots=True)
class _Session:
    pgn: int
    source: int
    destination: int | None
    size: int
    packets: int
    priority: int
    broadcast: bool
    deadline: float
    received: dict[int, bytes] = field(default_factory=dict)


class Reassembler:
    """Passive reassembly of J1939 transport-protocol sessions (see the module docstring).

    :meth:`feed` takes every TP.CM and TP.DT frame heard (other PGNs are not its business: it returns
    nothing for them) with the time it was heard, and returns the messages that frame completed;
    :meth:`expire` drops the sessions whose timer ran out (``feed`` calls it too). Times are seconds of any
    monotonic clock. At most ``max_sessions`` sessions are kept (the oldest is dropped for a new one), so
    memory is bounded by ``max_sessions`` x 1,785 bytes."""

    __slots__ = ("_next_deadline", "_sessions", "max_sessions", "stats")

    def __init__(self, *, max_sessions: int = 64) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self.stats = ReassemblerStats()
        self._sessions: dict[tuple[int, int], _Session] = {}
        """(source, destination address) -> its session: a node runs one session at a time per destination
        (the TP.DT frames carry no PGN: they belong to the session of their source and destination)."""
        self._next_deadline = math.inf

    @property
    def sessions(self) -> int:
        """Sessions open now."""
        return len(self._sessions)

    def feed(self, arbitration_id: int, data: bytes, now: float) -> list[Message]:
        """Take one frame (any frame: only TP.CM and TP.DT are used) heard at ``now``."""
        if now >= self._next_deadline:
            self.expire(now)
        pf = (arbitration_id >> 16) & 0x3FF
        if pf == 0xEC:
            self._cm(arbitration_id, data, now)
            return []
        if pf == 0xEB:
            message = self._dt(arbitration_id, data, now)
            return [] if message is None else [message]
        return []

    def expire(self, now: float) -> int:
        """Drop the sessions whose timer ran out by ``now``; how many."""
        expired = [key for key, session in self._sessions.items() if session.deadline <= now]
        for key in expired:
            del self._sessions[key]
        self.stats.timed_out += len(expired)
        self._next_deadline = min((s.deadline for s in self._sessions.values()), default=math.inf)
        return len(expired)

    def _cm(self, arbitration_id: int, data: bytes, now: float) -> None:
        stats = self.stats
        if len(data) < 8:
            stats.invalid += 1
            return
        source = arbitration_id & 0xFF
        da = (arbitration_id >> 8) & 0xFF
        control = data[0]
        pgn = data[5] | data[6] << 8 | (data[7] & 0x03) << 16
        if control in (RTS, BAM):
            size = data[1] | data[2] << 8
            packets = data[3]
            wrong_size = not 1 <= size <= MAX_TP_SIZE or packets != (size + 6) // 7
            if wrong_size or (control == RTS and da == GLOBAL):
                stats.invalid += 1
                return
            broadcast = control == BAM
            key = (source, GLOBAL if broadcast else da)
            if key in self._sessions:
                del self._sessions[key]
                stats.replaced += 1
            elif len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].deadline)
                del self._sessions[oldest]
                stats.evicted += 1
            session = _Session(
                pgn,
                source,
                None if broadcast else da,
                size,
                packets,
                (arbitration_id >> 26) & 7,
                broadcast,
                now + (T1 if broadcast else T3),
            )
            self._sessions[key] = session
            self._next_deadline = min(self._next_deadline, session.deadline)
            return
        # CTS, EOMA and abort of an RTS/CTS session: CTS and EOMA come from its receiver (our frame's source
        # is the session's destination); an abort from either side.
        if control in (CTS, EOMA):
            answered = self._sessions.get((da, source))
            if answered is None or answered.pgn != pgn or answered.broadcast:
                return
            if control == CTS:
                answered.deadline = now + (T2 if data[1] else T4)
                self._next_deadline = min(self._next_deadline, answered.deadline)
                return
            del self._sessions[(da, source)]
            stats.incomplete += 1  # acknowledged, yet packets are missing here (complete ones left already)
            return
        if control == ABORT:
            for key in ((source, da), (da, source)):
                aborted = self._sessions.get(key)
                if aborted is not None and aborted.pgn == pgn and not aborted.broadcast:
                    del self._sessions[key]
                    stats.aborted += 1
                    return
            return
        stats.invalid += 1

    def _dt(self, arbitration_id: int, data: bytes, now: float) -> Message | None:
        source = arbitration_id & 0xFF
        session = self._sessions.get((source, (arbitration_id >> 8) & 0xFF))
        if session is None:
            self.stats.orphans += 1
            return None
        if not data or not 1 <= data[0] <= session.packets or len(data) < 2:
            self.stats.invalid += 1
            return None
        session.received[data[0]] = bytes(data[1:8])
        session.deadline = now + T1
        self._next_deadline = min(self._next_deadline, session.deadline)
        if len(session.received) < session.packets:
            return None
        received = session.received
        payload = b"".join(received[n] for n in range(1, session.packets + 1))
        if len(payload) < session.size:  # short TP.DT frames: not what was announced
            del self._sessions[(source, GLOBAL if session.broadcast else (arbitration_id >> 8) & 0xFF)]
            self.stats.invalid += 1
            return None
        del self._sessions[(source, GLOBAL if session.broadcast else (arbitration_id >> 8) & 0xFF)]
        self.stats.completed += 1
        return Message(session.pgn, source, session.destination, payload[: session.size], session.priority)


def _pgn_bytes(pgn: int) -> bytes:
    return bytes((pgn & 0xFF, (pgn >> 8) & 0xFF, (pgn >> 16) & 0xFF))


def _packets(data: bytes) -> list[bytes]:
    if not 9 <= len(data) <= MAX_TP_SIZE:
        raise EncodeError(f"the transport protocol carries 9..{MAX_TP_SIZE} bytes, not {len(data)}")
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    return [bytes((n,)) + chunk.ljust(7, b"\xff") for n, chunk in enumerate(chunks, 1)]


def bam_frames(pgn: int, source: int, data: bytes, *, priority: int = 7) -> list[tuple[int, bytes]]:
    """The frames (identifier, data) of a BAM session sending ``data`` as ``pgn`` to everyone (a sender
    spaces them 50 to 200 ms apart)."""
    packets = _packets(data)
    size = len(data)
    cm = bytes((BAM, size & 0xFF, size >> 8, len(packets), 0xFF)) + _pgn_bytes(pgn)
    dt_id = can_id(TP_DT, source, priority=priority)
    return [(can_id(TP_CM, source, priority=priority), cm), *((dt_id, p) for p in packets)]


def rts_cts_frames(
    pgn: int, source: int, destination: int, data: bytes, *, window: int = 255, priority: int = 7
) -> list[tuple[int, bytes]]:
    """The frames of a whole RTS/CTS session as both sides send them: the RTS, then for each window of at
    most ``window`` packets the receiver's CTS and the sender's TP.DT frames, then the receiver's end of
    message acknowledgement."""
    if destination == GLOBAL:
        raise EncodeError("an RTS/CTS session has a destination")
    packets = _packets(data)
    size = len(data)
    pgn_bytes = _pgn_bytes(pgn)
    tx_cm = can_id(TP_CM, source, priority=priority, destination=destination)
    rx_cm = can_id(TP_CM, destination, priority=priority, destination=source)
    tx_dt = can_id(TP_DT, source, priority=priority, destination=destination)
    frames = [(tx_cm, bytes((RTS, size & 0xFF, size >> 8, len(packets), window)) + pgn_bytes)]
    for start in range(0, len(packets), window):
        batch = packets[start : start + window]
        frames.append((rx_cm, bytes((CTS, len(batch), start + 1, 0xFF, 0xFF)) + pgn_bytes))
        frames.extend((tx_dt, p) for p in batch)
    frames.append((rx_cm, bytes((EOMA, size & 0xFF, size >> 8, len(packets), 0xFF)) + pgn_bytes))
    return frames


def abort_frame(pgn: int, source: int, destination: int, reason: int = 1) -> tuple[int, bytes]:
    """The TP.CM abort ``source`` sends ``destination`` for the session of ``pgn``."""
    return (
        can_id(TP_CM, source, priority=7, destination=destination),
        bytes((ABORT, reason, 0xFF, 0xFF, 0xFF)) + _pgn_bytes(pgn),
    )


# -- the PGN table ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spn:
    """One parameter of a PGN: where it sits and how its raw value scales."""

    spn: int
    name: str
    start_bit: int
    """Position of its least significant bit in the data, from bit 0 of byte 1 (J1939's byte 1, bit 1)."""
    length: int
    """Bits."""
    resolution: float = 1.0
    offset: float = 0.0
    unit: str = ""

    @property
    def limit(self) -> int:
        """The largest raw value that is a value: 0xFA.. for 8 bits and more (0xFB..0xFD reserved, 0xFE..
        error, 0xFF.. not available); for a bit field of 2 to 7 bits, all ones but two (the top two are
        error and not available)."""
        if self.length >= 8:
            return (0xFB << (self.length - 8)) - 1
        return (1 << self.length) - 3

    @property
    def decimals(self) -> int:
        """Decimal places its physical values have (``resolution`` 0.4: 1; 1/256: 8): a value is rounded to
        them, so 201 x 0.4 is 80.4 and not the binary 80.40000000000001."""
        places = 0
        for number in (self.resolution, self.offset):
            exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
            if isinstance(exponent, int):
                places = max(places, -exponent)
        return places

    def raw(self, value: float) -> int:
        """The raw value of a physical ``value`` (rounded); EncodeError when it does not fit."""
        raw = round((value - self.offset) / self.resolution)
        if not 0 <= raw <= self.limit:
            raise EncodeError(f"{self.name}: {value} is out of range")
        return raw


class Pgn:
    """A PGN of the table: its name, its length, its SPNs. :meth:`decode` is on the hot path."""

    __slots__ = ("_fields", "acronym", "length", "name", "names", "pgn", "rate_s", "spns", "text", "units")

    def __init__(
        self,
        pgn: int,
        acronym: str,
        name: str,
        spns: Sequence[Spn],
        *,
        length: int = 8,
        rate_s: float | None = None,
        text: str | None = None,
    ) -> None:
        self.pgn = pgn
        self.text = text
        """The name of its one ASCII field (up to a ``*`` delimiter), for a PGN that is text (VI)."""
        self.acronym = acronym
        self.name = name
        self.length = length
        self.rate_s = rate_s
        """How often its sender broadcasts it, by the standard (a simulator plays it at this rate)."""
        self.spns = tuple(spns)
        self.units = {s.name: s.unit for s in self.spns if s.unit}
        self.names = frozenset(s.name for s in self.spns) | ({text} if text is not None else frozenset())
        """The names of its values."""
        self._fields = tuple(
            (
                s.name,
                s.start_bit,
                (1 << s.length) - 1,
                s.limit,
                s.resolution,
                s.offset,
                s.decimals,
                (s.start_bit + s.length + 7) // 8,
            )
            for s in self.spns
        )

    def decode(self, data: bytes) -> dict[str, float | int | str]:
        """The SPNs' physical values (name -> value) of ``data``; those not available, in error, reserved
        or beyond the data's end are left out. A text PGN gives its field as a string (non-ASCII bytes
        replaced)."""
        if self.text is not None:
            return {self.text: data.split(b"*", 1)[0].decode("ascii", "replace")}
        raw_all = int.from_bytes(data, "little")
        size = len(data)
        values: dict[str, float | int | str] = {}
        for name, start, mask, limit, resolution, offset, decimals, needs in self._fields:
            if needs > size:
                continue
            raw = (raw_all >> start) & mask
            if raw > limit:
                continue
            if decimals:
                values[name] = round(raw * resolution + offset, decimals)
            else:
                values[name] = int(raw * resolution + offset)
        return values

    def encode(self, values: Mapping[str, float | str]) -> bytes:
        """``values`` (name -> physical value) as data; what is not given is "not available" (all ones)."""
        if self.text is not None:
            return str(values.get(self.text, "")).encode("ascii") + b"*"
        by_name = {s.name: s for s in self.spns}
        unknown = set(values) - set(by_name)
        if unknown:
            raise EncodeError(f"{self.acronym} has no {', '.join(sorted(unknown))}")
        raw_all = (1 << (8 * self.length)) - 1
        for name, value in values.items():
            spn = by_name[name]
            mask = (1 << spn.length) - 1
            raw_all &= ~(mask << spn.start_bit)
            raw_all |= spn.raw(float(value)) << spn.start_bit
        return raw_all.to_bytes(self.length, "little")


def _bit(byte: int, bit: int) -> int:
    """The start bit of J1939's "byte ``byte``, bit ``bit``" (both from 1)."""
    return (byte - 1) * 8 + (bit - 1)


PGNS: Final[Mapping[int, Pgn]] = {
    p.pgn: p
    for p in (
        Pgn(
            65265,
            "CCVS",
            "Cruise Control/Vehicle Speed",
            [
                Spn(69, "two_speed_axle_switch", _bit(1, 1), 2),
                Spn(70, "parking_brake_switch", _bit(1, 3), 2),
                Spn(84, "wheel_based_vehicle_speed", _bit(2, 1), 16, 1 / 256, 0, "km/h"),
                Spn(595, "cruise_control_active", _bit(4, 1), 2),
                Spn(597, "brake_switch", _bit(4, 5), 2),
                Spn(598, "clutch_switch", _bit(4, 7), 2),
            ],
            rate_s=0.1,
        ),
        Pgn(
            61444,
            "EEC1",
            "Electronic Engine Controller 1",
            [
                Spn(899, "engine_torque_mode", _bit(1, 1), 4),
                Spn(512, "drivers_demand_engine_percent_torque", _bit(2, 1), 8, 1, -125, "%"),
                Spn(513, "actual_engine_percent_torque", _bit(3, 1), 8, 1, -125, "%"),
                Spn(190, "engine_speed", _bit(4, 1), 16, 0.125, 0, "rpm"),
                Spn(1483, "source_address_of_controlling_device", _bit(6, 1), 8),
            ],
            rate_s=0.02,
        ),
        Pgn(
            61443,
            "EEC2",
            "Electronic Engine Controller 2",
            [
                Spn(91, "accelerator_pedal_position_1", _bit(2, 1), 8, 0.4, 0, "%"),
                Spn(92, "engine_percent_load_at_current_speed", _bit(3, 1), 8, 1, 0, "%"),
            ],
            rate_s=0.05,
        ),
        Pgn(
            65262,
            "ET1",
            "Engine Temperature 1",
            [
                Spn(110, "engine_coolant_temperature", _bit(1, 1), 8, 1, -40, "°C"),
                Spn(174, "fuel_temperature", _bit(2, 1), 8, 1, -40, "°C"),
                Spn(175, "engine_oil_temperature", _bit(3, 1), 16, 0.03125, -273, "°C"),
            ],
            rate_s=1.0,
        ),
        Pgn(
            65266,
            "LFE",
            "Fuel Economy (Liquid)",
            [
                Spn(183, "fuel_rate", _bit(1, 1), 16, 0.05, 0, "L/h"),
                Spn(184, "instantaneous_fuel_economy", _bit(3, 1), 16, 1 / 512, 0, "km/L"),
                Spn(51, "throttle_position", _bit(7, 1), 8, 0.4, 0, "%"),
            ],
            rate_s=0.1,
        ),
        Pgn(
            65276,
            "DD",
            "Dash Display",
            [
                Spn(80, "washer_fluid_level", _bit(1, 1), 8, 0.4, 0, "%"),
                Spn(96, "fuel_level_1", _bit(2, 1), 8, 0.4, 0, "%"),
                Spn(95, "fuel_filter_differential_pressure", _bit(3, 1), 8, 2, 0, "kPa"),
                Spn(99, "engine_oil_filter_differential_pressure", _bit(4, 1), 8, 0.5, 0, "kPa"),
                Spn(169, "cargo_ambient_temperature", _bit(5, 1), 16, 0.03125, -273, "°C"),
                Spn(38, "fuel_level_2", _bit(7, 1), 8, 0.4, 0, "%"),
            ],
            rate_s=1.0,
        ),
        Pgn(
            65248,
            "VD",
            "Vehicle Distance",
            [
                Spn(244, "trip_distance", _bit(1, 1), 32, 0.125, 0, "km"),
                Spn(245, "total_vehicle_distance", _bit(5, 1), 32, 0.125, 0, "km"),
            ],
            rate_s=1.0,
        ),
        Pgn(
            65253,
            "HOURS",
            "Engine Hours, Revolutions",
            [
                Spn(247, "engine_total_hours", _bit(1, 1), 32, 0.05, 0, "h"),
                Spn(249, "engine_total_revolutions", _bit(5, 1), 32, 1000, 0, "r"),
            ],
        ),
        Pgn(
            65269,
            "AMB",
            "Ambient Conditions",
            [
                Spn(108, "barometric_pressure", _bit(1, 1), 8, 0.5, 0, "kPa"),
                Spn(170, "cab_interior_temperature", _bit(2, 1), 16, 0.03125, -273, "°C"),
                Spn(171, "ambient_air_temperature", _bit(4, 1), 16, 0.03125, -273, "°C"),
                Spn(172, "engine_air_inlet_temperature", _bit(6, 1), 8, 1, -40, "°C"),
            ],
            rate_s=1.0,
        ),
        Pgn(65260, "VI", "Vehicle Identification", [], length=0, text="vehicle_identification_number"),
        Pgn(
            65102,
            "DC1",
            "Door Control 1",
            [
                Spn(1821, "position_of_doors", _bit(1, 1), 4),
                Spn(1820, "ramp_wheel_chair_lift_position", _bit(1, 5), 2),
                Spn(1819, "status_2_of_doors", _bit(1, 7), 2),
            ],
            rate_s=0.1,
        ),
    )
}
"""The built-in PGNs by number. ``position_of_doors`` (DC1) is 0 when at least one door is open, 1 while
the last one closes, 2 when all are closed; a 2-bit switch is 0 off, 1 on."""


# -- DM1 --------------------------------------------------------------------------------------------------

LampState = Literal["off", "on"]


class Dtc(NamedTuple):
    """One diagnostic trouble code: the suspect parameter, its failure mode, how often it occurred."""

    spn: int
    fmi: int
    occurrence: int


class Lamps(NamedTuple):
    """The lamps of a DM1: True on, False off, None not available."""

    malfunction: bool | None
    red_stop: bool | None
    amber_warning: bool | None
    protect: bool | None


class Dm1(NamedTuple):
    lamps: Lamps
    dtcs: tuple[Dtc, ...]


def _lamp(bits: int) -> bool | None:
    return True if bits == 1 else False if bits == 0 else None


def decode_dm1(data: bytes) -> Dm1:
    """A DM1's lamps (byte 1: malfunction bits 8-7, red stop 6-5, amber warning 4-3, protect 2-1) and its
    active DTCs (4 bytes each from byte 3: SPN in 19 bits, FMI in 5, occurrence count in 7). "No DTC" (all
    zeros) and padding (all ones) are not codes. DecodeError when the data is not a DM1 (too short, or not
    a whole number of DTCs after the lamps, padding aside)."""
    if len(data) < 6:
        raise DecodeError(f"a DM1 has at least 6 bytes, not {len(data)}")
    status = data[0]
    lamps = Lamps(_lamp(status >> 6 & 3), _lamp(status >> 4 & 3), _lamp(status >> 2 & 3), _lamp(status & 3))
    body = data[2:]
    if len(body) % 4:
        if len(body) < 4 or any(b != 0xFF for b in body[len(body) - len(body) % 4 :]):
            raise DecodeError(f"a DM1 holds whole 4-byte DTCs after its 2 lamp bytes, not {len(body)} bytes")
        body = body[: len(body) - len(body) % 4]
    dtcs: list[Dtc] = []
    for i in range(0, len(body), 4):
        a, b, c, d = body[i : i + 4]
        if a == b == c == d == 0xFF:
            continue
        spn = a | b << 8 | (c >> 5) << 16
        fmi = c & 0x1F
        if spn == 0 and fmi == 0:
            continue
        dtcs.append(Dtc(spn, fmi, d & 0x7F))
    return Dm1(lamps, tuple(dtcs))


def _lamp_bits(state: bool | None) -> int:
    return 3 if state is None else int(state)


def encode_dm1(lamps: Lamps, dtcs: Iterable[Dtc]) -> bytes:
    """A DM1's data: 8 bytes with no or one DTC (a single frame), 2 + 4 per DTC with more (for BAM)."""
    status = (
        _lamp_bits(lamps.malfunction) << 6
        | _lamp_bits(lamps.red_stop) << 4
        | _lamp_bits(lamps.amber_warning) << 2
        | _lamp_bits(lamps.protect)
    )
    out = bytearray((status, 0xFF))
    codes = list(dtcs)
    for dtc in codes:
        if not (0 <= dtc.spn < 1 << 19 and 0 <= dtc.fmi < 32 and 0 <= dtc.occurrence < 128):
            raise EncodeError(f"DTC {dtc} out of range")
        out += bytes((dtc.spn & 0xFF, dtc.spn >> 8 & 0xFF, (dtc.spn >> 16) << 5 | dtc.fmi, dtc.occurrence))
    if not codes:
        out += b"\x00\x00\x00\x00"
    if len(out) < 8:
        out += b"\xff" * (8 - len(out))
    return bytes(out)
