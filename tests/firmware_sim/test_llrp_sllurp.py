"""sllurp, the LLRP client integrators use with Impinj and Zebra readers, against the simulated reader on a
real TCP port on 127.0.0.1: its own connect sequence (capabilities, configuration, DELETE_ACCESSSPEC and
DELETE_ROSPEC to reset the reader, ADD_ROSPEC, ENABLE_ROSPEC), its report settings, the events it asks for,
its AccessSpecs and its polite disconnect.

sllurp is GPL: a test-only dependency (the ``dev`` extra), imported here and nowhere in the project's code.
Its client runs in a thread of its own; every callback is handed to the test's event loop, and the test waits
for conditions on what arrived, with timeouts, never by sleeping. What the test asks of sllurp once it runs
(an AccessSpec, its disconnect) is done on sllurp's own thread, at the next KEEPALIVE: sllurp sends a request
before it records the answer it waits for, so called from another thread its state machine can miss a
reader that answers within microseconds, as one on loopback does.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sllurp.llrp import (  # type: ignore[import-untyped]
    C1G2Read,
    LLRPReaderClient,
    LLRPReaderConfig,
    LLRPReaderState,
)

from firmware_sim.llrp import LlrpSimulator, SimOptions, serve_tcp
from protocols import llrp

TIMEOUT = 10.0
KEEPALIVE_MS = 20
"""sllurp's keepalive period here: how soon a call waiting for sllurp's thread runs."""
EPCS = tuple(bytes.fromhex(f"30395DFA8031C3400000{n:04X}") for n in range(1, 7))
OPTIONS = SimOptions(epcs=EPCS, rate=2000.0, round_ms=5.0, antennas=(1, 2, 3, 4), seed=3)

CONTENT = {
    "EnableROSpecID": True,
    "EnableSpecIndex": True,
    "EnableAntennaID": True,
    "EnableChannelIndex": False,
    "EnablePeakRSSI": True,
    "EnableFirstSeenTimestamp": False,
    "EnableLastSeenTimestamp": True,
    "EnableTagSeenCount": True,
}
"""A TagReportContentSelector for sllurp's config (its own default enables ChannelIndex, LastSeenTimestamp
and TagSeenCount only)."""

pytestmark = pytest.mark.timeout(60)


class Sllurp:
    """sllurp's LLRPReaderClient on its own thread; what its callbacks see, kept on the test's loop."""

    def __init__(self, port: int, config: dict[str, Any]) -> None:
        config = {"keepalive_interval": KEEPALIVE_MS, **config}
        self.loop = asyncio.get_running_loop()
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], asyncio.Future[None]]] = (
            queue.SimpleQueue()
        )
        self.states: list[int] = []
        self.reports: list[list[dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self._changed = asyncio.Event()
        self.client = LLRPReaderClient("127.0.0.1", port, LLRPReaderConfig(config), timeout=TIMEOUT)
        for _, state in LLRPReaderState.getStates():
            self.client.add_state_callback(state, self._on_state)
        self.client.add_tag_report_callback(self._on_report)
        self.client.add_event_callback(self._on_event)
        for name in ("ERROR_MESSAGE", *(t.name for t in llrp.MessageType if t.name.endswith("_RESPONSE"))):
            self.client.add_message_callback(name, self._on_message)
        self.client.add_message_callback("KEEPALIVE", self._on_keepalive)

    # sllurp's thread calls these; the lists are only touched on the loop.
    def _on_state(self, _client: Any, state: int) -> None:
        self.loop.call_soon_threadsafe(self._add, self.states, state)

    def _on_report(self, _client: Any, tags: list[dict[str, Any]]) -> None:
        self.loop.call_soon_threadsafe(self._add, self.reports, tags)

    def _on_event(self, _client: Any, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self._add, self.events, event)

    def _on_message(self, _client: Any, message: Any) -> None:
        self.loop.call_soon_threadsafe(self._add, self.messages, message.getName())

    def _on_keepalive(self, _client: Any, _message: Any) -> None:
        while not self._calls.empty():
            call, done = self._calls.get()
            try:
                call()
            except Exception as err:  # handed to the test, which awaits it
                self.loop.call_soon_threadsafe(done.set_exception, err)
            else:
                self.loop.call_soon_threadsafe(done.set_result, None)

    async def on_its_thread(self, call: Callable[[], object]) -> None:
        """Run ``call`` on sllurp's thread (at the reader's next KEEPALIVE) and return once it has run."""
        done: asyncio.Future[None] = self.loop.create_future()
        self._calls.put((call, done))
        async with asyncio.timeout(TIMEOUT):
            await done

    def _add(self, where: list[Any], item: Any) -> None:
        where.append(item)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds on what sllurp has seen."""
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def inventorying(self) -> None:
        await self.until(lambda: LLRPReaderState.STATE_INVENTORYING in self.states)

    def tags(self) -> list[dict[str, Any]]:
        return [tag for report in self.reports for tag in report]

    def event_names(self) -> list[str]:
        """The reader events sllurp decoded, by parameter name (the ConnectionAttemptEvent first)."""
        return [name for event in self.events for name in event if name.endswith("Event")]


