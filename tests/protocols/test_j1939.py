"""protocols.j1939: identifiers, the PGN table, DM1 and the passive transport-protocol reassembler, with
hypothesis: round trips, arbitrary input never raises, and the reassembler's faults (packets out of order,
a packet missing, a second BAM from the same source, an aborted RTS/CTS session) each end as the standard
says and are counted."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import j1939
from protocols.errors import DecodeError, EncodeError

sources = st.integers(0, 0xFD)
priorities = st.integers(0, 7)
pdu2_pgns = (
    st.integers(0xF0, 0x3FF)
    .filter(lambda pf: pf & 0xFF >= 0xF0)
    .flatmap(lambda high: st.integers(0, 0xFF).map(lambda ps: high << 8 | ps))
)
pdu1_pgns = st.integers(0, 0x3FF).filter(lambda pf: pf & 0xFF < 0xF0).map(lambda high: high << 8)


# -- identifiers ------------------------------------------------------------------------------------------


@given(pgn=pdu2_pgns, source=sources, priority=priorities)
def test_pdu2_identifiers_round_trip(pgn: int, source: int, priority: int) -> None:
    parsed = j1939.parse_id(j1939.can_id(pgn, source, priority=priority))
    assert parsed == j1939.J1939Id(priority, pgn, source, None)


@given(pgn=pdu1_pgns, source=sources, destination=st.integers(0, 0xFE), priority=priorities)
def test_pdu1_identifiers_carry_their_destination(
    pgn: int, source: int, destination: int, priority: int
) -> None:
    aid = j1939.can_id(pgn, source, priority=priority, destination=destination)
    assert j1939.parse_id(aid) == j1939.J1939Id(priority, pgn, source, destination)
    assert j1939.parse_id(j1939.can_id(pgn, source)).destination is None  # global: broadcast


@given(aid=st.integers(0, 0x1FFFFFFF))
def test_any_identifier_parses_and_builds_back(aid: int) -> None:
    parsed = j1939.parse_id(aid)
    rebuilt = j1939.can_id(
        parsed.pgn, parsed.source, priority=parsed.priority, destination=parsed.destination
    )
    assert rebuilt == aid  # PDU1 to the global address included (destination None)


def test_known_identifiers() -> None:
    assert j1939.parse_id(0x0CF00400) == j1939.J1939Id(3, 61444, 0x00, None)  # EEC1 from the engine
    assert j1939.parse_id(0x18FEF117) == j1939.J1939Id(6, 65265, 0x17, None)
    assert j1939.parse_id(0x18EAF900) == j1939.J1939Id(6, 0xEA00, 0x00, 0xF9)  # a request to 0xF9
    with pytest.raises(EncodeError):
        j1939.can_id(65265, 0, destination=3)


# -- the PGN table ----------------------------------------------------------------------------------------


def test_the_issue_s_pgns_and_spns_are_in_the_table() -> None:
    wanted = {
        65265: ("CCVS", "wheel_based_vehicle_speed", 84, "km/h"),
        61444: ("EEC1", "engine_speed", 190, "rpm"),
        65262: ("ET1", "engine_coolant_temperature", 110, "°C"),
        65266: ("LFE", "fuel_rate", 183, "L/h"),
        65276: ("DD", "fuel_level_1", 96, "%"),
        65248: ("VD", "total_vehicle_distance", 245, "km"),
        65253: ("HOURS", "engine_total_hours", 247, "h"),
    }
    for pgn, (acronym, name, spn, unit) in wanted.items():
        table = j1939.PGNS[pgn]
        assert table.acronym == acronym
        (found,) = [s for s in table.spns if s.name == name]
        assert found.spn == spn and found.unit == unit


def test_scaling_against_worked_values() -> None:
    # CCVS bytes 2-3 = 0x3200 (12800) x 1/256 = 50 km/h; EEC1 bytes 4-5 = 0x2710 x 0.125 = 1250 rpm;
    # ET1 byte 1 = 125 - 40 = 85 C; all-ones bytes: not available, left out.
    assert j1939.PGNS[65265].decode(bytes.fromhex("FF0032FFFFFFFFFF")) == {"wheel_based_vehicle_speed": 50}
    assert j1939.PGNS[61444].decode(bytes.fromhex("FFFFFF1027FFFFFF")) == {"engine_speed": 1250}
    assert j1939.PGNS[65262].decode(bytes.fromhex("7DFFFFFFFFFFFFFF")) == {"engine_coolant_temperature": 85}
    # 0xFE in the top byte is "error"; 0xFB..0xFD reserved: neither is a value
    assert j1939.PGNS[65265].decode(bytes.fromhex("FF00FEFFFFFFFFFF")) == {}
    assert j1939.PGNS[65265].decode(bytes.fromhex("FF00FBFFFFFFFFFF")) == {}
    assert j1939.PGNS[65265].decode(bytes.fromhex("FFFFFAFFFFFFFFFF")) == {
        "wheel_based_vehicle_speed": 250.99609375
    }
    # a 2-bit switch: 2 is error, 3 not available
    assert j1939.PGNS[65265].decode(bytes.fromhex("FAFFFFFFFFFFFFFF")) == {}
    assert j1939.PGNS[65265].decode(bytes.fromhex("F7FFFFFFFFFFFFFF")) == {"parking_brake_switch": 1}


@st.composite
def pgn_values(draw: st.DrawFn) -> tuple[j1939.Pgn, dict[str, float]]:
    table = draw(st.sampled_from([p for p in j1939.PGNS.values() if p.text is None]))
    values: dict[str, float] = {}
    for spn in table.spns:
        if draw(st.booleans()):
            raw = draw(st.integers(0, spn.limit))
            values[spn.name] = round(raw * spn.resolution + spn.offset, spn.decimals)
    return table, values


@given(pgn_values())
def test_pgn_values_round_trip_and_unsent_ones_are_not_available(
    case: tuple[j1939.Pgn, dict[str, float]],
) -> None:
    table, values = case
    decoded = table.decode(table.encode(values))
    assert decoded.keys() == values.keys()
    for name, value in values.items():
        got = decoded[name]
        assert isinstance(got, int | float) and math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9)


@given(pgn=st.sampled_from(sorted(j1939.PGNS)), data=st.binary(max_size=16))
def test_any_data_decodes_to_values_within_range(pgn: int, data: bytes) -> None:
    table = j1939.PGNS[pgn]
    values = table.decode(data)
    for spn in table.spns:
        if spn.name in values:
            low, high = spn.offset, spn.limit * spn.resolution + spn.offset
            value = values[spn.name]
            assert isinstance(value, int | float) and low - 1e-9 <= value <= high + 1e-9


# -- DM1 --------------------------------------------------------------------------------------------------

lamp = st.one_of(st.none(), st.booleans())
dtcs = st.builds(j1939.Dtc, st.integers(1, (1 << 19) - 2), st.integers(0, 31), st.integers(0, 126))


@given(lamps=st.builds(j1939.Lamps, lamp, lamp, lamp, lamp), codes=st.lists(dtcs, max_size=20))
def test_dm1_round_trip(lamps: j1939.Lamps, codes: list[j1939.Dtc]) -> None:
    data = j1939.encode_dm1(lamps, codes)
    assert len(data) == 8 or len(data) == 2 + 4 * len(codes)
    assert j1939.decode_dm1(data) == j1939.Dm1(lamps, tuple(codes))


def test_dm1_without_codes() -> None:
    # lamps off, "no DTC" (zeros), padding
    assert j1939.decode_dm1(bytes.fromhex("00FF00000000FFFF")) == j1939.Dm1(
        j1939.Lamps(False, False, False, False), ()
    )


@given(data=st.binary(max_size=64))
def test_dm1_of_arbitrary_bytes_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        j1939.decode_dm1(data)


# -- the reassembler ------------------------------------------------------------------------------------

payloads = st.binary(min_size=9, max_size=j1939.MAX_TP_SIZE)


def feed(
    reassembler: j1939.Reassembler, frames: list[tuple[int, bytes]], t0: float = 0.0, step: float = 0.05
) -> list[j1939.Message]:
    out: list[j1939.Message] = []
    for i, (aid, data) in enumerate(frames):
        out += reassembler.feed(aid, data, t0 + i * step)
    return out


@given(payload=payloads, source=sources, pgn=pdu2_pgns)
def test_a_bam_is_reassembled(payload: bytes, source: int, pgn: int) -> None:
    r = j1939.Reassembler()
    assert feed(r, j1939.bam_frames(pgn, source, payload)) == [j1939.Message(pgn, source, None, payload, 7)]
    assert r.sessions == 0 and r.stats.completed == 1 and r.stats.dropped == 0


@given(payload=payloads, source=sources, destination=st.integers(0, 0xFD), window=st.integers(1, 255))
def test_a_sniffed_rts_cts_session_is_reassembled(
    payload: bytes, source: int, destination: int, window: int
) -> None:
    r = j1939.Reassembler()
    frames = j1939.rts_cts_frames(65260, source, destination, payload, window=window)
    out = feed(r, frames, step=0.001)
    assert out == [j1939.Message(65260, source, destination, payload, 7)]
    assert r.sessions == 0 and r.stats.dropped == 0


@given(payload=st.binary(min_size=15, max_size=200), data=st.data())
def test_packets_out_of_order_still_make_the_message(payload: bytes, data: st.DataObject) -> None:
    cm, *packets = j1939.bam_frames(65226, 0x10, payload)
    shuffled = data.draw(st.permutations(packets))
    r = j1939.Reassembler()
    assert feed(r, [cm, *shuffled], step=0.01) == [j1939.Message(65226, 0x10, None, payload, 7)]


@given(payload=st.binary(min_size=15, max_size=200), data=st.data())
def test_a_missing_packet_times_the_session_out(payload: bytes, data: st.DataObject) -> None:
    cm, *packets = j1939.bam_frames(65226, 0x10, payload)
    missing = data.draw(st.integers(0, len(packets) - 1))
    r = j1939.Reassembler()
    assert feed(r, [cm, *packets[:missing], *packets[missing + 1 :]], step=0.05) == []
    assert r.sessions == 1
    last = (len(packets) - 1) * 0.05  # the time of the last frame fed
    r.expire(last + j1939.T1 - 0.01)
    assert r.sessions == 1  # not yet: T1 after the last packet
    r.expire(last + j1939.T1 + 0.01)
    assert r.sessions == 0 and r.stats.timed_out == 1


def test_a_second_bam_from_the_same_source_replaces_the_first() -> None:
    first = j1939.bam_frames(65226, 0x10, bytes(30))
    second = j1939.bam_frames(65260, 0x10, b"A" * 20)
    r = j1939.Reassembler()
    out = feed(r, [*first[:3], *second])
    assert out == [j1939.Message(65260, 0x10, None, b"A" * 20, 7)]
    assert r.stats.replaced == 1
    assert feed(r, first[3:], t0=1.0) == [] and r.stats.orphans == len(first) - 3


def test_an_aborted_rts_cts_session_is_dropped_by_either_side() -> None:
    for aborter, other in ((0x30, 0x22), (0x22, 0x30)):
        frames = j1939.rts_cts_frames(65260, 0x22, 0x30, bytes(40))
        r = j1939.Reassembler()
        assert feed(r, [*frames[:4], j1939.abort_frame(65260, aborter, other), *frames[4:-1]]) == []
        assert r.stats.aborted == 1 and r.sessions == 0


def test_an_acknowledged_session_with_packets_missing_here_is_incomplete() -> None:
    frames = j1939.rts_cts_frames(65260, 0x22, 0x30, bytes(40))
    dts = [i for i, (aid, _) in enumerate(frames) if (aid >> 16) & 0xFF == 0xEB]
    r = j1939.Reassembler()
    assert feed(r, [f for i, f in enumerate(frames) if i != dts[2]]) == []
    assert r.stats.incomplete == 1 and r.sessions == 0


def test_a_connection_held_open_waits_t4() -> None:
    rts, cts, *_ = j1939.rts_cts_frames(65260, 0x22, 0x30, bytes(40))
    hold = (cts[0], bytes((0x11, 0, 0xFF, 0xFF, 0xFF)) + cts[1][5:])
    r = j1939.Reassembler()
    feed(r, [rts, hold])
    r.expire(0.05 + j1939.T4 - 0.01)
    assert r.sessions == 1
    r.expire(0.05 + j1939.T4 + 0.01)
    assert r.sessions == 0 and r.stats.timed_out == 1


def test_sizes_beyond_the_protocol_are_invalid() -> None:
    r = j1939.Reassembler()
    too_big = bytes((0x20, 0xFA, 0x06, 0xFF, 0xFF, 0xCA, 0xFE, 0x00))  # 1786 bytes
    wrong_count = bytes((0x20, 20, 0, 2, 0xFF, 0xCA, 0xFE, 0x00))  # 20 bytes are 3 packets
    feed(r, [(j1939.can_id(j1939.TP_CM, 1), too_big), (j1939.can_id(j1939.TP_CM, 1), wrong_count)])
    assert r.stats.invalid == 2 and r.sessions == 0
    with pytest.raises(EncodeError):
        j1939.bam_frames(65226, 1, bytes(j1939.MAX_TP_SIZE + 1))


@given(
    frames=st.lists(
        st.tuples(st.sampled_from([0xEC, 0xEB, 0xFE]), sources, st.integers(0, 0xFF), st.binary(max_size=8)),
        max_size=300,
    ),
    max_sessions=st.integers(1, 8),
)
def test_arbitrary_transport_traffic_never_raises_and_stays_bounded(
    frames: list[tuple[int, int, int, bytes]], max_sessions: int
) -> None:
    r = j1939.Reassembler(max_sessions=max_sessions)
    for i, (pf, source, ps, data) in enumerate(frames):
        for message in r.feed(6 << 26 | pf << 16 | ps << 8 | source, data, i * 0.01):
            assert len(message.data) <= j1939.MAX_TP_SIZE
        assert r.sessions <= max_sessions
