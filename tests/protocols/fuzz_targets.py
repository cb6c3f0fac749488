"""Every decoder of ``protocols/`` that takes bytes from outside, as one table: what valid input looks like
(a few messages built with the codec's own encoders, and captured vectors), and how to decode it.

A decoder may return anything and may raise :class:`~protocols.errors.DecodeError` (a bad message is an
ordinary case, reported with a reason; :attr:`Target.errors` says when it is another documented error);
any other exception is a crash. The table is used twice:

- ``tests/protocols/test_fuzz_decoders.py`` runs every target under hypothesis in CI, on arbitrary bytes
  and on its valid inputs mutated (``mutations.py``);
- ``bench/fuzz.py`` runs them for as long as asked (atheris, or hypothesis with a time budget).

The framers are not here: each has its class of the shared framer suite (``framer_suite.py``), which the
CI runs and ``bench/fuzz.py`` reuses (:data:`FRAMER_SUITES`).
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from protocols import ble_adverts as ble
from protocols import dlt645, epc, hj212, j1939, llrp, nmea, r2000, slcan, sparkplug, xbee, zcl, zdo
from protocols import modbus as mb
from protocols.errors import DecodeError

__all__ = ["FRAMER_SUITES", "TARGETS", "Target", "protocols", "targets_of"]

ROOT = Path(__file__).resolve().parents[2]
LLRP_VECTORS = ROOT / "tests" / "vectors" / "llrp"
"""Message bodies captured from real readers (EdgeX Foundry's device-rfid-llrp-go test data, Apache-2.0:
tests/vectors/llrp/README.md and the licence beside it)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One decoder: ``decode`` takes raw bytes (a frame, a payload, a line) and returns what it made of them
    or raises :class:`DecodeError`; ``seeds`` builds valid inputs."""

    protocol: str
    name: str
    decode: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]
    errors: tuple[type[Exception], ...] = (DecodeError,)
    """What the decoder documents it raises for bad input (a config-time parser: ValueError, which pydantic
    turns into the config's error)."""

    @property
    def id(self) -> str:
        return f"{self.protocol}.{self.name}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


# -- r2000 -----------------------------------------------------------------------------------------------

_R2000_TAG = bytes.fromhex("A0 13 01 89 8C 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 37 BB")


def _r2000_replies() -> list[bytes]:
    replies: list[r2000.Reply] = [
        r2000.TagRead(antenna=1, frequency_index=35, pc=0x3000, epc=bytes(range(12)), rssi=0x37),
        r2000.TagRead(
            antenna=6, frequency_index=2, pc=0x3800, epc=bytes(14), rssi=0x50,
            command=r2000.Command.FAST_SWITCH_ANT_INVENTORY,
        ),
        r2000.InventoryEnd(command=r2000.Command.REAL_TIME_INVENTORY, total_read=12, antenna=1, read_rate=40),
        r2000.InventoryEnd(command=r2000.Command.FAST_SWITCH_ANT_INVENTORY, total_read=9, duration_ms=200),
        r2000.AntennaMissing(antenna=3),
        r2000.FirmwareVersion(8, 2),
        r2000.WorkAntenna(2),
        r2000.OutputPower((30, 25, 20, 33)),
        r2000.CommandStatus(command=r2000.Command.SET_WORK_ANTENNA, code=r2000.ErrorCode.SUCCESS),
    ]  # fmt: skip
    return [_R2000_TAG, *(r2000.encode_reply(reply) for reply in replies)]


def _r2000_requests() -> list[bytes]:
    return [
        r2000.reset(),
        r2000.get_firmware_version(),
        r2000.set_work_antenna(2),
        r2000.get_work_antenna(),
        r2000.real_time_inventory(repeat=3),
        r2000.fast_switch_inventory([(1, 1), (2, 1), (3, 1), (4, 1)]),
        r2000.SetOutputPower((30,)).encode(1),
    ]


def _r2000_reads(raw: bytes) -> object:
    """The driver's fast path: tag reads picked out of the stream without building frames."""
    return r2000.R2000Framer().feed_reads(raw)


# -- llrp --------------------------------------------------------------------------------------------------


_LLRP_TYPES = {
    "CloseConnectionResponse": llrp.MessageType.CLOSE_CONNECTION_RESPONSE,
    "GetAccessSpecsResponse": llrp.MessageType.GET_ACCESSSPECS_RESPONSE,
    "GetROSpecsResponse": llrp.MessageType.GET_ROSPECS_RESPONSE,
    "GetReaderCapabilitiesResponse": llrp.MessageType.GET_READER_CAPABILITIES_RESPONSE,
    "GetReaderConfigResponse": llrp.MessageType.GET_READER_CONFIG_RESPONSE,
    "ROAccessReport": llrp.MessageType.RO_ACCESS_REPORT,
    "ReaderEventNotification": llrp.MessageType.READER_EVENT_NOTIFICATION,
}


@cache
def _llrp_vectors() -> tuple[tuple[int, bytes], ...]:
    """(message type, body) of every captured message."""
    return tuple(
        (_LLRP_TYPES[path.name.split("-")[0]], path.read_bytes())
        for path in sorted(LLRP_VECTORS.glob("*.bytes"))
    )


def _llrp_messages() -> list[bytes]:
    built = [
        llrp.encode_message(llrp.Keepalive(), 7),
        llrp.encode_message(llrp.GetReaderCapabilities(), 1),
        llrp.encode_message(llrp.CloseConnection(), 2),
    ]
    captured = [
        llrp.encode_frame(llrp.Frame(mtype, n, body)) for n, (mtype, body) in enumerate(_llrp_vectors())
    ]
    return [*captured, *built]


def _llrp_reports() -> list[bytes]:
    return [body for mtype, body in _llrp_vectors() if mtype == llrp.MessageType.RO_ACCESS_REPORT]


def _llrp_message(raw: bytes) -> object:
    return llrp.parse_message(llrp.decode_frame(raw))


def _llrp_report(body: bytes) -> object:
    fast = llrp.parse_ro_access_report(body)
    spec = llrp.parse_ro_access_report_spec(body)
    return fast, spec


# -- modbus ------------------------------------------------------------------------------------------------


def _modbus_rtu() -> list[bytes]:
    return [
        mb.rtu_frame(1, bytes.fromhex("0304000b0102")),
        mb.rtu_frame(17, bytes.fromhex("0302002a")),
        mb.rtu_frame(3, bytes.fromhex("0101 05".replace(" ", ""))),
        mb.rtu_frame(1, bytes.fromhex("8302")),
        mb.rtu_frame(1, bytes.fromhex("0600100003")),
        mb.rtu_frame(9, bytes.fromhex("0408") + struct.pack(">f", 21.5) + struct.pack(">f", -3.25)),
    ]


def _modbus_rtu_reply(raw: bytes) -> object:
    """The one-frame decoder, then the reply judged against the read it answers (pure verdicts)."""
    unit, function = (raw[0], raw[1]) if len(raw) > 1 else (1, 3)
    count = raw[2] // 2 if len(raw) > 2 else 1
    verdict = mb.check_rtu_reply(raw, unit, function & 0x7F, count)
    frame = mb.decode_rtu_frame(raw)
    return verdict, mb.judge_rtu_reply(frame, unit, function & 0x7F, count)


def _modbus_tcp() -> list[bytes]:
    def mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
        return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu

    return [mbap(1, 1, bytes.fromhex("0304000b0102")), mbap(9, 255, bytes.fromhex("8302")),
            mbap(2, 1, bytes.fromhex("0600100003"))]  # fmt: skip


def _modbus_tcp_reply(raw: bytes) -> object:
    unit = raw[6] if len(raw) > 6 else 1
    function = raw[7] & 0x7F if len(raw) > 7 else 3
    count = raw[8] // 2 if len(raw) > 8 else 1
    return mb.check_tcp_reply(raw, unit, function, count, 0)


def _modbus_values(raw: bytes) -> object:
    """Registers of a reply as every point type reads them (the decoders a device's point list compiles)."""
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2)]
    out = []
    for dtype in mb.DataType:
        for order in mb.ByteOrder:
            length = len(words) if dtype in (mb.DataType.STRING,) else None
            need = mb.register_count(dtype, length) if words or length is None else 1
            if need and len(words) >= need:
                bit = raw[0] % 16 if dtype == mb.DataType.BIT and raw else None
                out.append(mb.decode(words[:need], dtype, order, length=length, bit=bit))
    return out


