"""``edgegw decode``: good frames are explained, bad ones say exactly what is wrong, nothing raises."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main as edgegw_main
from gateway.cli.decode import DECODERS, Decoded, UnknownProtocol, decode, parse_hex
from protocols import llrp, modbus, r2000

EDGEGW = str(Path(sys.executable).with_name("edgegw"))

EPC = bytes.fromhex("300833B2DDD9014000000001")
TAG = r2000.encode_reply(r2000.TagRead(antenna=2, frequency_index=20, pc=0x3000, epc=EPC, rssi=98))


# ---- hex as people paste it ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "A0 04 01 89 01 D1",
        "a0:04:01:89:01:d1",
        "0xA0, 0x04, 0x01, 0x89, 0x01, 0xD1",
        "a00401 8901d1",
        " A0-04-01-89-01-D1\n",
    ],
)
def test_parse_hex_accepts_the_usual_spellings(text: str) -> None:
    assert parse_hex(text) == bytes.fromhex("A00401 8901D1")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no hex digits"), ("A0 4", "odd number of hex digits (3)"), ("A0 G1", "'G' is not a hex digit")],
)
def test_parse_hex_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hex(text)


@given(st.binary(min_size=1, max_size=300), st.sampled_from([" ", ":", ", ", "-", ""]), st.booleans())
def test_parse_hex_round_trips_any_bytes(data: bytes, separator: str, prefixed: bool) -> None:
    pairs = [f"{b:02x}" for b in data]
    if prefixed:
        pairs = ["0x" + p for p in pairs]
        separator = separator or " "
    assert parse_hex(separator.join(pairs).upper()) == data
    assert parse_hex(separator.join(pairs)) == data


# ---- r2000: good frames ----------------------------------------------------------------------------------


def readings(decoded: Decoded) -> list[tuple[str, dict[str, Any]]]:
    """Each reading's title line and its content as the JSON carries it."""
    found = []
    for reading in decoded.readings:
        content = reading.to_json()["content"]
        assert isinstance(content, dict)
        found.append((reading.title, content))
    return found


@pytest.mark.parametrize(
    ("frame", "title", "content"),
    [
        (
            TAG,
            "reply (reader -> host): tag read",
            {
                "epc": "300833B2DDD9014000000001",
                "epc_uri": "urn:epc:id:sgtin:0867360217.005.1",
                "pc": "3000",
                "antenna": 2,
                "rssi_dbm": -31,
                "rssi_raw": 98,
                "frequency_mhz": 908.5,
                "frequency_index": 20,
            },
        ),
        (
            r2000.encode_reply(r2000.InventoryEnd(0x89, 120, antenna=1, read_rate=55)),
            "reply (reader -> host): end of real-time inventory",
            {"antenna": 1, "read_rate_per_s": 55, "total_read": 120},
        ),
        (
            r2000.encode_reply(r2000.InventoryEnd(0x8A, 300, duration_ms=250)),
            "reply (reader -> host): end of fast-switch inventory",
            {"total_read": 300, "duration_ms": 250},
        ),
        (
            r2000.encode_reply(r2000.AntennaMissing(3)),
            "reply (reader -> host): fast-switch inventory skipped a missing antenna",
            {"antenna": 3, "status": {"code": 0x22, "name": "antenna_missing"}},
        ),
        (
            r2000.encode_reply(r2000.FirmwareVersion(1, 7)),
            "reply (reader -> host): firmware version",
            {"version": "1.7"},
        ),
        (
            r2000.encode_reply(r2000.CommandStatus(r2000.Command.SET_WORK_ANTENNA, r2000.ErrorCode.SUCCESS)),
            "reply (reader -> host): command status",
            {
                "command": {"code": 0x74, "name": "set_work_antenna"},
                "status": {"code": 0x10, "name": "success"},
            },
        ),
        (
            r2000.real_time_inventory(repeat=1),
            "request (host -> reader): real-time inventory on the work antenna",
            {"repeat": 1},
        ),
        (r2000.get_firmware_version(), "request (host -> reader): get the firmware version", {}),
        (r2000.set_work_antenna(4), "request (host -> reader): set the work antenna", {"antenna": 4}),
        (
            r2000.fast_switch_inventory([(1, 1), (2, 3)], interval_ms=5, repeat=2),
            "request (host -> reader): fast-switch inventory",
            {
                "antennas": [{"antenna": 1, "stay": 1}, {"antenna": 2, "stay": 3}],
                "interval_ms": 5,
                "repeat": 2,
            },
        ),
    ],
)
def test_good_r2000_frames_are_explained(frame: bytes, title: str, content: dict[str, object]) -> None:
    decoded = decode("r2000", frame)
    assert decoded.problems == []
    assert decoded.ok
    assert readings(decoded) == [(title, content)]
    text = decoded.render()
    assert text.endswith("\nOK")
    assert title in text.splitlines()


