"""The ``hj212`` upstream against the HJ 212 platform simulator on a real TCP port, reading a real SQLite
buffer through its cursor: minute, hourly and daily records computed from meter.reading events, in order,
after an outage (backfill) with real-time uploads between them; a reply with a bad CRC, a refusal, a platform
that is down: counted, nothing lost. And the options: what a config may say."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import statistics
import time
import zoneinfo
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.event import Event
from firmware_sim import hj212 as platform
from gateway.delivery.buffer import SqliteBuffer
from gateway.delivery.hj212 import Hj212Options, Hj212Upstream
from gateway.delivery.upstream import Route, UpstreamContext
from tests.waiting import until

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
MN = "010000A8900016F000169DC0"
POLLUTANTS: dict[str, Any] = {
    "cod": "w01018",
    "ammonia_n": "w21003",
    "flow": {"code": "w00000", "flow": True, "per": "s"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "hj212.password"
    path.write_text("123456\n")
    return path


def options(port: int, password_file: Path, **extra: Any) -> Hj212Options:
    return Hj212Options.model_validate(
        {
            "name": "epb",
            "kind": "hj212",
            "address": f"127.0.0.1:{port}",
            "mn": MN,
            "st": 32,
            "password_file": str(password_file),
            "pollutants": POLLUTANTS,
            "reply_timeout_s": 0.5,
            "retries": 1,
            "reconnect": {"initial_s": 0.05, "max_s": 0.2},
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def running(upstream: Hj212Upstream) -> AsyncIterator[None]:
    task = asyncio.create_task(upstream.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def buffer_with_cursor(tmp_path: Path) -> AsyncIterator[tuple[SqliteBuffer, Any]]:
    buffer = await SqliteBuffer.open(tmp_path / "buffer.db")
    try:
        await buffer.set_upstreams([("epb", Route(devices=["effluent-*"]).matches)])
        yield buffer, buffer.cursor("epb")
    finally:
        await buffer.close()


def history() -> Iterator[Event]:
    """Readings every minute from 22:50 two days ago to 00:20 the next day (station time), a status in
    the middle."""
    day = dt.datetime.now(TZ).date() - dt.timedelta(days=2)
    start = dt.datetime.combine(day, dt.time(22, 50), TZ)
    for i in range(91):
        ts = (start + dt.timedelta(minutes=i)).timestamp()
        values = {"cod": 20.0 + i % 7, "ammonia_n": 1.5 + (i % 3) / 10, "flow": 10.0, "other": 1}
        yield Event("effluent-1", "meter.reading", ts, {"values": values})
        if i == 45:
            yield Event("effluent-1", "device.status", ts, {"state": "connected"})


def expected(events: list[Event], start: dt.datetime, end: dt.datetime, point: str) -> list[float]:
    return [
        e.data["values"][point]
        for e in events
        if e.kind == "meter.reading" and start.timestamp() <= e.ts < end.timestamp()
    ]


async def test_backfill_after_an_outage_in_order_with_realtime_between(
    tmp_path: Path, password_file: Path
) -> None:
    port = free_port()
    events = list(history())
    async with buffer_with_cursor(tmp_path) as (buffer, cursor):
        await buffer.append(events)
        await buffer.append([Event("pump-1", "meter.reading", events[0].ts, {"values": {"cod": 99}})])
        upstream = Hj212Upstream(
            options(
                port,
                password_file,
                realtime_s=0.05,
                state_file=str(tmp_path / "epb.json"),
                reply_timeout_s=10,
            ),
            cursor,
            UpstreamContext("gw"),
        )
        async with running(upstream):
            # The platform is down: the upstream retries; no reading is acknowledged (the status is used
            # at once), nothing is lost.
            readings = sum(e.kind == "meter.reading" for e in events)
            await until("the status used", lambda: buffer.stats().depth == readings)
            await until("connection attempts", lambda: upstream.stats().last_error is not None)
            assert buffer.stats().depth == readings and upstream.stats().acked == 0
            sim_options = platform.SimOptions(password="123456", mns=(MN,), reply_delay_s=0.02)
            async with platform.serve_tcp("127.0.0.1", port, sim_options) as sim:
                await until("both days' records acknowledged", lambda: upstream.records_acked[2031] == 2)
                await until("every event acknowledged", lambda: buffer.stats().depth == 0)
        uploads = list(sim.uploads)
    assert sim.stats.bad_crc == sim.stats.decode_errors == sim.stats.refused == 0
    records = [u for u in uploads if u.cn != "2011"]
    # Every minute and hourly record, oldest first, each hour after its minutes, the day after its hours.
    times = [(u.cn, u.data_time) for u in records]
    day = dt.datetime.now(TZ).date() - dt.timedelta(days=2)
    d0, d1 = day.strftime("%Y%m%d"), (day + dt.timedelta(days=1)).strftime("%Y%m%d")
    minutes = [t for cn, t in times if cn == "2051"]
    assert minutes == [f"{d0}225000"] + [f"{d0}23{m:02d}00" for m in range(0, 60, 10)] + [
        f"{d1}00{m:02d}00" for m in range(0, 30, 10)
    ]
    assert [t for cn, t in times if cn == "2061"] == [f"{d0}220000", f"{d0}230000", f"{d1}000000"]
    assert [t for cn, t in times if cn == "2031"] == [f"{d0}000000", f"{d1}000000"]  # both days are over
    assert times.index(("2061", f"{d0}230000")) > times.index(("2051", f"{d0}235000"))
    assert times.index(("2031", f"{d0}000000")) > times.index(("2061", f"{d0}230000"))
    # Values: the gateway's aggregates of exactly the readings of each interval.
    start = dt.datetime.combine(day, dt.time(23, 0), TZ)
    hour = next(u for u in records if (u.cn, u.data_time) == ("2061", f"{d0}230000"))
    cod = expected(events, start, start + dt.timedelta(hours=1), "cod")
    assert float(hour.values["w01018-Avg"]) == pytest.approx(statistics.fmean(cod), abs=1e-3)
    assert float(hour.values["w01018-Min"]) == min(cod) and float(hour.values["w01018-Max"]) == max(cod)
    assert hour.values["w01018-Flag"] == "N"
    assert "w01018-Cou" not in hour.values  # not a flow
    assert float(hour.values["w00000-Cou"]) == pytest.approx(10.0 * 3600)  # 10 L/s for an hour
    daily = next(u for u in records if (u.cn, u.data_time) == ("2031", f"{d0}000000"))
    cod_day = expected(events, dt.datetime.combine(day, dt.time(0), TZ), start + dt.timedelta(hours=1), "cod")
    assert float(daily.values["w01018-Avg"]) == pytest.approx(statistics.fmean(cod_day), abs=1e-3)
    assert float(daily.values["w00000-Cou"]) == pytest.approx(10.0 * 3600 * 2)  # hours 22 and 23
    # Real-time uploads went on while the backlog was sent: some arrived between the first and last record.
    positions = [i for i, u in enumerate(uploads) if u.cn == "2011"]
    first = uploads.index(records[0])
    last = uploads.index(records[-1])
    assert any(first < i < last for i in positions)
    realtime = uploads[positions[-1]]
    assert set(realtime.values) == {
        "w01018-Rtd", "w01018-Flag", "w21003-Rtd", "w21003-Flag", "w00000-Rtd", "w00000-Flag"
    }  # fmt: skip
    assert upstream.counters["unmapped"] == 0  # the status and the readings were all used
    assert sim.stats.by_cn["2031"] == 2
    assert json.loads((tmp_path / "epb.json").read_text())["days"] == {}  # both days sent: nothing kept


async def test_a_reply_with_a_bad_crc_or_a_refusal_is_counted_and_nothing_is_lost(
    tmp_path: Path, password_file: Path
) -> None:
    events = list(history())[:30]
    async with (
        buffer_with_cursor(tmp_path) as (buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        sim.damage_replies = True
        upstream = Hj212Upstream(
            options(sim.port, password_file, realtime_s=0), cursor, UpstreamContext("gw")
        )
        await buffer.append(events)
        async with running(upstream):
            await until("a reconnect after replies with bad CRCs", lambda: upstream.stats().disconnects >= 1)
            assert upstream.counters["reply_bad_crc"] >= 2 and upstream.stats().resent >= 1
            assert buffer.stats().depth == len(events)
            sim.damage_replies = False
            sim.refuse_code = 3
            await until("a refusal", lambda: "wrong password" in (upstream.stats().last_error or ""))
            assert upstream.stats().refused >= 1 and upstream.counters["reply_refused"] >= 1
            assert buffer.stats().depth == len(events)
            sim.refuse_code = None
            await until("every event acknowledged", lambda: buffer.stats().depth == 0)
    accepted = [u for u in sim.uploads if u.cn == "2061"]
    assert [u.data_time or "" for u in accepted][-1].endswith("230000")
    assert len({u.data_time for u in sim.uploads if u.cn == "2051"}) == 3  # 22:50, 23:00, 23:10
    assert sim.stats.refused >= 1 and sim.stats.replies_damaged >= 2


async def test_a_dropped_reply_is_sent_again_with_the_same_qn(tmp_path: Path, password_file: Path) -> None:
    events = list(history())[:5]
    async with (
        buffer_with_cursor(tmp_path) as (buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        sim.drop_replies = True
        upstream = Hj212Upstream(
            options(sim.port, password_file, realtime_s=0), cursor, UpstreamContext("gw")
        )
        await buffer.append(events)
        async with running(upstream):
            await sim.wait_for(lambda s: s.replies_dropped >= 2)
            sim.drop_replies = False
            await until("every event acknowledged", lambda: buffer.stats().depth == 0)
    assert upstream.counters["reply_timeout"] >= 1
    minutes = [u for u in sim.uploads if u.cn == "2051"]
    assert minutes[0].qn == minutes[1].qn  # the same exchange, again


def test_options(tmp_path: Path, password_file: Path) -> None:
    o = options(9001, password_file)
    assert o.password is not None and o.password.get_secret_value() == "123456"
    assert "123456" not in repr(o)
    assert o.points["cod"].code == "w01018" and o.points["flow"].flow
    assert (o.host, o.port, o.minute_interval_min, o.timezone) == ("127.0.0.1", 9001, 10, "Asia/Shanghai")
    base: dict[str, Any] = {
        "name": "epb",
        "address": "h:1",
        "mn": MN,
        "st": 32,
        "pollutants": {"cod": "w01018"},
    }
    bads: list[tuple[dict[str, Any], str]] = [
        ({}, "password_file"),
        ({"password_file": str(password_file), "address": "nohost"}, "address"),
        ({"password_file": str(password_file), "mn": "bad mn"}, "mn"),
        ({"password_file": str(password_file), "pollutants": {"cod": "w01;18"}}, "pollutants"),
        ({"password_file": str(password_file), "pollutants": {}}, "pollutants"),
        ({"password_file": str(password_file), "timezone": "Mars/Olympus"}, "timezone"),
        ({"password_file": str(password_file), "minute_interval_min": 7}, "minute_interval_min"),
        ({"password_file": str(tmp_path / "missing")}, "password_file"),
    ]
    for bad, where in bads:
        with pytest.raises(ValidationError, match=where):
            Hj212Options.model_validate({**base, **bad})


async def test_data_flags_from_device_status_and_a_flag_point(tmp_path: Path, password_file: Path) -> None:
    """An analyser that stops answering makes its values B (communication), one whose status register says
    maintenance makes them M; an interval with any such reading carries that flag, one without is N."""
    day = dt.datetime.now(TZ).date() - dt.timedelta(days=1)
    start = dt.datetime.combine(day, dt.time(10, 0), TZ).timestamp()
    events = [
        Event("effluent-1", "meter.reading", start + 60, {"values": {"cod": 20.0, "cod_state": 0}}),
        Event("effluent-1", "meter.reading", start + 660, {"values": {"cod": 21.0, "cod_state": 1}}),
        Event("effluent-1", "device.status", start + 1260, {"state": "disconnected", "reason": "timeout"}),
        Event("effluent-1", "meter.reading", start + 1270, {"values": {"cod": 22.0, "cod_state": 0}}),
        Event("effluent-1", "device.status", start + 1800, {"state": "connected"}),
        Event("effluent-1", "meter.reading", start + 1900, {"values": {"cod": 23.0, "cod_state": 0}}),
    ]
    pollutants = {"cod": {"code": "w01018", "flag_point": "cod_state"}}
    async with (
        buffer_with_cursor(tmp_path) as (buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        upstream = Hj212Upstream(
            options(sim.port, password_file, realtime_s=0, pollutants=pollutants),
            cursor,
            UpstreamContext("gw"),
        )
        await buffer.append(events)
        async with running(upstream):
            await until("the hour acknowledged", lambda: upstream.records_acked[2061] == 1)
    minutes = {u.data_time[-6:]: u.values for u in sim.uploads if u.cn == "2051" and u.data_time}
    assert {t: v["w01018-Flag"] for t, v in minutes.items()} == {
        "100000": "N",
        "101000": "M",  # the status register said 1: maintenance
        "102000": "B",  # read while the analyser was disconnected
        "103000": "N",  # connected again
    }
    hour = next(u for u in sim.uploads if u.cn == "2061")
    assert hour.values["w01018-Flag"] == "B" and hour.values["w01018-Avg"] == "21.5"


async def test_the_days_sums_survive_a_restart_in_the_state_file(tmp_path: Path, password_file: Path) -> None:
    """Hour 22 acknowledged, then a stop at 23:30 with hour 23 still open: after the restart (its readings
    still buffered, the rest of the hour appended) the daily record covers both hours."""
    day = dt.datetime.now(TZ).date() - dt.timedelta(days=2)
    at = dt.datetime.combine(day, dt.time(22, 0), TZ).timestamp()

    def flow(minutes: range) -> list[Event]:
        return [
            Event("effluent-1", "meter.reading", at + m * 60, {"values": {"flow": 10.0 + m % 2, "cod": 20.0}})
            for m in minutes
        ]

    state = tmp_path / "epb.json"
    async with (
        buffer_with_cursor(tmp_path) as (buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        o = options(sim.port, password_file, realtime_s=0, state_file=str(state))
        first = Hj212Upstream(o, cursor, UpstreamContext("gw"), clock=lambda: at + 90 * 60)  # 23:30
        await buffer.append(flow(range(90)))
        async with running(first):
            await until("hour 22 acknowledged", lambda: first.records_acked[2061] == 1)
            await until("its events acknowledged", lambda: buffer.stats().depth == 30)
        assert json.loads(state.read_text())["days"][day.strftime("%Y%m%d")]["hours"] == [at]
        second = Hj212Upstream(o, cursor, UpstreamContext("gw"), clock=lambda: at + 3 * 3600)
        await buffer.append(flow(range(90, 120)))
        async with running(second):
            await until("the daily record acknowledged", lambda: second.records_acked[2031] == 1)
            await until("every event acknowledged", lambda: buffer.stats().depth == 0)
    hours = [u for u in sim.uploads if u.cn == "2061"]
    assert [u.data_time for u in hours] == [f"{day:%Y%m%d}220000", f"{day:%Y%m%d}230000"]
    daily = next(u for u in sim.uploads if u.cn == "2031")
    assert float(daily.values["w00000-Cou"]) == pytest.approx(10.5 * 3600 * 2)  # both hours' amounts
    assert float(daily.values["w00000-Min"]) == 10.0 and float(daily.values["w00000-Max"]) == 11.0
    assert json.loads(state.read_text())["days"] == {}  # the day sent: nothing kept


async def test_realtime_uploads_without_a_reply_for_a_platform_that_never_answers_them(
    tmp_path: Path, password_file: Path
) -> None:
    async with (
        buffer_with_cursor(tmp_path) as (buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        o = options(sim.port, password_file, realtime_s=0.05, realtime_reply=False)
        upstream = Hj212Upstream(o, cursor, UpstreamContext("gw"))
        await buffer.append([Event("effluent-1", "meter.reading", time.time(), {"values": {"cod": 20.0}})])
        async with running(upstream):
            await until("3 real-time uploads sent", lambda: upstream.realtime_sent >= 3)
            await until("and received", lambda: sim.stats.by_cn["2011"] >= 3)
    assert sim.stats.replies == sim.stats.packets - sim.stats.by_cn["2011"]  # records only
    assert upstream.counters["reply_timeout"] == 0
    assert [u.values["w01018-Rtd"] for u in sim.uploads if u.cn == "2011"][:3] == ["20", "20", "20"]


async def test_a_reading_from_the_future_is_left_out_and_closes_nothing(
    tmp_path: Path, password_file: Path
) -> None:
    day = dt.datetime.now(TZ).date() - dt.timedelta(days=1)
    start = dt.datetime.combine(day, dt.time(10, 0), TZ).timestamp()
    events = [
        Event("effluent-1", "meter.reading", start + 60, {"values": {"cod": 20.0}}),
        Event(
            "effluent-1", "meter.reading", time.time() + 86400, {"values": {"cod": 99.0}}
        ),  # a clock astray
        Event("effluent-1", "meter.reading", start + 660, {"values": {"cod": 21.0}}),
    ]
    async with (
        buffer_with_cursor(tmp_path) as (buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        upstream = Hj212Upstream(
            options(sim.port, password_file, realtime_s=0), cursor, UpstreamContext("gw")
        )
        await buffer.append(events)
        async with running(upstream):
            await until("the hour acknowledged", lambda: upstream.records_acked[2061] == 1)
            await until("every event acknowledged", lambda: buffer.stats().depth == 0)
    assert upstream.counters["future_readings"] == 1 and upstream.counters["late_readings"] == 0
    minutes = {
        u.data_time[-6:]: u.values["w01018-Avg"] for u in sim.uploads if u.cn == "2051" and u.data_time
    }
    assert minutes == {"100000": "20", "101000": "21"}


async def test_platform_requests_time_and_interval_answered_others_refused(
    tmp_path: Path, password_file: Path
) -> None:
    async with (
        buffer_with_cursor(tmp_path) as (_buffer, cursor),
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
    ):
        assert sim.port is not None
        upstream = Hj212Upstream(
            options(sim.port, password_file, realtime_s=30), cursor, UpstreamContext("gw")
        )
        async with running(upstream):
            await until("connected", lambda: upstream.stats().connected)
            time_qn = await sim.request("1011", "PolId=w01018")
            interval_qn = await sim.request("1061")
            refused_qn = await sim.request("1062", "RtdInterval=60")
            await sim.request("1011", "not a cp area")  # malformed: counted, nothing else
            await until("the answers", lambda: sum(u.cn == "9012" for u in sim.uploads) == 2)
            await until("the refusal", lambda: any(u.qn == refused_qn for u in sim.uploads))
            await until("the malformed request counted", lambda: upstream.counters["reply_malformed"] == 1)
            assert upstream.stats().connected  # still the same connection
            assert upstream.stats().connects == 1
    by_qn: dict[str | None, list[platform.Upload]] = {}
    for u in sim.uploads:
        by_qn.setdefault(u.qn, []).append(u)
    # Ready (9011 QnRtn=1), the data under the request's CN, done (9012 ExeRtn=1); all with its QN.
    answer = [(u.cn, u.values) for u in by_qn[time_qn]]
    assert answer[0] == ("9011", {"QnRtn": "1"}) and answer[2] == ("9012", {"ExeRtn": "1"})
    assert answer[1][0] == "1011" and answer[1][1]["PolId"] == "w01018"
    assert len(answer[1][1]["SystemTime"]) == 14
    assert [(u.cn, u.values) for u in by_qn[interval_qn]][1] == ("1061", {"RtdInterval": "30"})
    assert [(u.cn, u.values) for u in by_qn[refused_qn]] == [("9011", {"QnRtn": "2"})]
