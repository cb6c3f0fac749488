"""config/examples/cellular-cabinet.yaml end to end: two simulated R2000 readers on ptys, ``edgegw run``, a
private Mosquitto; the operator's upstream gets every event as zstd-compressed MessagePack batches with topic
aliases, the city's only the lane counts and device statuses as plain JSON, both from the one buffer. Every
message is decoded as a consumer would: by its MQTT 5 Content Type and ``content-encoding`` user property."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from tests.broker import Mosquitto
from tests.e2e.harness import GatewayProcess, load_example
from tests.gateway.test_uplink_options import PropertySubscriber
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

EXAMPLE = "cellular-cabinet.yaml"


@pytest.fixture
async def readers(tmp_path: Path) -> AsyncIterator[list[R2000Simulator]]:
    options = SimOptions(tags=6, rate=200.0, seed=5, antennas=(1, 2))
    async with serve_pty(tmp_path / "ttyR1", options) as one, serve_pty(tmp_path / "ttyR2", options) as two:
        yield [one, two]


async def test_the_operator_gets_compressed_batches_and_the_city_its_counts(
    tmp_path: Path, broker: Mosquitto, readers: list[R2000Simulator]
) -> None:
    gw = "e2e-toll-gate"
    config = load_example(EXAMPLE)
    config["gateway"]["id"] = gw
    config["buffer"]["path"] = str(tmp_path / "buffer.db")
    config["metrics"] = {"listen": "127.0.0.1:0"}
    config["supervisor"] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    for upstream in config["upstreams"]:
        upstream["url"] = broker.url  # both platforms on the private broker, apart by their topic prefix
    operator, city = config["upstreams"]
    assert city["route"] == {"kinds": ["rfid.flow", "device.status"]}
    assert (operator["encoding"], operator["compression"], operator["topic_alias"]) == (
        "msgpack",
        "zstd",
        True,
    )
    toll, approach = config["devices"]
    toll["port"], approach["port"] = str(tmp_path / "ttyR1"), str(tmp_path / "ttyR2")
    approach["smoothing"] = {**approach["smoothing"], "depart_after_s": 1, "flow_period_s": 2}
    path = tmp_path / EXAMPLE
    path.write_text(yaml.safe_dump(config))

    to_operator = PropertySubscriber(broker, f"edgegw/{gw}/#")
    to_city = PropertySubscriber(broker, f"its/toll/{gw}/#")
    gateway = GatewayProcess(path)
    await gateway.start()
    try:
        await until(
            "the operator got 1,000 reads and the city lane counts of both lanes",
            lambda: (
                sum(1 for e in to_operator.events() if e["kind"] == "rfid.read") >= 1000
                and {e["data"]["lane"] for e in to_city.events() if e["kind"] == "rfid.flow"}
                == {"lane1", "lane2"}
            ),
            timeout=60,
        )
        assert await gateway.stop(signal.SIGTERM) == 0, gateway.log()
        # One buffer, one copy: after a clean stop (every upstream drained, batches not waiting for their
        # linger), everything the city got, the operator got too, with the same ids.
        await until(
            "the operator has every event the city has",
            lambda: {e["id"] for e in to_city.events()} <= {e["id"] for e in to_operator.events()},
        )
    finally:
        await gateway.kill()
        to_operator.close()
        to_city.close()

    operator_messages = [m for m in to_operator.snapshot() if not m[0].endswith("/status")]
    assert {(content_type, codec) for _, _, content_type, codec in operator_messages} == {
        ("application/msgpack", "zstd")
    }
    events = to_operator.events()
    seqs = [e["seq"] for e in events]
    assert len(seqs) == len(set(seqs))  # every event once
    reads = [m for m in operator_messages if m[0].endswith("/reader-1/rfid.read")]
    read_events = [e for e in events if e["kind"] == "rfid.read"]
    assert {e["device"] for e in read_events} == {"reader-1"}  # the approach reader's reads are smoothed
    assert len(read_events) > 10 * len(reads)  # batches: many reads per message
    assert {"rfid.read", "rfid.arrived", "rfid.flow", "device.status"} <= {e["kind"] for e in events}
    # The city: counts and statuses only, as the documented JSON (no properties).
    city_messages = [m for m in to_city.snapshot() if not m[0].endswith("/status")]
    assert {(content_type, codec) for _, _, content_type, codec in city_messages} == {(None, None)}
    assert set(Counter(e["kind"] for e in to_city.events())) <= {"rfid.flow", "device.status"}