def test_the_wire_fields_are_listed_in_order() -> None:
    decoded = decode("r2000", TAG)
    assert decoded.field_texts == [
        ("head", "0xA0"),
        ("length", "19: a frame of 21 bytes"),
        ("address", "1"),
        ("command", "0x89 (real_time_inventory)"),
        ("data", "51 30 00 30 08 33 B2 DD D9 01 40 00 00 00 01 62 (16 bytes)"),
        ("check", "0xCB (ok)"),
    ]


# ---- r2000: bad frames -----------------------------------------------------------------------------------


def test_bad_checksum_gives_expected_and_found() -> None:
    bad = TAG[:-1] + bytes([TAG[-1] ^ 0x01])
    decoded = decode("r2000", bad)
    assert not decoded.ok
    assert decoded.problems == ["bad checksum: expected 0xCB, found 0xCA"]
    assert ("check", "0xCA (expected 0xCB)") in decoded.field_texts


def test_a_frame_cut_short_is_a_length_mismatch() -> None:
    decoded = decode("r2000", TAG[:-1])
    assert decoded.problems == ["length mismatch: Len says 19, 18 bytes follow"]
    assert ("check", "missing: the frame is cut short by 1 byte") in decoded.field_texts


def test_two_frames_pasted_together_are_found() -> None:
    version = r2000.encode_reply(r2000.FirmwareVersion(1, 7))
    decoded = decode("r2000", version + TAG)
    assert decoded.problems == [
        "length mismatch: Len says 5, 26 bytes follow",
        "the bytes hold 2 valid frame(s) (7 bytes at offset 0, 21 bytes at offset 7): decode each alone",
    ]
    assert ("trailing", f"{TAG.hex(' ').upper()} (21 bytes after the frame)") in decoded.field_texts


def test_unknown_command() -> None:
    frame = r2000.encode_frame(r2000.Frame(1, 0x55, b""))
    decoded = decode("r2000", frame)
    assert decoded.problems == ["unknown command 0x55"]
    assert ("command", "0x55 (not a command of this protocol)") in decoded.field_texts


def test_a_known_command_with_data_that_fits_neither_direction() -> None:
    frame = r2000.encode_frame(r2000.Frame(1, r2000.Command.REAL_TIME_INVENTORY, b"\x01\x02\x03"))
    decoded = decode("r2000", frame)
    assert decoded.problems == [
        "as a request (host -> reader): real-time inventory takes 1 data byte, 3 given",
        "as a reply (reader -> host): inventory reply (0x89) with 3 data bytes",
    ]


def test_a_tag_frame_whose_pc_disagrees_with_its_length() -> None:
    data = bytes([0x51, 0x40, 0x00]) + EPC + bytes([98])  # PC says 8 words, the EPC has 6
    decoded = decode("r2000", r2000.encode_frame(r2000.Frame(1, r2000.Command.REAL_TIME_INVENTORY, data)))
    assert "as a reply (reader -> host): EPC length mismatch: PC 0x4000 says 16 bytes, frame has 12" in (
        decoded.problems
    )


