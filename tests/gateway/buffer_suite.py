"""The Buffer contract as one test suite, for every implementation.

Use it by subclassing :class:`BufferSuite` in a ``test_*.py`` module, in a class whose name starts with
``Test``, and implementing :meth:`BufferSuite.open_buffer`::

    class TestMyBuffer(BufferSuite):
        async def open_buffer(self, path, *, max_bytes=1 << 30, when_full=WhenFull.DROP_OLDEST):
            return await MyBuffer.open(path, max_bytes=max_bytes, when_full=when_full)

``path`` names the buffer's storage (a file path in a fresh temporary directory); opening the same path again
must reopen what was stored there.

The suite assumes only what the contract says. In particular it does not know how an implementation
counts bytes against the cap: it measures the size of one event on a probe buffer (``stats().bytes``) and
uses events that all have that same size, so the cap can be set in whole events. It assumes that the size
counted for an event depends only on the event, and that ``stats()`` is up to date once an append or
``close`` returned (acks show in ``stats()`` after the next commit).
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.event import Event
from gateway.delivery.buffer import Buffer, BufferClosedError, DropReason, Stored, WhenFull
from tests.storage import fill_disk

DEVICE = "dev-1"
KIND = "test.event"
TS0 = 1_700_000_000.0
BIG = 1 << 30
HANG = 30.0  # only a guard against a hang: never reached by a passing test

OLDEST = DropReason.DROPPED_OLDEST.value
REJECTED = DropReason.REJECTED_NEW.value
OVERSIZE = DropReason.OVERSIZE.value
DISK_FULL = DropReason.DISK_FULL.value
NONE_DROPPED = {reason.value: 0 for reason in DropReason}  # every reason is reported, 0 until it happens


def ev(i: int) -> Event:
    """Event number ``i``: every such event has the same size (``i`` < 10**8)."""
    return Event(DEVICE, KIND, TS0 + i, {"i": f"{i:08d}", "ok": True})


def evs(start: int, n: int) -> list[Event]:
    return [ev(i) for i in range(start, start + n)]


def big_evs(start: int, n: int) -> list[Event]:
    """Events of about a kilobyte each, to fill a small filesystem quickly."""
    return [Event(DEVICE, KIND, TS0 + i, {"i": i, "pad": "x" * 1000}) for i in range(start, start + n)]


def _truncate_to(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        os.truncate(path, int(path.stat().st_size * fraction))

    return damage


def _garbage_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(bytes(range(7, 107)))  # never a valid header


def _garbage_page(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xa5" * 8192)


def moved_aside(path: Path) -> list[Path]:
    """Damaged files moved aside from the buffer at ``path``."""
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.corrupt-"))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage header": _garbage_header,
    "garbage in the middle": _garbage_page,
    "truncated to a third": _truncate_to(1 / 3),
    "truncated to a half": _truncate_to(1 / 2),
    "truncated near the end": _truncate_to(0.9),
    "empty": _truncate_to(0),
}
"""How a buffer file is found after a power cut or a bad flash block. Each applies to the file at the
buffer's path (an implementation whose storage is not one file overrides these cases)."""


def data_json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def committed(seqs: list[int]) -> list[int]:
    return [s for s in seqs if s]


async def read_all(buf: Buffer, after_seq: int = 0) -> list[Stored]:
    return await buf.read(after_seq, 1_000_000)


async def read_seqs(buf: Buffer, after_seq: int = 0) -> list[int]:
    return [r.seq for r in await read_all(buf, after_seq)]


def EVERYTHING(device: str, kind: str) -> bool:  # a route, named like a constant
    return True


async def cursor_seqs(cursor: Any, after_seq: int = 0) -> list[int]:
    return [r.seq for r in await cursor.read(after_seq, 1_000_000)]


def assert_increasing(seqs: list[int], above: int = 0) -> None:
    assert all(s > 0 for s in seqs), seqs
    assert seqs == sorted(set(seqs)), seqs
    if seqs:
        assert seqs[0] > above, (seqs, above)


