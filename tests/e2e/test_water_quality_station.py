"""The water-quality station of config/examples/water-quality-station.yaml end to end: Modbus TCP analysers
(the Modbus simulator) -> ``edgegw run`` -> the HJ 212 platform simulator and a real Mosquitto at once. The
platform gets real-time uploads (CN 2011) with the analysers' values under their pollutant codes, every
packet with a good CRC and length, the station's MN, ST and PW; the plant's broker gets every reading as
our JSON; and when the platform goes away, the broker's readings keep flowing."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from firmware_sim import hj212 as platform
from firmware_sim import modbus as modbus_sim
from firmware_sim.modbus import SimPoint
from protocols.modbus import ByteOrder, DataType, Table
from tests.broker import Mosquitto
from tests.e2e.harness import EXAMPLES, Collector, GatewayProcess, Received, load_example

pytestmark = pytest.mark.timeout(90)

EXAMPLE = "water-quality-station.yaml"
WAIT_S = 30.0


def flow_meter() -> tuple[SimPoint, ...]:
    """The example's flow meter: holding 0-1 flow rate m3/h and 4-5 totaliser m3, low word first."""
    h, cdab = Table.HOLDING, ByteOrder.CDAB
    return (
        SimPoint("flow_rate", h, 0, DataType.FLOAT32, lambda t, u: 812.5, cdab, unit="m3/h"),
        SimPoint("total_forward", h, 4, DataType.UINT32, lambda t, u: 1_234_567, cdab, unit="m3"),
    )


def site(tmp_path: Path, broker: Mosquitto, platform_port: int, ports: dict[str, int]) -> Path:
    config: dict[str, Any] = load_example(EXAMPLE)
    config["gateway"]["id"] = "e2e-wq-station"
    config["buffer"]["path"] = str(tmp_path / "buffer.db")
    config["supervisor"] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    config["metrics"] = {"listen": "127.0.0.1:0"}
    epb, plant = config["upstreams"]
    assert (epb["kind"], plant["kind"]) == ("hj212", "mqtt")
    shutil.copy(EXAMPLES / epb["password_file"], tmp_path / epb["password_file"])
    epb.update(
        address=f"127.0.0.1:{platform_port}",
        state_file=str(tmp_path / "epb.json"),
        realtime_s=0.3,
        reconnect={"initial_s": 0.05, "max_s": 0.3},
    )
    plant["url"] = broker.url
    for device in config["devices"]:
        device.update(host="127.0.0.1", tcp_port=ports[device["name"]], poll_s=0.2)
    path = tmp_path / EXAMPLE
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def readings(r: Received, device: str) -> list[dict[str, Any]]:
    return sorted((m for m in r.of_kind("meter.reading") if m["device"] == device), key=lambda m: m["seq"])


async def test_water_quality_station_reports_to_the_platform_and_the_broker(
    tmp_path: Path, broker: Mosquitto
) -> None:
    example = load_example(EXAMPLE)
    epb = example["upstreams"][0]
    collector = Collector(broker.host, broker.port, "wwtp", "e2e-wq-station", client_id="sub-e2e-wq-station")
    async with AsyncExitStack() as stack:
        quality = await stack.enter_async_context(modbus_sim.serve_tcp("127.0.0.1", 0, {1: "water-quality"}))
        flow = await stack.enter_async_context(modbus_sim.serve_tcp("127.0.0.1", 0, {1: flow_meter()}))
        quality.pin(1, "cod", 23.4)
        quality.pin(1, "ammonia", 0.42)
        quality.pin(1, "ph", 7.25)
        options = platform.SimOptions(password="123456", mns=(epb["mn"],))
        epb_platform = platform.serve_tcp("127.0.0.1", 0, options)
        sim = await epb_platform.__aenter__()
        platform_up = True
        assert sim.port is not None and quality.port is not None and flow.port is not None
        gateway = GatewayProcess(
            site(tmp_path, broker, sim.port, {"outfall-quality": quality.port, "outfall-flow": flow.port})
        )
        await gateway.start()
        try:
            # The platform: real-time uploads carrying every pollutant, from both analysers.
            def complete(u: platform.Upload) -> bool:
                return u.cn == "2011" and {"w01018-Rtd", "w21003-Rtd", "w01001-Rtd", "w00000-Rtd"} <= set(
                    u.values
                )

            try:
                await until_upload(sim, complete)
            except AssertionError as err:
                raise AssertionError(f"{err}\n{gateway.log()[-3000:]}") from None
            realtime = next(u for u in sim.uploads if complete(u))
            assert realtime.values["w01018-Rtd"] == "23.4" and realtime.values["w21003-Rtd"] == "0.42"
            assert realtime.values["w01001-Rtd"] == "7.25" and realtime.values["w00000-Rtd"] == "812.5"
            assert {realtime.values[f"{c}-Flag"] for c in ("w01018", "w21003", "w01001", "w00000")} == {"N"}
            assert (realtime.mn, realtime.st) == (epb["mn"], "32")
            assert sim.stats.bad_crc == sim.stats.bad_length == sim.stats.decode_errors == 0
            assert sim.stats.refused == 0 and sim.stats.replies >= 1  # PW and MN accepted
            # The plant's broker: every reading of both devices, as our JSON.
            await collector.wait_for(
                "readings of both analysers",
                lambda r: bool(readings(r, "outfall-quality")) and bool(readings(r, "outfall-flow")),
                timeout=WAIT_S,
            )
            first = readings(collector.snapshot(), "outfall-quality")[0]["data"]["values"]
            assert first["cod"] == 23.4
            # The platform goes away: the broker's readings keep flowing (one dead upstream delays no other).
            platform_up = False
            await epb_platform.__aexit__(None, None, None)
            seen = len(collector.snapshot().of_kind("meter.reading"))
            await collector.wait_for(
                "readings after the platform went away",
                lambda r: len(r.of_kind("meter.reading")) >= seen + 10,
                timeout=WAIT_S,
            )
            assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()[-3000:]
        finally:
            await gateway.kill()
            collector.close()
            if platform_up:
                await epb_platform.__aexit__(None, None, None)


async def until_upload(sim: platform.PlatformSim, accept: Callable[[platform.Upload], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        await sim.wait_for(lambda s: any(accept(u) for u in sim.uploads))