def test_a_frequency_outside_the_table_is_reported() -> None:
    frame = r2000.encode_reply(r2000.TagRead(antenna=1, frequency_index=62, pc=0x3000, epc=EPC, rssi=90))
    decoded = decode("r2000", frame)
    assert decoded.problems == ["frequency index 62 is not in the frequency table (0..59)"]


def test_a_bad_head_and_a_bad_length() -> None:
    assert decode("r2000", bytes.fromhex("A1 03 01 72 EA")).problems == ["bad head 0xA1"]
    assert decode("r2000", bytes.fromhex("A0 02 01 72 00")).problems == ["bad length: Len is 2, at least 3"]
    assert decode("r2000", b"").problems == ["truncated: 0 bytes, a frame has at least 5"]


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_verdict_never_an_exception(data: bytes) -> None:
    decoded = decode("r2000", data)
    if decoded.ok:
        assert r2000.decode_frame(data).command in set(r2000.Command)
    else:
        assert decoded.problems
    assert decoded.render()


@given(
    st.integers(0, 255),
    st.sampled_from(list(r2000.Command)),
    st.binary(max_size=r2000.MAX_DATA),
    st.integers(1, 255),
)
def test_any_corrupted_check_byte_is_reported_with_both_values(
    address: int, command: int, data: bytes, flip: int
) -> None:
    frame = r2000.encode_frame(r2000.Frame(address, command, data))
    bad = frame[:-1] + bytes([frame[-1] ^ flip])
    assert decode("r2000", bad).problems[0] == (
        f"bad checksum: expected 0x{frame[-1]:02X}, found 0x{bad[-1]:02X}"
    )


@given(
    st.integers(1, 8),
    st.integers(0, 59),
    st.integers(0, 31).flatmap(
        lambda words: st.tuples(st.just(words), st.binary(min_size=2 * words, max_size=2 * words))
    ),
    st.integers(0, 127),
)
def test_every_plausible_tag_frame_decodes(
    antenna: int, frequency: int, pc_epc: tuple[int, bytes], rssi: int
) -> None:
    words, epc = pc_epc
    frame = r2000.encode_reply(
        r2000.TagRead(antenna=antenna, frequency_index=frequency, pc=words << 11, epc=epc, rssi=rssi)
    )
    decoded = decode("r2000", frame)
    assert decoded.ok, decoded.problems
    [(title, content)] = readings(decoded)
    assert title == "reply (reader -> host): tag read"
    assert content["antenna"] == antenna
    assert content["frequency_index"] == frequency
    assert content["epc"] == epc.hex().upper()


def test_unknown_protocol_names_the_known_ones() -> None:
    with pytest.raises(UnknownProtocol, match=r"unknown protocol 'nope' \(known: .*r2000"):
        decode("nope", b"")
    assert decode("R2000", TAG).ok  # protocol names are case-insensitive
    assert DECODERS["uhf-r2000"] is DECODERS["r2000"]  # the driver's name works too


# ---- DL/T 645 ------------------------------------------------------------------------------------------

DLT645_REQUEST = "68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16"  # the standard's example, DI 00010000
DLT645_REPLY = "68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16"  # = 1206.42 kWh


def test_dlt645_reference_frames_are_explained() -> None:
    reply = decode("dlt645", parse_hex(DLT645_REPLY))
    assert reply.ok
    assert readings(reply) == [
        (
            "reply (meter -> master): read data",
            {
                "di": {"code": "00010000", "name": "energy_active_forward"},
                "value": {"value": 1206.42, "unit": "kWh"},
            },
        )
    ]
    assert "  di     00010000 (energy_active_forward)\n  value  1206.42 kWh\nOK" in reply.render()
    request = decode("dlt645", parse_hex("FE FE FE FE " + DLT645_REQUEST))
    assert request.ok
    assert readings(request) == [
        (
            "request (master -> meter): read data",
            {"di": {"code": "00010000", "name": "energy_active_forward"}},
        )
    ]
    assert ("address", "000102030425") in request.field_texts
    assert ("preamble", "4 bytes 0xFE") in request.field_texts


