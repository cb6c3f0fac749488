"""``edgegw status``'s pieces that need no running gateway (the command itself runs against a real one in
test_daemon.py): finding the endpoint, rates between two scrapes, the plain-text view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import status

EDGEGW = str(Path(sys.executable).with_name("edgegw"))

SCRAPE = """\
# TYPE edgegw_info gauge
edgegw_info{gateway_id="lane-7"} 1.0
# TYPE edgegw_events_in counter
edgegw_events_in_total{device="r1",kind="rfid.read"} %(r1)s
edgegw_events_in_total{device="r1",kind="device.status"} 1.0
edgegw_events_in_total{device="r2",kind="meter.reading"} %(r2)s
# TYPE edgegw_events_out counter
edgegw_events_out_total{device="r1",kind="rfid.read"} %(r1)s
# TYPE edgegw_device_state gauge
edgegw_device_state{device="r1",state="connected"} 1.0
edgegw_device_state{device="r1",state="disconnected"} 0.0
edgegw_device_state{device="r2",state="connected"} 0.0
edgegw_device_state{device="r2",state="disconnected"} 1.0
# TYPE edgegw_device_restarts counter
edgegw_device_restarts_total{device="r2"} 4.0
# TYPE edgegw_upstream_connected gauge
edgegw_upstream_connected 0.0
# TYPE edgegw_buffer_events gauge
edgegw_buffer_events 1234.0
# TYPE edgegw_buffer_bytes gauge
edgegw_buffer_bytes 3145728.0
# TYPE edgegw_buffer_max_bytes gauge
edgegw_buffer_max_bytes 1073741824.0
# TYPE edgegw_buffer_oldest_age_seconds gauge
edgegw_buffer_oldest_age_seconds 5400.0
# TYPE edgegw_events_dropped counter
edgegw_events_dropped_total{reason="queue_full"} 7.0
# TYPE edgegw_healthy gauge
edgegw_healthy 1.0
"""


def scrape(r1: float, r2: float) -> status.View:
    return status.parse(SCRAPE % {"r1": r1, "r2": r2})


def test_a_scrape_becomes_a_view() -> None:
    view = scrape(100, 50)
    assert view.gateway_id == "lane-7"
    assert view.upstream_connected is False
    assert view.devices["r1"].state == "connected" and view.devices["r2"].state == "disconnected"
    assert view.devices["r1"].events_in == 101 and view.devices["r1"].kinds_in["rfid.read"] == 100
    assert view.devices["r2"].restarts == 4
    assert view.dropped == {"queue_full": 7}
    assert view.buffer_depth == 1234


def test_rates_between_two_scrapes_and_none_across_a_restart() -> None:
    r = status.rates(scrape(100, 50), scrape(300, 60), 2.0)
    assert r.device_in == {"r1": 100.0, "r2": 5.0}
    assert r.device_out == {"r1": 100.0, "r2": 0.0}
    assert r.total_in == 105.0
    restarted = status.rates(scrape(300, 60), scrape(10, 1), 1.0)  # counters went down: the gateway restarted
    assert restarted.device_in == {} and restarted.total_in is None


def test_the_plain_text_view() -> None:
    text = status.render_text(
        scrape(300, 60), status.rates(scrape(100, 50), scrape(300, 60), 2.0), "http://x/metrics"
    )
    assert text.splitlines()[:7] == [
        "edgegw status: http://x/metrics",
        "gateway   lane-7, healthy",
        "upstream  NOT connected (in flight 0, acked 0, connects 0, lost 0)",
        "backlog   1,234 events, 3.0 MiB of 1.0 GiB, oldest 90 min",
        "rates     105.0 events/s in, 100.0 out (over 2.0 s)",
        "drops     queue_full 7",
        "queue     0 events; loop lag at worst 0.0 ms",
    ]
    assert text.splitlines()[8:] == [
        "device  state          in/s  out/s   in  restarts  q.drops  decode err  skipped B",
        "r1      connected     100.0  100.0  301         0        0           0          0",
        "r2      disconnected    5.0    0.0   60         4        0           0          0",
    ]


def test_where_the_endpoint_is(tmp_path: Path) -> None:
    assert status.resolve_url("127.0.0.1:9200", None) == "http://127.0.0.1:9200/metrics"
    assert status.resolve_url("http://gw:9108/", None) == "http://gw:9108/metrics"
    assert status.resolve_url("http://gw:9108/other", None) == "http://gw:9108/other"
    config = tmp_path / "gateway.yaml"
    config.write_text('gateway: {id: x}\nmetrics: {listen: "0.0.0.0:9300"}\n')
    assert status.resolve_url(None, config) == "http://127.0.0.1:9300/metrics"
    config.write_text('metrics: {listen: "[::]:9301"}\n')
    assert status.resolve_url(None, config) == "http://[::1]:9301/metrics"
    config.write_text("gateway: {id: x}\n")
    assert status.resolve_url(None, config) == status.DEFAULT_URL
    config.write_text("metrics: {enabled: false}\n")
    with pytest.raises(status.StatusError, match=r"metrics\.enabled is false"):
        status.resolve_url(None, config)
    config.write_text('metrics: {listen: "127.0.0.1:0"}\n')
    with pytest.raises(status.StatusError, match="port 0"):
        status.resolve_url(None, config)
    with pytest.raises(status.StatusError, match=r"cannot read metrics\.listen"):
        status.resolve_url(None, tmp_path / "missing.yaml")


def test_a_bad_interval_is_a_usage_error() -> None:
    done = subprocess.run(
        [EDGEGW, "status", "--once", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--interval must be a positive number" in done.stderr
