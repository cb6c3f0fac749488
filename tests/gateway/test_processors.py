"""Processors: the chain, and RFID tag smoothing (arrivals, departures, moves, filters, the tag cap, lane
counts), all with explicit timestamps: no clock, no sleeps."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.event import Event
from gateway.processors import Chain, Processor, RfidSmoothing, SmoothingOptions, zone_of
from gateway.processors.rfid import MAX_CATCHUP_PERIODS, MIN_UNIQUE_PER_PERIOD
from protocols.epc import encode_epc

DEVICE = "gantry-1"
SGTIN_A = "3074257BF7194E4000001A85"  # urn:epc:id:sgtin:0614141.812345.6789 (the TDS example)
URI_A = "urn:epc:id:sgtin:0614141.812345.6789"
SGTIN_B = encode_epc("urn:epc:tag:sgtin-96:3.0614141.812345.6790").hex().upper()
GRAI_C = encode_epc("urn:epc:tag:grai-96:1.0614141.12345.400").hex().upper()
VENDOR = "E28011606000020A7B4C1D2E"  # no EPC TDS encoding: no epc_uri


def read(
    epc: str, ts: float, antenna: int | None = 1, rssi: float | None = -60, name: str | None = None
) -> Event:
    return Event(
        DEVICE,
        "rfid.read",
        ts,
        {"epc": epc, "pc": "3000", "antenna": antenna, "antenna_name": name, "rssi_dbm": rssi},
    )


def smoothing(**options: Any) -> RfidSmoothing:
    return RfidSmoothing(DEVICE, SmoothingOptions(**options))


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


# ------------------------------------------------------------------------------------------ arrivals


def test_first_read_is_an_arrival_and_later_reads_are_absorbed() -> None:
    p = smoothing()
    [arrived] = p.process(read(SGTIN_A, 100.0, antenna=2, rssi=-61, name="lane1-in"))
    assert arrived == Event(
        DEVICE,
        "rfid.arrived",
        100.0,
        {
            "epc": SGTIN_A,
            "epc_uri": URI_A,
            "zone": "lane1-in",
            "antenna": 2,
            "rssi_dbm": -61,
            "first_seen": 100.0,
        },
    )
    assert p.process(read(SGTIN_A, 100.2, antenna=2)) == []
    assert p.process(read(SGTIN_A, 100.4, antenna=2)) == []
    assert p.tracked == 1
    assert p.counters()["arrived"] == 1


def test_forward_reads_passes_the_raw_reads_after_what_they_caused() -> None:
    p = smoothing(forward_reads=True)
    first = read(SGTIN_A, 1.0)
    assert kinds(p.process(first)) == ["rfid.arrived", "rfid.read"]
    second = read(SGTIN_A, 1.5)
    assert p.process(second) == [second]


def test_epc_uri_only_when_the_epc_decodes() -> None:
    p = smoothing()
    [arrived] = p.process(read(VENDOR, 1.0))
    assert "epc_uri" not in arrived.data
    assert arrived.data["epc"] == VENDOR
    [arrived] = p.process(read(GRAI_C, 1.0))
    assert arrived.data["epc_uri"] == "urn:epc:id:grai:0614141.12345.400"


def test_other_events_pass_through() -> None:
    p = smoothing()
    status = Event(DEVICE, "device.status", 5.0, {"state": "connected"})
    assert p.process(status) == [status]


@pytest.mark.parametrize(
    "data",
    [
        {"antenna": 1},
        {"epc": "", "antenna": 1},
        {"epc": b"\x30\x08", "antenna": 1},
        {"epc": SGTIN_A, "antenna": "1"},
    ],
)
def test_reads_without_a_usable_epc_or_antenna_are_counted(data: dict[str, Any]) -> None:
    p = smoothing()
    assert p.process(Event(DEVICE, "rfid.read", 1.0, data)) == []
    assert p.counters()["invalid_reads"] == 1
    assert p.tracked == 0
    forwarding = smoothing(forward_reads=True)
    bad = Event(DEVICE, "rfid.read", 1.0, data)
    assert forwarding.process(bad) == [bad]


@pytest.mark.parametrize("rssi", [None, float("nan"), float("inf"), "-60", True])
def test_a_read_without_a_numeric_rssi_counts_without_rssi(rssi: Any) -> None:
    p = smoothing()
    [arrived] = p.process(read(SGTIN_A, 1.0, rssi=rssi))
    assert arrived.data["rssi_dbm"] is None
    p.process(read(SGTIN_A, 2.0, rssi=-70.5))
    state = p.describe(SGTIN_A)
    assert state is not None
    assert state["antennas"] == [
        {"antenna": 1, "zone": "1", "count": 2, "rssi_peak_dbm": -70.5, "rssi_mean_dbm": -70.5}
    ]


def test_a_read_without_antenna_is_antenna_0() -> None:
    p = smoothing()
    [arrived] = p.process(read(SGTIN_A, 1.0, antenna=None))
    assert arrived.data["antenna"] == 0
    assert arrived.data["zone"] == "0"


# ----------------------------------------------------------------------------------------- departures


def test_departure_after_depart_after_s_with_the_visit_summary() -> None:
    p = smoothing(depart_after_s=5)
    p.process(read(SGTIN_A, 10.0, antenna=1, rssi=-60, name="in"))
    p.process(read(SGTIN_A, 10.5, antenna=1, rssi=-50, name="in"))
    p.process(read(SGTIN_A, 11.0, antenna=2, rssi=None, name="out"))
    p.process(read(SGTIN_A, 11.5, antenna=1, rssi=-55, name="in"))
    assert p.tick(16.4) == []
    [departed] = p.tick(16.5)
    assert departed == Event(
        DEVICE,
        "rfid.departed",
        11.5,  # last_seen: when it was last read
        {
            "epc": SGTIN_A,
            "epc_uri": URI_A,
            "zone": "in",
            "first_seen": 10.0,
            "last_seen": 11.5,
            "dwell_s": 1.5,
            "count": 4,
            "antennas": [
                {"antenna": 1, "zone": "in", "count": 3, "rssi_peak_dbm": -50, "rssi_mean_dbm": -55.0},
                {"antenna": 2, "zone": "out", "count": 1, "rssi_peak_dbm": None, "rssi_mean_dbm": None},
            ],
            "reason": "timeout",
        },
    )
    assert p.tracked == 0
    assert p.tick(100.0) == []


def test_describe_shows_the_live_state() -> None:
    p = smoothing()
    assert p.describe(SGTIN_A) is None
    p.process(read(SGTIN_A, 1.0, rssi=-61))
    p.process(read(SGTIN_A, 2.0, rssi=-62))
    state = p.describe(SGTIN_A)
    assert state is not None
    assert state["count"] == 2
    assert state["antennas"] == [
        {"antenna": 1, "zone": "1", "count": 2, "rssi_peak_dbm": -61, "rssi_mean_dbm": -61.5}
    ]
    assert "reason" not in state


def test_a_tag_back_after_departing_arrives_again() -> None:
    p = smoothing(depart_after_s=5)
    p.process(read(SGTIN_A, 0.0))
    assert kinds(p.tick(5.0)) == ["rfid.departed"]
    [arrived] = p.process(read(SGTIN_A, 20.0))
    assert arrived.kind == "rfid.arrived"
    assert arrived.data["first_seen"] == 20.0


def test_a_gap_seen_by_a_read_before_any_tick_ends_the_visit() -> None:
    p = smoothing(depart_after_s=5)
    p.process(read(SGTIN_A, 0.0))
    p.process(read(SGTIN_A, 1.0))
    departed, arrived = p.process(read(SGTIN_A, 6.0))
    assert (departed.kind, departed.ts, departed.data["count"], departed.data["reason"]) == (
        "rfid.departed",
        1.0,
        2,
        "timeout",
    )
    assert (arrived.kind, arrived.ts) == ("rfid.arrived", 6.0)
    assert p.tick(10.9) == []
    assert kinds(p.tick(11.0)) == ["rfid.departed"]


def test_flush_departs_every_tracked_tag() -> None:
    p = smoothing(lanes=["lane1"], zones={1: "lane1"})
    p.tick(0.0)
    p.process(read(SGTIN_A, 1.0))
    p.process(read(SGTIN_B, 2.0))
    flushed = p.flush()
    assert [(e.kind, e.ts, e.data["epc"], e.data["reason"]) for e in flushed] == [
        ("rfid.departed", 1.0, SGTIN_A, "stopped"),
        ("rfid.departed", 2.0, SGTIN_B, "stopped"),
    ]
    assert p.tracked == 0
    assert p.arrived == p.departed == 2
    assert p.flush() == []


def test_departures_in_order_of_last_read() -> None:
    p = smoothing(depart_after_s=5)
    p.process(read(SGTIN_A, 0.0))
    p.process(read(SGTIN_B, 1.0))
    p.process(read(SGTIN_A, 2.0))  # A is now the most recently read
    [first] = p.tick(6.0)
    assert first.data["epc"] == SGTIN_B
    [second] = p.tick(7.0)
    assert second.data["epc"] == SGTIN_A


# -------------------------------------------------------------------------------------------- zones


def test_zone_of() -> None:
    assert zone_of({1: "lane1"}, 1, "ant-1") == "lane1"
    assert zone_of({1: "lane1"}, 2, "ant-2") == "ant-2"
    assert zone_of({1: "lane1"}, 3, None) == "3"
    assert zone_of({}, 3, "") == "3"


def test_zones_map_antennas() -> None:
    p = smoothing(zones={1: "lane1", 2: "lane1"})
    [a] = p.process(read(SGTIN_A, 1.0, antenna=2, name="north"))
    [b] = p.process(read(SGTIN_B, 1.0, antenna=3, name="south"))
    [c] = p.process(read(GRAI_C, 1.0, antenna=4))
    assert [a.data["zone"], b.data["zone"], c.data["zone"]] == ["lane1", "south", "4"]


def test_move_needs_the_hysteresis_margin() -> None:
    p = smoothing(zones={1: "A", 2: "B"}, move_hysteresis_db=3, move_holdoff_s=0)
    p.process(read(SGTIN_A, 0.0, antenna=1, rssi=-60))
    assert p.process(read(SGTIN_A, 0.1, antenna=2, rssi=-57)) == []  # 3 dB: not more than the margin
    [moved] = p.process(read(SGTIN_A, 0.2, antenna=2, rssi=-50))  # B's average: -53.5, > -60 + 3
    assert moved == Event(
        DEVICE,
        "rfid.moved",
        0.2,
        {
            "epc": SGTIN_A,
            "epc_uri": URI_A,
            "zone": "B",
            "from_zone": "A",
            "antenna": 2,
            "rssi_dbm": -53.5,
            "from_rssi_dbm": -60.0,
            "first_seen": 0.0,
            "dwell_s": 0.2,
        },
    )
    assert p.counters()["moved"] == 1


def test_move_waits_for_the_holdoff_and_resets_when_the_margin_is_lost() -> None:
    p = smoothing(zones={1: "A", 2: "B"}, move_hysteresis_db=3, move_holdoff_s=2)
    p.process(read(SGTIN_A, 0.0, antenna=1, rssi=-70))
    assert p.process(read(SGTIN_A, 1.0, antenna=2, rssi=-50)) == []  # B is stronger: the hold-off starts
    assert p.process(read(SGTIN_A, 2.0, antenna=2, rssi=-50)) == []
    assert p.process(read(SGTIN_A, 2.5, antenna=1, rssi=-30)) == []  # A: -50: B (-50) no longer by > 3 dB
    assert p.process(read(SGTIN_A, 3.0, antenna=2, rssi=-40)) == []  # B: -45 > -50 + 3: starts again at 3
    assert p.process(read(SGTIN_A, 4.5, antenna=2, rssi=-40)) == []
    [moved] = p.process(read(SGTIN_A, 5.0, antenna=2, rssi=-40))
    assert (moved.kind, moved.data["zone"], moved.data["dwell_s"]) == ("rfid.moved", "B", 5.0)
    assert p.process(read(SGTIN_A, 5.5, antenna=2, rssi=-40)) == []
    [departed] = p.tick(100.0)
    assert departed.data["zone"] == "B"


def test_a_zone_that_stopped_reading_the_tag_loses_to_any_that_reads_it() -> None:
    p = smoothing(zones={1: "A", 2: "B"}, depart_after_s=5, move_holdoff_s=1)
    p.process(read(SGTIN_A, 0.0, antenna=1, rssi=-40))
    for t in (1.0, 2.0, 3.0, 4.0):
        assert p.process(read(SGTIN_A, t, antenna=2, rssi=-70)) == []  # weaker than A, A still current
    assert p.process(read(SGTIN_A, 5.0, antenna=2, rssi=-70)) == []  # A unseen for 5 s: B is the candidate
    [moved] = p.process(read(SGTIN_A, 6.0, antenna=2, rssi=-70))
    assert (moved.data["zone"], moved.data["from_zone"], moved.data["from_rssi_dbm"]) == ("B", "A", None)


def test_moves_without_rssi_follow_the_reads() -> None:
    p = smoothing(zones={1: "A", 2: "B"}, depart_after_s=2, move_holdoff_s=0)
    p.process(read(SGTIN_A, 0.0, antenna=1, rssi=None))
    assert p.process(read(SGTIN_A, 1.0, antenna=2, rssi=None)) == []  # equal strength: no move
    [moved] = p.process(read(SGTIN_A, 2.0, antenna=2, rssi=None))  # A has not read it for 2 s
    assert (moved.data["zone"], moved.data["rssi_dbm"], moved.data["from_rssi_dbm"]) == ("B", None, None)


# ------------------------------------------------------------------------------------------- filters


def test_include_by_hex_prefix_and_by_pattern() -> None:
    p = smoothing(include=["3374", "urn:epc:pat:sgtin-96:3.0614141.812345.[6789-6789]"])
    assert kinds(p.process(read(SGTIN_A, 1.0))) == ["rfid.arrived"]  # the pattern
    assert p.process(read(SGTIN_B, 1.0)) == []  # serial 6790: outside the range
    assert p.process(read(VENDOR, 1.0)) == []
    p2 = smoothing(include=["3414"])  # GRAI_C is 0x33 with filter 1: 0x3334...
    assert p2.process(read(GRAI_C, 1.0)) == []
    p3 = smoothing(include=["e28011"])  # prefixes are case-insensitive
    assert kinds(p3.process(read(VENDOR, 1.0))) == ["rfid.arrived"]
    assert kinds(p3.process(read(VENDOR.lower(), 1.0))) == ["rfid.arrived"]  # another key: its own tag
    assert p.counters()["filtered"] == 2


def test_exclude_wins_over_include() -> None:
    p = smoothing(include=["30"], exclude=["urn:epc:pat:sgtin-96:*.0614141.812345.6790"])
    assert kinds(p.process(read(SGTIN_A, 1.0))) == ["rfid.arrived"]
    assert p.process(read(SGTIN_B, 1.0)) == []
    assert p.process(read(SGTIN_B, 1.1)) == []  # remembered: matched once
    assert p.counters()["filtered"] == 2
    assert p.tracked == 1


def test_excluded_reads_are_not_forwarded() -> None:
    p = smoothing(exclude=["E2"], forward_reads=True)
    assert p.process(read(VENDOR, 1.0)) == []


# ------------------------------------------------------------------------------------------- the cap


def test_the_least_recently_read_tag_is_evicted_at_the_cap() -> None:
    p = smoothing(max_tags=2)
    p.process(read(SGTIN_A, 1.0))
    p.process(read(SGTIN_B, 2.0))
    p.process(read(SGTIN_A, 3.0))  # B is now the least recently read
    evicted, arrived = p.process(read(GRAI_C, 4.0))
    assert (evicted.kind, evicted.ts, evicted.data["epc"], evicted.data["reason"]) == (
        "rfid.departed",
        2.0,
        SGTIN_B,
        "evicted",
    )
    assert (arrived.kind, arrived.data["epc"]) == ("rfid.arrived", GRAI_C)
    assert p.tracked == 2
    assert p.evicted == 1
    assert p.counters()["evicted"] == 1


def test_antennas_per_tag_are_capped() -> None:
    p = smoothing()
    for antenna in range(1, 70):
        p.process(read(SGTIN_A, 1.0, antenna=antenna))
    state = p.describe(SGTIN_A)
    assert state is not None
    assert len(state["antennas"]) == 64
    assert state["count"] == 69
    assert p.counters()["antennas_overflow"] == 5


# --------------------------------------------------------------------------------------- lane counts


def flows(events: list[Event]) -> list[tuple[str, int, int, int, bool]]:
    return [
        (e.data["lane"], e.data["period_start"], e.data["period_end"], e.data["count"], e.data["partial"])
        for e in events
        if e.kind == "rfid.flow"
    ]


def test_lane_counts_per_period_unique_with_zeros() -> None:
    p = smoothing(zones={1: "lane1", 2: "lane2", 3: "shoulder"}, lanes=["lane1", "lane2"], depart_after_s=5)
    assert p.tick(0.0) == []
    p.process(read(SGTIN_A, 10.0, antenna=1))
    p.process(read(SGTIN_B, 20.0, antenna=1))
    p.process(read(GRAI_C, 25.0, antenna=3))  # not a lane
    p.process(read(SGTIN_A, 40.0, antenna=1))  # back after departing: one tag, counted once
    assert flows(p.tick(61.9)) == []  # within the grace after the period's end
    events = p.tick(62.0)
    assert flows(events) == [("lane1", 0, 60, 2, False), ("lane2", 0, 60, 0, False)]
    flow = next(e for e in events if e.kind == "rfid.flow")
    assert flow == Event(
        DEVICE,
        "rfid.flow",
        60.0,
        {"lane": "lane1", "period_start": 0, "period_end": 60, "count": 2, "partial": False},
    )
    assert flows(p.tick(70.0)) == []
    assert flows(p.tick(200.0)) == [
        ("lane1", 60, 120, 0, False),
        ("lane2", 60, 120, 0, False),
        ("lane1", 120, 180, 0, False),
        ("lane2", 120, 180, 0, False),
    ]


def test_periods_align_to_the_clock_and_the_first_is_partial() -> None:
    p = smoothing(lanes=["lane1"], zones={1: "lane1"}, flow_period_s=300, flow_grace_s=0)
    p.tick(1_800_000_130.0)  # 130 s into a 300 s period: counting starts mid-period
    p.process(read(SGTIN_A, 1_800_000_140.0))
    assert flows(p.tick(1_800_000_300.0)) == [("lane1", 1_800_000_000, 1_800_000_300, 1, True)]
    assert flows(p.tick(1_800_000_600.0)) == [("lane1", 1_800_000_300, 1_800_000_600, 0, False)]


def test_an_arrival_for_a_period_already_emitted_is_counted_as_uncounted() -> None:
    p = smoothing(lanes=["lane1"], zones={1: "lane1"}, flow_grace_s=2)
    p.tick(0.0)
    assert flows(p.tick(62.0)) == [("lane1", 0, 60, 0, False)]
    p.process(read(SGTIN_A, 59.0))  # stamped in the emitted period
    p.process(read(SGTIN_B, 61.0))
    assert p.counters()["flow_uncounted"] == 1
    assert flows(p.tick(122.0)) == [("lane1", 60, 120, 1, False)]


def test_arrivals_ahead_of_the_ticks_wait_for_their_period() -> None:
    p = smoothing(lanes=["lane1"], zones={1: "lane1"})
    p.tick(0.0)
    p.process(read(SGTIN_A, 130.0))  # a device clock ahead of the gateway's
    assert flows(p.tick(62.0)) == [("lane1", 0, 60, 0, False)]
    assert flows(p.tick(122.0)) == [("lane1", 60, 120, 0, False)]
    assert flows(p.tick(182.0)) == [("lane1", 120, 180, 1, False)]


def test_counts_are_unique_up_to_a_bound_and_count_the_rest() -> None:
    p = smoothing(lanes=["lane1"], zones={1: "lane1"}, max_tags=2, depart_after_s=100)
    p.tick(0.0)
    n = MIN_UNIQUE_PER_PERIOD + 3
    tags = [encode_epc(f"urn:epc:id:giai:0614141.{i}").hex() for i in range(n)]
    for i, epc in enumerate(tags):
        p.process(read(epc, 1.0 + i * 0.01))  # at most 2 tracked: each arrival evicts an older tag
    p.process(read(tags[0], 30.0))  # evicted, back: remembered, not counted twice
    p.process(read(tags[-3], 31.0))  # evicted and back too, but beyond the bound: counted again
    assert flows(p.tick(62.0)) == [("lane1", 0, 60, n + 1, False)]
    assert p.evicted == n


def test_a_long_gap_between_ticks_emits_bounded_zeros_and_every_count() -> None:
    p = smoothing(lanes=["lane1", "lane2"], zones={1: "lane1"}, flow_grace_s=0)
    p.tick(0.0)
    p.process(read(SGTIN_A, 30.0))
    events = flows(p.tick(60.0 * 10_000))  # 10,000 periods later
    assert events[0] == ("lane1", 0, 60, 1, False)  # the period that counted something is kept
    assert len(events) == 2 + 2 * MAX_CATCHUP_PERIODS
    assert events[-1][1:3] == (60 * 9_999, 60 * 10_000)
    assert p.counters()["flow_periods_skipped"] == 10_000 - MAX_CATCHUP_PERIODS


def test_no_lanes_no_flows() -> None:
    p = smoothing(zones={1: "lane1"})
    p.tick(0.0)
    p.process(read(SGTIN_A, 1.0))
    assert flows(p.tick(1000.0)) == []


# ------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "location", "message"),
    [
        ({"flow_period_s": 7}, "flow_period_s", "does not divide a day"),
        ({"flow_period_s": 0}, "flow_period_s", "greater than or equal to 1"),
        ({"lanes": ["lane1", "lane1"]}, "lanes", "listed twice"),
        ({"include": ["3008", "xyz"]}, "include.1", "neither an EPC hex prefix .* nor an EPC pattern URI"),
        ({"exclude": ["urn:epc:pat:sgtin-96:3.*.1.*"]}, "exclude.0", "must be '\\*' too"),
        ({"depart_after_s": 0}, "depart_after_s", "greater than 0"),
        ({"depart_after_s": "5"}, "depart_after_s", "valid number"),
        ({"max_tags": 0}, "max_tags", "greater than or equal to 1"),
        ({"zones": {1: ""}}, "zones.1", "at least 1 character"),
        ({"forward_reads": "yes"}, "forward_reads", "valid boolean"),
        ({"depart_after": 5}, "depart_after", "Extra inputs are not permitted"),
    ],
)
def test_option_errors_name_the_field(options: dict[str, Any], location: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SmoothingOptions(**options)
    [error] = caught.value.errors()
    assert ".".join(str(part) for part in error["loc"]) == location
    assert re.search(message, error["msg"]), error["msg"]


def test_options_defaults_and_normalisation() -> None:
    options = SmoothingOptions(zones={1: "lane1"}, lanes=("lane1",), include=("3008ab",))
    assert options.depart_after_s == 5.0
    assert options.flow_period_s == 60
    assert options.max_tags == 10_000
    assert options.forward_reads is False
    assert options.include == ("3008AB",)
    with pytest.raises(ValidationError):
        options.max_tags = 5


def test_lanes_without_antenna() -> None:
    options = SmoothingOptions(zones={1: "lane1"}, lanes=("lane1", "lane2", "lane3"))
    assert options.lanes_without_antenna({1: "north", 2: "lane2", 3: None}) == ["lane3"]


# --------------------------------------------------------------------------------------------- chain


class Tagger(Processor):
    """Marks every event it sees; drops rfid.moved (a real processor of the contract, for the chain)."""

    def __init__(self) -> None:
        self.seen = 0

    def process(self, event: Event) -> list[Event]:
        self.seen += 1
        if event.kind == "rfid.moved":
            return []
        return [Event(event.device, event.kind, event.ts, {**event.data, "tagged": True})]

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen}


def test_chain_feeds_process_and_tick_output_through_later_processors() -> None:
    tagger = Tagger()
    chain = Chain([smoothing(depart_after_s=5), tagger])
    [arrived] = chain.process(read(SGTIN_A, 1.0))
    assert arrived.kind == "rfid.arrived"
    assert arrived.data["tagged"] is True
    assert chain.process(read(SGTIN_A, 2.0)) == []  # absorbed by smoothing: the tagger never sees it
    [departed] = chain.tick(10.0)
    assert departed.data["tagged"] is True
    chain.process(read(SGTIN_B, 11.0))
    [stopped] = chain.flush()
    assert (stopped.data["reason"], stopped.data["tagged"]) == ("stopped", True)
    assert chain.counters()["seen"] == 4
    assert chain.counters()["arrived"] == 2
    assert Tagger().tick(1.0) == []
    assert Tagger().flush() == []


# ---------------------------------------------------------------------------------------- properties

EPCS = [SGTIN_A, SGTIN_B, GRAI_C, VENDOR, encode_epc("urn:epc:id:sscc:0614141.1234567890").hex()]

reads_and_ticks = st.lists(
    st.one_of(
        st.tuples(
            st.just("read"),
            st.integers(min_value=0, max_value=len(EPCS) - 1),  # tag
            st.integers(min_value=1, max_value=4),  # antenna
            st.one_of(st.none(), st.integers(min_value=-90, max_value=-30)),  # rssi
            st.floats(min_value=-2.0, max_value=4.0),  # since the previous step (< 0: reports out of order)
        ),
        st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=30.0)),
    ),
    max_size=80,
)


@given(
    reads_and_ticks,
    st.integers(min_value=1, max_value=6),  # max_tags
    st.floats(min_value=0.0, max_value=6.0),  # move hysteresis
    st.floats(min_value=0.0, max_value=3.0),  # move hold-off
    st.booleans(),  # reads in time order (else reports may come out of order, as LLRP's can)
)
def test_smoothing_state_machine(
    steps: list[tuple[Any, ...]], max_tags: int, hysteresis: float, holdoff: float, in_order: bool
) -> None:
    period, grace, depart = 10, 1.0, 3.0
    p = smoothing(
        depart_after_s=depart,
        zones={1: "lane1", 2: "lane1", 3: "lane2"},  # antenna 4: its own zone "4", not a lane
        lanes=["lane1", "lane2"],
        flow_period_s=period,
        flow_grace_s=grace,
        move_hysteresis_db=hysteresis,
        move_holdoff_s=holdoff,
        max_tags=max_tags,
    )
    t = latest = 1000.0
    out: list[Event] = list(p.tick(t))
    reads_per_tag: Counter[str] = Counter()
    for step in steps:
        if step[0] == "read":
            _, index, antenna, rssi, dt = step
            t += abs(dt) if in_order else dt
            out += p.process(read(EPCS[index], t, antenna=antenna, rssi=rssi))
            reads_per_tag[EPCS[index]] += 1
        else:
            t = latest + step[1]  # the gateway's clock only moves forward
            out += p.tick(t)
        latest = max(latest, t)
        assert p.tracked <= max_tags
        assert p.arrived == p.departed + p.tracked
    out += p.tick(latest + depart + period + grace + 1)  # every tag departs, every period closes
    assert p.tracked == 0
    assert p.arrived == p.departed

    visits: dict[str, list[Event]] = defaultdict(list)
    for event in out:
        if event.kind != "rfid.flow":
            visits[event.data["epc"]].append(event)
    for epc, events in visits.items():
        # Each visit: arrived, any moves, departed; in that order, none overlapping.
        open_visit: Event | None = None
        zone = None
        for event in events:
            if event.kind == "rfid.arrived":
                assert open_visit is None
                open_visit, zone = event, event.data["zone"]
            elif event.kind == "rfid.moved":
                assert open_visit is not None
                assert event.data["from_zone"] == zone != event.data["zone"]
                zone = event.data["zone"]
            else:
                assert event.kind == "rfid.departed"
                assert open_visit is not None
                assert event.data["zone"] == zone
                assert event.data["first_seen"] == open_visit.ts
                assert event.data["count"] == sum(a["count"] for a in event.data["antennas"])
                open_visit = None
        assert open_visit is None
        # Every read is in exactly one visit.
        assert sum(e.data["count"] for e in events if e.kind == "rfid.departed") == reads_per_tag[epc]

    # Lane counts: one event per lane per period, contiguous, each counting the distinct tags that arrived
    # in that lane during it. With reads in time order no arrival is late; out of order, some may be.
    expected: Counter[tuple[str, int]] = Counter()
    for key in {
        (e.data["zone"], int(e.ts // period) * period, e.data["epc"])
        for e in out
        if e.kind == "rfid.arrived" and e.data["zone"] in ("lane1", "lane2")
    }:
        expected[key[:2]] += 1
    emitted = [
        (e.data["lane"], e.data["period_start"], e.data["count"]) for e in out if e.kind == "rfid.flow"
    ]
    starts = sorted({start for _, start, _ in emitted})
    assert starts == list(range(starts[0], starts[-1] + period, period))
    assert len(emitted) == 2 * len(starts)
    counted = sum(count for _, _, count in emitted)
    uncounted = p.counters()["flow_uncounted"]
    if in_order:
        assert sorted(emitted) == sorted(
            (lane, start, expected[lane, start]) for lane in ("lane1", "lane2") for start in starts
        )
        assert counted == sum(expected.values())
        assert uncounted == 0
    else:
        assert counted <= sum(expected.values()) <= counted + uncounted
        assert all(count <= expected[lane, start] for lane, start, count in emitted)