def test_dlt645_bad_frames_say_what_is_wrong() -> None:
    bad = parse_hex(DLT645_REPLY)
    assert decode("dlt645", bad[:-2] + b"\x8c\x16").problems == ["bad checksum: expected 0x8B, found 0x8C"]
    assert decode("dlt645", bad[:-1]).problems  # no 0x16 where the length says
    assert decode("dlt645", bad[:-1]).render()


@given(st.binary(max_size=80))
def test_any_bytes_are_a_dlt645_verdict_never_an_exception(data: bytes) -> None:
    decoded = decode("dlt645", data)
    assert decoded.ok or decoded.problems
    assert decoded.render()


# ---- LLRP -----------------------------------------------------------------------------------------------

VECTORS = Path(__file__).parents[1] / "vectors" / "llrp"  # EdgeX captures, Apache-2.0 (see its README)


def llrp_message(name: str, message_type: int, message_id: int = 7) -> bytes:
    return llrp.encode_frame(llrp.Frame(message_type, message_id, (VECTORS / name).read_bytes(), 1))


def test_llrp_captured_messages_are_explained() -> None:
    report = decode("llrp", llrp_message("ROAccessReport-001.bytes", 61))
    assert report.ok
    assert ("type", "61 (RO_ACCESS_REPORT)") in report.field_texts and ("id", "7") in report.field_texts
    assert readings(report) == [
        (
            "message (reader -> client): RO_ACCESS_REPORT",
            {
                "tags": [
                    {
                        "epc": "3000ABCDEF00000000000003",
                        "epc_uri": "urn:epc:id:sgtin:184473600000.0.3",
                        "antenna": 1,
                        "rssi_dbm": -48,
                        "first_seen_utc": "2020-07-08T02:20:05.140192Z",
                    }
                ]
            },
        )
    ]
    event = decode("llrp", llrp_message("ReaderEventNotification-000.bytes", 63))
    assert event.ok
    [(title, content)] = readings(event)
    assert title == "message (reader -> client): READER_EVENT_NOTIFICATION"
    assert content == {
        "parameters": [
            {
                "parameter": {"code": 246, "name": "ReaderEventNotificationData"},
                "parameters": [
                    {"parameter": {"code": 128, "name": "UTCTimestamp"}, "microseconds": 1596721689842138},
                    {"parameter": {"code": 257, "name": "ConnectionCloseEvent"}},
                ],
            }
        ]
    }
    assert "microseconds  2020-08-06T13:48:09.842138Z (1596721689842138)" in event.render()


def test_llrp_bad_messages_say_what_is_wrong() -> None:
    raw = llrp_message("ROAccessReport-001.bytes", 61)
    cut = len(raw) - 3
    message = f"length mismatch: the header says {len(raw)}, {cut} bytes given"
    assert decode("llrp", raw[:cut]).problems == [message]
    lying = raw[:2] + (len(raw) + 5).to_bytes(4, "big") + raw[6:]
    says = len(raw) + 5
    message = f"length mismatch: the header says {says}, {len(raw)} bytes given"
    assert decode("llrp", lying).problems == [message]
    unknown = ((1 << 10) | 900).to_bytes(2, "big") + raw[2:]  # version 1, a type no standard defines
    assert decode("llrp", unknown).problems == ["unknown message type 900"]