# -- dlt645 -----------------------------------------------------------------------------------------------

_METER = "202301150042"


def _dlt645_replies() -> list[bytes]:
    replies: list[dlt645.Reply] = [
        dlt645.DataReply(0x00010000, bytes.fromhex("00451234")),
        dlt645.DataReply(0x02010100, bytes.fromhex("2002"), more=True),
        dlt645.DataReply(0x02020100, bytes.fromhex("123400"), seq=1),
        dlt645.ErrorReply(0x11, 0x02),
        dlt645.AddressReply(_METER),
    ]
    return [dlt645.encode_reply(reply, _METER, preamble=n % 5) for n, reply in enumerate(replies)]


def _dlt645_requests() -> list[bytes]:
    return [
        dlt645.read_data(_METER, 0x00010000, preamble=4),
        dlt645.read_follow_up(_METER, 0x02010100, 2),
        dlt645.read_address(),
        dlt645.broadcast_time(dt.datetime(2026, 3, 4, 5, 6, 7)),
    ]


def _dlt645_frame(raw: bytes) -> dlt645.Frame:
    return dlt645.decode_frame(raw.lstrip(b"\xfe"))


def _dlt645_reply(raw: bytes) -> object:
    reply = dlt645.parse_reply(_dlt645_frame(raw))
    if isinstance(reply, dlt645.DataReply):
        item = dlt645.item_for(reply.di)
        if item is not None:
            return dlt645.decode_value(item, reply.payload)
    return reply


