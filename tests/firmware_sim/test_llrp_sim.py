"""The simulated LLRP reader over real TCP on 127.0.0.1, driven by a client written from the protocol (the
framer and codec), not from the driver. Waits are for conditions, with timeouts; nothing asserts on timing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import llrp as sim_llrp
from firmware_sim.llrp import Faults, LlrpSimulator, Origin, Read, SimOptions, serve_tcp
from protocols import llrp
from tests.firmware_sim.clients import Lines

TIMEOUT = 10.0
FAST = SimOptions(tags=8, rate=4000.0, round_ms=5.0, antennas=(1, 2, 3), seed=7)
M = TypeVar("M")

pytestmark = pytest.mark.timeout(60)


class Client:
    """An LLRP client on a real socket: frames and decodes what the reader sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = llrp.LlrpFramer()
        self.inbox: list[tuple[llrp.Frame, llrp.Message]] = []
        self.next_id = 100
        self.closed = False

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.closed = True
            raise ConnectionError("closed by the reader")
        for frame in self.framer.feed(data):
            self.inbox.append((frame, llrp.parse_message(frame)))

    async def until(
        self, what: Callable[[llrp.Frame, llrp.Message], bool]
    ) -> tuple[llrp.Frame, llrp.Message]:
        """The first message satisfying ``what`` (those before it are dropped)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                while self.inbox:
                    frame, message = self.inbox.pop(0)
                    if what(frame, message):
                        return frame, message
                await self._fill()

    async def next_of(self, cls: type[M]) -> M:
        _, message = await self.until(lambda f, m: isinstance(m, cls))
        assert isinstance(message, cls)
        return message

    async def send(self, message: llrp.Message, message_id: int | None = None) -> int:
        if message_id is None:
            message_id = self.next_id
            self.next_id += 1
        self.writer.write(llrp.encode_message(message, message_id))
        await self.writer.drain()
        return message_id

    async def ask(self, message: llrp.Message) -> llrp.Response | llrp.ErrorMessage:
        message_id = await self.send(message)
        _, answer = await self.until(
            lambda f, m: f.message_id == message_id and isinstance(m, llrp.Response | llrp.ErrorMessage)
        )
        assert isinstance(answer, llrp.Response | llrp.ErrorMessage)
        return answer

    async def ok(self, message: llrp.Message) -> llrp.Response:
        answer = await self.ask(message)
        assert isinstance(answer, llrp.Response), answer
        assert answer.message_type == llrp.response_type(message.message_type)
        assert answer.status.ok, answer.status
        return answer

    async def eof(self) -> None:
        """Wait until the reader closes the connection."""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await self._fill()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def client_of(sim: LlrpSimulator) -> AsyncIterator[Client]:
    assert sim.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    client = Client(reader, writer)
    try:
        yield client
    finally:
        client.close()


async def admitted(client: Client) -> None:
    event = await client.next_of(llrp.ReaderEventNotification)
    assert event.events == (llrp.ConnectionAttemptEvent(0),)


def rospec(rospec_id: int = 1, antennas: tuple[int, ...] = (0,), **kwargs: Any) -> llrp.RoSpec:
    return llrp.RoSpec(rospec_id, (llrp.AiSpec(antennas),), **kwargs)


async def start(client: Client, spec: llrp.RoSpec, report: llrp.RoReportSpec | None = None) -> None:
    await admitted(client)
    await client.ok(llrp.SetReaderConfig(report=report))
    await client.ok(llrp.AddRoSpec(spec))
    await client.ok(llrp.EnableRoSpec(spec.rospec_id))
    await client.ok(llrp.StartRoSpec(spec.rospec_id))


async def wait(sim: LlrpSimulator, predicate: Callable[[sim_llrp.SimStats], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await sim.wait_for(predicate)


# ------------------------------------------------------------------------------------------ the session


async def test_the_standard_sequence_then_reports_and_keepalives() -> None:
    options = SimOptions(
        tags=8, rate=4000.0, round_ms=5.0, antennas=(1, 2, 3), max_antennas=4, seed=7, model=42
    )
    async with serve_tcp("127.0.0.1", 0, options) as sim, client_of(sim) as client:
        await admitted(client)
        capabilities = await client.ok(llrp.GetReaderCapabilities())
        assert llrp.device_capabilities(capabilities.params) == llrp.DeviceCapabilities(
            4, 0, 42, "edgegw-sim 1.0", has_utc_clock=True
        )
        report = llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC, 5)
        config = llrp.SetReaderConfig(
            event_notifications=((llrp.ReaderEventType.ANTENNA, True),),
            report=report,
            keepalive=llrp.KeepaliveSpec(True, 20),
        )
        await client.ok(config)
        await client.ok(llrp.DeleteRoSpec(0))
        await client.ok(llrp.AddRoSpec(rospec(1, (1, 2))))
        await client.ok(llrp.EnableRoSpec(1))
        await client.ok(llrp.StartRoSpec(1))
        reports = [await client.next_of(llrp.RoAccessReport) for _ in range(10)]
        keepalive, _ = await client.until(lambda f, m: isinstance(m, llrp.Keepalive))
        await client.send(llrp.KeepaliveAck(), keepalive.message_id)
        await wait(sim, lambda s: s.keepalive_acks >= 1)
    epcs = set(sim.population)
    for message in reports:
        assert len(message.tags) == 5 and message.errors == () and message.extra == ()
        for tag in message.tags:
            assert tag.epc in epcs and tag.antenna in (1, 2)
            assert tag.pc == sim_llrp.PC_96_BITS and tag.seen_count == 1
            assert tag.peak_rssi is not None and -100 <= tag.peak_rssi <= -20
            assert tag.channel_index is not None and 1 <= tag.channel_index <= sim_llrp.CHANNELS
            assert tag.first_seen_utc is not None and tag.last_seen_utc is None
    assert sim.stats.count(llrp.MessageType.START_ROSPEC) == 1
    assert sim.stats.rospecs_started == 1
    assert sim.stats.keepalives_sent >= 1


async def test_the_state_machine_refuses_what_the_standard_forbids() -> None:
    slow = SimOptions(tags=8, rate=200.0, round_ms=5.0)  # the reader's default: a report per tag
    async with serve_tcp("127.0.0.1", 0, slow) as sim, client_of(sim) as client:
        await admitted(client)
        refusals: list[tuple[llrp.Message, int]] = [
            (llrp.StartRoSpec(1), llrp.StatusCode.A_INVALID),  # no such ROSpec
            (llrp.AddRoSpec(rospec(0)), llrp.StatusCode.A_INVALID),  # id 0 is reserved
            (llrp.AddRoSpec(rospec(2, state=llrp.RoSpecState.ACTIVE)), llrp.StatusCode.A_INVALID),
            (llrp.AddRoSpec(rospec(3, (9,))), llrp.StatusCode.A_OUT_OF_RANGE),  # the reader has 4 ports
            (
                llrp.AddRoSpec(rospec(4, start_trigger=llrp.StartTrigger.GPI)),
                llrp.StatusCode.P_UNSUPPORTED_PARAMETER,
            ),
            (llrp.DeleteRoSpec(77), llrp.StatusCode.A_INVALID),
        ]
        for request, code in refusals:
            answer = await client.ask(request)
            assert isinstance(answer, llrp.Response) and answer.status.code == code, (request, answer)
            assert answer.status.description
        await client.ok(llrp.AddRoSpec(rospec(1)))
        duplicate = await client.ask(llrp.AddRoSpec(rospec(1)))
        assert isinstance(duplicate, llrp.Response) and not duplicate.status.ok
        not_enabled = await client.ask(llrp.StartRoSpec(1))  # disabled, not inactive
        assert isinstance(not_enabled, llrp.Response) and not not_enabled.status.ok
        await client.ok(llrp.EnableRoSpec(1))
        await client.ok(llrp.StartRoSpec(1))
        listed = await client.ok(llrp.GetRoSpecs())
        assert [llrp.RoSpec.from_parameter(p).state for p in listed.params] == [llrp.RoSpecState.ACTIVE]
        await client.ok(llrp.StopRoSpec(1))
        await client.ok(llrp.DeleteRoSpec(0))
        assert (await client.ok(llrp.GetRoSpecs())).params == ()
    assert sim.stats.errors_sent == len(refusals) + 2


async def test_unknown_and_undecodable_messages_get_error_messages() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await admitted(client)
        unknown = await client.ask(llrp.UnknownMessage(999, b"\x01\x02"))
        assert isinstance(unknown, llrp.ErrorMessage)
        assert unknown.status.code == llrp.StatusCode.M_UNSUPPORTED_MESSAGE
        bad = await client.ask(llrp.UnknownMessage(llrp.MessageType.ADD_ROSPEC, b"\x00\xb1\x00\x03"))
        assert isinstance(bad, llrp.ErrorMessage) and bad.status.code == llrp.StatusCode.M_PARAMETER_ERROR
        wrong_way = await client.ask(llrp.Keepalive())
        assert isinstance(wrong_way, llrp.ErrorMessage)
        assert wrong_way.status.code == llrp.StatusCode.M_UNEXPECTED_MESSAGE
        # The session goes on.
        await client.ok(llrp.GetReaderConfig())
    assert sim.stats.errors_sent == 3


async def test_get_report_sends_what_is_held_at_once() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        never = llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC, 0)
        await admitted(client)
        await client.ok(llrp.SetReaderConfig(report=never))
        empty_id = await client.send(llrp.GetReport())
        _, empty = await client.until(lambda f, m: isinstance(m, llrp.RoAccessReport))
        assert isinstance(empty, llrp.RoAccessReport) and empty.tags == ()
        await client.ok(llrp.AddRoSpec(rospec()))
        await client.ok(llrp.EnableRoSpec(1))
        await client.ok(llrp.StartRoSpec(1))
        await wait(sim, lambda s: s.tag_reads_made >= 5)
        await client.send(llrp.GetReport())
        held = await client.next_of(llrp.RoAccessReport)
    assert empty_id >= 100
    assert sim.stats.count(llrp.MessageType.GET_REPORT) == 2
    assert len(held.tags) >= 5  # N = 0: nothing went out before GET_REPORT asked
    assert all(tag.epc in sim.population for tag in held.tags)


async def test_the_content_selector_decides_what_a_tag_report_holds() -> None:
    bare = llrp.TagReportContent(
        antenna=False, channel_index=False, peak_rssi=False, first_seen=False, seen_count=False, pc=False
    )
    full = llrp.TagReportContent(
        rospec_id=True,
        spec_index=True,
        inventory_parameter_spec_id=True,
        last_seen=True,
        crc=True,
        access_spec_id=True,
    )
    for content in (bare, full):
        async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
            await start(
                client, rospec(), llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_ROSPEC, 3, content)
            )
            tag = (await client.next_of(llrp.RoAccessReport)).tags[0]
        assert (tag.antenna is None) == (not content.antenna)
        assert (tag.peak_rssi is None) == (not content.peak_rssi)
        assert (tag.first_seen_utc is None) == (not content.first_seen)
        assert (tag.last_seen_utc is None) == (not content.last_seen)
        assert (tag.pc is None) == (not content.pc)
        assert (tag.crc is None) == (not content.crc)
        assert (tag.spec_index is None) == (not content.spec_index)
        assert (tag.access_spec_id is None) == (not content.access_spec_id)
        assert tag.rospec_id == (1 if content.rospec_id else None)
        assert tag.inventory_parameter_spec_id == (1 if content.inventory_parameter_spec_id else None)


async def test_a_tag_says_which_spec_read_it() -> None:
    which = llrp.TagReportContent(rospec_id=True, spec_index=True, inventory_parameter_spec_id=True)
    two_ai_specs = llrp.RoSpec(
        9,
        (
            llrp.AiSpec((1,), llrp.StopTrigger.DURATION, 20, ((5, llrp.AIR_PROTOCOL_C1G2),)),
            llrp.AiSpec((2,), llrp.StopTrigger.DURATION, 20, ((6, llrp.AIR_PROTOCOL_C1G2),)),
        ),
        report=llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_AISPEC, 0, which),
    )
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, two_ai_specs)
        first = await client.next_of(llrp.RoAccessReport)
        second = await client.next_of(llrp.RoAccessReport)
    assert {(t.rospec_id, t.spec_index, t.inventory_parameter_spec_id, t.antenna) for t in first.tags} == {
        (9, 1, 5, 1)
    }
    assert {(t.rospec_id, t.spec_index, t.inventory_parameter_spec_id, t.antenna) for t in second.tags} == {
        (9, 2, 6, 2)
    }


async def test_a_reader_without_a_clock_reports_uptime() -> None:
    options = SimOptions(tags=4, rate=2000.0, round_ms=5.0, utc_clock=False)
    async with serve_tcp("127.0.0.1", 0, options) as sim, client_of(sim) as client:
        event = await client.next_of(llrp.ReaderEventNotification)
        assert event.uptime
        await client.ok(llrp.SetReaderConfig(report=llrp.RoReportSpec(n=2)))
        await client.ok(llrp.AddRoSpec(rospec()))
        await client.ok(llrp.EnableRoSpec(1))
        await client.ok(llrp.StartRoSpec(1))
        tag = (await client.next_of(llrp.RoAccessReport)).tags[0]
    assert tag.first_seen_utc is None and tag.first_seen_uptime is not None
    assert sim.stats.reports_sent >= 1


async def test_durations_end_the_spec_with_its_report() -> None:
    spec = llrp.RoSpec(
        1,
        (llrp.AiSpec((0,), llrp.StopTrigger.DURATION, 30),),
        start_trigger=llrp.StartTrigger.IMMEDIATE,
        stop_trigger=llrp.StopTrigger.DURATION,
        stop_duration_ms=60_000,
        report=llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_AISPEC, 0),
    )
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await admitted(client)
        await client.ok(llrp.AddRoSpec(spec))
        await client.ok(llrp.EnableRoSpec(1))  # IMMEDIATE: enabling starts it
        report = await client.next_of(llrp.RoAccessReport)
        # Its only AISpec ended after 30 ms, so did the ROSpec: inactive, startable again.
        await wait(sim, lambda s: s.rospecs_ended == 1)
        listed = await client.ok(llrp.GetRoSpecs())
        assert [llrp.RoSpec.from_parameter(p).state for p in listed.params] == [llrp.RoSpecState.INACTIVE]
        await client.ok(llrp.StartRoSpec(1))
    assert report.tags
    assert sim.stats.rospecs_started == 2


async def test_a_time_trigger_reports_without_n_tags() -> None:
    options = SimOptions(tags=4, rate=200.0, round_ms=5.0)
    every_20_ms = llrp.RoReportSpec(llrp.ReportTrigger.N_MILLISECONDS_OR_END_OF_ROSPEC, 20)
    async with serve_tcp("127.0.0.1", 0, options) as sim, client_of(sim) as client:
        await start(client, rospec(), every_20_ms)
        reports = [await client.next_of(llrp.RoAccessReport) for _ in range(3)]
    assert all(report.tags for report in reports)
    assert sim.stats.reports_sent >= 3


async def test_close_connection_is_answered_then_the_reader_hangs_up() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, rospec(), llrp.RoReportSpec(n=10))
        await client.ok(llrp.CloseConnection())
        await client.eof()
        await wait(sim, lambda s: s.sessions_ended == 1)
    assert sim.stats.close_connections == 1


# -------------------------------------------------------------------------------------- AISpec stop triggers


def observing(
    trigger: int, *, tags: int = 0, attempts: int = 0, t_ms: int = 0, timeout_ms: int = 0
) -> llrp.RoSpec:
    """An ROSpec of one AISpec that a TagObservationTrigger ends, reporting at the end of the AISpec."""
    observation = llrp.TagObservation(trigger, tags, attempts, t_ms, timeout_ms)
    return llrp.RoSpec(
        1,
        (llrp.AiSpec((0,), llrp.StopTrigger.TAG_OBSERVATION, 0, tag_observation=observation),),
        report=llrp.RoReportSpec(llrp.ReportTrigger.N_TAGS_OR_END_OF_AISPEC, 0),
    )


@pytest.mark.parametrize("n", [1, 7, 45])
async def test_n_tag_observations_end_the_aispec_with_its_report(n: int) -> None:
    # What sllurp's report_every_n_tags sends: the AISpec ends at the Nth read, mid-round, and its report
    # holds those N; the ROSpec (null stop trigger, one AISpec) ends with it.
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, observing(llrp.TagObservationType.N_TAGS_OR_TIMEOUT, tags=n))
        report = await client.next_of(llrp.RoAccessReport)
        await wait(sim, lambda s: s.rospecs_ended == 1)
        listed = await client.ok(llrp.GetRoSpecs())
    assert len(report.tags) == n
    assert sim.stats.tag_reads_made == n
    assert [llrp.RoSpec.from_parameter(p).state for p in listed.params] == [llrp.RoSpecState.INACTIVE]


async def test_n_distinct_tags_end_the_aispec_at_the_last_new_one() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, observing(llrp.TagObservationType.N_UNIQUE_TAGS_OR_TIMEOUT, tags=3))
        report = await client.next_of(llrp.RoAccessReport)
    epcs = [tag.epc for tag in report.tags]
    assert len(set(epcs)) == 3
    assert epcs[-1] not in epcs[:-1]  # the read that made three is the last
    assert sim.stats.rospecs_ended == 1


async def test_n_attempts_end_the_aispec_after_n_rounds() -> None:
    # FAST reads 4,000 tags a second in rounds of 5 ms: 20 a round.
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, observing(llrp.TagObservationType.N_ATTEMPTS_OR_TIMEOUT, attempts=4))
        report = await client.next_of(llrp.RoAccessReport)
    assert len(report.tags) == 4 * 20


@pytest.mark.parametrize(
    "trigger",
    [
        llrp.TagObservationType.NO_NEW_TAGS_FOR_T_OR_TIMEOUT,
        llrp.TagObservationType.NO_NEW_UNIQUE_TAGS_FOR_T_OR_TIMEOUT,
    ],
)
async def test_a_quiet_field_ends_the_aispec_after_t(trigger: int) -> None:
    # An empty field: nothing new comes, so the AISpec ends T after it started, without a report.
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        sim.pause()
        await start(client, observing(trigger, t_ms=20))
        await wait(sim, lambda s: s.rospecs_ended == 1)
    assert sim.stats.tag_reads_made == 0 and sim.stats.reports_sent == 0


async def test_no_new_distinct_tags_for_t_ends_the_aispec_while_known_tags_are_read() -> None:
    # Eight tags, 4,000 reads a second: the first rounds see them, then only old ones come back, and T
    # later the AISpec ends (its report, at the end of the AISpec, says it did) while they are still read.
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, observing(llrp.TagObservationType.NO_NEW_UNIQUE_TAGS_FOR_T_OR_TIMEOUT, t_ms=30))
        report = await client.next_of(llrp.RoAccessReport)
        await wait(sim, lambda s: s.rospecs_ended == 1)
    epcs = [tag.epc for tag in report.tags]
    assert set(epcs) <= set(sim.population)
    assert len(epcs) > len(set(epcs))  # tags seen before kept coming back without ending it


async def test_the_timeout_ends_an_aispec_that_never_sees_its_n_tags() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        sim.pause()
        await start(client, observing(llrp.TagObservationType.N_TAGS_OR_TIMEOUT, tags=5, timeout_ms=30))
        await wait(sim, lambda s: s.rospecs_ended == 1)
    assert sim.stats.tag_reads_made == 0


async def test_a_tag_observation_stop_trigger_needs_its_trigger_parameter() -> None:
    bare = llrp.RoSpec(1, (llrp.AiSpec((0,), llrp.StopTrigger.TAG_OBSERVATION),))
    unknown = observing(9, tags=1)
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await admitted(client)
        missing = await client.ask(llrp.AddRoSpec(bare))
        assert isinstance(missing, llrp.Response)
        assert missing.status.code == llrp.StatusCode.M_PARAMETER_ERROR
        assert missing.status.parameter_error == (
            llrp.ParamType.AISPEC_STOP_TRIGGER,
            llrp.StatusCode.P_MISSING_PARAMETER,
        )
        out_of_range = await client.ask(llrp.AddRoSpec(unknown))
        assert isinstance(out_of_range, llrp.Response)
        assert out_of_range.status.code == llrp.StatusCode.A_OUT_OF_RANGE
    assert sim.rospecs_added == [] and sim.stats.errors_sent == 2


# ------------------------------------------------------------------------------------------ AccessSpecs


def access_spec(access_spec_id: int, **kwargs: Any) -> llrp.AccessSpec:
    """An AccessSpec reading the TID bank of any tag."""
    any_tag = llrp.Parameter(
        llrp.ParamType.C1G2_TARGET_TAG,
        {
            "flags": {"memory_bank": 1, "match": True},
            "pointer": 0,
            "mask": {"bits": 0, "data": b""},
            "data": {"bits": 0, "data": b""},
        },
    )
    read_tid = llrp.Parameter(
        llrp.ParamType.C1G2_READ,
        {
            "opspec_id": 1,
            "access_password": 0,
            "flags": {"memory_bank": 2},
            "word_pointer": 0,
            "word_count": 6,
        },
    )
    tag_spec = llrp.Parameter(llrp.ParamType.C1G2_TAG_SPEC, {}, (any_tag,))
    return llrp.AccessSpec(access_spec_id, kwargs.pop("command", (tag_spec, read_tid)), **kwargs)


async def test_accessspecs_follow_the_standards_state_machine() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await admitted(client)
        await client.ok(llrp.DeleteAccessSpec(0))  # none yet: still a success
        refusals: list[tuple[llrp.Message, int]] = [
            (llrp.AddAccessSpec(access_spec(0)), llrp.StatusCode.A_INVALID),  # id 0 is reserved
            (llrp.AddAccessSpec(access_spec(1, enabled=True)), llrp.StatusCode.A_INVALID),  # added disabled
            (llrp.AddAccessSpec(access_spec(1, antenna=9)), llrp.StatusCode.A_OUT_OF_RANGE),
            (llrp.AddAccessSpec(access_spec(1, protocol=2)), llrp.StatusCode.A_INVALID),
            (llrp.AddAccessSpec(access_spec(1, command=())), llrp.StatusCode.M_MISSING_PARAMETER),
            (llrp.EnableAccessSpec(5), llrp.StatusCode.A_INVALID),  # no such AccessSpec
            (llrp.DisableAccessSpec(5), llrp.StatusCode.A_INVALID),
            (llrp.DeleteAccessSpec(5), llrp.StatusCode.A_INVALID),
        ]
        for request, code in refusals:
            answer = await client.ask(request)
            assert isinstance(answer, llrp.Response) and answer.status.code == code, (request, answer)
            assert answer.status.description
        await client.ok(llrp.AddAccessSpec(access_spec(1)))
        await client.ok(llrp.AddAccessSpec(access_spec(2, rospec_id=1, antenna=2)))
        duplicate = await client.ask(llrp.AddAccessSpec(access_spec(2)))
        assert isinstance(duplicate, llrp.Response) and duplicate.status.code == llrp.StatusCode.A_INVALID

        async def listed() -> dict[int, bool]:
            answer = await client.ok(llrp.GetAccessSpecs())
            specs = [llrp.AccessSpec.from_parameter(p) for p in answer.params]
            return {spec.access_spec_id: spec.enabled for spec in specs}

        assert await listed() == {1: False, 2: False}
        await client.ok(llrp.EnableAccessSpec(2))
        assert await listed() == {1: False, 2: True}
        await client.ok(llrp.EnableAccessSpec(0))
        assert await listed() == {1: True, 2: True}
        await client.ok(llrp.DisableAccessSpec(1))
        assert await listed() == {1: False, 2: True}
        await client.ok(llrp.DeleteAccessSpec(1))
        assert await listed() == {2: True}
        await client.ok(llrp.DeleteAccessSpec(0))
        assert await listed() == {}
    assert [spec.access_spec_id for spec in sim.access_specs_added] == [1, 2]
    assert sim.access_specs_added[1] == access_spec(2, rospec_id=1, antenna=2)
    assert sim.stats.errors_sent == len(refusals) + 1


# ------------------------------------------------------------------------------------------ events


async def test_rospec_and_aispec_events_go_to_a_client_that_enables_them() -> None:
    two_ai_specs = llrp.RoSpec(
        4,
        (llrp.AiSpec((0,), llrp.StopTrigger.DURATION, 10), llrp.AiSpec((0,), llrp.StopTrigger.DURATION, 10)),
    )
    enable = llrp.SetReaderConfig(
        event_notifications=(
            (llrp.ReaderEventType.ROSPEC, True),
            (llrp.ReaderEventType.AISPEC_WITH_SINGULATION, True),
        )
    )
    singulation = llrp.Parameter(
        llrp.ParamType.C1G2_SINGULATION_DETAILS, {"value": {"collision_slots": 0, "empty_slots": 0}}
    )
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await admitted(client)
        await client.ok(enable)
        await client.ok(llrp.AddRoSpec(two_ai_specs))
        await client.ok(llrp.EnableRoSpec(4))
        await client.ok(llrp.StartRoSpec(4))
        ran = [(await client.next_of(llrp.ReaderEventNotification)).events for _ in range(4)]
        # Started again, then stopped by the client at once: the ROSpec ends there (its AISpec does not),
        # and both are told before the STOP_ROSPEC_RESPONSE.
        stopped: list[tuple[llrp.ReaderEvent, ...]] = []

        def told(frame: llrp.Frame, message: llrp.Message) -> bool:
            if isinstance(message, llrp.ReaderEventNotification):
                stopped.append(message.events)
            return frame.message_id == stop_id and isinstance(message, llrp.Response)

        await client.send(llrp.StartRoSpec(4))
        stop_id = await client.send(llrp.StopRoSpec(4))
        _, answer = await client.until(told)
        assert isinstance(answer, llrp.Response) and answer.status.ok
    assert ran == [
        (llrp.RoSpecEvent(llrp.RoSpecEventType.START, 4),),
        (llrp.AiSpecEvent(llrp.AISPEC_EVENT_END, 4, 1, (singulation,)),),
        (llrp.AiSpecEvent(llrp.AISPEC_EVENT_END, 4, 2, (singulation,)),),
        (llrp.RoSpecEvent(llrp.RoSpecEventType.END, 4),),
    ]
    assert stopped == [
        (llrp.RoSpecEvent(llrp.RoSpecEventType.START, 4),),
        (llrp.RoSpecEvent(llrp.RoSpecEventType.END, 4),),
    ]
    assert sim.stats.events_sent == 6


async def test_rospec_and_aispec_events_are_off_until_enabled() -> None:
    spec = llrp.RoSpec(1, (llrp.AiSpec((0,), llrp.StopTrigger.DURATION, 10),))
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, spec)
        await wait(sim, lambda s: s.rospecs_ended == 1)
        await client.ok(llrp.GetReaderConfig())  # everything the reader sent before this is in the inbox
    assert not any(isinstance(m, llrp.ReaderEventNotification) for _, m in client.inbox)
    assert sim.stats.events_sent == 0


async def test_reader_events_go_to_the_sessions_that_asked() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as asked, client_of(sim) as declined:
        await admitted(asked)
        await admitted(declined)
        await asked.ok(llrp.SetReaderConfig(event_notifications=((llrp.ReaderEventType.ANTENNA, True),)))
        await declined.ok(
            llrp.SetReaderConfig(
                event_notifications=(
                    (llrp.ReaderEventType.ANTENNA, False),
                    (llrp.ReaderEventType.REPORT_BUFFER_FILL_WARNING, False),
                )
            )
        )
        await sim.antenna_event(2, connected=False)
        await sim.buffer_warning(90)
        await sim.reader_exception("hot")
        seen = [(await asked.next_of(llrp.ReaderEventNotification)).events for _ in range(3)]
        assert seen == [
            (llrp.AntennaEvent(2, False),),
            (llrp.BufferLevelWarningEvent(90),),
            (llrp.ReaderExceptionEvent("hot"),),
        ]
        assert (await declined.next_of(llrp.ReaderEventNotification)).events == (
            llrp.ReaderExceptionEvent("hot"),
        )
        await sim.send_error(llrp.LlrpStatus(llrp.StatusCode.R_DEVICE_ERROR, "antenna fault"))
        error = await asked.next_of(llrp.ErrorMessage)
        assert error.status.code == llrp.StatusCode.R_DEVICE_ERROR
        await sim.disconnect()
        closing = await asked.next_of(llrp.ReaderEventNotification)
        assert closing.events == (llrp.ConnectionCloseEvent(),)
        await asked.eof()
    assert sim.connected_antennas == {1, 3}
    assert sim.stats.events_sent == 4


# ------------------------------------------------------------------------------------------ faults


async def test_refused_connection_says_why_and_hangs_up() -> None:
    async with serve_tcp("127.0.0.1", 0, SimOptions(faults=Faults(refuse=1))) as sim:
        async with client_of(sim) as client:
            event = await client.next_of(llrp.ReaderEventNotification)
            assert event.events == (llrp.ConnectionAttemptEvent(1),)
            assert isinstance(event.events[0], llrp.ConnectionAttemptEvent) and not event.events[0].ok
            await client.eof()
        sim.refuse_connections(0)
        async with client_of(sim) as client:
            await admitted(client)
    assert sim.stats.refused == 1 and sim.stats.connections == 2


async def test_vendor_parameters_ride_along_and_decode_as_skipped() -> None:
    options = SimOptions(tags=8, rate=4000.0, round_ms=5.0, faults=Faults(vendor_params=0.5), seed=1)
    async with serve_tcp("127.0.0.1", 0, options) as sim, client_of(sim) as client:
        await start(client, rospec(), llrp.RoReportSpec(n=20))
        reports = [await client.next_of(llrp.RoAccessReport) for _ in range(5)]
    skipped = [p for report in reports for tag in report.tags for p in tag.extra]
    assert skipped and {p.type for p in skipped} == {llrp.CUSTOM, sim_llrp.UNKNOWN_TLV}
    assert all(p.fields["vendor"] == sim_llrp.UNKNOWN_VENDOR for p in skipped if p.type == llrp.CUSTOM)
    assert any(report.extra for report in reports)  # a report-level Custom parameter too
    assert all(tag.epc in sim.population for report in reports for tag in report.tags)
    assert sim.stats.vendor_params_sent > 0


async def test_no_keepalive_fault_sends_none() -> None:
    options = SimOptions(tags=8, rate=4000.0, round_ms=5.0, faults=Faults(no_keepalive=True))
    async with serve_tcp("127.0.0.1", 0, options) as sim, client_of(sim) as client:
        await admitted(client)
        await client.ok(llrp.SetReaderConfig(keepalive=llrp.KeepaliveSpec(True, 5)))
        # 20 reports of 5 reads at 4,000 reads/s take at least 25 ms of the reader's paced clock: five
        # keepalive periods.
        await client.ok(llrp.AddRoSpec(rospec(report=llrp.RoReportSpec(n=5))))
        await client.ok(llrp.EnableRoSpec(1))
        await client.ok(llrp.StartRoSpec(1))
        await wait(sim, lambda s: s.reports_sent >= 20)
        assert sim.stats.keepalives_sent == 0
        assert not any(isinstance(m, llrp.Keepalive) for _, m in client.inbox)
        sim.resume_keepalives()
        await client.next_of(llrp.Keepalive)
    assert sim.stats.keepalives_sent >= 1


async def test_a_cut_report_ends_the_connection_mid_message() -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, rospec(), llrp.RoReportSpec(n=10))
        await client.next_of(llrp.RoAccessReport)
        sim.cut_next_report()
        await client.eof()
        assert client.framer.pending > 0  # half a report, never completed
    assert sim.stats.reports_cut == 1 and sim.stats.disconnects == 1


@pytest.mark.parametrize("length", [5, 0xFFFFFFFF])
async def test_a_lying_length_breaks_the_framing(length: int) -> None:
    async with serve_tcp("127.0.0.1", 0, FAST) as sim, client_of(sim) as client:
        await start(client, rospec(), llrp.RoReportSpec(n=10))
        await client.next_of(llrp.RoAccessReport)
        sim.lie_in_next_report(length)
        await wait(sim, lambda s: s.lies_told == 1)
        async with asyncio.timeout(TIMEOUT):
            while client.framer.broken is None:
                await client._fill()
    assert client.framer.stats.bad_length == 1


async def test_periodic_report_faults() -> None:
    options = SimOptions(tags=8, rate=4000.0, round_ms=5.0, faults=Faults(cut_report_every=3))
    async with serve_tcp("127.0.0.1", 0, options) as sim, client_of(sim) as client:
        await start(client, rospec(), llrp.RoReportSpec(n=10))
        await client.eof()
    assert sim.stats.reports_sent == 2 and sim.stats.reports_cut == 1


# ------------------------------------------------------------------------------------------ the tag cache


@given(
    st.builds(llrp.TagReportContent, *(st.booleans() for _ in range(13))),
    st.builds(Read, st.integers(0, 7), st.integers(1, 4), st.integers(0, 4), st.integers(1, 50)),
    st.integers(0, 2**64 - 1),
    st.booleans(),
    st.builds(Origin, st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(0, 0xFFFF)),
)
def test_cached_tag_reports_match_the_codec(
    content: llrp.TagReportContent, read: Read, stamp: int, utc: bool, origin: Origin
) -> None:
    sim = LlrpSimulator(SimOptions(tags=8, utc_clock=utc))
    # The first call fills the cache, the second splices another timestamp into the cached bytes.
    assert sim.tag_bytes(content, read, 12345) == llrp.encode_tag_report(sim.tag_report(content, read, 12345))
    assert sim.tag_bytes(content, read, stamp) == llrp.encode_tag_report(sim.tag_report(content, read, stamp))
    by_spec = llrp.encode_tag_report(sim.tag_report(content, read, stamp, origin))
    assert sim.tag_bytes(content, read, stamp, origin) == by_spec


def test_population_is_deterministic_and_distinct() -> None:
    assert sim_llrp.population(50, seed=3) == sim_llrp.population(50, seed=3)
    assert len(set(sim_llrp.population(500))) == 500
    assert all(epc[0] == 0x30 and len(epc) == 12 for epc in sim_llrp.population(20))


# ------------------------------------------------------------------------------------------ CLI


def test_fault_specs() -> None:
    faults = sim_llrp.parse_faults(
        ["vendor-params=0.1,no-keepalive", "refuse", "cut-report=50", "lying-length=7/5"]
    )
    assert faults == Faults(
        vendor_params=0.1, no_keepalive=True, refuse=1, cut_report_every=50, lie_length_every=7, lie_length=5
    )
    assert sim_llrp.parse_faults(["refuse=3"]).refuse == 3
    for bad in ("vendor-params=2", "refuse=0", "cut-report=0", "lying-length=x", "bogus=1", "no-keepalive=1"):
        with pytest.raises(ValueError, match="fault"):
            sim_llrp.parse_faults([bad])


async def test_cli_runs_a_simulator_until_stopped() -> None:
    parser = argparse.ArgumentParser()
    sim_llrp.add_parser(parser.add_subparsers(dest="family"))
    args = parser.parse_args(
        ["llrp", "--tcp", "127.0.0.1:0", "--rate", "500", "--tags", "3", "--fault", "vendor-params=0.5"]
    )
    stop = asyncio.Event()
    out = Lines()
    task = asyncio.create_task(sim_llrp.run_from_args(args, stop, out))
    async with asyncio.timeout(TIMEOUT):
        await out.line.wait()
    line = out.getvalue().strip()
    assert line.startswith("llrp simulator on tcp 127.0.0.1:")
    port = int(line.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    await admitted(client)
    client.close()
    stop.set()
    async with asyncio.timeout(TIMEOUT):
        await task
    with pytest.raises(SystemExit):
        parser.parse_args(["llrp"])  # --tcp is required
    bad = parser.parse_args(["llrp", "--tcp", "127.0.0.1:0", "--fault", "bogus=1"])
    with pytest.raises(ValueError, match="fault 'bogus=1'"):
        await sim_llrp.run_from_args(bad, stop, io.StringIO())