EPC_96 = b"\x8d" + EPC  # a TV EPC-96 parameter
BAD_REPORT_BODIES = {
    "a TagReportData whose length is 0": "00F00000",
    "a TagReportData of no parameters (no EPC)": "00F00004",
    "an unknown TV parameter type in a tag": "00F00014" + EPC_96.hex() + "FF0000",
    "an EPC bit count longer than its data": "00F0000C" + "00F10008" + "0060" + "3008",
    "an empty Custom parameter in a report": "03FF0004",
    "an empty Custom parameter in a tag": "00F00015" + EPC_96.hex() + "03FF0004",
}


def report(body_hex: str) -> bytes:
    return llrp.encode_frame(llrp.Frame(llrp.MessageType.RO_ACCESS_REPORT, 7, bytes.fromhex(body_hex), 1))


@pytest.mark.parametrize("body", BAD_REPORT_BODIES.values(), ids=BAD_REPORT_BODIES.keys())
def test_an_llrp_report_with_a_decode_error_is_bad(body: str, capsys: pytest.CaptureFixture[str]) -> None:
    raw = report(body)
    errors = llrp.parse_ro_access_report(raw[llrp.HEADER_SIZE :]).errors
    assert errors  # the codec recorded the error and went on: the tool must not call the frame good
    decoded = decode("llrp", raw)
    assert not decoded.ok
    for error in errors:
        assert error in decoded.problems
    assert edgegw_main(["decode", "llrp", raw.hex()]) == 1
    out = capsys.readouterr().out
    assert "OK" not in out.splitlines()
    assert f"BAD: {errors[0]}" in out.splitlines()


def test_an_llrp_report_keeps_its_good_tags_beside_the_bad_one() -> None:
    good = llrp.encode_tag_report(llrp.TagReport(EPC, antenna=1)).hex()
    decoded = decode("llrp", report(good + BAD_REPORT_BODIES["a TagReportData whose length is 0"]))
    assert decoded.problems == ["RO_ACCESS_REPORT: TagReportData at byte 20 with impossible length 0"]
    assert f"      epc      {EPC.hex().upper()}" in decoded.render().splitlines()


@given(st.binary(max_size=80))
def test_any_bytes_are_an_llrp_verdict_never_an_exception(data: bytes) -> None:
    decoded = decode("llrp", data)
    assert decoded.ok or decoded.problems
    assert decoded.render()


# ---- Modbus RTU -----------------------------------------------------------------------------------------


def rtu(hex_text: str) -> bytes:
    body = bytes.fromhex(hex_text)
    return body + modbus.crc16(body).to_bytes(2, "little")


def test_modbus_rtu_frames_are_explained() -> None:
    request = decode("modbus", bytes.fromhex("01 03 00 00 00 02 C4 0B"))  # the classic example frame
    assert request.ok
    assert readings(request) == [
        ("request (master -> device): read holding registers", {"address": 0, "count": 2})
    ]
    reply = decode("modbus-rtu", rtu("01 03 04 43 66 40 00"))
    assert reply.ok
    assert readings(reply) == [
        (
            "reply (device -> master): read holding registers",
            {"byte_count": 4, "registers": [0x4366, 0x4000], "data": "43664000"},
        )
    ]
    exception = decode("modbus", rtu("01 83 02"))
    assert exception.ok
    assert readings(exception) == [
        (
            "reply (device -> master): exception to read holding registers",
            {"exception": {"code": 2, "name": "illegal_data_address"}},
        )
    ]
    assert ("function", "0x83 (exception to read holding registers)") in exception.field_texts


def test_modbus_rtu_bad_frames_say_what_is_wrong() -> None:
    good = rtu("01 03 04 43 66 40 00")
    bad = good[:-2] + bytes([good[-2] ^ 0xFF, good[-1]])
    found = int.from_bytes(bad[-2:], "little")
    expected = int.from_bytes(good[-2:], "little")
    assert decode("modbus", bad).problems == [f"bad CRC: expected 0x{expected:04X}, found 0x{found:04X}"]
    assert decode("modbus", rtu("01 2B 0E 01 00")).problems == ["unknown function 0x2B"]
    assert decode("modbus", rtu("01 03 07 43 66")).problems[0].startswith("neither a read request")
    assert decode("modbus", b"\x01\x03").problems == ["truncated: 2 bytes, a frame has at least 4"]


