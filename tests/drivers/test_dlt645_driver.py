"""The dlt645 driver against the simulated meter line, over a real pseudo-terminal and a real TCP socket, run
as the gateway runs it (drivers.testing); several meters share one line through drivers.bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers import bus
from drivers.counters import BYTES_SKIPPED, DECODE_ERRORS, FRAMES_REJECTED, POLLS, POLLS_MISSED
from drivers.dlt645 import DEFAULT_POINTS, Dlt645Driver, Dlt645Options, Dlt645Point
from drivers.kinds import METER_READING
from drivers.testing import Harness, running
from firmware_sim.dlt645 import Dlt645Simulator, Faults, SimOptions, serve_pty, serve_tcp
from gateway.config import ConfigError, load_config
from protocols import dlt645

pytestmark = pytest.mark.timeout(60)

METERS = ("000000000001", "000000000002", "000000000003", "000000000004")
FAST = {"poll_s": 0.02, "timeout_s": 0.5}


class Site(Harness):
    def readings(self, device: str) -> list[dict[str, Any]]:
        return self.data(METER_READING, device)


@asynccontextmanager
async def site(
    devices: dict[str, dict[str, Any]], clock: Callable[[], float] | None = None
) -> AsyncIterator[Site]:
    """The devices running; ``clock``: theirs for ``max_interval_s`` (default: the real monotonic one)."""
    makers: dict[str, Callable[[], Dlt645Driver]] = {}
    for name, options in devices.items():
        opts = Dlt645Options(**options)

        def make(name: str = name, opts: Dlt645Options = opts) -> Dlt645Driver:
            return Dlt645Driver(name, opts) if clock is None else Dlt645Driver(name, opts, clock=clock)

        makers[name] = make
    async with running(makers, Site, timeout=30) as run:
        yield run


def check_values(reading: dict[str, Any], sim: Dlt645Simulator, address: str) -> None:
    """Every value was sent intact by that meter for that identifier; every unit is the table's (none for
    a dimensionless value)."""
    assert set(reading["units"]) <= set(reading["values"])
    for name, value in reading["values"].items():
        item = dlt645.find_item(name)
        assert item is not None
        assert reading["units"].get(name, "") == item.unit
        assert value in sim.sent[(address, item.di)], (name, value)


# ------------------------------------------------------------------------------------------ options


def test_options_defaults_and_points() -> None:
    opts = Dlt645Options(port="/dev/ttyUSB0", address="000102030425")
    assert (opts.baudrate, opts.parity, opts.preamble, opts.retries) == (2400, "E", 4, 1)
    assert [item.name for item in opts.items] == list(DEFAULT_POINTS)
    opts = Dlt645Options.model_validate(
        {
            "host": "10.0.0.7",
            "tcp_port": 4001,
            "address": " 000000000001 ",
            "points": ["02010100", "frequency"],
        }
    )
    assert opts.address == "000000000001"
    assert [item.name for item in opts.items] == ["voltage_a", "frequency"]
    assert opts.bus_key == "tcp:10.0.0.7:4001"


def test_points_in_the_short_and_the_long_form() -> None:
    opts = Dlt645Options.model_validate(
        {
            "port": "/dev/ttyUSB0",
            "address": "000000000001",
            "points": [
                "energy_active_forward",
                {"point": "02010100", "deadband": " 0.5 %", "max_interval_s": 300},
                {"point": "current_a", "deadband": 0.05},
                {"point": "power_factor", "report_on_change": True},
                {"point": "frequency"},
            ],
        }
    )
    assert [item.name for item in opts.items] == [
        "energy_active_forward",
        "voltage_a",
        "current_a",
        "power_factor",
        "frequency",
    ]
    assert (
        opts.points[0]
        == Dlt645Point(point="energy_active_forward")
        == opts.points[4].model_copy(update={"point": "energy_active_forward"})
    )
    assert opts.points[1] == Dlt645Point(point="02010100", deadband="0.5%", max_interval_s=300)
    assert opts.points[2].deadband == 0.05 and opts.points[3].report_on_change


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"address": "12345"}, "not a DL/T 645 meter address"),
        ({"address": "00000000000A"}, "12 BCD digits"),
        ({"address": "0000000000001"}, "12 BCD digits"),
        ({"address": 102030425}, "quote the address"),
        ({"address": "AAAAAAAAAAAA"}, "wildcard address"),
        ({"address": "999999999999"}, "broadcast address"),
        ({"points": ["voltage_z"]}, "not a known data identifier"),
        ({"points": [{"point": "voltage_z"}]}, "not a known data identifier"),
        ({"points": ["02010100", "voltage_a"]}, "repeats '02010100'"),
        ({"points": ["voltage_a", {"point": "02010100", "deadband": 1}]}, "repeats 'voltage_a'"),
        ({"points": [2010100]}, "quote the data identifier"),
        ({"points": [{"name": "voltage_a", "deadband": 1}]}, "give the data identifier as point:"),
        ({"points": [{"deadband": 1}]}, "point\n  Field required"),
        ({"points": [{"point": "voltage_a", "deadband": "5 pc"}]}, "a deadband is a number"),
        ({"points": [{"point": "voltage_a", "max_interval_s": 0}]}, "greater than 0"),
        ({"points": [{"point": "voltage_a", "on_change": True}]}, "on_change"),
        ({"points": []}, "at least 1"),
        ({"host": "127.0.0.1", "tcp_port": 1}, "not both"),
        ({"port": None}, "give port"),
        ({"baudrate": 115200}, "baudrate"),
        ({"preamble": 5}, "preamble"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_options_reject_what_cannot_work(options: dict[str, Any], message: str) -> None:
    given = {"port": "/dev/ttyUSB0", "address": "000000000001", **options}
    with pytest.raises(ValidationError, match=message):
        Dlt645Options(**given)


# ------------------------------------------------------------------------------------------ on a line


async def test_meters_on_one_pty_line_keep_polling_while_one_is_dead(tmp_path: Path) -> None:
    tty = str(tmp_path / "tty")
    options = SimOptions(meters=METERS, dead=frozenset({METERS[2]}))
    points = ["energy_active_forward", "voltage_a", "current_a", "power_active", "power_factor", "frequency"]
    devices = {f"meter-{a[-1]}": {"port": tty, "address": a, "points": points, **FAST} for a in METERS}
    async with serve_pty(tmp_path / "tty", options) as sim, site(devices) as run:
        live = ["meter-1", "meter-2", "meter-4"]
        await run.until(
            "20 readings from each live meter and the dead one reported",
            lambda: (
                all(len(run.readings(d)) >= 20 for d in live)
                and any(s["state"] == "disconnected" for s in run.statuses("meter-3"))
            ),
        )
        # One line, shared: a single bus, one session on the simulator.
        assert list(bus.buses()) == [bus.serial_key(str(tty))]  # the real path: every name of the port
        assert sim.stats.connections == 1
    for device in live:
        address = f"00000000000{device[-1]}"
        assert run.statuses(device)[0] == {"state": "connected", "detail": f"meter {address}"}
        assert [s["state"] for s in run.statuses(device)] == ["connected"]
        for reading in run.readings(device):
            assert list(reading["values"]) == points
            check_values(reading, sim, address)
        assert run.counters(device).get("bytes_skipped", 0) == 0
    assert run.readings("meter-3") == []
    dead = run.statuses("meter-3")[0]
    assert dead["state"] == "disconnected" and "no answer within 0.5 s" in dead["reason"]


async def test_two_meters_behind_one_tcp_converter() -> None:
    all_points = [item.name for item in dlt645.ITEMS]
    devices = {
        "a": {"host": "127.0.0.1", "address": METERS[0], "points": all_points, **FAST},
        "b": {"host": "127.0.0.1", "address": METERS[1], "points": ["00010000", "0x02800002"], **FAST},
    }
    async with serve_tcp("127.0.0.1", 0, SimOptions(meters=METERS[:2], preamble=0)) as sim:
        for options in devices.values():
            options["tcp_port"] = sim.port
        async with site(devices) as run:
            await run.until("3 readings each", lambda: all(len(run.readings(d)) >= 3 for d in devices))
            assert sim.stats.connections == 1
    for reading in run.readings("a"):
        assert list(reading["values"]) == all_points
        assert "power_factor" not in reading["units"] and reading["units"]["voltage_a"] == "V"
        check_values(reading, sim, METERS[0])
    for reading in run.readings("b"):
        assert reading["units"] == {"energy_active_forward": "kWh", "frequency": "Hz"}
        check_values(reading, sim, METERS[1])
    # Energy never runs backwards from one reading to the next.
    energy = [r["values"]["energy_active_forward"] for r in run.readings("b")]
    assert energy == sorted(energy)


async def test_an_echoing_adapter_is_not_taken_for_a_meter(tmp_path: Path) -> None:
    devices = {"m": {"port": str(tmp_path / "tty"), "address": METERS[0], "points": ["voltage_a"], **FAST}}
    async with (
        serve_pty(tmp_path / "tty", SimOptions(meters=METERS[:1], echo=True)) as sim,
        site(devices) as run,
    ):
        await run.until("5 readings", lambda: len(run.readings("m")) >= 5)
    for reading in run.readings("m"):
        check_values(reading, sim, METERS[0])
    counters = run.counters("m")
    for counter in ("bytes_skipped", "wrong_address", "bad_replies", "points_missed"):
        assert counters.get(counter, 0) == 0, counter
    assert [s["state"] for s in run.statuses("m")] == ["connected"]


async def test_damaged_replies_are_counted_retried_and_never_decoded(tmp_path: Path) -> None:
    faults = Faults(noise=0.1, bad_checksum=0.1, drop=0.05, wrong_address=0.1, wrong_length=0.1)
    options = SimOptions(meters=METERS[:2], seed=5, faults=faults)
    points = ["voltage_a", "current_a", "power_active", "frequency"]
    devices = {
        f"meter-{a[-1]}": {
            "port": str(tmp_path / "tty"),
            "address": a,
            "points": points,
            **FAST,
            "retries": 3,
            "timeout_s": 0.15,
        }
        for a in METERS[:2]
    }
    async with serve_pty(tmp_path / "tty", options) as sim, site(devices) as run:
        await run.until(
            "20 readings each, through the damage",
            lambda: all(len(run.readings(d)) >= 20 for d in devices),
        )
    assert sim.stats.corrupted > 0 and sim.stats.misleading > 0
    totals: dict[str, int] = {}
    for device, address in (("meter-1", METERS[0]), ("meter-2", METERS[1])):
        for reading in run.readings(device):
            check_values(reading, sim, address)
        for name, n in run.counters(device).items():
            totals[name] = totals.get(name, 0) + n
    # Each kind of damage was seen and counted somewhere on the line.
    assert totals.get("frames_rejected", 0) > 0
    assert totals.get("wrong_address", 0) > 0
    assert totals.get("bad_values", 0) > 0
    assert totals.get("bytes_skipped", 0) > 0


async def test_damaged_replies_count_under_the_well_known_names(tmp_path: Path) -> None:
    # edgegw_decode_errors, edgegw_framer_bytes_skipped and edgegw_framer_frames_rejected read these.
    faults = Faults(noise=0.2, bad_checksum=0.2, wrong_length=0.3)
    options = SimOptions(meters=METERS[:1], seed=11, faults=faults)
    device: dict[str, Any] = {"port": str(tmp_path / "tty"), "address": METERS[0], "retries": 3, **FAST}
    device["points"] = ["voltage_a", "frequency"]
    async with serve_pty(tmp_path / "tty", options) as sim, site({"m": device}) as run:
        await run.until("20 readings through the damage", lambda: len(run.readings("m")) >= 20)
    for reading in run.readings("m"):
        check_values(reading, sim, METERS[0])
    counters = run.counters("m")
    # A value of the wrong length is a reply that passed the framer and does not decode.
    assert counters[DECODE_ERRORS] > 0
    assert counters[DECODE_ERRORS] == counters.get("bad_values", 0) + counters.get("bad_replies", 0)
    assert counters[FRAMES_REJECTED] > 0 and counters[BYTES_SKIPPED] > 0


async def test_a_poll_longer_than_its_period_counts_the_polls_it_missed(tmp_path: Path) -> None:
    # Each reply takes at least 0.05 s: a poll of three points lasts at least 0.15 s, so at least six of the
    # 0.02 s periods after each poll start are skipped (never a burst of late polls to catch up).
    options = SimOptions(meters=METERS[:1], reply_delay_s=0.05)
    device = {
        "port": str(tmp_path / "tty"),
        "address": METERS[0],
        "points": ["voltage_a", "voltage_b", "frequency"],
        **FAST,
    }
    async with serve_pty(tmp_path / "tty", options) as sim, site({"m": device}) as run:
        await run.until("5 readings", lambda: len(run.readings("m")) >= 5)
    counters = run.counters("m")
    assert counters[POLLS_MISSED] >= 5 * 6
    assert counters[POLLS] >= 5
    assert "polls_overrun" not in counters
    for reading in run.readings("m"):
        check_values(reading, sim, METERS[0])


def test_the_driver_declares_what_it_emits() -> None:
    assert Dlt645Driver.emits == {METER_READING}


async def test_a_refused_identifier_is_left_out_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    options = SimOptions(meters=METERS[:2], unsupported=frozenset({0x02800002}))
    async with serve_tcp("127.0.0.1", 0, options) as sim:
        link = {"host": "127.0.0.1", "tcp_port": sim.port, **FAST}
        devices = {
            "m": {**link, "address": METERS[0], "points": ["voltage_a", "frequency"]},
            "only-refused": {**link, "address": METERS[1], "points": ["frequency"]},
        }
        async with site(devices) as run:
            await run.until(
                "3 readings, and 3 empty polls",
                lambda: (
                    len(run.readings("m")) >= 3 and run.counters("only-refused").get("empty_polls", 0) >= 3
                ),
            )
    for reading in run.readings("m"):
        assert list(reading["values"]) == ["voltage_a"]
        check_values(reading, sim, METERS[0])
    assert run.counters("m")["meter_errors"] >= 3
    assert [s["state"] for s in run.statuses("m")] == ["connected"]
    # A meter that refuses everything asked answers all the same: connected, but no reading to emit.
    assert run.readings("only-refused") == []
    assert [s["state"] for s in run.statuses("only-refused")] == ["connected"]
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.endswith(".m")]
    assert refusals == [
        "frequency (02800002): meter refused function 0x11: no such data (the meter does not "
        "have this data identifier)"
    ]


async def test_a_slow_meter_times_out_and_the_others_keep_polling(tmp_path: Path) -> None:
    tty = str(tmp_path / "tty")
    devices = {
        f"meter-{a[-1]}": {"port": tty, "address": a, "points": ["voltage_a"], **FAST} for a in METERS[:3]
    }
    async with serve_pty(tmp_path / "tty", SimOptions(meters=METERS[:3])) as sim, site(devices) as run:
        await run.until("first readings", lambda: all(run.readings(d) for d in devices))
        sim.set_delay(METERS[1], 2.0)  # beyond both attempts (2 x 0.5 s)
        await run.until(
            "meter-2 timed out",
            lambda: any(s["state"] == "disconnected" for s in run.statuses("meter-2")),
        )
        before = {d: len(run.readings(d)) for d in ("meter-1", "meter-3")}
        await run.until(
            "10 more readings from the others",
            lambda: all(len(run.readings(d)) >= before[d] + 10 for d in before),
        )
        sim.set_delay(METERS[1], 0.0)
        count = len(run.readings("meter-2"))
        await run.until("meter-2 back", lambda: len(run.readings("meter-2")) > count)
    assert "no answer" in next(s for s in run.statuses("meter-2") if s["state"] == "disconnected")["reason"]
    for device in ("meter-1", "meter-3"):
        assert [s["state"] for s in run.statuses(device)] == ["connected"]


async def test_an_unplugged_adapter_is_retried_until_it_is_back(tmp_path: Path) -> None:
    tty = str(tmp_path / "tty")
    devices = {
        f"meter-{a[-1]}": {"port": tty, "address": a, "points": ["voltage_a"], **FAST} for a in METERS[:2]
    }
    async with serve_pty(tmp_path / "tty", SimOptions(meters=METERS[:2])) as sim, site(devices) as run:
        await run.until("first readings", lambda: all(run.readings(d) for d in devices))
        await sim.disconnect(downtime=0.2)
        await run.until(
            "both connected again",
            lambda: all(sum(s["state"] == "connected" for s in run.statuses(d)) >= 2 for d in devices),
        )
        counts = {d: len(run.readings(d)) for d in devices}
        await run.until("readings again", lambda: all(len(run.readings(d)) > counts[d] for d in devices))
    for device in devices:
        assert run.statuses(device)[1]["state"] == "disconnected"


async def test_a_missing_port_is_retried_with_its_reason(tmp_path: Path) -> None:
    devices = {"m": {"port": str(tmp_path / "no-such-tty"), "address": METERS[0], **FAST}}
    async with site(devices) as run:
        await run.until("three failed attempts", lambda: len(run.statuses("m")) >= 3)
    assert all(s["state"] == "disconnected" and "no-such-tty" in s["reason"] for s in run.statuses("m")[:3])


async def test_meters_on_one_line_must_agree_on_its_settings(tmp_path: Path) -> None:
    tty = str(tmp_path / "tty")
    devices = {
        "a": {"port": tty, "address": METERS[0], **FAST},
        "b": {"port": tty, "address": METERS[1], "baudrate": 9600, **FAST},
    }
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serve_pty(tmp_path / "tty", SimOptions(meters=METERS[:2])))
        run = await stack.enter_async_context(site(devices))
        await run.until(
            "one of them refused",
            lambda: any(s["state"] == "failed" for d in devices for s in run.statuses(d)),
        )
    failed = [s for d in devices for s in run.statuses(d) if s["state"] == "failed"]
    assert "same settings" in failed[0]["reason"]


# ------------------------------------------------------------------------------------------ reporting


class Clock:
    """The monotonic clock the driver measures ``max_interval_s`` in, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_steady_point_waits_for_its_max_interval_and_a_change_is_reported(tmp_path: Path) -> None:
    tty = str(tmp_path / "tty")
    points = [
        {"point": "voltage_a", "deadband": 0.5, "max_interval_s": 300},
        {"point": "02020100", "report_on_change": True, "max_interval_s": 300},  # current_a
        "frequency",  # the short form: reported at every poll, so every poll is a reading
    ]
    devices = {
        "m": {"port": tty, "address": METERS[0], "points": points, **FAST},
        "quiet": {
            "port": tty,
            "address": METERS[1],
            "points": [{"point": "voltage_a", "deadband": 1}],
            **FAST,
        },
    }
    clock = Clock()
    async with serve_pty(tmp_path / "tty", SimOptions(meters=METERS[:2])) as sim:
        sim.pin(METERS[0], "voltage_a", 230.0)
        sim.pin(METERS[0], "current_a", 5.0)
        sim.pin(METERS[1], "voltage_a", 221.0)
        async with site(devices, clock) as run:

            async def readings(n: int) -> list[dict[str, Any]]:
                """Meter m's readings from now on, once there are ``n``: all emitted after the clock was
                last moved (so decided by it); the first may have been read before the last pin."""
                start = len(run.readings("m"))
                await run.until(f"{n} more readings", lambda: len(run.readings("m")) >= start + n)
                return run.readings("m")[start:]

            def having(name: str, batch: list[dict[str, Any]]) -> list[float]:
                return [r["values"][name] for r in batch if name in r["values"]]

            first = (await readings(1))[0]
            assert first["values"].keys() == {"voltage_a", "current_a", "frequency"}
            assert (first["values"]["voltage_a"], first["values"]["current_a"]) == (230.0, 5.0)
            assert first["units"] == {"voltage_a": "V", "current_a": "A", "frequency": "Hz"}

            # Steady: not reported again while max_interval_s has not passed.
            for now in (0.0, 299.9):
                clock.now = now
                batch = await readings(10)
                assert all(r["values"].keys() == {"frequency"} for r in batch), batch
                assert all(r["units"] == {"frequency": "Hz"} for r in batch)

            # max_interval_s passed: both reported once, unchanged, and the interval starts again.
            clock.now = 300.0
            batch = await readings(5)
            assert batch[0]["values"].keys() == {"voltage_a", "current_a", "frequency"}
            assert (batch[0]["values"]["voltage_a"], batch[0]["values"]["current_a"]) == (230.0, 5.0)
            assert all(r["values"].keys() == {"frequency"} for r in batch[1:])

            # Within the deadband of the last report: not reported.
            sim.pin(METERS[0], "voltage_a", 230.4)
            batch = await readings(5)
            assert having("voltage_a", batch) == [] and having("current_a", batch) == []

            # 0.2 more is 0.6 from the last report (though 0.2 from the last poll): reported, once. Any
            # change of current_a is reported, once.
            sim.pin(METERS[0], "voltage_a", 230.6)
            sim.pin(METERS[0], "current_a", 5.001)
            batch = await readings(5)
            assert having("voltage_a", batch) == [230.6]
            assert having("current_a", batch) == [5.001]

            # A meter with nothing to report emits nothing, and counts it.
            await run.until("10 quiet polls", lambda: run.counters("quiet").get("polls_unchanged", 0) >= 10)
    for reading in run.readings("m"):
        check_values(reading, sim, METERS[0])
    assert [r["values"] for r in run.readings("quiet")] == [{"voltage_a": 221.0}]
    assert run.counters("m").get("polls_unchanged", 0) == 0
    assert [s["state"] for s in run.statuses("quiet")] == ["connected"]


