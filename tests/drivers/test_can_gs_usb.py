"""The can driver on ``interface: gs_usb``: python-can's gs_usb interface, the gs-usb package and pyusb, all
real, on a candleLight adapter faked as a pyusb backend (:mod:`tests.drivers.fake_gs_usb`). What is asserted
is what reached the adapter (its bit timing, its mode flags, the frames on its OUT endpoint) and what the
driver made of the frames it served; waits are on events and on the adapter's state, never on time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from drivers.can import CanDriver, CanOptions
from drivers.commands import CommandRefused
from drivers.kinds import CAN_FRAME, J1939_PGN
from drivers.testing import CONNECTED, DISCONNECTED, FAILED, running
from protocols import j1939
from tests.drivers.fake_gs_usb import (
    CAN_EFF_FLAG,
    CANDLELIGHT_FEATURES,
    LISTEN_ONLY,
    MODE_RESET,
    MODE_START,
    FakeBackend,
    FakeCandleLight,
    install,
)
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

EVERY: dict[str, Any] = {"default": {}}
"""Rate control off: every value heard is reported."""


@pytest.fixture
def adapter() -> FakeCandleLight:
    return FakeCandleLight()


@pytest.fixture
def usb_bus(monkeypatch: pytest.MonkeyPatch, adapter: FakeCandleLight) -> Iterator[FakeBackend]:
    yield install(monkeypatch, adapter)


def options(**extra: Any) -> CanOptions:
    raw: dict[str, Any] = {"interface": "gs_usb", "channel": "0", "j1939": True, "report": EVERY}
    raw.update(extra)
    return CanOptions.model_validate(raw)


def serve_pgn(adapter: FakeCandleLight, pgn: int, source: int, values: dict[str, Any]) -> None:
    adapter.serve(j1939.can_id(pgn, source), j1939.PGNS[pgn].encode(values))


@pytest.mark.parametrize("bitrate", [250000, 500000])
async def test_j1939_is_decoded_listen_only_at_the_configured_bitrate(
    usb_bus: FakeBackend, adapter: FakeCandleLight, bitrate: int
) -> None:
    opts = options(bitrate=bitrate)
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(CONNECTED)
        serve_pgn(adapter, 65265, 0x00, {"wheel_based_vehicle_speed": 87.25, "parking_brake_switch": 0})
        serve_pgn(adapter, 61444, 0x00, {"engine_speed": 1650.0})
        await run.until_events(J1939_PGN, 2)
        with pytest.raises(CommandRefused):
            await run.command(None, "transmit", {"id": 0x18EA00F9, "data": "ECFE00"})
    assert run.states() == [CONNECTED]
    by_name = {d["name"]: d for d in run.data(J1939_PGN)}
    ccvs = by_name["CCVS"]
    assert ccvs["pgn"] == 65265 and ccvs["source"] == 0 and ccvs["destination"] is None
    assert ccvs["values"] == {"wheel_based_vehicle_speed": 87.25, "parking_brake_switch": 0}
    assert ccvs["units"] == {"wheel_based_vehicle_speed": "km/h"}
    assert by_name["EEC1"]["values"] == {"engine_speed": 1650.0}
    # what the adapter was told: the configured bit rate, and a start in listen-only mode, never a normal one
    assert adapter.bitrate == bitrate
    assert [flags for mode, flags in adapter.modes if mode == MODE_START] == [LISTEN_ONLY]
    assert adapter.sent == []
    # on a real adapter's clock a timestamp would count microseconds since its start: events carry host time
    assert all(event.ts > 1_000_000_000 for event in run.of(J1939_PGN))


async def test_transmit_puts_the_frame_on_the_out_endpoint_when_not_listen_only(
    usb_bus: FakeBackend, adapter: FakeCandleLight
) -> None:
    opts = options(listen_only=False, raw_frames=True)
    async with running({"body": lambda: CanDriver("body", opts)}) as run:
        await run.until_state(CONNECTED)
        assert adapter.started and adapter.flags & LISTEN_ONLY == 0
        result = await run.command(None, "transmit", {"id": 0x18EA00F9, "data": "ECFE00"})
        assert result == {"id": 0x18EA00F9, "extended": True, "data": "ecfe00"}
        (sent,) = adapter.sent
        assert sent.can_id == 0x18EA00F9 | CAN_EFF_FLAG and sent.dlc == 3 and sent.data == b"\xec\xfe\x00"
        # the adapter echoes what it transmitted; the echo is its receipt, not a frame heard on the bus: a
        # frame served after it arrives, the echo does not
        adapter.serve(0x18FEF100, bytes(8))
        await run.until_events(CAN_FRAME, 1)
    assert [(d["id"], d["data"]) for d in run.data(CAN_FRAME)] == [(0x18FEF100, "00" * 8)]
    assert [flags for mode, flags in adapter.modes if mode == MODE_START] == [0]  # normal mode, once


async def test_an_adapter_that_cannot_listen_only_is_refused(
    usb_bus: FakeBackend, adapter: FakeCandleLight
) -> None:
    adapter.features = CANDLELIGHT_FEATURES & ~LISTEN_ONLY
    opts = options()
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(FAILED)
    (status,) = run.statuses()
    assert "gs_usb adapter 0 (1d50:606f on bus 1 address 5) cannot listen only" in status["reason"]
    assert "GS_CAN_FEATURE_LISTEN_ONLY" in status["reason"]
    assert "listen_only: false" in status["reason"]
    assert not any(mode == MODE_START for mode, _ in adapter.modes)  # never on the bus, not for a moment
    assert not adapter.started


async def test_an_unplugged_adapter_is_reported_and_reopened_when_it_comes_back(
    usb_bus: FakeBackend, adapter: FakeCandleLight
) -> None:
    opts = options()
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(CONNECTED)
        serve_pgn(adapter, 65265, 0x00, {"wheel_based_vehicle_speed": 10.0})
        await run.until_events(J1939_PGN, 1)
        adapter.unplug()
        await run.until_state(DISCONNECTED)
        assert "No such device" in run.statuses()[-1]["reason"]
        # retried with backoff while it is away: each attempt finds no adapter
        await run.until_state(DISCONNECTED, 3)
        assert "no gs_usb adapter 0" in run.statuses()[-1]["reason"]
        assert run.statuses()[-1]["retry_in_s"] > 0
        adapter.plug()
        await run.until("reconnected", lambda: run.states()[-1] == CONNECTED)
        assert adapter.started and adapter.flags == LISTEN_ONLY  # reopened listen-only too
        serve_pgn(adapter, 65265, 0x00, {"wheel_based_vehicle_speed": 20.0})
        await run.until_events(J1939_PGN, 2)
    speeds = [d["values"]["wheel_based_vehicle_speed"] for d in run.data(J1939_PGN)]
    assert speeds == [10.0, 20.0]
    starts = [flags for mode, flags in adapter.modes if mode == MODE_START]
    assert starts == [LISTEN_ONLY, LISTEN_ONLY]  # started once per plug-in, listen-only both times


async def test_closing_the_device_resets_the_controller(
    usb_bus: FakeBackend, adapter: FakeCandleLight
) -> None:
    opts = options()
    async with running({"tap": lambda: CanDriver("tap", opts)}) as run:
        await run.until_state(CONNECTED)
        assert adapter.started
    # the reader thread shuts the bus down once the device has left: the controller leaves the bus, and was
    # never started in another mode on the way (python-can's own shutdown starts it in normal mode)
    await until("the controller reset", lambda: not adapter.started)
    assert adapter.modes == [(MODE_START, LISTEN_ONLY), (MODE_RESET, 0)]
