"""Several upstreams over one buffer (issue 14 §1): the `upstreams:` config, routes, one MQTT upstream that is
down for a long time while another flows, per-upstream backlog in metrics and `edgegw buffer inspect`,
`edgegw check`'s warning for a route that matches nothing, a crash between two upstreams' acks, and a
schema 1 buffer file taken over by the first upstream."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from drivers.event import Event
from gateway.app import Gateway
from gateway.cli import buffertool, status
from gateway.cli.commands import main as cli_main
from gateway.config import ConfigError, load_config
from gateway.config.models import MqttUpstreamOptions
from gateway.delivery.buffer import SqliteBuffer, everything
from gateway.delivery.forwarder import ForwarderSettings, MqttUpstream
from gateway.delivery.upstream import Route, UpstreamContext
from tests.broker import Mosquitto, Subscriber, free_port
from tests.gateway.ops_helpers import http_get, running, samples, value
from tests.waiting import until


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
gateway: {id: gw-1}
buffer: {path: buffer.db}
"""


# ---- config ----------------------------------------------------------------------------------------------


def test_upstreams_config_as_the_issue_writes_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + """\
upstreams:
  - {name: city, kind: mqtt, url: "mqtt://10.0.0.5:1883", prefix: edgegw}
  - name: meters
    kind: mqtt
    url: mqtts://broker.example:8883
    route: {kinds: [meter.reading, device.status], exclude_devices: ["lab-*"]}
    batch_max_events: 50
    batch_linger_ms: 200
    encoding: cbor
    compression: zstd
    topic_alias: true
""",
    )
    config = load_config(path)
    city, meters = config.upstream_list
    assert isinstance(city, MqttUpstreamOptions) and isinstance(meters, MqttUpstreamOptions)
    assert (city.name, city.kind, city.route.everything) == ("city", "mqtt", True)
    assert city.client_id == "edgegw-gw-1-city"  # two MQTT upstreams never share a client id
    assert meters.route.matches("m-1", "meter.reading")
    assert not meters.route.matches("lab-1", "meter.reading")
    assert not meters.route.matches("m-1", "rfid.read")
    assert (meters.encoding, meters.compression, meters.topic_alias) == ("cbor", "zstd", True)
    # The first MQTT upstream is the primary one: what `upstream.mqtt` readers (status, commands) see.
    assert config.upstream is not None and config.upstream.mqtt.url == "mqtt://10.0.0.5:1883"


def test_upstream_mqtt_is_still_one_upstream_named_mqtt(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + 'upstream:\n  mqtt: {url: "mqtt://127.0.0.1:1883"}\n'))
    (only,) = config.upstream_list
    assert (only.name, only.kind, only.route.everything) == ("mqtt", "mqtt", True)
    assert isinstance(only, MqttUpstreamOptions) and only.client_id == "edgegw-gw-1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams:\n  - {name: a, kind: mqtt, url: 'mqtt://h'}\n  - {name: b, kind: carrier-pigeon}\n",
            "gateway.yaml:5: upstreams[1].kind: unknown upstream kind 'carrier-pigeon'",
        ),
        (
            "upstreams:\n  - {name: a, kind: mqtt, url: 'mqtt://h'}\n  - {name: a, kind: mqtt, url: 'mqtt://g'}\n",
            "gateway.yaml:5: upstreams[1].name: duplicate upstream name 'a'",
        ),
        (
            "upstreams:\n  - name: a\n    kind: mqtt\n    url: 'mqtt://h'\n    route: {device: [x]}\n",
            "gateway.yaml:7: upstreams[0].route.device: unknown key",
        ),
        (
            "upstreams:\n  - {name: a, kind: mqtt, url: 'mqtt://h', encoding: xml}\n",
            "gateway.yaml:4: upstreams[0].encoding:",
        ),
        (
            "upstreams:\n  - {name: a, kind: mqtt, url: 'mqtt://h', protocol: '3.1.1', compression: zstd}\n",
            "gateway.yaml:4: upstreams[0].compression: needs protocol '5'",
        ),
        (
            "upstream:\n  mqtt: {url: 'mqtt://h'}\nupstreams:\n  - {name: a, kind: mqtt, url: 'mqtt://h'}\n",
            "gateway.yaml:3: upstream: give either `upstream`",
        ),
    ],
)
def test_bad_upstreams_are_rejected_with_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, BASE + text))
    said = [str(p).rpartition("/")[2] for p in caught.value.problems]  # from the file's name on
    assert any(line.startswith(expected) for line in said), said