@contextlib.asynccontextmanager
async def sllurp_on(sim: LlrpSimulator, **config: Any) -> AsyncIterator[Sllurp]:
    """sllurp connected to ``sim`` (it starts its sequence at once); disconnected politely at the end."""
    assert sim.port is not None
    client = Sllurp(sim.port, config)
    await asyncio.to_thread(client.client.connect)
    try:
        yield client
        # Its polite stop: DELETE_ACCESSSPEC, DELETE_ROSPEC, then it hangs up and its thread ends.
        await client.on_its_thread(client.client.disconnect)
        await asyncio.to_thread(client.client.join, TIMEOUT)
        assert not client.client.is_alive(), "sllurp's thread did not end after its polite disconnect"
    finally:
        client.client.hard_disconnect()
        await asyncio.to_thread(client.client.join, TIMEOUT)


def epc_hex(tag: dict[str, Any]) -> str:
    epc = tag["EPC"]
    return (epc.decode() if isinstance(epc, bytes) else str(epc)).upper()


def value(tag: dict[str, Any], name: str) -> int:
    """A TV field of a tag as sllurp decoded it (some come as 1-tuples, some as ints)."""
    field = tag[name]
    return int(field[0] if isinstance(field, tuple) else field)


async def test_sllurp_resets_the_reader_and_starts_inventory() -> None:
    # sllurp's defaults: reset on connect (DELETE_ACCESSSPEC 0, DELETE_ROSPEC 0), then ADD and ENABLE of an
    # ROSpec with an Immediate start trigger on antenna 1, no reader events.
    async with serve_tcp("127.0.0.1", 0, OPTIONS) as sim, sllurp_on(sim) as sllurp:
        await sllurp.inventorying()
        await sim.wait_for(lambda s: s.rospecs_started == 1)
        stats = sim.stats
        assert stats.count(llrp.MessageType.DELETE_ACCESSSPEC) == 1
        assert stats.count(llrp.MessageType.DELETE_ROSPEC) == 1
        assert stats.count(llrp.MessageType.ADD_ROSPEC) == 1
        assert stats.count(llrp.MessageType.ENABLE_ROSPEC) == 1
        assert "DELETE_ACCESSSPEC_RESPONSE" in sllurp.messages
        assert "ERROR_MESSAGE" not in sllurp.messages
        assert stats.errors_sent == 0
        (spec,) = sim.rospecs_added
        assert spec.start_trigger == llrp.StartTrigger.IMMEDIATE
        assert [ai.antennas for ai in spec.ai_specs] == [(1,)]
        # It asked for no reader events: an antenna going away is not reported to it.
        await sim.antenna_event(3, connected=False)
        assert stats.events_sent == 0
    assert sllurp.event_names() == ["ConnectionAttemptEvent"]
    assert sim.stats.count(llrp.MessageType.DELETE_ACCESSSPEC) == 2  # its polite disconnect
    assert sim.stats.errors_sent == 0


async def test_sllurp_receives_the_simulators_tags_at_the_end_of_a_timed_inventory() -> None:
    async with (
        serve_tcp("127.0.0.1", 0, OPTIONS) as sim,
        sllurp_on(sim, antennas=[1, 2], duration=0.1, tag_content_selector=CONTENT) as sllurp,
    ):
        await sllurp.inventorying()
        await sllurp.until(lambda: bool(sllurp.tags()))
    tags = sllurp.tags()
    assert {epc_hex(tag) for tag in tags} <= {epc.hex().upper() for epc in EPCS}
    # What the TagReportContentSelector enables, and nothing else.
    assert {value(tag, "ROSpecID") for tag in tags} == {1}
    assert {value(tag, "SpecIndex") for tag in tags} == {1}
    assert {value(tag, "AntennaID") for tag in tags} <= {1, 2}
    assert all({"PeakRSSI", "LastSeenTimestampUTC", "TagSeenCount"} <= set(tag) for tag in tags)
    assert not {"ChannelIndex", "FirstSeenTimestampUTC", "InventoryParameterSpecID"} & set(tags[0])
    assert sim.stats.errors_sent == 0