class BufferSuite(abc.ABC):
    """The contract's tests. Subclass and implement :meth:`open_buffer`."""

    @abc.abstractmethod
    async def open_buffer(
        self, path: Path, *, max_bytes: int = BIG, when_full: WhenFull = WhenFull.DROP_OLDEST
    ) -> Buffer:
        """Open (or reopen) the implementation's buffer stored at ``path``."""

    # ---- plumbing -----------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    async def _close_opened(self) -> AsyncIterator[None]:
        self._opened: list[Buffer] = []
        yield
        for buf in self._opened:
            await buf.close()

    async def open(self, path: Path, **opts: Any) -> Buffer:
        buf = await self.open_buffer(path, **opts)
        self._opened.append(buf)
        return buf

    async def event_size(self, path: Path) -> int:
        """The bytes one ``ev(i)`` counts against the cap, measured on a probe buffer."""
        buf = await self.open_buffer(path)
        try:
            await buf.append([ev(0)])
            size = buf.stats().bytes
            assert size > 0
            return size
        finally:
            await buf.close()

    async def capped(self, tmp_path: Path, events: int, when_full: WhenFull) -> tuple[Buffer, int]:
        """A buffer whose cap holds exactly ``events`` of our events; and the size of one."""
        size = await self.event_size(tmp_path / "probe")
        buf = await self.open(tmp_path / "buffer", max_bytes=events * size + size // 2, when_full=when_full)
        return buf, size

    # ---- append / read ------------------------------------------------------------------------------

    async def test_append_assigns_increasing_seqs(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        first = evs(0, 3)
        seqs1 = await buf.append(first)
        seqs2 = await buf.append(evs(3, 2))
        assert len(seqs1) == 3 and len(seqs2) == 2
        assert_increasing(seqs1 + seqs2)
        assert [e.seq for e in first] == seqs1
        assert buf.stats().last_seq == seqs2[-1]
        assert await buf.append([]) == []

    async def test_read_in_order_with_after_seq_and_limit(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        events = evs(0, 10)
        seqs = await buf.append(events)
        rows = await buf.read(0, 100)
        assert [r.seq for r in rows] == seqs
        for row, e in zip(rows, events, strict=True):
            assert (row.device, row.kind, row.ts, row.data_json) == (
                e.device,
                e.kind,
                e.ts,
                data_json(e.data),
            )
            assert isinstance(row.data_json, bytes)
        assert [r.seq for r in await buf.read(seqs[3], 4)] == seqs[4:8]
        assert [r.seq for r in await buf.read(seqs[7], 100)] == seqs[8:]
        assert await buf.read(seqs[-1], 100) == []
        assert await buf.read(0, 0) == []

    async def test_data_json_is_compact_utf8(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        data = {"epc": "E280 1160", "name": "Zürich – 東京", "rssi": -61.5, "n": [1, {"a": None}], "t": False}
        [seq] = await buf.append([Event("gate-3", "rfid.read", 12.25, data)])
        [row] = await buf.read(0, 10)
        assert row.seq == seq
        assert row.data_json == data_json(data)
        assert b'"rssi":-61.5,' in row.data_json  # no spaces
        assert "東京".encode() in row.data_json  # UTF-8, not \u escapes
        assert json.loads(row.data_json) == data

    async def test_data_json_cannot_carry_is_committed_as_valid_json(self, tmp_path: Path) -> None:
        # A driver bug (a NaN, a non-JSON value) must neither lose the event nor stop the pipeline by
        # raising out of append: the event is committed with its data made strictly valid JSON.
        buf = await self.open(tmp_path / "buffer")
        seqs = await buf.append([ev(0), Event(DEVICE, KIND, TS0, {"x": object(), "y": float("nan")})])
        assert committed(seqs)
        assert await read_seqs(buf) == seqs
        stored = (await buf.read(0, 10))[1]

        def refuse(name: str) -> object:
            raise ValueError(f"not JSON: {name}")

        data = json.loads(stored.data_json, parse_constant=refuse)
        assert data["y"] is None
        assert isinstance(data["x"], str)

    # ---- ack ----------------------------------------------------------------------------------------

    async def test_ack_deletes_and_read_never_returns_acked(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        seqs = await buf.append(evs(0, 6))
        await buf.ack([seqs[1], seqs[3]])
        assert await read_seqs(buf) == [seqs[0], seqs[2], seqs[4], seqs[5]]
        assert await read_seqs(buf, seqs[1]) == [seqs[2], seqs[4], seqs[5]]
        # Unknown and already deleted seqs are ignored.
        await buf.ack([0, -1, seqs[1], seqs[3]])
        await buf.ack(iter([seqs[0]]))
        assert await read_seqs(buf) == [seqs[2], seqs[4], seqs[5]]
        more = await buf.append(evs(6, 1))  # the deletions are committed by now
        s = buf.stats()
        assert s.depth == 4
        assert await read_seqs(buf) == [seqs[2], seqs[4], seqs[5], *more]

    async def test_ack_scattered_and_in_runs(self, tmp_path: Path) -> None:
        size = await self.event_size(tmp_path / "probe")
        buf = await self.open(tmp_path / "buffer")
        seqs = await buf.append(evs(0, 100))
        await buf.ack(seqs[::2])  # 50 scattered seqs
        await buf.ack(seqs[91:96])  # a run, partly already acked
        more = await buf.append(evs(100, 1))
        left = [s for i, s in enumerate(seqs) if i % 2 and not 91 <= i < 96] + more
        assert await read_seqs(buf) == left
        assert buf.stats().depth == len(left)
        assert buf.stats().bytes == len(left) * size

    async def test_read_never_returns_acked_while_consuming(self, tmp_path: Path) -> None:
        """A forwarder's loop: read from the start, ack what was read, read again at once."""
        buf = await self.open(tmp_path / "buffer")
        seqs = await buf.append(evs(0, 120))
        acked: set[int] = set()
        seen: list[int] = []
        while rows := await buf.read(0, 7):
            got = [r.seq for r in rows]
            assert not acked.intersection(got)
            seen += got
            await buf.ack(got)
            acked.update(got)
        assert seen == seqs

    async def test_ack_is_durable_after_next_append_and_on_close(self, tmp_path: Path) -> None:
        path = tmp_path / "buffer"
        buf = await self.open(path)
        seqs = await buf.append(evs(0, 5))
        await buf.ack(seqs[:2])
        more = await buf.append(evs(5, 1))
        await buf.ack(seqs[2:3])  # nothing appended after this one: close must commit it
        await buf.close()
        buf = await self.open(path)
        assert await read_seqs(buf) == seqs[3:] + more
        assert buf.stats().depth == 3

    async def test_seq_never_reused(self, tmp_path: Path) -> None:
        path = tmp_path / "buffer"
        buf = await self.open(path)
        seqs = await buf.append(evs(0, 5))
        await buf.ack(seqs)
        after_delete = await buf.append(evs(5, 2))
        assert_increasing(after_delete, above=seqs[-1])
        await buf.ack(after_delete)
        await buf.close()

        buf = await self.open(path)
        assert await read_seqs(buf) == []
        assert buf.stats().last_seq == after_delete[-1]
        assert buf.stats().depth == 0
        after_reopen = await buf.append(evs(7, 3))
        assert_increasing(after_reopen, above=after_delete[-1])

    # ---- the cap ------------------------------------------------------------------------------------

    async def test_sizes_add_up(self, tmp_path: Path) -> None:
        size = await self.event_size(tmp_path / "probe")
        buf = await self.open(tmp_path / "buffer")
        await buf.append(evs(0, 4))
        assert buf.stats().bytes == 4 * size
        assert buf.stats().depth == 4

    async def test_drop_oldest(self, tmp_path: Path) -> None:
        buf, size = await self.capped(tmp_path, 5, WhenFull.DROP_OLDEST)
        a = await buf.append(evs(0, 3))
        b = await buf.append(evs(3, 4))
        assert_increasing(a + b)
        assert await read_seqs(buf) == a[2:] + b
        s = buf.stats()
        assert (s.depth, s.bytes) == (5, 5 * size)
        assert s.dropped[OLDEST] == 2
        assert (s.dropped[REJECTED], s.dropped[OVERSIZE]) == (0, 0)
        assert s.oldest_ts == TS0 + 2

        # One append larger than the cap: everything stored goes, and its own oldest events are displaced.
        c = await buf.append(evs(7, 7))
        assert c[:2] == [0, 0]
        assert_increasing(c[2:], above=b[-1])
        assert await read_seqs(buf) == c[2:]
        assert [r.data_json for r in await read_all(buf)] == [data_json(e.data) for e in evs(9, 5)]
        assert buf.stats().dropped[OLDEST] == 2 + 5 + 2
        assert buf.stats().depth == 5

    async def test_drop_oldest_frees_by_ack_first(self, tmp_path: Path) -> None:
        buf, _ = await self.capped(tmp_path, 4, WhenFull.DROP_OLDEST)
        a = await buf.append(evs(0, 4))
        await buf.ack(a[:2])
        b = await buf.append(evs(4, 2))
        assert await read_seqs(buf) == a[2:] + b
        assert buf.stats().dropped[OLDEST] == 0

    async def test_reject_new(self, tmp_path: Path) -> None:
        buf, size = await self.capped(tmp_path, 5, WhenFull.REJECT_NEW)
        a = await buf.append(evs(0, 3))
        events = evs(3, 4)
        b = await buf.append(events)
        assert b[2:] == [0, 0]
        assert_increasing(a + b[:2])
        assert [e.seq for e in events] == [b[0], b[1], None, None]
        assert await read_seqs(buf) == a + b[:2]
        s = buf.stats()
        assert (s.depth, s.bytes) == (5, 5 * size)
        assert s.dropped[REJECTED] == 2
        assert (s.dropped[OLDEST], s.dropped[OVERSIZE]) == (0, 0)

        assert await buf.append(evs(7, 2)) == [0, 0]  # nothing fits: refused, not an error
        assert buf.stats().dropped[REJECTED] == 4

        await buf.ack(a[:2])
        c = await buf.append(evs(9, 3))
        assert c[2] == 0
        assert_increasing(c[:2], above=b[1])
        assert await read_seqs(buf) == a[2:] + b[:2] + c[:2]
        assert buf.stats().dropped[REJECTED] == 5

    @pytest.mark.parametrize("when_full", list(WhenFull))
    async def test_oversize_event_is_refused(self, tmp_path: Path, when_full: WhenFull) -> None:
        buf, size = await self.capped(tmp_path, 3, when_full)
        a = await buf.append(evs(0, 2))
        huge = Event(DEVICE, KIND, TS0, {"blob": "x" * (4 * size)})
        b = await buf.append([ev(2), huge])
        assert b[1] == 0 and huge.seq is None
        assert_increasing(a + b[:1])
        assert await read_seqs(buf) == a + b[:1]  # nothing was dropped to make room for it
        s = buf.stats()
        assert s.dropped[OVERSIZE] == 1
        assert (s.dropped[OLDEST], s.dropped[REJECTED]) == (0, 0)
        assert await buf.append([huge]) == [0]
        assert buf.stats().dropped[OVERSIZE] == 2

    # ---- stats --------------------------------------------------------------------------------------

    async def test_stats(self, tmp_path: Path) -> None:
        size = await self.event_size(tmp_path / "probe")
        buf = await self.open(tmp_path / "buffer", max_bytes=12345)
        s = buf.stats()
        assert (s.depth, s.bytes, s.max_bytes, s.last_seq, s.oldest_ts) == (0, 0, 12345, 0, None)
        assert s.dropped == NONE_DROPPED

        seqs = await buf.append(evs(0, 3))
        s = buf.stats()
        assert (s.depth, s.bytes, s.last_seq, s.oldest_ts) == (3, 3 * size, seqs[-1], TS0)
        await buf.ack(seqs[:1])
        more = await buf.append([Event(DEVICE, KIND, 5.0, {"i": "x"})])  # older event time, higher seq
        s = buf.stats()
        assert s.depth == 3 and s.last_seq == more[0]
        assert s.oldest_ts == TS0 + 1  # the oldest *stored* event: the lowest seq
        assert 2 * size < s.bytes < 3 * size
        await buf.ack([*seqs, *more])
        await buf.append([])
        await buf.close()
        buf = await self.open(tmp_path / "buffer", max_bytes=12345)
        s = buf.stats()
        assert (s.depth, s.bytes, s.last_seq, s.oldest_ts) == (0, 0, more[0], None)
        s.dropped[OLDEST] = 99  # a snapshot: changing it changes nothing
        assert buf.stats().dropped[OLDEST] == 0

    # ---- wait_for_new -------------------------------------------------------------------------------

    async def test_wait_for_new(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        seqs = await buf.append(evs(0, 2))
        await asyncio.wait_for(buf.wait_for_new(seqs[0]), HANG)  # already there: returns at once

        waiter = asyncio.ensure_future(buf.wait_for_new(seqs[-1]))
        other = asyncio.ensure_future(buf.wait_for_new(seqs[-1] + 1000))
        done, _ = await asyncio.wait({waiter}, timeout=0.05)  # must not return: nothing new yet
        assert not done
        await buf.ack(seqs)  # a deletion is not new
        await buf.read(0, 10)
        assert not waiter.done()
        more = await buf.append(evs(2, 1))
        await asyncio.wait_for(waiter, HANG)
        assert buf.stats().last_seq == more[0]
        assert not other.done()
        other.cancel()

    async def test_wait_for_new_ends_on_close(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        waiter = asyncio.ensure_future(buf.wait_for_new(0))
        await buf.close()
        with pytest.raises(BufferClosedError):
            await asyncio.wait_for(waiter, HANG)

    # ---- concurrency --------------------------------------------------------------------------------

    async def test_concurrent_appends(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        tasks, per_task = 40, 25
        batches = [evs(t * per_task, per_task) for t in range(tasks)]

        async def one(events: list[Event]) -> list[int]:
            out: list[int] = []
            for i in range(0, len(events), 5):
                out += await buf.append(events[i : i + 5])
            return out

        results = await asyncio.gather(*(one(b) for b in batches))
        every = [s for r in results for s in r]
        assert len(set(every)) == tasks * per_task and all(every)
        for r in results:
            assert_increasing(r)
        rows = await read_all(buf)
        assert [r.seq for r in rows] == sorted(every)
        by_seq = {e.seq: e for b in batches for e in b}
        for row in rows:
            assert row.data_json == data_json(by_seq[row.seq].data)
        assert buf.stats().depth == tasks * per_task

    # ---- several upstreams: one copy of each event, a cursor and acknowledgements per upstream -----------

    async def test_cursors_each_ack_their_own_share(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        await buf.set_upstreams([("a", EVERYTHING), ("b", EVERYTHING)])
        a, b = buf.cursor("a"), buf.cursor("b")
        seqs = await buf.append(evs(0, 4))
        size = buf.stats().bytes // 4
        assert await cursor_seqs(a) == seqs == await cursor_seqs(b)
        assert buf.stats().depth == 4  # one copy of each event
        await a.ack(seqs[:3])
        assert await cursor_seqs(a) == seqs[3:]
        assert await cursor_seqs(b) == seqs  # a's acks are a's alone
        await buf.append(evs(4, 1))  # commits the acks
        shares = buf.stats().upstreams
        assert (shares["a"].events, shares["a"].bytes) == (2, 2 * size)
        assert (shares["b"].events, shares["b"].bytes) == (5, 5 * size)
        assert buf.stats().depth == 5  # nothing deleted: b still needs every one
        await b.ack(seqs[1:])
        later = await buf.append(evs(5, 1))
        fifth = seqs[-1] + 1
        # Deleted once both acked: seqs[1], seqs[2]; seqs[0] (acked by a only), seqs[3] (b only) stay.
        assert await read_seqs(buf) == [seqs[0], seqs[3], fifth, *later]
        assert await cursor_seqs(a) == [seqs[3], fifth, *later]
        assert await cursor_seqs(b) == [seqs[0], fifth, *later]
        assert buf.stats().depth == 4

    async def test_each_upstream_knows_the_age_of_its_backlog(self, tmp_path: Path) -> None:
        path = tmp_path / "buffer"
        buf = await self.open(path)
        await buf.set_upstreams([("a", EVERYTHING), ("b", EVERYTHING)])
        a, b = buf.cursor("a"), buf.cursor("b")

        def oldest() -> tuple[float | None, float | None]:
            shares = buf.stats().upstreams
            return shares["a"].oldest_ts, shares["b"].oldest_ts

        seqs = await buf.append(evs(0, 4))  # event i has ts TS0 + i
        assert oldest() == (TS0, TS0)
        await a.ack(seqs[:3])
        await buf.append(evs(4, 1))  # commits the acks
        assert oldest() == (TS0 + 3, TS0)  # a moved on; b, which acked nothing, did not
        await b.ack(seqs[:2])
        await a.ack([*seqs[3:], seqs[-1] + 1])
        await buf.append(evs(5, 1))
        assert oldest() == (TS0 + 5, TS0 + 2)
        await a.ack([seqs[-1] + 2])
        await buf.append(evs(6, 1))
        assert oldest() == (TS0 + 6, TS0 + 2)
        await buf.close()

        buf = await self.open(path)  # after a restart, known again at the first transaction
        await buf.set_upstreams([("a", EVERYTHING), ("b", EVERYTHING)])
        later = await buf.append(evs(7, 1))
        assert oldest() == (TS0 + 6, TS0 + 2)
        await buf.cursor("a").ack([seqs[-1] + 3, *later])
        await buf.cursor("b").ack([*seqs[2:], seqs[-1] + 1, seqs[-1] + 2, seqs[-1] + 3, *later])
        await buf.append(evs(8, 1))
        assert oldest() == (TS0 + 8, TS0 + 8)

    async def test_routes_store_one_copy_for_the_upstreams_that_take_it(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        meters = lambda device, kind: kind.startswith("meter.")  # noqa: E731
        gate = lambda device, kind: device.startswith("gate-")  # noqa: E731
        await buf.set_upstreams([("scada", meters), ("city", gate)])
        scada, city = buf.cursor("scada"), buf.cursor("city")
        both, only_meter, only_gate, nobody = await buf.append(
            [
                Event("gate-1", "meter.reading", TS0, {"v": 1}),
                Event("m-1", "meter.reading", TS0, {"v": 2}),
                Event("gate-1", "rfid.read", TS0, {"v": 3}),
                Event("m-1", "rfid.read", TS0, {"v": 4}),
            ]
        )
        assert nobody == 0 and buf.stats().unrouted == 1  # routed nowhere: not stored
        assert await cursor_seqs(scada) == [both, only_meter]
        assert await cursor_seqs(city) == [both, only_gate]
        await scada.ack([both, only_meter])
        await city.ack([both, only_gate])
        last = await buf.append([Event("m-2", "meter.reading", TS0, {"v": 5})])  # commits the acks
        assert await read_seqs(buf) == last
        assert buf.stats().depth == 1

    async def test_crash_between_two_upstreams_acks_loses_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "buffer"
        routes = [("a", EVERYTHING), ("b", EVERYTHING)]
        buf = await self.open(path)
        await buf.set_upstreams(routes)
        seqs = await buf.append(evs(0, 3))
        await buf.cursor("a").ack(seqs)
        await buf.append(evs(3, 1))  # a's acks are durable now; b's never came
        await buf.close()

        buf = await self.open(path)
        await buf.set_upstreams(routes)
        a, b = buf.cursor("a"), buf.cursor("b")
        assert await cursor_seqs(a) == [seqs[-1] + 1]  # nothing a acked comes back to a
        assert await cursor_seqs(b) == [*seqs, seqs[-1] + 1]  # nothing deleted early for b
        await b.ack(seqs)
        await buf.append(evs(4, 1))
        assert await read_seqs(buf) == [seqs[-1] + 1, seqs[-1] + 2]

    async def test_adding_and_removing_an_upstream_keeps_the_others_acks(self, tmp_path: Path) -> None:
        path = tmp_path / "buffer"
        buf = await self.open(path)
        await buf.set_upstreams([("a", EVERYTHING), ("b", EVERYTHING)])
        old = await buf.append(evs(0, 4))
        await buf.cursor("a").ack(old[:2])
        await buf.cursor("b").ack(old[1:3])
        await buf.append(evs(4, 1))
        # Reload: c is added, b removed.
        await buf.set_upstreams([("a", EVERYTHING), ("c", EVERYTHING)])
        new = await buf.append(evs(5, 2))
        a, c = buf.cursor("a"), buf.cursor("c")
        assert await cursor_seqs(a) == [*old[2:], old[-1] + 1, *new]  # a's acks kept, none duplicated
        assert await cursor_seqs(c) == new  # a new upstream gets what comes after it
        with pytest.raises(KeyError):
            buf.cursor("b")
        # What only b still needed is gone; what a still needs stays.
        assert old[1] not in await read_seqs(buf) and old[0] not in await read_seqs(buf)
        await buf.close()
        buf = await self.open(path)
        await buf.set_upstreams([("a", EVERYTHING), ("c", EVERYTHING)])
        assert await cursor_seqs(buf.cursor("a")) == [*old[2:], old[-1] + 1, *new]
        assert await cursor_seqs(buf.cursor("c")) == new
        shares = buf.stats().upstreams
        assert set(shares) == {"a", "c"} and shares["c"].events == 2

    async def test_a_dead_upstream_never_delays_another(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        await buf.set_upstreams([("dead", EVERYTHING), ("live", EVERYTHING)])
        live = buf.cursor("live")
        for start in range(0, 200, 50):
            seqs = await buf.append(evs(start, 50))
            assert await cursor_seqs(live) == seqs  # from 0 (a rewind): only what live has not acked
            await live.ack(seqs)
        await buf.append(evs(200, 1))
        assert buf.stats().upstreams["dead"].events == 201
        assert buf.stats().upstreams["live"].events == 1
        assert await cursor_seqs(buf.cursor("dead")) == await read_seqs(buf)

    @pytest.mark.parametrize("when_full", list(WhenFull))
    async def test_cap_is_whole_buffer_and_drops_count_per_upstream(
        self, tmp_path: Path, when_full: WhenFull
    ) -> None:
        buf, _ = await self.capped(tmp_path, 4, when_full)
        await buf.set_upstreams([("fast", EVERYTHING), ("down", EVERYTHING), ("meters", lambda d, k: False)])
        seqs = await buf.append(evs(0, 4))
        await buf.cursor("fast").ack(seqs)
        await buf.append(evs(4, 2))  # over the cap by 2: the whole buffer's policy decides
        s = buf.stats()
        reason = OLDEST if when_full is WhenFull.DROP_OLDEST else REJECTED
        assert s.dropped[reason] == 2
        assert s.upstreams["down"].dropped[reason] == 2  # it had not acknowledged them
        assert s.upstreams["meters"].dropped[reason] == 0  # never routed there
        # fast had acked the dropped old ones (drop_oldest) but not the refused new ones (reject_new)
        assert s.upstreams["fast"].dropped[reason] == (0 if when_full is WhenFull.DROP_OLDEST else 2)
        assert s.depth == 4

    # ---- persistence --------------------------------------------------------------------------------

    async def test_persistence_across_reopen(self, tmp_path: Path) -> None:
        size = await self.event_size(tmp_path / "probe")
        path = tmp_path / "buffer"
        opts: dict[str, Any] = {"max_bytes": 4 * size + 1, "when_full": WhenFull.DROP_OLDEST}
        buf = await self.open(path, **opts)
        seqs = await buf.append(evs(0, 6))  # 2 dropped
        await buf.ack(seqs[2:3])
        await buf.append([Event(DEVICE, KIND, TS0, {"blob": "x" * (5 * size)})])  # oversize
        before_rows = await read_all(buf)
        before = buf.stats()
        await buf.close()
        await buf.close()  # idempotent

        buf = await self.open(path, **opts)
        assert await read_all(buf) == before_rows
        assert buf.stats() == before
        assert before.dropped == {**NONE_DROPPED, OLDEST: 2, OVERSIZE: 1}
        assert before.depth == 3

        # Counters keep counting from where they were, under the other policy too.
        await buf.close()
        buf = await self.open(path, max_bytes=4 * size + 1, when_full=WhenFull.REJECT_NEW)
        assert await buf.append(evs(6, 2)) != [0, 0]
        assert buf.stats().dropped == {**NONE_DROPPED, OLDEST: 2, REJECTED: 1, OVERSIZE: 1}

    async def test_closed_buffer_refuses_use(self, tmp_path: Path) -> None:
        buf = await self.open(tmp_path / "buffer")
        await buf.close()
        with pytest.raises(BufferClosedError):
            await buf.append([ev(0)])
        with pytest.raises(BufferClosedError):
            await buf.read(0, 1)
        with pytest.raises(BufferClosedError):
            await buf.ack([1])

    # ---- storage faults ------------------------------------------------------------------------------
    # A full filesystem and a damaged file are never errors: the buffer keeps within the room it has and
    # counts what it drops as disk_full; a damaged file is kept aside (``<name>.corrupt-<UTC time>``) and a
    # fresh one continues above every seq the old one handed out.

    async def fill_until_disk_full(self, buf: Buffer, start: int = 0) -> int:
        """Append big events until the buffer reports dropping for lack of space; returns the next ``i``."""
        i = start
        for _ in range(400):
            await buf.append(big_evs(i, 50))
            i += 50
            if buf.stats().dropped[DISK_FULL]:
                return i
        raise AssertionError(f"no disk_full drop after {i - start} events: {buf.stats()}")

    @pytest.mark.parametrize("when_full", list(WhenFull))
    async def test_disk_full_is_counted_never_raised_and_passes(
        self, small_fs: Callable[[int], Path], when_full: WhenFull
    ) -> None:
        fs = small_fs(24 << 20)
        buf = await self.open(fs / "buffer", when_full=when_full)
        await buf.append(big_evs(0, 20))
        first = await read_seqs(buf)
        filler = fill_disk(fs, leave=256 << 10)
        i = await self.fill_until_disk_full(buf, 20)
        s = buf.stats()
        assert s.disk_full
        assert s.fault is not None and s.fault.startswith("disk full: dropping")
        assert when_full.value in s.fault
        stored = await read_seqs(buf)
        assert stored == sorted(set(stored)) and len(stored) == s.depth
        if when_full is WhenFull.REJECT_NEW:
            assert stored[: len(first)] == first  # what was stored stays; the new are refused
        else:
            assert first[0] not in stored  # the oldest made room for the newest
        # Still full: acknowledged events are deleted, and their room takes new ones.
        await buf.ack(stored)
        more = await buf.append(big_evs(i, 10))
        assert 0 not in more and more[0] > stored[-1]
        assert await read_seqs(buf) == more
        # Room again: normal by itself, without reopening.
        filler.unlink()
        async with asyncio.timeout(HANG):
            while buf.stats().disk_full:
                await buf.append(big_evs(i, 1))
                i += 1
                await asyncio.sleep(0.05)  # the buffer looks at the free space about once a second
        dropped = buf.stats().dropped[DISK_FULL]
        seqs = await buf.append(big_evs(i, 2000))  # about 2 MB more than there was room for before
        assert 0 not in seqs
        assert buf.stats().dropped[DISK_FULL] == dropped
        assert buf.stats().fault is None

    async def test_opens_on_a_full_disk_and_forwards_what_it_holds(
        self, small_fs: Callable[[int], Path]
    ) -> None:
        fs = small_fs(24 << 20)
        path = fs / "buffer"
        buf = await self.open(path)
        seqs = await buf.append(big_evs(0, 500))
        await buf.close()
        fill_disk(fs)  # not a byte left
        buf = await self.open(path)
        assert await read_seqs(buf) == seqs
        await buf.ack(seqs)
        later: list[int] = []
        async with asyncio.timeout(HANG):
            while not later:  # the deletions make room for new events
                later = committed(await buf.append(big_evs(500, 5)))
        assert later[0] > seqs[-1]

    @pytest.mark.parametrize("damage", list(DAMAGE))
    async def test_damaged_file_is_moved_aside_and_seqs_go_on(self, tmp_path: Path, damage: str) -> None:
        path = tmp_path / "buffer"
        buf = await self.open(path)
        for k in range(10):
            await buf.append(big_evs(100 * k, 100))
        last = buf.stats().last_seq
        await buf.close()
        DAMAGE[damage](path)
        buf = await self.open(path)
        assert len(moved_aside(path)) == 1
        assert buf.stats().corrupt_files == 1
        seqs = await buf.append(evs(0, 3))
        assert 0 not in seqs and seqs[0] > last  # an id the consumer has seen is never handed out again
        assert await read_seqs(buf) == seqs
        await buf.close()
        buf = await self.open(path)  # a fresh file is a sound one: nothing moved aside again
        assert buf.stats().corrupt_files == 1
        assert await read_seqs(buf) == seqs

    # ---- against a model ----------------------------------------------------------------------------

    def test_random_operations_agree_with_a_model(self, tmp_path: Path) -> None:
        size = asyncio.run(self.event_size(tmp_path / "probe"))

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(
            when_full=st.sampled_from(list(WhenFull)),
            cap=st.integers(2, 6),
            ops=st.lists(_OPS, max_size=30),
        )
        def run(when_full: WhenFull, cap: int, ops: list[Op]) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                model = _Model(cap, when_full, size)
                asyncio.run(self._run_model(Path(tmp) / "buffer", model, ops))

        run()

    def test_random_operations_on_two_cursors_agree_with_a_model(self, tmp_path: Path) -> None:
        """Two upstreams, one taking every event and one only the even ones, under drop_oldest: appends,
        each upstream's acks and reads, reopens, in any order."""
        size = asyncio.run(self.event_size(tmp_path / "probe"))

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(cap=st.integers(2, 8), ops=st.lists(_CURSOR_OPS, max_size=30))
        def run(cap: int, ops: list[Op]) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(self._run_cursor_model(Path(tmp) / "buffer", cap, size, ops))

        run()

    async def _run_cursor_model(self, path: Path, cap: int, size: int, ops: list[Op]) -> None:
        routes = [("all", EVERYTHING), ("even", lambda _device, kind: kind == EVEN)]
        opts: dict[str, Any] = {"max_bytes": cap * size + size // 2, "when_full": WhenFull.DROP_OLDEST}
        stored: dict[int, tuple[bytes, set[str]]] = {}  # seq -> (data_json, upstreams it is pending for)
        dropped = {"all": 0, "even": 0}
        every: list[int] = []
        next_i = 0
        buf = await self.open_buffer(path, **opts)
        await buf.set_upstreams(routes)
        try:
            for op in ops:
                if op.name == "append":
                    events = [
                        Event(DEVICE, EVEN if i % 2 == 0 else ODD, TS0 + i, {"i": f"{i:08d}", "ok": True})
                        for i in range(next_i, next_i + op.n)
                    ]
                    next_i += op.n
                    seqs = await buf.append(events)
                    displaced = max(0, op.n - cap)
                    assert seqs[:displaced] == [0] * displaced
                    for e, seq in zip(events, seqs, strict=True):
                        pending = {"all", "even"} if e.kind == EVEN else {"all"}
                        if seq == 0:
                            for name in pending:
                                dropped[name] += 1
                            continue
                        stored[seq] = (data_json(e.data), pending)
                        every.append(seq)
                    while len(stored) > cap:
                        oldest = next(iter(stored))
                        for name in stored.pop(oldest)[1]:
                            dropped[name] += 1
                    shares = buf.stats().upstreams
                    for name in ("all", "even"):
                        assert shares[name].events == sum(1 for _, p in stored.values() if name in p), name
                        assert shares[name].dropped[OLDEST] == dropped[name], name
                    assert buf.stats().depth == len(stored)
                elif op.name in ("ack-all", "ack-even"):
                    name = op.name.removeprefix("ack-")
                    chosen = [every[i] for i in op.picks if i < len(every)]
                    await buf.cursor(name).ack(chosen)
                    for seq in chosen:
                        if seq in stored:
                            stored[seq][1].discard(name)
                            if not stored[seq][1]:
                                del stored[seq]
                elif op.name in ("read-all", "read-even"):
                    name = op.name.removeprefix("read-")
                    after = every[op.n] if op.n < len(every) else 0
                    got = await buf.cursor(name).read(after, op.picks[0])
                    want = [(s, d) for s, (d, p) in stored.items() if s > after and name in p][: op.picks[0]]
                    assert [(r.seq, r.data_json) for r in got] == want
                else:
                    await buf.close()
                    buf = await self.open_buffer(path, **opts)
                    await buf.set_upstreams(routes)
            for name in ("all", "even"):
                got = await buf.cursor(name).read(0, 1 << 30)
                assert [r.seq for r in got] == [s for s, (_, p) in stored.items() if name in p]
        finally:
            await buf.close()

    async def _run_model(self, path: Path, m: _Model, ops: list[Op]) -> None:
        opts: dict[str, Any] = {"max_bytes": m.cap * m.size + m.size // 2, "when_full": m.when_full}
        buf = await self.open_buffer(path, **opts)
        try:
            for op in ops:
                if op.name == "append":
                    events = evs(m.next_i, op.n)
                    m.next_i += op.n
                    seqs = await buf.append(events)
                    m.append(events, seqs)
                    m.check_stats(buf.stats())
                elif op.name == "ack":
                    chosen = [m.all_seqs[i] if i < len(m.all_seqs) else -i for i in op.picks]
                    await buf.ack(chosen)
                    m.ack(chosen)
                elif op.name == "read":
                    after = 0 if op.n >= len(m.all_seqs) else m.all_seqs[op.n] + op.picks[0] % 2
                    got = await buf.read(after, op.picks[1])
                    assert [(r.seq, r.data_json) for r in got] == m.read(after, op.picks[1])
                else:
                    await buf.close()
                    buf = await self.open_buffer(path, **opts)
                    m.check_stats(buf.stats())
            assert [(r.seq, r.data_json) for r in await read_all(buf)] == m.read(0, 1 << 30)
        finally:
            await buf.close()


@dataclass(frozen=True)
class Op:
    name: str
    n: int = 0
    picks: tuple[int, ...] = ()


_OPS = st.one_of(
    st.builds(Op, st.just("append"), st.integers(1, 8)),
    st.builds(Op, st.just("ack"), st.just(0), st.lists(st.integers(0, 40), max_size=6).map(tuple)),
    st.builds(Op, st.just("read"), st.integers(0, 40), st.tuples(st.integers(0, 1), st.integers(1, 6))),
    st.just(Op("reopen")),
)


EVEN, ODD = "even.event", "oddy.event"  # as long as KIND: every event the same size
_CURSOR_OPS = st.one_of(
    st.builds(Op, st.just("append"), st.integers(1, 10)),
    st.builds(
        Op,
        st.sampled_from(["ack-all", "ack-even"]),
        st.just(0),
        st.lists(st.integers(0, 40), max_size=8).map(tuple),
    ),
    st.builds(
        Op, st.sampled_from(["read-all", "read-even"]), st.integers(0, 40), st.tuples(st.integers(1, 6))
    ),
    st.just(Op("reopen")),
)


@dataclass
class _Model:
    """What a buffer of ``cap`` equal-sized events must hold."""

    cap: int
    when_full: WhenFull
    size: int
    next_i: int = 0
    stored: dict[int, bytes] = field(default_factory=dict)  # seq -> data_json, in seq order
    all_seqs: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=lambda: dict(NONE_DROPPED))

    def append(self, events: list[Event], seqs: list[int]) -> None:
        n = len(events)
        assert len(seqs) == n
        if self.when_full is WhenFull.DROP_OLDEST:
            displaced = max(0, n - self.cap)
            assert seqs[:displaced] == [0] * displaced
            new = seqs[displaced:]
            self.dropped[OLDEST] += displaced
        else:
            room = max(0, self.cap - len(self.stored))
            new = seqs[: min(n, room)]
            assert seqs[len(new) :] == [0] * (n - len(new))
            self.dropped[REJECTED] += n - len(new)
        assert_increasing(new, above=self.all_seqs[-1] if self.all_seqs else 0)
        kept = events[n - len(new) :] if self.when_full is WhenFull.DROP_OLDEST else events[: len(new)]
        for seq, e in zip(new, kept, strict=True):
            assert e.seq == seq
            self.stored[seq] = data_json(e.data)
        self.all_seqs += new
        while len(self.stored) > self.cap:
            del self.stored[next(iter(self.stored))]
            self.dropped[OLDEST] += 1

    def ack(self, seqs: list[int]) -> None:
        for s in seqs:
            self.stored.pop(s, None)

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        return [(s, d) for s, d in self.stored.items() if s > after][:limit]

    def check_stats(self, s: Any) -> None:
        assert s.depth == len(self.stored)
        assert s.bytes == len(self.stored) * self.size
        assert s.last_seq == (self.all_seqs[-1] if self.all_seqs else 0)
        assert s.dropped == self.dropped