def test_more_upstreams_than_the_buffer_can_follow_are_refused_by_check(tmp_path: Path) -> None:
    # Each stored event keeps one bit per upstream: the 63rd would fail only when the buffer opened, after
    # the devices had started. The config says so first, at the entry that is one too many.
    entries = "".join(f'  - {{name: u{i}, kind: mqtt, url: "mqtt://127.0.0.1:1883"}}\n' for i in range(63))
    path = write(tmp_path, BASE + "upstreams:\n" + entries)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:66: upstreams[62]: 63 upstreams; at most 62 (the buffer keeps one bit per upstream on every "
        "stored event)"
    ]
    ok = write(tmp_path, BASE + "upstreams:\n" + "".join(entries.splitlines(keepends=True)[:62]))
    assert len(load_config(ok).upstreams) == 62


def test_check_warns_about_a_route_that_matches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        BASE
        + """\
upstreams:
  - {name: all, kind: mqtt, url: "mqtt://127.0.0.1:1883"}
  - {name: epb, kind: mqtt, url: "mqtt://127.0.0.1:1883", route: {devices: ["effluent-*"]}}
  - {name: scada, kind: mqtt, url: "mqtt://127.0.0.1:1883", route: {kinds: [meter.reading]}}
devices:
  - {name: gate-1, driver: uhf-r2000, port: /dev/ttyUSB0}
""",
    )
    assert cli_main(["check", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert "'epb': its route matches no configured device" in err
    assert "'scada': its route matches none of the kinds its devices emit" in err
    assert "'all'" not in err


# ---- one slow upstream never delays another ---------------------------------------------------------------


def mqtt_options(name: str, url: str, **extra: Any) -> MqttUpstreamOptions:
    return MqttUpstreamOptions.model_validate(
        {
            "name": name,
            "url": url,
            "client_id": f"t-{uuid.uuid4().hex[:8]}",
            "reconnect": {"initial_s": 0.1, "max_s": 0.2},
        }
        | extra
    )


def reading(i: int, device: str = "m-1", kind: str = "meter.reading") -> Event:
    return Event(device, kind, 1_700_000_000.0 + i, {"i": i})


async def test_a_dead_upstream_holds_its_backlog_while_the_other_flows(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    dead_port = free_port()
    buf = await SqliteBuffer.open(tmp_path / "buffer.db")
    meters = Route(kinds=["meter.*"])
    await buf.set_upstreams([("city", everything), ("late", meters.matches)])
    context = UpstreamContext(gateway_id=gw)
    city = MqttUpstream(mqtt_options("city", broker.url), buf.cursor("city"), context)
    late = MqttUpstream(mqtt_options("late", f"mqtt://127.0.0.1:{dead_port}"), buf.cursor("late"), context)
    tasks = [asyncio.create_task(city.run()), asyncio.create_task(late.run())]
    try:
        async with Subscriber(broker, f"edgegw/{gw}/+/+") as sub:
            await buf.append([reading(i) for i in range(20)] + [reading(99, "gate-1", "rfid.read")])
            messages = await sub.wait_count(21)
            assert sorted(json.loads(m.payload)["seq"] for m in messages) == list(range(1, 22))
            await until("city's acks committed", lambda: buf.stats().upstreams["city"].events == 0)
            shares = buf.stats().upstreams
            assert shares["late"].events == 20  # only what its route takes, held for it
            assert buf.stats().depth == 20  # one copy each; the rfid.read is gone (city acked it)
            assert not late.connected and city.connected
        # The late broker comes up (its subscriber first: then the upstream, so nothing goes by unseen): its
        # backlog goes there, every event once, in order.
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        second = Mosquitto(port=dead_port)
        second.start()
        try:
            async with Subscriber(second, f"edgegw/{gw}/+/+") as sub2:
                late = MqttUpstream(late.options, buf.cursor("late"), context)
                tasks[1] = asyncio.create_task(late.run())
                got = await sub2.wait_count(20, timeout=20)
                assert [json.loads(m.payload)["seq"] for m in got][:20] == list(range(1, 21))
                await until("late's acks committed", lambda: buf.stats().depth == 0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            second.close()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await buf.close()


# ---- inspect, crash, migration ----------------------------------------------------------------------------


async def test_buffer_inspect_shows_each_upstreams_backlog(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await SqliteBuffer.open(path)
    await buf.set_upstreams([("city", everything), ("scada", Route(kinds=["meter.*"]).matches)])
    seqs = await buf.append([reading(0), reading(1), reading(2, "gate-1", "rfid.read")])
    await buf.cursor("city").ack(seqs)
    await buf.append([reading(3)])
    await buf.close()
    found = buffertool.inspect(path)
    by_name = {u.name: u for u in found.upstreams}
    assert (by_name["city"].events, by_name["scada"].events) == (1, 3)
    assert by_name["scada"].oldest_seq == seqs[0]
    text = found.render()
    assert "by upstream" in text and "scada" in text
    assert found.to_json()["upstreams"][0]["name"] == "city"


CHILD = """
import asyncio, os, sys
from drivers.event import Event
from gateway.delivery.buffer import SqliteBuffer, everything

async def main(path):
    buf = await SqliteBuffer.open(path)
    await buf.set_upstreams([("a", everything), ("b", everything)])
    seqs = await buf.append([Event("d", "k", 1.0, {"i": i}) for i in range(50)])
    await buf.cursor("a").ack(seqs)
    await buf.append([Event("d", "k", 2.0, {"i": 50})])  # a's acks are committed with this
    os.write(1, b"acked-a\\n")
    await asyncio.sleep(3600)  # killed here, before b acknowledges anything

asyncio.run(main(sys.argv[1]))
"""


def test_kill_9_between_two_upstreams_acks_loses_nothing_and_deletes_nothing_early(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"acked-a\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    async def reopen() -> tuple[list[int], list[int]]:
        buf = await SqliteBuffer.open(path)
        try:
            await buf.set_upstreams([("a", everything), ("b", everything)])
            a = [r.seq for r in await buf.cursor("a").read(0, 1000)]
            b = [r.seq for r in await buf.cursor("b").read(0, 1000)]
            return a, b
        finally:
            await buf.close()

    a, b = asyncio.run(reopen())
    assert a == [51]  # nothing a acknowledged comes back to a
    assert b == list(range(1, 52))  # nothing deleted before b acknowledged it


def make_schema_1_file(path: Path) -> None:
    """A buffer as edgegw wrote it before several upstreams (schema 1: no pending column)."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA journal_mode = WAL;
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, kind TEXT NOT NULL,
            ts REAL NOT NULL, data BLOB NOT NULL, size INTEGER NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('dropped.dropped_oldest', 7);
        PRAGMA application_id = 1162303298;
        PRAGMA user_version = 1;
        """
    )
    for i in range(3):
        data = json.dumps({"i": i}, separators=(",", ":")).encode()
        conn.execute(
            "INSERT INTO events (device, kind, ts, data, size) VALUES (?, ?, ?, ?, ?)",
            ("m-1", "meter.reading", 1.5 + i, data, len(data) + 24 + 3 + 13),
        )
    conn.commit()
    conn.close()


async def test_a_schema_1_buffer_is_taken_over_by_the_first_upstream(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    make_schema_1_file(path)
    buf = await SqliteBuffer.open(path)
    try:
        assert buf.stats().depth == 3 and buf.stats().dropped["dropped_oldest"] == 7
        await buf.set_upstreams([("mqtt", everything), ("scada", everything)])
        assert [r.seq for r in await buf.cursor("mqtt").read(0, 10)] == [1, 2, 3]  # its backlog kept
        assert await buf.cursor("scada").read(0, 10) == []  # new: from now on
        new = await buf.append([reading(9)])
        assert [r.seq for r in await buf.cursor("scada").read(0, 10)] == new
    finally:
        await buf.close()


# ---- the running gateway: metrics per upstream, reload adding and removing upstreams ----------------------


def gateway_file(path: Path, gw: str, upstreams: str) -> Path:
    path.write_text(
        f"gateway: {{id: {gw}}}\nbuffer: {{path: buffer.db}}\nmetrics: {{listen: '127.0.0.1:0'}}\n"
        f"upstreams:\n{upstreams}devices: []\n"
    )
    return path


def mqtt_entry(name: str, url: str, prefix: str, route: str = "") -> str:
    extra = f", route: {route}" if route else ""
    fast = "reconnect: {initial_s: 0.1, max_s: 0.2}"
    return f"  - {{name: {name}, kind: mqtt, url: '{url}', prefix: {prefix}, {fast}{extra}}}\n"


def ids(sub: Subscriber) -> list[str]:
    return [json.loads(m.payload)["id"] for m in sub.snapshot() if not m.topic.endswith("/status")]


async def test_reload_adds_and_removes_upstreams_without_losing_or_repeating_acks(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    dead = f"mqtt://127.0.0.1:{free_port()}"
    path = gateway_file(
        tmp_path / "gateway.yaml",
        gw,
        mqtt_entry("a", broker.url, "pa") + mqtt_entry("b", dead, "pb", "{kinds: [meter.reading]}"),
    )
    gateway = Gateway(load_config(path))
    async with (
        running(gateway),
        Subscriber(broker, f"pa/{gw}/+/+") as sub_a,
        Subscriber(broker, f"pc/{gw}/+/+") as sub_c,
    ):
        assert list(gateway.upstreams) == ["a", "b"]
        for i in range(10):
            assert gateway.queue.put(reading(i))
        await sub_a.wait_count(10)
        await until(
            "a acked all",
            lambda: gateway.buffer is not None and gateway.buffer.stats().upstreams["a"].events == 0,
        )
        assert gateway.metrics is not None
        parsed = samples((await http_get(gateway.metrics.port, "/metrics"))[1].decode())
        assert value(parsed, "edgegw_upstream_backlog_events", upstream="b", kind="mqtt") == 10
        assert value(parsed, "edgegw_upstream_backlog_events", upstream="a", kind="mqtt") == 0
        assert value(parsed, "edgegw_upstream_up", upstream="a", kind="mqtt") == 1
        assert value(parsed, "edgegw_upstream_up", upstream="b", kind="mqtt") == 0
        assert value(parsed, "edgegw_upstream_delivered_events_total", upstream="a") == 10
        assert "upstreams a up 0, b DOWN 10" in gateway.status_line()  # systemctl status's line

        # b (down, holding 10 events) goes, c comes: a keeps its session and its acknowledgements.
        a = gateway.upstreams["a"]
        gateway_file(path, gw, mqtt_entry("a", broker.url, "pa") + mqtt_entry("c", broker.url, "pc"))
        plan = await gateway.reload_and_wait()
        assert plan is not None and plan.upstreams_removed == ["b"]
        assert [u.name for u in plan.upstreams_added] == ["c"] and plan.needs_restart == []
        assert list(gateway.upstreams) == ["a", "c"] and gateway.upstreams["a"] is a
        await until(
            "b's backlog gone", lambda: gateway.buffer is not None and gateway.buffer.stats().depth == 0
        )
        for i in range(10, 15):
            assert gateway.queue.put(reading(i))
        await sub_c.wait_count(5)
        await sub_a.wait_count(15)
        await until("both acked", lambda: gateway.buffer is not None and gateway.buffer.stats().depth == 0)
        assert len(ids(sub_a)) == len(set(ids(sub_a))) == 15  # nothing a had acknowledged came again
        assert sorted(ids(sub_c)) == sorted(f"{gw}:{seq}" for seq in range(11, 16))  # c: from its start on
        assert isinstance(a, MqttUpstream) and a.connects == 1


UPSTREAMS_SCRAPE = """\
# TYPE edgegw_info gauge
edgegw_info{gateway_id="ss-1"} 1.0
# TYPE edgegw_upstream_backlog_events gauge
edgegw_upstream_backlog_events{kind="mqtt",upstream="city"} 0.0
edgegw_upstream_backlog_events{kind="hj212",upstream="epb"} 1440.0
# TYPE edgegw_upstream_backlog_bytes gauge
edgegw_upstream_backlog_bytes{kind="mqtt",upstream="city"} 0.0
edgegw_upstream_backlog_bytes{kind="hj212",upstream="epb"} 2097152.0
# TYPE edgegw_upstream_dropped_events counter
edgegw_upstream_dropped_events_total{reason="dropped_oldest",upstream="epb"} 12.0
edgegw_upstream_dropped_events_total{reason="oversize",upstream="epb"} 1.0
# TYPE edgegw_upstream_up gauge
edgegw_upstream_up{kind="mqtt",upstream="city"} 1.0
edgegw_upstream_up{kind="hj212",upstream="epb"} 0.0
# TYPE edgegw_upstream_delivered_events counter
edgegw_upstream_delivered_events_total{upstream="city"} 5000.0
# TYPE edgegw_upstream_errors counter
edgegw_upstream_errors_total{reason="reply_bad_crc",upstream="epb"} 3.0
"""


def test_status_shows_a_line_per_upstream() -> None:
    view = status.parse(UPSTREAMS_SCRAPE)
    epb = view.upstreams["epb"]
    assert (epb.kind, epb.up, epb.backlog_events, epb.dropped, epb.errors) == ("hj212", False, 1440, 13, 3)
    lines = status.render_text(view, None, "http://x/metrics").splitlines()
    assert "  city    mqtt, connected; backlog 0 events, 0 B; delivered 5,000, dropped 0, errors 0" in lines
    epb_line = (
        "  epb     hj212, NOT connected; backlog 1,440 events, 2.0 MiB; delivered 0, dropped 13, errors 3"
    )
    assert epb_line in lines


def test_a_prefix_of_several_levels_is_one_the_forwarder_takes() -> None:
    """The config has always allowed `prefix: site-1/edgegw`; the forwarder refused to start with it."""
    settings = ForwarderSettings(gateway_id="gw", host="h", prefix="site-1/edgegw")
    assert settings.status_topic == "site-1/edgegw/gw/status"
    for bad in ("site-1//edgegw", "/edgegw", "site/#", "site/+/x"):
        with pytest.raises(ValueError, match="prefix"):
            ForwarderSettings(gateway_id="gw", host="h", prefix=bad)