# ------------------------------------------------------------------------------------------ configuration

HEAD = """gateway: {id: substation}
buffer: {path: buffer.db}
upstream: {mqtt: {url: "mqtt://127.0.0.1:1883"}}
devices:
"""


def test_a_config_file_takes_both_forms_and_names_the_line_of_a_bad_point(tmp_path: Path) -> None:
    good = """  - name: meter-1
    driver: dlt645
    port: /dev/ttyUSB0
    address: "000000000001"
    points:
      - energy_active_forward
      - "02010200"
      - {point: voltage_a, deadband: 0.5, max_interval_s: 300}
      - point: current_a
        deadband: "5%"
"""
    (tmp_path / "gateway.yaml").write_text(HEAD + good)
    (device,) = load_config(tmp_path / "gateway.yaml").devices
    assert isinstance(device.options, Dlt645Options)
    assert [item.name for item in device.options.items] == [
        "energy_active_forward",
        "voltage_b",
        "voltage_a",
        "current_a",
    ]
    assert device.options.points[3] == Dlt645Point(point="current_a", deadband="5%")

    bad = """  - name: meter-1
    driver: dlt645
    port: /dev/ttyUSB0
    address: "000000000001"
    points:
      - energy_active_forward
      - 02010100
      - {point: voltage_z}
      - {name: voltage_b, deadband: 0.5}
      - point: current_a
        deadband: 5 percent
      - {point: "00010000"}
"""
    (tmp_path / "gateway.yaml").write_text(HEAD + bad)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.yaml")
    problems = str(caught.value).splitlines()
    expected = [
        "gateway.yaml:11: devices[0].points[1]: quote the data identifier",
        "gateway.yaml:12: devices[0].points[2].point: 'voltage_z' is not a known data identifier",
        "gateway.yaml:13: devices[0].points[3]: give the data identifier as point:",
        "gateway.yaml:15: devices[0].points[4].deadband: a deadband is a number (0.5) or a percentage",
    ]
    assert len(problems) == len(expected), problems
    for line, start in zip(problems, expected, strict=True):
        assert f"/{start}" in line, (line, start)