@pytest.mark.parametrize("every_n", [1, 5])
async def test_sllurp_report_every_n_tags_ends_the_aispec_after_n_observations(every_n: int) -> None:
    # report_every_n_tags is an AISpecStopTrigger of type Tag observation (TagObservationTrigger: upon N
    # tags); the report comes at the end of the AISpec and holds those N observations.
    async with (
        serve_tcp("127.0.0.1", 0, OPTIONS) as sim,
        sllurp_on(sim, antennas=[1, 2, 3, 4], report_every_n_tags=every_n) as sllurp,
    ):
        await sllurp.inventorying()
        await sllurp.until(lambda: bool(sllurp.reports))
        await sim.wait_for(lambda s: s.rospecs_ended == 1)
        (spec,) = sim.rospecs_added
        (ai,) = spec.ai_specs
        assert ai.stop_trigger == llrp.StopTrigger.TAG_OBSERVATION
        assert ai.tag_observation == llrp.TagObservation(llrp.TagObservationType.N_TAGS_OR_TIMEOUT, every_n)
    (report,) = sllurp.reports
    assert report
    assert sum(value(tag, "TagSeenCount") for tag in report) == every_n
    assert {epc_hex(tag) for tag in report} <= {epc.hex().upper() for epc in EPCS}
    assert sim.stats.errors_sent == 0


async def test_sllurp_is_told_of_the_reader_events_it_enables() -> None:
    selector = {"ROSpecEvent": True, "AISpecEvent": True, "AntennaEvent": True}
    async with (
        serve_tcp("127.0.0.1", 0, OPTIONS) as sim,
        sllurp_on(sim, duration=0.05, event_selector=selector) as sllurp,
    ):
        await sllurp.inventorying()
        await sllurp.until(lambda: sllurp.event_names().count("ROSpecEvent") == 2)
        await sim.antenna_event(2, connected=False)
        await sllurp.until(lambda: "AntennaEvent" in sllurp.event_names())
    names = sllurp.event_names()
    assert names == ["ConnectionAttemptEvent", "ROSpecEvent", "AISpecEvent", "ROSpecEvent", "AntennaEvent"]
    rospec_events = [e["ROSpecEvent"] for e in sllurp.events if "ROSpecEvent" in e]
    assert [(e["EventType"], e["ROSpecID"]) for e in rospec_events] == [
        ("Start_of_ROSpec", 1),
        ("End_of_ROSpec", 1),
    ]
    (ai_event,) = [e["AISpecEvent"] for e in sllurp.events if "AISpecEvent" in e]
    assert (ai_event["EventType"], ai_event["ROSpecID"], ai_event["SpecIndex"]) == ("End_of_AISpec", 1, 1)
    (antenna,) = [e["AntennaEvent"] for e in sllurp.events if "AntennaEvent" in e]
    assert antenna == {"EventType": "Disconnected", "AntennaID": 2}


async def test_sllurp_adds_enables_disables_and_deletes_an_accessspec() -> None:
    async with serve_tcp("127.0.0.1", 0, OPTIONS) as sim, sllurp_on(sim) as sllurp:
        await sllurp.inventorying()
        read_tid = C1G2Read(OpSpecID=1, MB=2, WordPtr=0, WordCount=6)
        # ADD_ACCESSSPEC, then ENABLE_ACCESSSPEC once the reader said yes.
        await sllurp.on_its_thread(lambda: sllurp.client.start_access_spec(read_tid, access_spec_id=7))
        await sllurp.until(lambda: "ENABLE_ACCESSSPEC_RESPONSE" in sllurp.messages)
        (added,) = sim.access_specs_added
        assert (added.access_spec_id, added.antenna, added.rospec_id) == (7, 0, 0)
        assert not added.enabled
        # sllurp's next access: DISABLE_ACCESSSPEC and DELETE_ACCESSSPEC of it, then ADD and ENABLE again.
        read_user = C1G2Read(OpSpecID=2, MB=3, WordPtr=0, WordCount=2)
        await sllurp.on_its_thread(lambda: sllurp.client.llrp.nextAccess(read_user, accessSpecID=7))
        await sllurp.until(lambda: sllurp.messages.count("ENABLE_ACCESSSPEC_RESPONSE") == 2)
        assert [spec.access_spec_id for spec in sim.access_specs_added] == [7, 7]
        for message in ("DISABLE_ACCESSSPEC_RESPONSE", "DELETE_ACCESSSPEC_RESPONSE"):
            assert message in sllurp.messages
        assert "ERROR_MESSAGE" not in sllurp.messages
        assert sim.stats.errors_sent == 0
