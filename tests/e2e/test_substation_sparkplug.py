"""The substation of config/examples/substation-sparkplug.yaml end to end: feeder meters (Modbus RTU on a real
pty) and a partial-discharge monitor (Modbus TCP) -> ``edgegw run`` -> a real Mosquitto, where a Sparkplug
host application written from the specification (tests/gateway/sparkplug_host.py) is the primary host, and
the city's subscriber gets our JSON from the same buffer. Nothing is born before the host says it is
online; births, aliases, seq and the device mapping of the example (renamed tags, an excluded point, forced
datatypes) are what the host sees; a stop ends with NDEATH."""

from __future__ import annotations

import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from firmware_sim import modbus as modbus_sim
from tests.broker import Mosquitto
from tests.e2e.harness import Collector, GatewayProcess, load_example
from tests.gateway.sparkplug_host import Host
from tests.waiting import until

pytestmark = pytest.mark.timeout(90)

EXAMPLE = "substation-sparkplug.yaml"
FLOAT, UINT16, DOUBLE, BOOLEAN = 9, 6, 10, 11


def site(tmp_path: Path, broker: Mosquitto, group: str, host_id: str, *, tty: Path, pd_port: int) -> Path:
    config: dict[str, Any] = load_example(EXAMPLE)
    config["gateway"]["id"] = "e2e-substation-sp"
    config["buffer"]["path"] = str(tmp_path / "buffer.db")
    config["supervisor"] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    config["metrics"] = {"listen": "127.0.0.1:0"}
    scada, city = config["upstreams"]
    assert (scada["kind"], city["kind"]) == ("sparkplug", "mqtt")
    scada.update(
        url=broker.url, group_id=group, primary_host_id=host_id, state_file=str(tmp_path / "scada.json")
    )
    scada["reconnect"] = {"initial_s": 0.05, "max_s": 0.3}
    city["url"] = broker.url
    for device in config["devices"]:
        if device["transport"] == "rtu":
            device.update(port=str(tty), parity="N", poll_s=0.3)  # a pty has no parity
        else:
            device.update(host="127.0.0.1", tcp_port=pd_port, poll_s=0.3)
    path = tmp_path / EXAMPLE
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


async def test_substation_reports_to_a_sparkplug_host_and_the_city(tmp_path: Path, broker: Mosquitto) -> None:
    group = f"substations-e2e-{int(time.time() * 1000) % 1_000_000}"
    host_id = f"dispatch-{group}"
    host = Host(broker, group, host_id=host_id).start()
    collector = Collector(broker.host, broker.port, "edgegw", "e2e-substation-sp", client_id="sub-e2e-sp")
    async with AsyncExitStack() as stack:
        tty = tmp_path / "ttyFeeders"
        await stack.enter_async_context(modbus_sim.serve_pty(tty, {1: "energy-meter", 2: "energy-meter"}))
        pd = await stack.enter_async_context(modbus_sim.serve_tcp("127.0.0.1", 0, {1: "pd-monitor"}))
        assert pd.port is not None
        gateway = GatewayProcess(site(tmp_path, broker, group, host_id, tty=tty, pd_port=pd.port))
        await gateway.start()
        try:
            # The city gets readings at once; the SCADA's births wait for its host to be online.
            await collector.wait_for(
                "readings of every device at the city's broker",
                lambda r: (
                    {m["device"] for m in r.of_kind("meter.reading")}
                    >= {"feeder-01", "feeder-02", "pd-transformer-1"}
                ),
                timeout=30,
            )
            assert host.snapshot() == []
            host.online(True)
            born = {"feeder-01", "feeder-02", "pd-transformer-1"}
            try:
                await until(
                    "every device born and reporting",
                    lambda: {r.device for r in host.snapshot() if r.kind == "DDATA"} >= born,
                )
            except AssertionError as err:
                raise AssertionError(f"{err}\n{gateway.log()[-3000:]}") from None
            assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()[-3000:]
            await until("NDEATH at the stop", lambda: len(host.deaths) == 1)
        finally:
            await gateway.kill()
            collector.close()
            host.stop()
    assert host.violations == []
    messages = host.snapshot()
    assert messages[0].kind == "NBIRTH"
    feeder = next(r for r in messages if r.kind == "DBIRTH" and r.device == "feeder-01")
    types = {m.name: m.datatype for m in feeder.payload.metrics}
    # The example's mapping: SCADA tag names, forced Float, the serial number left out.
    assert types["Voltage/A"] == FLOAT and types["Current/A"] == FLOAT and types["Power/Active"] == FLOAT
    assert types["Energy/Import"] == DOUBLE and types["frequency"] == DOUBLE and types["alarm"] == BOOLEAN
    assert "serial_number" not in types and "voltage_a" not in types
    pd_birth = next(r for r in messages if r.kind == "DBIRTH" and r.device == "pd-transformer-1")
    assert {m.name: m.datatype for m in pd_birth.payload.metrics}["pd_ch1"] == UINT16
    voltages = host.values("feeder-01", "Voltage/A")
    assert voltages and all(isinstance(v, float) and 200 < v < 260 for v, _ in voltages)
