"""``edgegw decode``: output a technician can read and a machine can parse, the same for every protocol.

Readable means: bytes and EPCs in hex (with the EPC's URI where it has one), the protocol's codes with their
names, only the fields a frame carries (no ``None``), never a Python repr (``b'...'``, ``ReadData(...)``).
``--json`` prints one JSON document with the same content. Whatever the bytes, the command ends with a
verdict (exit 0 and ``OK``, or exit 1 and ``BAD:`` lines), never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main as edgegw_main
from gateway.cli.decode import DECODERS, decode
from protocols import dlt645, llrp, modbus, r2000

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
VECTORS = Path(__file__).parents[1] / "vectors" / "llrp"  # EdgeX captures, Apache-2.0 (see its README)

EPC = bytes.fromhex("300833B2DDD9014000000001")
EPC_URI = "urn:epc:id:sgtin:0867360217.005.1"
METER = "000102030425"


def llrp_vector(name: str, message_type: int) -> bytes:
    return llrp.encode_frame(llrp.Frame(message_type, 7, (VECTORS / name).read_bytes(), 1))


def full_tag_report() -> bytes:
    """An RO_ACCESS_REPORT of one tag carrying every field a TagReportData can, and a vendor parameter."""
    tag = llrp.TagReport(
        EPC,
        antenna=3,
        peak_rssi=-61,
        channel_index=7,
        first_seen_utc=1_700_000_000_000_001,
        last_seen_utc=1_700_000_000_500_000,
        first_seen_uptime=5_000_000,
        last_seen_uptime=5_500_000,
        seen_count=4,
        pc=0x3000,
        xpc_w1=0x8000,
        xpc_w2=0x0001,
        crc=0xBEEF,
        rospec_id=1,
        spec_index=1,
        inventory_parameter_spec_id=1,
        access_spec_id=9,
        extra=(llrp.Parameter(llrp.CUSTOM, {"vendor": 25882, "subtype": 57, "data": b"\x01\x02"}),),
    )
    return llrp.encode_message(llrp.RoAccessReport((tag,)), 7)


# Frames of every protocol, good ones of each kind the decoders explain (both directions).
FRAMES: dict[str, tuple[str, bytes]] = {
    "r2000 tag read": (
        "r2000",
        r2000.encode_reply(r2000.TagRead(antenna=2, frequency_index=20, pc=0x3000, epc=EPC, rssi=98)),
    ),
    "r2000 inventory request": ("r2000", r2000.real_time_inventory(repeat=1)),
    "r2000 command status": (
        "r2000",
        r2000.encode_reply(r2000.CommandStatus(r2000.Command.SET_WORK_ANTENNA, r2000.ErrorCode.SUCCESS)),
    ),
    "llrp report": ("llrp", llrp_vector("ROAccessReport-001.bytes", 61)),
    "llrp full tag report": ("llrp", full_tag_report()),
    "llrp reader event": ("llrp", llrp_vector("ReaderEventNotification-000.bytes", 63)),
    "llrp reader config": ("llrp", llrp_vector("GetReaderConfigResponse-000.bytes", 12)),
    "llrp capabilities": ("llrp", llrp_vector("GetReaderCapabilitiesResponse-000.bytes", 11)),
    "llrp delete rospec": ("llrp", llrp.encode_message(llrp.DeleteRoSpec(0), 3)),
    "dlt645 read request": ("dlt645", dlt645.read_data(METER, 0x00010000)),
    "dlt645 read reply": (
        "dlt645",
        dlt645.encode_reply(dlt645.DataReply(0x00010000, bytes.fromhex("42061200")), METER),
    ),
    "dlt645 refusal": ("dlt645", dlt645.encode_reply(dlt645.ErrorReply(0x11, 0x02), METER)),
    "modbus read request": ("modbus", modbus.rtu_frame(1, bytes.fromhex("03 0000 0002"))),
    "modbus read reply": ("modbus", modbus.rtu_frame(1, bytes.fromhex("03 04 4366 4000"))),
    "modbus exception": ("modbus", modbus.rtu_frame(1, bytes.fromhex("83 02"))),
    "modbus write coil": ("modbus", modbus.rtu_frame(1, bytes.fromhex("05 00AC FF00"))),
}

REPR = re.compile(r"""\bb['"]|\bNone\b|\w\(\w*=|<\w[^>]*object at 0x""")
"""What a Python repr leaves in text: byte strings, None, ``Name(field=``, ``<... object at 0x...>``."""


def run(*args: str) -> tuple[int, str]:
    """``edgegw ARGS`` in this process: the exit code and what it printed on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = edgegw_main(list(args))
    return code, out.getvalue()


def verdict_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line == "OK" or line.startswith("BAD: ")]


def without_problems(text: str) -> str:
    """The text but its BAD: lines (which quote the codecs' own messages)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("BAD: "))


def keys(document: Any) -> Iterator[str]:
    """The key of every entry of every record in a decode's JSON content (a named code ``{"code",
    "name"}`` and a quantity ``{"value", "unit"}`` are values, not records)."""
    if isinstance(document, dict):
        if set(document) <= {"code", "name"} or set(document) == {"value", "unit"}:
            return
        for key, value in document.items():
            yield key
            yield from keys(value)
    elif isinstance(document, list):
        for item in document:
            yield from keys(item)


# ---- readable text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "frame"), FRAMES.values(), ids=FRAMES.keys())
def test_no_python_reprs_and_no_none(protocol: str, frame: bytes) -> None:
    code, text = run("decode", protocol, frame.hex())
    assert code == 0, text
    assert REPR.search(text) is None, text
    assert text.rstrip().endswith("\nOK")


def test_an_llrp_report_shows_epcs_in_hex_with_their_uri_and_only_the_fields_present() -> None:
    _, text = run("decode", "llrp", llrp_vector("ROAccessReport-001.bytes", 61).hex())
    assert text.splitlines()[-9:] == [
        "message (reader -> client): RO_ACCESS_REPORT",
        "  tags:",
        "    tag 1:",
        "      epc             3000ABCDEF00000000000003",
        "      epc_uri         urn:epc:id:sgtin:184473600000.0.3",
        "      antenna         1",
        "      rssi_dbm        -48",
        "      first_seen_utc  2020-07-08T02:20:05.140192Z",
        "OK",
    ]
    assert "channel_index" not in text and "seen_count" not in text  # this reader did not send them


def test_every_field_of_a_tag_is_named_and_readable() -> None:
    decoded = decode("llrp", full_tag_report())
    assert decoded.ok, decoded.problems
    document: Any = json.loads(decoded.render_json())
    [tag] = document["readings"][0]["content"]["tags"]
    assert tag == {
        "epc": EPC.hex().upper(),
        "epc_uri": EPC_URI,
        "antenna": 3,
        "rssi_dbm": -61,
        "channel_index": 7,
        "first_seen_utc": "2023-11-14T22:13:20.000001Z",
        "last_seen_utc": "2023-11-14T22:13:20.500000Z",
        "first_seen_uptime_us": 5_000_000,
        "last_seen_uptime_us": 5_500_000,
        "seen_count": 4,
        "rospec_id": 1,
        "spec_index": 1,
        "inventory_parameter_spec_id": 1,
        "access_spec_id": 9,
        "pc": "3000",
        "xpc_w1": "8000",
        "xpc_w2": "0001",
        "crc": "BEEF",
        "parameters": [
            {"parameter": {"code": 1023, "name": "Custom"}, "vendor": 25882, "subtype": 57, "data": "0102"}
        ],
    }
    text = decoded.render()
    assert "        Custom (1023):\n          vendor   25882\n" in text
    assert "          data     01 02 (2 bytes)\n" in text


def test_an_r2000_tag_read_reads_like_an_llrp_one() -> None:
    _, text = run("decode", "r2000", FRAMES["r2000 tag read"][1].hex())
    assert f"  epc              {EPC.hex().upper()}" in text.splitlines()
    assert f"  epc_uri          {EPC_URI}" in text.splitlines()
    assert "  rssi_dbm         -31" in text.splitlines()


def test_llrp_names_its_message_and_parameter_types_and_the_standards_numbers() -> None:
    _, text = run("decode", "llrp", FRAMES["llrp reader config"][1].hex())
    lines = text.splitlines()
    assert "  type     12 (GET_READER_CONFIG_RESPONSE)" in lines
    assert "  version  1 (LLRP 1.0.1)" in lines
    assert "    LLRPStatus (287):" in lines
    assert "      status_code  0 (M_SUCCESS)" in lines
    assert "      reader_id  00 16 25 FF FF 11 25 D6 (8 bytes)" in lines  # bytes in hex, never b'...'
    assert "      flags      connected: yes" in lines
    _, text = run("decode", "llrp", FRAMES["llrp delete rospec"][1].hex())
    assert text.splitlines()[-3:] == ["message (client -> reader): DELETE_ROSPEC", "  rospec_id  0", "OK"]


def test_an_unknown_llrp_parameter_is_named_unknown_not_a_repr() -> None:
    vendor = llrp.Parameter(900, {"data": b"\xab"})
    frame = llrp.encode_message(
        llrp.Response(llrp.MessageType.GET_READER_CONFIG_RESPONSE, params=(vendor,)), 9
    )
    _, text = run("decode", "llrp", frame.hex())
    assert "    unknown parameter (900):" in text.splitlines()
    assert "      data  AB (1 byte)" in text.splitlines()


def test_a_dlt645_request_names_its_data_identifier() -> None:
    code, text = run("decode", "dlt645", FRAMES["dlt645 read request"][1].hex())
    assert code == 0
    assert text.splitlines()[-5:] == [
        "  control  0x11 (read_data)",
        "  data     00 00 01 00 (4 bytes, 0x33 removed)",
        "request (master -> meter): read data",
        "  di  00010000 (energy_active_forward)",
        "OK",
    ]
    assert "ReadData" not in text and "65536" not in text


def test_a_dlt645_reply_names_its_value_unit_and_refusal_reasons() -> None:
    _, text = run("decode", "dlt645", FRAMES["dlt645 read reply"][1].hex())
    assert text.splitlines()[-4:] == [
        "reply (meter -> master): read data",
        "  di     00010000 (energy_active_forward)",
        "  value  1206.42 kWh",
        "OK",
    ]
    _, text = run("decode", "dlt645", FRAMES["dlt645 refusal"][1].hex())
    assert "  control  0xD1 (abnormal reply to read_data)" in text.splitlines()
    assert "  reasons   no such data (the meter does not have this data identifier)" in text.splitlines()
    unknown = dlt645.encode_reply(dlt645.DataReply(0x04000401, b"\x01\x02\x03"), METER)
    _, text = run("decode", "dlt645", unknown.hex())
    assert "  di       04000401 (not in this gateway's table)" in text.splitlines()
    assert "  payload  01 02 03 (3 bytes)" in text.splitlines()


def test_modbus_names_its_function_and_exception_codes() -> None:
    _, text = run("decode", "modbus", FRAMES["modbus exception"][1].hex())
    assert "  function  0x83 (exception to read holding registers)" in text.splitlines()
    assert text.splitlines()[-3:] == [
        "reply (device -> master): exception to read holding registers",
        "  exception  0x02 (illegal_data_address)",
        "OK",
    ]
    _, text = run("decode", "modbus", FRAMES["modbus write coil"][1].hex())
    assert "  value    0xFF00 (on)" in text.splitlines()


def test_a_dlt645_address_that_is_not_bcd_is_bad() -> None:
    body = bytes.fromhex("68 25 04 03 02 01 0A 68 13 00")
    code, text = run("decode", "dlt645", (body + bytes([dlt645.checksum(body), 0x16])).hex())
    assert code == 1
    assert "BAD: address '0A0102030425': '0A' is neither two BCD digits nor AA (wildcard)" in text


# ---- --json ----------------------------------------------------------------------------------------------

TOP_KEYS = ["protocol", "bytes", "size", "ok", "fields", "readings", "problems"]
READING_KEYS = ["direction", "from", "to", "kind", "content"]


@pytest.mark.parametrize(("protocol", "frame"), FRAMES.values(), ids=FRAMES.keys())
def test_json_is_one_document_with_the_texts_content(protocol: str, frame: bytes) -> None:
    text_code, text = run("decode", protocol, frame.hex())
    code, out = run("decode", "--json", protocol, frame.hex())
    assert code == text_code == 0
    document = json.loads(out)  # one document: json.loads refuses anything after it
    assert list(document) == TOP_KEYS
    assert document["bytes"] == frame.hex().upper() and document["size"] == len(frame)
    assert document["ok"] is True and document["problems"] == []
    assert [list(reading) for reading in document["readings"]] == [READING_KEYS] * len(document["readings"])
    titles = [f"{r['direction']} ({r['from']} -> {r['to']}): {r['kind']}" for r in document["readings"]]
    assert titles == [line for line in text.splitlines() if "): " in line and not line.startswith(" ")]
    for name in document["fields"]:
        assert re.search(rf"^  {name} ", text, re.MULTILINE), name
    for key in keys([r["content"] for r in document["readings"]]):
        if key != "parameter":  # a parameter's type and name are its title in the text
            assert re.search(rf"(^ +|  |, ){key}( |:|$)", text, re.MULTILINE), key  # (flags are inline)


def test_json_carries_the_fields() -> None:
    _, out = run("decode", "--json", "dlt645", FRAMES["dlt645 read reply"][1].hex())
    document = json.loads(out)
    assert document["protocol"] == "dlt645"
    assert document["fields"] == {
        "address": METER,
        "control": {"code": 0x91, "name": "reply to read_data"},
        "data": "0000010042061200",
    }
    assert document["readings"] == [
        {
            "direction": "reply",
            "from": "meter",
            "to": "master",
            "kind": "read data",
            "content": {
                "di": {"code": "00010000", "name": "energy_active_forward"},
                "value": {"value": 1206.42, "unit": "kWh"},
            },
        }
    ]
    _, out = run("decode", "r2000", "--json", FRAMES["r2000 tag read"][1].hex())
    reading = json.loads(out)["readings"][0]
    assert reading["content"]["epc"] == EPC.hex().upper() and reading["content"]["epc_uri"] == EPC_URI
    _, out = run("decode", "modbus", FRAMES["modbus read reply"][1].hex(), "--json")
    content = json.loads(out)["readings"][0]["content"]
    assert content == {"byte_count": 4, "registers": [0x4366, 0x4000], "data": "43664000"}


def test_json_of_a_bad_frame_lists_its_problems_and_exits_1() -> None:
    bad = llrp.encode_frame(llrp.Frame(llrp.MessageType.RO_ACCESS_REPORT, 7, bytes.fromhex("00F00000"), 1))
    code, out = run("decode", "--json", "llrp", bad.hex())
    assert code == 1
    document = json.loads(out)
    assert document["ok"] is False
    assert document["problems"] == ["RO_ACCESS_REPORT: TagReportData at byte 0 with impossible length 0"]
    code, out = run("decode", "--json", "r2000", "A0 04 01 89 01")
    assert code == 1
    assert json.loads(out)["problems"] == ["length mismatch: Len says 4, 3 bytes follow"]


# ---- any bytes: a verdict, never a traceback -------------------------------------------------------------


def check_verdict(protocol: str, data: bytes) -> None:
    """What the command promises for any input: exit 0 with OK or exit 1 with BAD lines, readable text,
    and the same verdict in JSON."""
    code, text = run("decode", protocol, data.hex() or "00")
    assert code in (0, 1)
    verdict = verdict_lines(text)
    if code == 0:
        assert verdict == ["OK"]
    else:
        assert verdict and all(line.startswith("BAD: ") for line in verdict)
    assert REPR.search(without_problems(text)) is None, text
    json_code, out = run("decode", "--json", protocol, data.hex() or "00")
    document = json.loads(out)
    assert json_code == code
    assert document["ok"] is (code == 0)
    assert [f"BAD: {problem}" for problem in document["problems"]] == [v for v in verdict if v != "OK"]


@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=120))
def test_any_bytes_give_a_verdict(protocol: str, data: bytes) -> None:
    check_verdict(protocol, data)