def _dlt645_request(raw: bytes) -> object:
    return dlt645.parse_request(_dlt645_frame(raw))


# -- j1939 -------------------------------------------------------------------------------------------------


def _j1939_dm1() -> list[bytes]:
    lamps = j1939.Lamps(True, False, None, True)
    return [
        j1939.encode_dm1(lamps, []),
        j1939.encode_dm1(lamps, [j1939.Dtc(100, 1, 3)]),
        j1939.encode_dm1(lamps, [j1939.Dtc(110, 0, 1), j1939.Dtc(520200, 31, 126), j1939.Dtc(91, 3, 2)]),
    ]


def _pgn_numbers() -> list[int]:
    return sorted(j1939.PGNS)


def _j1939_pgns() -> list[bytes]:
    """Two bytes choose the PGN of the table; the rest is its data."""
    return [index.to_bytes(2, "big") + bytes((17 * index + k) & 0xFF for k in range(j1939.PGNS[pgn].length))
            for index, pgn in enumerate(_pgn_numbers())]  # fmt: skip


def _j1939_pgn(raw: bytes) -> object:
    numbers = _pgn_numbers()
    index = int.from_bytes(raw[:2], "big") % len(numbers)
    return j1939.PGNS[numbers[index]].decode(raw[2:])


def _frames_record(frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(can_id.to_bytes(4, "big") + data.ljust(8, b"\xff")[:8] for can_id, data in frames)


def _j1939_transport() -> list[bytes]:
    return [
        _frames_record(
            j1939.bam_frames(
                0xFECA,
                0x00,
                j1939.encode_dm1(
                    j1939.Lamps(True, None, None, None), [j1939.Dtc(n, 1, 1) for n in range(1, 6)]
                ),
            )
        ),
        _frames_record(j1939.rts_cts_frames(0xFEE5, 0x17, 0x00, bytes(range(30, 60)))),
        _frames_record([j1939.abort_frame(0xFEE5, 0x17, 0x00)]),
    ]


def _j1939_reassembly(raw: bytes) -> object:
    """12-byte records (an identifier, 8 data bytes) fed to one reassembler, 50 ms apart; the messages it
    completes are decoded as the driver does (DM1, or the PGN table)."""
    reassembler = j1939.Reassembler(max_sessions=4)
    out: list[object] = []
    for n in range(0, len(raw) - 11, 12):
        can_id = int.from_bytes(raw[n : n + 4], "big") & 0x1FFFFFFF
        for message in reassembler.feed(can_id, raw[n + 4 : n + 12], n * 0.05 / 12):
            if message.pgn == 0xFECA:
                out.append(j1939.decode_dm1(message.data))
            elif message.pgn in j1939.PGNS:
                out.append(j1939.PGNS[message.pgn].decode(message.data))
    return out


# -- slcan, nmea -----------------------------------------------------------------------------------------


def _slcan_lines() -> list[bytes]:
    frames = [
        slcan.CanFrame(0x18FEF100, bytes.fromhex("f3ff7d1a00000000")),
        slcan.CanFrame(0x123, b"\x01\x02", extended=False),
        slcan.CanFrame(0x7FF, b"", extended=False, remote=True, dlc=8),
        slcan.CanFrame(0x0CF00400, bytes(8)),
    ]
    return [slcan.encode_frame(frame).rstrip(b"\r") for frame in frames]


def _nmea_sentences() -> list[bytes]:
    when = dt.time(12, 34, 56)
    return [
        nmea.gga(when, 51.5072, -0.1276, alt_m=35.2),
        nmea.gga(None, None, None, quality=0, satellites=0),
        nmea.rmc(when, dt.date(2026, 12, 3), -33.8688, 151.2093, speed_knots=12.5, course_deg=271.0),
        nmea.vtg(90.5, 42.0),
        nmea.gsa([1, 4, 9, 17, 22], fix_type=3),
    ]


# -- xbee, zcl, zdo --------------------------------------------------------------------------------------


def _xbee_frames() -> list[bytes]:
    messages: list[xbee.Message] = [
        xbee.AtCommand(1, "NI"),
        xbee.AtResponse(1, "NI", xbee.AtStatus.OK, b"cabinet-7"),
        xbee.TransmitStatus(2, 0xFFFE, 0, xbee.DeliveryStatus.SUCCESS, 0),
        xbee.ModemStatus(xbee.ModemStatusCode.JOINED_NETWORK),
        xbee.RxPacket(0x0013A20040A1B2C3, 0x1234, 1, b"hello"),
        xbee.ExplicitRx(0x0013A20040A1B2C3, 0x1234, 1, 1, 0x0402, 0x0104, 1,
                        zcl.report_attributes(5, [(0x0000, zcl.DataType.INT16, 2150)])),
    ]  # fmt: skip
    out = []
    for message in messages:
        frame = xbee.encode_message(message)
        out += [xbee.encode_frame(frame), xbee.encode_frame(frame, escaped=False)]
    return out


def _xbee_message(raw: bytes) -> object:
    try:
        frame = xbee.decode_frame(raw)
    except DecodeError:
        frame = xbee.decode_frame(raw, escaped=False)
    return xbee.parse_message(frame)


def _zcl_payloads() -> list[bytes]:
    return [
        zcl.report_attributes(1, [(0x0000, zcl.DataType.INT16, 2150), (0x0021, zcl.DataType.UINT8, 180)]),
        zcl.read_attributes(2, [0x0000, 0x0001, 0x0005]),
        zcl.read_response(3, [(0x0000, 0, zcl.DataType.UINT16, 5000), (0x0001, 0x86, None, None)]),
        zcl.configure_reporting(4, [zcl.ReportingRecord(0x0000, zcl.DataType.INT16, 10, 300, 50)]),
        zcl.configure_reporting_response(5, [(0, 0x0000)]),
        zcl.zone_status_change(6, zcl.ZoneStatusChange(0x0021, zone_id=3, delay_qs=4)),
    ]


def _zcl_message(raw: bytes) -> object:
    """The header, then the body as the command it names (what the xbee driver does with a cluster
    payload)."""
    header, offset = zcl.parse_header(raw)
    command = header.command
    parsers: dict[int, Callable[[bytes, int], object]] = {
        zcl.Command.REPORT_ATTRIBUTES: zcl.parse_report,
        zcl.Command.READ_ATTRIBUTES_RESPONSE: zcl.parse_read_response,
        zcl.Command.READ_ATTRIBUTES: zcl.parse_read_attributes,
        zcl.Command.CONFIGURE_REPORTING: zcl.parse_configure_reporting,
        zcl.Command.CONFIGURE_REPORTING_RESPONSE: zcl.parse_configure_reporting_response,
    }
    if header.cluster_specific:
        return zcl.parse_zone_status_change(raw, offset)
    parse = parsers.get(command)
    return None if parse is None else parse(raw, offset)


def _zdo_payloads() -> list[bytes]:
    messages: list[zdo.Message] = [
        zdo.DeviceAnnounce(1, 0x1234, 0x00124B0001020304, 0x8E),
        zdo.BindRequest(2, 0x00124B0001020304, 1, 0x0402, 0x0013A20040A1B2C3, 1),
        zdo.BindResponse(3, 0),
        zdo.PermitJoinRequest(4, 60),
        zdo.PermitJoinResponse(5, 0),
    ]
    out = []
    for message in messages:
        cluster, payload = zdo.encode(message)
        out.append(cluster.to_bytes(2, "big") + payload)
    return out


def _zdo_message(raw: bytes) -> object:
    return zdo.parse(int.from_bytes(raw[:2], "big"), raw[2:])


# -- ble ---------------------------------------------------------------------------------------------------

_MAC = bytes.fromhex("5448E68F80A5")
_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
_RUUVI = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")


def _bthome() -> list[bytes]:
    plain = ble.encode_bthome([(0x02, 2250), (0x03, 5025), (0x01, 97)])
    return [
        bytes.fromhex("4002c40903bf13"),
        plain,
        ble.encode_bthome([(0x3A, 1)], trigger_based=True),
        ble.encrypt_bthome(bytes.fromhex("4002ca0903bf13"), mac=_MAC, bindkey=_KEY, counter=0x33221100),
    ]


def _bthome_decode(raw: bytes) -> object:
    return ble.decode_bthome(raw, mac=_MAC, bindkey=_KEY)


def _ibeacon() -> list[bytes]:
    return [bytes.fromhex("0215") + bytes(range(16)) + bytes.fromhex("0001 0002 c5".replace(" ", ""))]


def _eddystone() -> list[bytes]:
    return [
        ble.encode_eddystone_url("https://example.com/edge", -20),
        bytes.fromhex("00e8") + bytes(range(10)) + bytes(range(6)) + b"\x00\x00",
        bytes.fromhex("2000") + bytes.fromhex("0bb8 1880 00000010 00000020".replace(" ", "")),
    ]


def _capture_lines() -> list[bytes]:
    adverts = [
        ble.Advert("54:48:E6:8F:80:A5", -60, "bthome", service_data={ble.BTHOME_UUID: _bthome()[0]}, ts=1.5),
        ble.Advert("D1:2B:3C:4D:5E:6F", -71, None, manufacturer_data={ble.RUUVI_COMPANY: _RUUVI}, ts=2.0),
        ble.Advert("AA:BB:CC:DD:EE:FF", -80, "beacon", manufacturer_data={ble.IBEACON_COMPANY: _ibeacon()[0]},
                   service_data={ble.EDDYSTONE_UUID: _eddystone()[2]}, tx_power=-4, ts=3.0),
    ]  # fmt: skip
    return [ble.advert_to_json(advert).encode() for advert in adverts]


def _capture_line(raw: bytes) -> object:
    """A capture file's line, then every format it carries (a replayed capture is outside input too)."""
    advert = ble.advert_from_json(raw)
    return ble.decode(advert, _KEY)


# -- hj212, sparkplug, epc ---------------------------------------------------------------------------------


def _hj212_frames() -> list[bytes]:
    packets = [
        hj212.Packet("32", "2011", "123456", "88888880000001", cp="DataTime=20261203120000;w01018-Rtd=12.5,"
                     "w01018-Flag=N;w21003-Rtd=0.8,w21003-Flag=N", qn="20261203120000123"),
        hj212.Packet("91", "9014", "123456", "88888880000001", flag=4, qn="20261203120000123"),
        hj212.Packet("32", "2051", "123456", "88888880000001", cp="DataTime=20261203120000;w01018-Avg=12.5",
                     pnum=2, pno=1, flag=hj212.VERSION_2017 | hj212.FLAG_SPLIT),
    ]  # fmt: skip
    return [hj212.encode_packet(packet) for packet in packets]


def _hj212_packet(raw: bytes) -> object:
    packet = hj212.parse_segment(hj212.decode_frame(raw))
    return packet, packet.groups


def _sparkplug_payloads() -> list[bytes]:
    payload = sparkplug.Payload()
    payload.timestamp = 1_764_763_200_000
    payload.seq = 3
    for name, datatype, value in (
        ("temperature", sparkplug.DataType.FLOAT, 21.5),
        ("count", sparkplug.DataType.INT32, -7),
        ("label", sparkplug.DataType.STRING, "lane 2"),
        ("ok", sparkplug.DataType.BOOLEAN, True),
        ("missing", sparkplug.DataType.DOUBLE, None),
    ):
        metric = payload.metrics.add()
        metric.name = name
        metric.datatype = datatype
        sparkplug.set_metric_value(metric, datatype, value)
    return [bytes(payload.SerializeToString())]


def _sparkplug_payload(raw: bytes) -> object:
    payload = sparkplug.decode_payload(raw)
    return [sparkplug.metric_value(metric) for metric in payload.metrics]


def _sparkplug_topics() -> list[bytes]:
    return [
        sparkplug.topic("site", sparkplug.MessageType.DDATA, "gw-1", "meter-4").encode(),
        sparkplug.topic("site", sparkplug.MessageType.NCMD, "gw-1").encode(),
    ]


def _epcs() -> list[bytes]:
    return [
        epc.encode_epc("urn:epc:tag:sgtin-96:3.0614141.812345.6789"),
        bytes.fromhex("300833B2DDD9014000000001"),
        epc.encode_epc("urn:epc:tag:sscc-96:0.0614141.1234567890"),
        epc.encode_epc("urn:epc:tag:grai-96:1.0614141.12345.400"),
    ]


def _epc_decode(raw: bytes) -> object:
    return epc.decode_epc(raw), epc.epc_uri(raw), epc.epc_uri(raw.hex())


def _epc_patterns() -> list[bytes]:
    return [b"urn:epc:pat:sgtin-96:3.0614141.*.*", b"urn:epc:pat:sgtin-96:3.0614141.812345.[6000-7000]"]


def _epc_pattern(raw: bytes) -> object:
    pattern = epc.parse_pattern(_text(raw))
    return [pattern.matches(seed) for seed in _epcs()]


TARGETS: tuple[Target, ...] = (
    Target("r2000", "reply", lambda raw: r2000.parse_reply(r2000.decode_frame(raw)), _r2000_replies),
    Target("r2000", "request", lambda raw: r2000.parse_request(r2000.decode_frame(raw)), _r2000_requests),
    Target("r2000", "reads", _r2000_reads, lambda: [_R2000_TAG * 2, *_r2000_replies()]),
    Target("llrp", "message", _llrp_message, _llrp_messages),
    Target("llrp", "ro_access_report", _llrp_report, _llrp_reports),
    Target("llrp", "parameters", llrp.decode_parameters, _llrp_reports),
    Target("modbus", "rtu_reply", _modbus_rtu_reply, _modbus_rtu),
    Target("modbus", "tcp_reply", _modbus_tcp_reply, _modbus_tcp),
    Target("modbus", "values", _modbus_values, lambda: [struct.pack(">f", math.pi) * 2, b"ABCDEFGH"]),
    Target("dlt645", "reply", _dlt645_reply, _dlt645_replies),
    Target("dlt645", "request", _dlt645_request, _dlt645_requests),
    Target("j1939", "dm1", j1939.decode_dm1, _j1939_dm1),
    Target("j1939", "pgn", _j1939_pgn, _j1939_pgns),
    Target("j1939", "reassembly", _j1939_reassembly, _j1939_transport),
    Target("slcan", "frame", slcan.decode_frame, _slcan_lines),
    Target("nmea", "sentence", nmea.decode, _nmea_sentences),
    Target("xbee", "message", _xbee_message, _xbee_frames),
    Target("zcl", "message", _zcl_message, _zcl_payloads),
    Target("zdo", "message", _zdo_message, _zdo_payloads),
    Target("ble_adverts", "bthome", _bthome_decode, _bthome),
    Target("ble_adverts", "ruuvi", ble.decode_ruuvi, lambda: [_RUUVI]),
    Target("ble_adverts", "ibeacon", ble.decode_ibeacon, _ibeacon),
    Target("ble_adverts", "eddystone", ble.decode_eddystone, _eddystone),
    Target("ble_adverts", "capture_line", _capture_line, _capture_lines),
    Target("hj212", "packet", _hj212_packet, _hj212_frames),
    Target("sparkplug", "payload", _sparkplug_payload, _sparkplug_payloads),
    Target("sparkplug", "topic", lambda raw: sparkplug.parse_topic(_text(raw)), _sparkplug_topics),
    Target("epc", "decode", _epc_decode, _epcs),
    Target("epc", "pattern", _epc_pattern, _epc_patterns, (ValueError,)),
)
"""Every decoder, by protocol."""

FRAMER_SUITES: dict[str, tuple[str, str]] = {
    "r2000": ("tests.protocols.test_r2000", "TestR2000Framer"),
    "llrp": ("tests.protocols.test_llrp", "TestLlrpFramer"),
    "modbus": ("tests.protocols.test_modbus_rtu", "TestRtuReplyFramer"),
    "dlt645": ("tests.protocols.test_dlt645", "TestDlt645Framer"),
    "slcan": ("tests.protocols.test_slcan", "TestLineFramer"),
    "nmea": ("tests.protocols.test_nmea", "TestNmeaFramer"),
    "xbee": ("tests.protocols.test_xbee", "TestXBeeFramerEscaped"),
    "hj212": ("tests.protocols.test_hj212", "TestHj212Framer"),
}
"""The framer of each protocol that has one: its class of the shared framer suite (module, class)."""


def protocols() -> list[str]:
    """Every protocol with a decoder or a framer, in a stable order."""
    return sorted({target.protocol for target in TARGETS} | set(FRAMER_SUITES))


def targets_of(protocol: str | None) -> Iterator[Target]:
    return (target for target in TARGETS if protocol in (None, target.protocol))
