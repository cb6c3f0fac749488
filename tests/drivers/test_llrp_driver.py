"""The llrp driver against the simulated LLRP reader over real TCP on 127.0.0.1, run as the gateway runs it
(drivers.testing)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydantic
import pytest

from drivers import registry
from drivers.event import Event
from drivers.kinds import RFID_READ
from drivers.llrp import LlrpDriver, LlrpOptions
from drivers.testing import Harness
from drivers.testing import running as run_devices
from firmware_sim.llrp import Faults, LlrpSimulator, SimOptions, serve_tcp
from protocols import llrp
from protocols.epc import epc_uri

pytestmark = pytest.mark.timeout(60)

NAMES = {1: "lane1-in", 2: "lane1-out", 3: "lane2-in", 4: "lane2-out"}
FAST = SimOptions(tags=20, rate=3000.0, round_ms=5.0, antennas=(1, 2, 3, 4), seed=5)
SEQUENCE = [
    "GET_READER_CAPABILITIES",
    "SET_READER_CONFIG",
    "DELETE_ROSPEC",
    "ADD_ROSPEC",
    "ENABLE_ROSPEC",
    "START_ROSPEC",
]


class Run(Harness):
    def reads(self) -> list[Event]:
        return self.of(RFID_READ)


@asynccontextmanager
async def running(sim: LlrpSimulator, **options: Any) -> AsyncIterator[Run]:
    options.setdefault("antennas", NAMES)
    options.setdefault("keepalive_s", 0.1)
    # Generous: a loaded machine must not pass for a reader that stopped its keepalives.
    options.setdefault("keepalive_misses", 50)
    options.setdefault("report_every_n_tags", 10)
    options.setdefault("report_period_ms", 50)
    assert sim.port is not None
    opts = LlrpOptions(host="127.0.0.1", port=sim.port, **options)
    async with run_devices({"reader-1": lambda: LlrpDriver("reader-1", opts)}, Run) as run:
        yield run


async def wait(sim: LlrpSimulator, predicate: Callable[[Any], bool]) -> None:
    async with asyncio.timeout(20):
        await sim.wait_for(predicate)


def check_reads(reads: list[Event], sim: LlrpSimulator, antennas: dict[int, str]) -> None:
    epcs = {epc.hex().upper() for epc in sim.population}
    for event in reads:
        read = event.data
        uri = epc_uri(read["epc"])
        assert set(read) == {
            "epc",
            "pc",
            "antenna",
            "antenna_name",
            "rssi_dbm",
            "channel_index",
            "seen_count",
        } | ({"epc_uri"} if uri else set())
        assert read.get("epc_uri") == uri  # present exactly when the EPC decodes (EPC TDS)
        assert read["epc"] in epcs
        assert read["pc"] == "3000"
        assert read["antenna"] in antennas
        assert read["antenna_name"] == antennas[read["antenna"]]
        assert -100 <= read["rssi_dbm"] <= -20
        assert 1 <= read["channel_index"] <= 50
        assert read["seen_count"] == 1


# ------------------------------------------------------------------------------------------ the session


async def test_the_full_sequence_then_reads_with_their_fields() -> None:
    antennas = {1: NAMES[1], 3: NAMES[3]}
    started = time.time()
    async with (
        serve_tcp("127.0.0.1", 0, FAST) as sim,
        running(sim, antennas=antennas, report_every_n_tags=25, keepalive_s=0.05) as run,
    ):
        await run.until("reads on both antennas", lambda: {e.data["antenna"] for e in run.reads()} == {1, 3})
        await run.until_events(RFID_READ, 500)
        await wait(sim, lambda s: s.keepalive_acks >= 3)
    finished = time.time()
    # In this order (keepalives, and their acks, may come in between once SET_READER_CONFIG asked for them).
    assert [name for name in sim.stats.received if name != "KEEPALIVE_ACK"][: len(SEQUENCE)] == SEQUENCE
    assert run.statuses()[0] == {
        "state": "connected",
        "detail": "LLRP reader PEN 0 model 1, firmware edgegw-sim 1.0, antennas 1,3",
    }
    check_reads(run.reads(), sim, antennas)
    # The event time is the reader's FirstSeenTimestampUTC.
    assert all(started <= e.ts <= finished for e in run.reads())
    assert len({e.ts for e in run.reads()}) > 1
    # What the driver asked of the reader.
    (config,) = sim.configs
    assert config.keepalive == llrp.KeepaliveSpec(True, 50)
    assert config.report is not None and config.report.n == 25
    assert (llrp.ReaderEventType.ANTENNA, True) in config.event_notifications
    (rospec,) = sim.rospecs_added
    assert rospec.ai_specs[0].antennas == (1, 3)
    assert rospec.start_trigger == llrp.StartTrigger.NULL and rospec.stop_trigger == llrp.StopTrigger.NULL
    assert rospec.report == config.report
    assert sim.stats.keepalive_acks == sim.stats.count(llrp.MessageType.KEEPALIVE_ACK)
    counters = run.device.counters
    assert counters["decode_errors"] == 0 and counters["bytes_skipped"] == 0
    assert run.states() == ["connected"]


async def test_a_period_alone_gets_the_reads_with_get_report() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, FAST) as sim,
        running(sim, report_every_n_tags=None, report_period_ms=20) as run,
    ):
        await run.until_events(RFID_READ, 300)
    assert (
        sim.configs[0].report is not None and sim.configs[0].report.n == 0
    )  # the reader never reports alone
    assert sim.stats.count(llrp.MessageType.GET_REPORT) >= 2
    check_reads(run.reads(), sim, NAMES)


async def test_no_read_is_lost_with_vendor_parameters_in_every_other_tag() -> None:
    options = SimOptions(tags=20, rate=3000.0, round_ms=5.0, seed=9, faults=Faults(vendor_params=0.5))
    async with serve_tcp("127.0.0.1", 0, options) as sim, running(sim) as run:
        await run.until_events(RFID_READ, 1000)
        sim.pause()
        # Everything inventoried is sent (GET_REPORT flushes what is held), and everything sent arrives.
        await run.until(
            "every read sent",
            lambda: sim.stats.tag_reads_made == sim.stats.tag_reads_sent == len(run.reads()),
        )
    check_reads(run.reads(), sim, NAMES)
    counters = run.device.counters
    assert counters["params_skipped"] >= sim.stats.vendor_params_sent > 0
    assert counters["decode_errors"] == 0
    assert run.states() == ["connected"]


async def test_llrp_over_tls_verifies_the_reader(tls_files: dict[str, Path]) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files["server.crt"], tls_files["server.key"])
    async with serve_tcp("127.0.0.1", 0, FAST, tls=server) as sim:
        # A reader whose certificate the configured CA did not sign: refused, said why, retried.
        async with running(sim, tls=True, ca_file=str(tls_files["other-ca.crt"])) as run:
            await run.until_state("disconnected")
        assert "certificate verify failed" in run.statuses()[0]["reason"]
        assert not run.reads()
        async with running(sim, tls=True, ca_file=str(tls_files["ca.crt"])) as run:
            await run.until_events(RFID_READ, 100)
        check_reads(run.reads(), sim, NAMES)


async def test_every_keepalive_is_answered_and_missed_ones_mean_reconnect() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, FAST) as sim,
        running(sim, keepalive_s=0.05, keepalive_misses=2) as run,
    ):
        await wait(sim, lambda s: s.keepalive_acks >= 2)
        sim.stop_keepalives()
        await run.until_state("disconnected")
        sim.resume_keepalives()
        await run.until_state("connected", 2)
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 10)
    gone = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert "no KEEPALIVE from the reader" in gone["reason"] and "2 periods of 0.05 s missed" in gone["reason"]
    assert sim.stats.keepalive_acks >= 2
    assert run.device.restarts >= 1


async def test_a_refused_connection_is_reported_and_retried() -> None:
    async with serve_tcp("127.0.0.1", 0, SimOptions(faults=Faults(refuse=1))) as sim, running(sim) as run:
        await run.until_state("disconnected", 2)
        sim.refuse_connections(0)
        await run.until_state("connected")
    refusals = [s["reason"] for s in run.statuses() if s["state"] == "disconnected"]
    assert all("refused the connection: ConnectionAttemptEvent status 1" in r for r in refusals)
    assert "reader-initiated connection already exists" in refusals[0]
    assert sim.stats.refused >= 2


async def test_a_report_cut_by_a_disconnect_is_an_error_then_reconnect_works() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, running(sim) as run:
        await run.until_events(RFID_READ, 50)
        sim.cut_next_report()
        await run.until_state("connected", 2)
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 50)
    gone = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert "in the middle of a message" in gone["reason"]
    assert run.device.counters["truncated_messages"] == 1
    assert sim.stats.reports_cut == 1
    check_reads(run.reads(), sim, NAMES)


@pytest.mark.parametrize("length", [5, 0xFFFFFFFF])
async def test_a_lying_length_is_an_error_then_reconnect_works(length: int) -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, running(sim) as run:
        await run.until_events(RFID_READ, 50)
        sim.lie_in_next_report(length)
        await run.until_state("connected", 2)
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 50)
    gone = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert "stream out of step" in gone["reason"] and f"length {length}" in gone["reason"]
    counters = run.device.counters
    assert counters["frames_rejected"] == 1 and counters["bytes_skipped"] > 0
    check_reads(run.reads(), sim, NAMES)


async def test_close_connection_is_sent_on_shutdown() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim:
        async with running(sim) as run:
            await run.until_state("connected")
        # running() cancelled the device: it said goodbye and the reader answered.
        await wait(sim, lambda s: s.close_connections == 1)
    assert sim.stats.count(llrp.MessageType.CLOSE_CONNECTION) == 1


# ------------------------------------------------------------------------------------------ reader events


async def test_reader_events_become_device_status() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, running(sim) as run:
        await run.until_state("connected")
        await sim.antenna_event(2, connected=False)
        await sim.buffer_warning(85)
        await sim.reader_exception("RF module overheating")
        await sim.antenna_event(2, connected=True)
        await run.until_state("antenna_connected")
        await sim.send_error(llrp.LlrpStatus(llrp.StatusCode.R_DEVICE_ERROR, "antenna fault"))
        await run.until_state("reader_error")
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 10)
    statuses = run.statuses()
    assert statuses[1:5] == [
        {
            "state": "antenna_disconnected",
            "antenna": 2,
            "antenna_name": "lane1-out",
            "detail": "antenna 2 (lane1-out) disconnected",
        },
        {"state": "buffer_warning", "fill_percent": 85, "detail": "the reader's report buffer is 85% full"},
        {"state": "reader_exception", "detail": "RF module overheating"},
        {
            "state": "antenna_connected",
            "antenna": 2,
            "antenna_name": "lane1-out",
            "detail": "antenna 2 (lane1-out) connected",
        },
    ]
    assert statuses[5] == {
        "state": "reader_error",
        "detail": "ERROR_MESSAGE: R_DEVICE_ERROR (401): antenna fault",
    }
    assert run.device.counters["reader_errors"] == 1
    assert "disconnected" not in run.states()


async def test_undecodable_and_unknown_messages_are_counted_and_skipped() -> None:
    good = llrp.encode_tag_report(llrp.TagReport(epc=bytes(12), antenna=1, peak_rssi=-50, pc=0x3000))
    unknown_tv = bytes.fromhex("00F0 0014 8D") + bytes(12) + bytes.fromhex("7F 0001")
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, running(sim) as run:
        await run.until_state("connected")
        sim.pause()
        await sim.send(llrp.UnknownMessage(999, b"\x01\x02"))
        await sim.send(llrp.UnknownMessage(llrp.MessageType.CUSTOM_MESSAGE, b"\x00\x00\x65\x1a\x01"))
        await sim.send(llrp.UnknownMessage(llrp.MessageType.READER_EVENT_NOTIFICATION, b"\x00\xf6\x00\x03"))
        # One report with a tag that does not decode between two that do.
        await sim.send(llrp.UnknownMessage(llrp.MessageType.RO_ACCESS_REPORT, good + unknown_tv + good))
        await run.until("the two good reads", lambda: any(e.data["epc"] == "00" * 12 for e in run.reads()))
        sim.resume()
        before = len(run.reads())
        await run.until_events(RFID_READ, before + 10)
    counters = run.device.counters
    assert counters["unknown_messages"] == 2
    assert counters["decode_errors"] == 2  # the notification, and the one bad tag
    assert sum(e.data["epc"] == "00" * 12 for e in run.reads()) == 2
    assert run.states() == ["connected"]


async def test_llrp_1_1_when_asked() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, running(sim, llrp_version=2) as run:
        await run.until_events(RFID_READ, 20)
    assert sim.versions_seen == {2}


async def test_a_connection_close_event_means_reconnect() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, running(sim) as run:
        await run.until_state("connected")
        await sim.disconnect()
        await run.until_state("connected", 2)
    gone = next(s for s in run.statuses() if s["state"] == "disconnected")
    assert gone["reason"] == "the reader is closing the connection (ConnectionCloseEvent)"


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("error_message", [False, True])
async def test_a_refused_request_names_it_and_the_status(error_message: bool) -> None:
    status = llrp.LlrpStatus(llrp.StatusCode.M_PARAMETER_ERROR, "no such antenna")
    async with serve_tcp("127.0.0.1", 0, FAST) as sim:
        sim.fail(llrp.MessageType.ADD_ROSPEC, status, error_message=error_message)
        async with running(sim) as run:
            await run.until_state("connected")
    gone = run.statuses()[0]
    assert gone["state"] == "disconnected"
    if error_message:
        assert gone["reason"] == (
            "the reader could not take ADD_ROSPEC: ERROR_MESSAGE M_PARAMETER_ERROR (100): no such antenna"
        )
    else:
        assert gone["reason"] == "the reader refused ADD_ROSPEC: M_PARAMETER_ERROR (100): no such antenna"


async def test_antennas_the_reader_lacks_stop_the_device() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, SimOptions(antennas=(1, 2), max_antennas=2)) as sim,
        running(sim) as run,
    ):
        await run.until_state("failed")
    assert run.statuses() == [
        {"state": "failed", "reason": "antennas [3, 4]: the reader has antenna ports 1..2 only"}
    ]
    assert sim.stats.count(llrp.MessageType.ADD_ROSPEC) == 0


async def test_a_reader_without_a_clock_gets_receive_times() -> None:
    options = SimOptions(tags=5, rate=2000.0, round_ms=5.0, utc_clock=False)
    started = time.time()
    async with serve_tcp("127.0.0.1", 0, options) as sim, running(sim) as run:
        await run.until_events(RFID_READ, 50)
    finished = time.time()
    assert all(started <= e.ts <= finished for e in run.reads())


async def test_an_unreachable_reader_is_retried_with_its_reason() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim:
        port = sim.port
    assert port is not None
    opts = LlrpOptions(host="127.0.0.1", port=port, connect_timeout_s=1)
    devices = {"reader-1": lambda: LlrpDriver("reader-1", opts)}
    async with run_devices(devices, Run) as run:
        await run.until_state("disconnected", 3)
    assert all(f"127.0.0.1:{port}" in s["reason"] for s in run.statuses() if s["state"] == "disconnected")


# ------------------------------------------------------------------------------------------ options


def test_options_are_validated_early() -> None:
    opts = LlrpOptions(host="reader.local")
    assert opts.reader_port == 5084 and opts.antennas == {1: "antenna-1"}
    assert LlrpOptions(host="reader", tls=True).reader_port == 5085  # LLRP over TLS: its own port
    assert opts.report_every_n_tags == 100 and opts.report_period_ms == 250
    for bad in (
        {"host": "r", "antennas": {}},
        {"host": "r", "report_every_n_tags": None, "report_period_ms": None},
        {"host": "r", "antennas": {0: "x"}},
        {"host": "r", "port": 70000},
        {"host": "r", "tcp_port": 5084},
        {"host": ""},
        {"host": "r", "llrp_version": 3},
        {"host": "r", "ca_file": __file__},  # TLS files without tls
        {"host": "r", "tls": True, "ca_file": "/nonexistent/ca.pem"},
        {"host": "r", "tls": True, "cert_file": __file__},  # a certificate without its key
    ):
        with pytest.raises(pydantic.ValidationError):
            LlrpOptions(**bad)
    with pytest.raises(pydantic.ValidationError):
        opts.port = 1


def test_the_driver_is_registered() -> None:
    assert registry.load("llrp") is LlrpDriver
    assert LlrpDriver.Options is LlrpOptions
    assert RFID_READ in LlrpDriver.emits  # so a device can enable smoothing