LLRP_TYPES = st.sampled_from([int(t) for t in llrp.MessageType])


@given(LLRP_TYPES, st.binary(max_size=120))
def test_any_llrp_body_gives_a_verdict(message_type: int, body: bytes) -> None:
    check_verdict("llrp", llrp.encode_frame(llrp.Frame(message_type, 1, body, 1)))


TLV = st.tuples(st.sampled_from([128, 240, 241, 246, 287, 1023, 900]), st.binary(max_size=20)).map(
    lambda t: t[0].to_bytes(2, "big") + (len(t[1]) + 4).to_bytes(2, "big") + t[1]
)
TV = st.tuples(st.integers(1, 127), st.binary(min_size=0, max_size=12)).map(
    lambda t: bytes([0x80 | t[0]]) + t[1]
)


@given(st.lists(st.one_of(TLV, TV), max_size=6).map(b"".join))
def test_any_report_of_parameters_gives_a_verdict(params: bytes) -> None:
    tag = (240).to_bytes(2, "big") + (len(params) + 4).to_bytes(2, "big") + params
    check_verdict("llrp", llrp.encode_frame(llrp.Frame(llrp.MessageType.RO_ACCESS_REPORT, 1, tag, 1)))
    check_verdict("llrp", llrp.encode_frame(llrp.Frame(llrp.MessageType.RO_ACCESS_REPORT, 1, params, 1)))