@pytest.mark.parametrize(
    ("pdu", "problem"),
    [
        ("05 00", "write single coil takes 4 data bytes (address, value), 1 given"),
        ("05 00 01 12 34", "write single coil: value 0x1234, only 0xFF00 (on) or 0x0000 (off)"),
        ("06 00 01 00", "write single register takes 4 data bytes (address, value), 3 given"),
        ("0F 00 13 00", "neither a write multiple coils request nor its reply: 3 data bytes"),
        (
            "10 00 01 00 02 04 00 0A",
            "neither a write multiple registers request nor its reply: byte count 4, 2 bytes follow",
        ),
        ("10 00 01 00 02 02 00 0A", "write multiple registers: 2 registers take 4 bytes, byte count is 2"),
        ("03 00 00 00 00", "read holding registers: count 0, 1..125 allowed"),
        ("01 00 00 07 D1", "read coils: count 2001, 1..2000 allowed"),
        ("83 09", "exception code 0x09 is not one the standard defines"),
    ],
)
def test_a_modbus_frame_that_breaks_its_function_is_bad(pdu: str, problem: str) -> None:
    decoded = decode("modbus", rtu("01 " + pdu))
    assert not decoded.ok
    assert problem in decoded.problems


def test_modbus_writes_are_explained() -> None:
    assert decode("modbus", rtu("01 05 00 AC FF 00")).ok  # the specification's example, request and echo
    assert decode("modbus", rtu("01 06 00 01 00 03")).ok
    assert decode("modbus", rtu("01 0F 00 13 00 0A 02 CD 01")).ok
    assert decode("modbus", rtu("01 0F 00 13 00 0A")).ok
    assert decode("modbus", rtu("01 10 00 01 00 02 04 00 0A 01 02")).ok
    assert decode("modbus", rtu("01 10 00 01 00 02")).ok


@given(st.binary(max_size=80))
def test_any_bytes_are_a_modbus_verdict_never_an_exception(data: bytes) -> None:
    decoded = decode("modbus", data)
    assert decoded.ok or decoded.problems
    assert decoded.render()


# ---- the command -----------------------------------------------------------------------------------------


def test_cli_good_frame_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert edgegw_main(["decode", "r2000", *TAG.hex(" ").split()]) == 0
    out = capsys.readouterr().out
    assert "  epc              300833B2DDD9014000000001\n" in out
    assert out.rstrip().endswith("OK")


def test_cli_bad_frame_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert edgegw_main(["decode", "r2000", "a0:04:01:89:01:d2"]) == 1
    assert "BAD: bad checksum: expected 0xD1, found 0xD2" in capsys.readouterr().out


def test_cli_reads_hex_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(TAG.hex(":") + "\n"))
    assert edgegw_main(["decode", "r2000", "-"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decode", "modbus-rtux", "01"], "edgegw decode: unknown protocol 'modbus-rtux'"),
        (["decode", "r2000", "A0", "0"], "edgegw decode: odd number of hex digits (3)"),
        (["decode", "r2000", "nothex"], "edgegw decode: 'n' is not a hex digit"),
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert edgegw_main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message)
    assert captured.out == ""


def test_the_installed_command() -> None:
    good = subprocess.run(
        [EDGEGW, "decode", "r2000", "A0 04 01 89 01 D1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "request (host -> reader): real-time inventory on the work antenna\n  repeat  1\nOK" in good.stdout
    bad = subprocess.run(
        [EDGEGW, "decode", "r2000", "A0 04 01 89 01"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1
    assert "BAD: length mismatch: Len says 4, 3 bytes follow" in bad.stdout
    usage = subprocess.run(
        [EDGEGW, "decode", "r2000"], capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == 2