@given(st.integers(0, 255), st.binary(max_size=40), st.integers(0, 4))
def test_any_dlt645_frame_gives_a_verdict(control: int, data: bytes, preamble: int) -> None:
    check_verdict("dlt645", dlt645.encode_frame(dlt645.Frame(METER, control, data), preamble))


@given(st.integers(0, 255), st.binary(max_size=40))
def test_any_modbus_pdu_with_a_good_crc_gives_a_verdict(function: int, data: bytes) -> None:
    check_verdict("modbus", modbus.rtu_frame(1, bytes([function]) + data))


@given(st.sampled_from(list(r2000.Command)), st.binary(max_size=40))
def test_any_r2000_frame_with_a_good_check_gives_a_verdict(command: int, data: bytes) -> None:
    check_verdict("r2000", r2000.encode_frame(r2000.Frame(1, command, data)))


# ---- as a user runs it -----------------------------------------------------------------------------------


def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEGW, *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_installed_command_says_bad_for_a_report_with_a_bad_tag_and_prints_json() -> None:
    bad = llrp.encode_frame(llrp.Frame(llrp.MessageType.RO_ACCESS_REPORT, 7, bytes.fromhex("03FF0004"), 1))
    result = edgegw("decode", "llrp", bad.hex(" "))
    assert result.returncode == 1, result.stderr
    assert "OK" not in result.stdout.splitlines()
    assert "BAD: Custom parameter of 0 bytes: at least 8 (vendor, subtype)" in result.stdout.splitlines()
    assert result.stderr == ""
    result = edgegw("decode", "--json", "dlt645", dlt645.read_data(METER, 0x00010000).hex(" "))
    assert result.returncode == 0, result.stderr
    content = json.loads(result.stdout)["readings"][0]["content"]
    assert content == {"di": {"code": "00010000", "name": "energy_active_forward"}}


def test_the_installed_command_survives_a_reader_that_stops_reading() -> None:
    """``edgegw decode ... | head -1``: the pipe closes before the output is written; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails: the deterministic form of `| head`
    try:
        result = subprocess.run(
            [EDGEGW, "decode", "llrp", FRAMES["llrp capabilities"][1].hex()],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0


# ---- the README's examples -------------------------------------------------------------------------------

README = Path(__file__).parents[2] / "README.md"
EXAMPLE = re.compile(r"^```\n\$ (edgegw decode [^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_the_readmes_decode_examples_are_what_the_command_prints() -> None:
    examples = EXAMPLE.findall(README.read_text(encoding="utf-8"))
    assert len(examples) == 2  # the text and the --json example
    for command, shown in examples:
        args = command.split(" ", 1)[1]
        words = [word.strip('"') for word in re.findall(r'"[^"]*"|\S+', args)]
        code, out = run(*words)
        assert code == 0
        if "--json" in words:
            assert json.loads(shown) == json.loads(out)
        else:
            assert shown == out
