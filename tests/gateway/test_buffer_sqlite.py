"""SqliteBuffer: the shared Buffer suite, then what is particular to SQLite (pragmas, threads, group commit,
errors, and surviving kill -9)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.event import EncodedData, Event, Record
from gateway.delivery.buffer import (
    Buffer,
    BufferOpenError,
    SqliteBuffer,
    WhenFull,
    everything,
)
from tests.gateway.buffer_suite import BIG, DAMAGE, HANG, BufferSuite, evs, read_seqs
from tests.storage import fill_disk

ROOT = Path(__file__).resolve().parents[2]


class TestSqliteBufferContract(BufferSuite):
    async def open_buffer(
        self, path: Path, *, max_bytes: int = BIG, when_full: WhenFull = WhenFull.DROP_OLDEST
    ) -> Buffer:
        return await SqliteBuffer.open(path, max_bytes=max_bytes, when_full=when_full)


@pytest.fixture
async def buf(tmp_path: Path) -> AsyncIterator[SqliteBuffer]:
    b = await SqliteBuffer.open(tmp_path / "buffer.db")
    yield b
    await b.close()


def scalar(conn: sqlite3.Connection, sql: str) -> object:
    return conn.execute(sql).fetchone()[0]


class WriterGate:
    """Holds the writer thread inside a job until released, so jobs queue up behind it."""

    def __init__(self, buffer: SqliteBuffer) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.task = asyncio.ensure_future(buffer._on_writer(self._hold))

    def _hold(self, _: sqlite3.Connection) -> None:
        self.entered.set()
        self.release.wait(HANG)

    async def __aenter__(self) -> WriterGate:
        assert await asyncio.to_thread(self.entered.wait, HANG)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.task


# ---- pragmas, files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
async def test_wal_and_synchronous(tmp_path: Path, synchronous: str, level: int) -> None:
    path = tmp_path / "buffer.db"
    b = await SqliteBuffer.open(path, synchronous=synchronous)
    try:
        assert await b._on_writer(lambda c: scalar(c, "PRAGMA journal_mode")) == "wal"
        assert await b._on_writer(lambda c: scalar(c, "PRAGMA synchronous")) == level
        with sqlite3.connect(path) as other:
            assert scalar(other, "PRAGMA journal_mode") == "wal"  # persistent in the file
            sql = scalar(other, "SELECT sql FROM sqlite_master WHERE name = 'events'")
            assert "AUTOINCREMENT" in str(sql)
    finally:
        await b.close()


async def test_default_is_synchronous_full(buf: SqliteBuffer) -> None:
    assert await buf._on_writer(lambda c: scalar(c, "PRAGMA synchronous")) == 2


def _wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_close_checkpoints_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    b = await SqliteBuffer.open(path)
    await b.append(evs(0, 100))
    await b.close()
    assert _wal_size(path) == 0
    with sqlite3.connect(path) as other:
        assert scalar(other, "SELECT count(*) FROM events") == 100


async def test_data_is_stored_as_the_compact_json_bytes(buf: SqliteBuffer, tmp_path: Path) -> None:
    await buf.append([Event("d", "k", 1.5, {"a": "ä", "b": [1, 2]})])
    await buf.close()
    with sqlite3.connect(tmp_path / "buffer.db") as other:
        data, size = other.execute("SELECT data, size FROM events").fetchone()
    assert data == '{"a":"ä","b":[1,2]}'.encode()
    assert size == len(data) + len(b"d") + len(b"k") + 24


@pytest.mark.parametrize(
    "bad",
    [
        {"max_bytes": 0},
        {"max_bytes": -1},
        {"when_full": "drop_newest"},
        {"synchronous": "off"},
        {"ack_delay": -1.0},
    ],
)
async def test_bad_options(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await SqliteBuffer.open(tmp_path / "buffer.db", **bad)


async def test_when_full_accepts_the_yaml_string(tmp_path: Path) -> None:
    b = await SqliteBuffer.open(tmp_path / "buffer.db", when_full="reject_new")
    assert b.when_full is WhenFull.REJECT_NEW
    await b.close()


# ---- errors ---------------------------------------------------------------------------------------------


async def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "buffer.db"
    with pytest.raises(BufferOpenError, match="does not exist") as err:
        await SqliteBuffer.open(path)
    assert str(path) in str(err.value)
    assert not path.parent.exists()


def _moved_aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.corrupt-"))


@pytest.mark.parametrize(
    "content", [os.urandom(8192), b"gateway:\n  id: gw-1\n" * 200], ids=["random", "text"]
)
async def test_not_a_database_is_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a database (never a buffer, or one whose header was overwritten): kept, renamed, and a fresh
    buffer starts in its place; the reason is logged at ERROR, naming where the file went."""
    path = tmp_path / "buffer.db"
    path.write_bytes(content)
    b = await SqliteBuffer.open(path)
    try:
        [aside] = _moved_aside(path)
        assert aside.read_bytes() == content
        assert b.stats().corrupt_files == 1
        assert await b.append(evs(0, 2)) != [0, 0]
        [record] = [r for r in caplog.records if r.levelname == "ERROR"]
        assert "not a database" in record.getMessage()
        assert str(aside) in record.getMessage()
    finally:
        await b.close()


async def test_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(BufferOpenError, match="another application") as err:
        await SqliteBuffer.open(path)
    assert str(path) in str(err.value)
    with sqlite3.connect(path) as other:  # untouched
        assert scalar(other, "SELECT count(*) FROM sqlite_master") == 1
        assert scalar(other, "PRAGMA journal_mode") == "delete"


async def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BufferOpenError, match="directory") as err:
        await SqliteBuffer.open(tmp_path)
    assert str(tmp_path) in str(err.value)


OPEN_AS_CHILD = """
import asyncio, sys
from gateway.delivery.buffer import BufferOpenError, SqliteBuffer

async def main() -> None:
    try:
        buffer = await SqliteBuffer.open(sys.argv[1])
    except BufferOpenError as err:
        print("BufferOpenError:", err)
        return
    await buffer.close()
    print("opened")

asyncio.run(main())
"""


async def test_permission_denied() -> None:
    # Root ignores file modes, so as root the open is tried by a child that runs as nobody (setpriv).
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    source_root = str(Path(__file__).resolve().parents[2])  # noqa: ASYNC240  # no I/O: a path computation
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)  # nobody may enter the directory, not write the file
        path = Path(tmp) / "buffer.db"
        b = await SqliteBuffer.open(path)
        await b.close()
        path.chmod(0o600 if as_nobody else 0o400)
        child = await asyncio.create_subprocess_exec(
            *as_nobody,
            sys.executable,
            "-c",
            OPEN_AS_CHILD,
            str(path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={"PYTHONPATH": source_root, "PATH": os.environ.get("PATH", "")},
        )
        out, _ = await child.communicate()
        path.chmod(0o600)
    assert child.returncode == 0, out.decode()
    assert out.decode().startswith("BufferOpenError:"), out.decode()
    assert str(path) in out.decode()


async def test_one_gateway_per_buffer_file(tmp_path: Path) -> None:
    # A second gateway on the same file (another process) is refused at start, naming the first's pid;
    # once the first closes, the file opens again.
    path = tmp_path / "buffer.db"
    first = await SqliteBuffer.open(path)
    source_root = str(Path(__file__).resolve().parents[2])  # noqa: ASYNC240  # no I/O: a path computation
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OPEN_AS_CHILD,
        str(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"PYTHONPATH": source_root, "PATH": os.environ.get("PATH", "")},
    )
    out, _ = await child.communicate()
    assert out.decode().startswith("BufferOpenError:"), out.decode()
    assert f"in use by another gateway (pid {os.getpid()})" in out.decode()
    with pytest.raises(BufferOpenError, match="in use by another gateway"):
        await SqliteBuffer.open(path)  # a second open in this process is refused too
    await first.append(evs(0, 3))
    await first.close()
    again = await SqliteBuffer.open(path)
    assert again.stats().depth == 3
    await again.close()


async def test_a_full_file_drops_the_oldest_and_counts_disk_full(buf: SqliteBuffer) -> None:
    """Disk full (simulated with max_page_count: SQLite answers SQLITE_FULL as on a full filesystem): no
    append fails; under drop_oldest the oldest events make room, counted as disk_full; deletions still
    commit; once there is room again, everything is normal without reopening."""
    first = await buf.append(evs(0, 10))
    pages = await buf._on_writer(lambda c: scalar(c, "PRAGMA page_count"))
    await buf._on_writer(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchall())
    async with WriterGate(buf):  # what follows queues up and shares one transaction
        await buf.ack(first[:3])
        tasks = [asyncio.ensure_future(buf.append(evs(100 * k, 200))) for k in range(1, 4)]
    results = [await task for task in tasks]
    kept = [s for r in results for s in r if s]
    stats = buf.stats()
    assert stats.disk_full
    assert stats.fault == "disk full: dropping oldest (drop_oldest)"
    lost = 600 - len(kept) + (7 - len([s for s in await read_seqs(buf) if s in first]))
    assert stats.dropped["disk_full"] == lost > 0
    assert stats.dropped["dropped_oldest"] == 0
    assert not set(first[:3]) & set(await read_seqs(buf))  # the acks were committed
    assert await read_seqs(buf) == sorted(await read_seqs(buf))
    assert kept == list(range(kept[0], kept[0] + len(kept)))  # the newest run of what came

    await buf._on_writer(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
    buf._space_checked = 0.0  # the next commit looks at the free space again at once
    more = await buf.append(evs(1000, 2))
    assert more[0] > first[-1] and 0 not in more
    assert not buf.stats().disk_full
    assert buf.stats().fault is None
    await buf.close()
    again = await SqliteBuffer.open(buf.path)
    assert again.stats().dropped["disk_full"] == lost  # the count was written to the file
    await again.close()


async def test_a_full_file_under_reject_new_refuses_new_events(tmp_path: Path) -> None:
    b = await SqliteBuffer.open(tmp_path / "buffer.db", when_full="reject_new")
    try:
        first = await b.append(evs(0, 10))
        pages = await b._on_writer(lambda c: scalar(c, "PRAGMA page_count"))
        await b._on_writer(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchall())
        refused = await b.append(evs(100, 500))
        assert await read_seqs(b, 0) == first + [s for s in refused if s]  # nothing stored was deleted
        assert b.stats().dropped["disk_full"] == refused.count(0) > 0
        assert b.stats().fault == "disk full: dropping new (reject_new)"
    finally:
        await b.close()


# ---- threads and group commit ---------------------------------------------------------------------------


async def test_appends_waiting_for_the_writer_share_one_commit(buf: SqliteBuffer) -> None:
    await buf.append(evs(0, 1))
    seqs = await buf.read(0, 10)
    async with WriterGate(buf):
        tasks = [asyncio.ensure_future(buf.append(evs(10 * k, 10))) for k in range(1, 11)]
        await buf.ack([seqs[0].seq])
        commits = buf.commits
    results = await asyncio.gather(*tasks)
    assert buf.commits == commits + 1
    every = [s for r in results for s in r]
    assert every == list(range(2, 102))  # in queue order
    assert buf.stats().depth == 100


async def test_read_does_not_wait_for_the_writer(buf: SqliteBuffer) -> None:
    seqs = await buf.append(evs(0, 5))
    async with WriterGate(buf):
        pending = asyncio.ensure_future(buf.append(evs(5, 5)))
        rows = await asyncio.wait_for(buf.read(0, 100), HANG)  # the writer is stuck; reads are not
        assert [r.seq for r in rows] == seqs
        assert not pending.done()
    assert len(await pending) == 5


async def test_cancelled_append_is_still_committed(buf: SqliteBuffer) -> None:
    events = evs(0, 3)
    async with WriterGate(buf):
        task = asyncio.ensure_future(buf.append(events))
        await asyncio.sleep(0)  # let it queue its job
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    later = await buf.append(evs(3, 1))  # commits after the cancelled one
    assert [e.seq for e in events] == [1, 2, 3]
    assert await read_seqs(buf) == [1, 2, 3, *later]


async def test_ack_alone_is_committed_without_an_append(buf: SqliteBuffer) -> None:
    seqs = await buf.append(evs(0, 4))
    signal_ = buf._commit_signal
    await buf.ack(seqs[:3])
    await asyncio.wait_for(signal_.wait(), HANG)  # the next commit: the deletion, on its own
    assert buf.stats().depth == 1
    with sqlite3.connect(buf.path) as other:
        assert scalar(other, "SELECT count(*) FROM events") == 1


async def test_many_acks_share_one_commit(tmp_path: Path) -> None:
    b = await SqliteBuffer.open(tmp_path / "buffer.db", ack_delay=HANG)  # only an append ends the wait
    try:
        seqs = await b.append(evs(0, 50))
        commits = b.commits
        for s in seqs[:40]:
            await b.ack([s])
        assert await read_seqs(b) == seqs[40:]
        await b.append(evs(50, 1))
        assert b.commits == commits + 1
        assert b.stats().depth == 11
    finally:
        await b.close()


async def test_close_commits_queued_appends_and_joins_threads(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    b = await SqliteBuffer.open(path)
    async with WriterGate(b):
        tasks = [asyncio.ensure_future(b.append(evs(10 * k, 10))) for k in range(5)]
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0)
    await closing
    assert all(len(t.result()) == 10 for t in tasks)
    assert not b._writer.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("buffer-")]
    with sqlite3.connect(path) as other:
        assert scalar(other, "SELECT count(*) FROM events") == 50


# ---- kill -9 --------------------------------------------------------------------------------------------


def _run_child_until(path: Path, lines: int) -> tuple[set[int], set[int], set[int]]:
    """Start the child, read until it reported ``lines`` commits, SIGKILL it (mid-append: it appends in a
    tight loop), then take whatever complete lines it wrote before dying. Returns the seqs it reported
    committed, acked (maybe deleted) and deleted for good."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.buffer_crash_child", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reported: dict[bytes, set[int]] = {b"C": set(), b"A": set(), b"D": set()}
    assert proc.stdout is not None and proc.stderr is not None

    def take(line: bytes) -> None:
        tag, *seqs = line.split()
        reported[tag].update(int(s) for s in seqs)

    try:
        seen = 0
        for line in proc.stdout:
            take(line)
            seen += line.startswith(b"C")
            if seen >= lines:
                break
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout.read().splitlines(keepends=True):
            if line.endswith(b"\n"):  # a line cut by the kill reports nothing
                take(line)
        assert seen >= lines, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return reported[b"C"], reported[b"A"], reported[b"D"]


async def _reopen_and_check(path: Path, committed: set[int], acked: set[int], deleted: set[int]) -> int:
    b = await SqliteBuffer.open(path)
    try:
        present = set(await read_seqs(b))
        assert committed - acked <= present, "a committed event is missing"
        assert not deleted & present, "an acked event came back"
        assert b.stats().depth == len(present)
        assert b.stats().last_seq >= max(committed)
        [seq] = await b.append(evs(0, 1))
        assert seq > max(committed | deleted)
        return seq
    finally:
        await b.close()


def test_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    committed: set[int] = set()
    acked: set[int] = set()
    deleted: set[int] = set()
    for lines in (1, 3, 9, 20, 40):
        c, a, d = _run_child_until(path, lines)
        assert c, "the child reported no commit"
        assert d <= a <= c
        committed |= c
        acked |= a
        deleted |= d
        last = asyncio.run(_reopen_and_check(path, committed, acked, deleted))
        committed.add(last)


def _strict_json(raw: bytes) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(raw, parse_constant=refuse)


async def test_data_json_cannot_carry_is_stored_sanitised_never_dropped(buf: SqliteBuffer) -> None:
    circular: dict[str, object] = {"a": 1}
    circular["self"] = circular
    odd: list[dict[str, object]] = [
        {"v": float("nan"), "ok": 1.5},
        {"v": [float("inf"), -float("inf")]},
        {"when": datetime.date(2026, 11, 23), "raw": b"\x01"},
        circular,
    ]
    seqs = await buf.append([Event("dev", "test.kind", 1.0, data) for data in odd])
    assert 0 not in seqs
    assert buf.sanitised == 4
    stored = await buf.read(0, 10)
    assert [_strict_json(s.data_json) for s in stored[:3]] == [
        {"v": None, "ok": 1.5},
        {"v": [None, None]},
        {"when": "2026-11-23", "raw": "b'\\x01'"},
    ]
    assert "unencodable" in str(_strict_json(stored[3].data_json))
    await buf.append([Event("dev", "test.kind", 2.0, {"fine": 1})])
    assert buf.sanitised == 4


async def test_encoded_data_is_stored_as_its_own_bytes_and_never_decoded(buf: SqliteBuffer) -> None:
    raw = '{"epc":"3008","antenna_name":"車線 \\"3\\"","frequency_mhz":916.0}'.encode()
    data = EncodedData(raw)
    await buf.append(
        [Event("reader-1", "rfid.read", 1.0, data), Event("reader-1", "rfid.read", 2.0, {"a": 1})]
    )
    rows = await buf.read(0, 10)
    assert [r.data_json for r in rows] == [raw, b'{"a":1}']
    assert data._decoded is None  # the hot path never paid for a dict


class _Values(Record):
    """A driver's record that leaves its JSON to the default encoding."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, object]) -> None:
        super().__init__()
        self._values = values

    def _build(self) -> dict[str, object]:
        return dict(self._values)


async def test_a_record_is_stored_as_its_json_sanitised_like_a_dict_when_it_cannot_be(
    buf: SqliteBuffer,
) -> None:
    fine, odd = _Values({"name": '車線 "3"', "f": 916.0}), _Values({"v": float("nan"), "ok": 1.5})
    await buf.append([Event("reader-1", "rfid.read", 1.0, fine), Event("reader-1", "rfid.read", 2.0, odd)])
    rows = await buf.read(0, 10)
    assert [r.data_json for r in rows] == [
        '{"name":"車線 \\"3\\"","f":916.0}'.encode(),
        b'{"v":null,"ok":1.5}',
    ]
    assert buf.sanitised == 1


# ---- storage faults particular to SQLite ----------------------------------------------------------------


def _break_schema(conn: sqlite3.Connection) -> None:
    """Damage as SQLite meets it on a bad flash block: the events table's root page points nowhere."""
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET rootpage = 9999 WHERE name = 'events'")
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute(f"PRAGMA schema_version = {version + 1}")  # every connection reads the schema again
    conn.execute("PRAGMA writable_schema = OFF")


async def test_damage_found_by_a_commit_moves_the_file_aside_and_keeps_the_events(
    buf: SqliteBuffer, tmp_path: Path
) -> None:
    """The events of the commit that met the damage are stored in the fresh file: nothing in memory is
    lost, and their seqs go on above the old file's."""
    old = await buf.append(evs(0, 50))
    await buf._on_writer(_break_schema)
    seqs = await buf.append(evs(50, 20))
    assert 0 not in seqs and seqs[0] > old[-1]
    assert await read_seqs(buf) == seqs
    assert buf.stats().corrupt_files == 1
    assert buf.stats().depth == 20
    assert len(_moved_aside(buf.path)) == 1
    more = await buf.append(evs(70, 2))
    assert await read_seqs(buf) == seqs + more


async def test_damage_with_several_upstreams_keeps_them_in_the_fresh_file(
    buf: SqliteBuffer,
) -> None:
    """Several upstreams: the fresh file that replaces a damaged one knows them by name, the events of the
    commit that met the damage are pending for each, and each one's acks are its own there too."""
    await buf.set_upstreams([("a", everything), ("b", lambda _d, kind: kind == "test.event")])
    await buf.append(evs(0, 50))
    await buf._on_writer(_break_schema)
    seqs = await buf.append(evs(50, 20))
    assert buf.stats().corrupt_files == 1 and 0 not in seqs
    for name in ("a", "b"):
        assert [r.seq for r in await buf.cursor(name).read(0, 100)] == seqs
    await buf.cursor("a").ack(seqs)
    more = await buf.append(evs(70, 1))
    assert [r.seq for r in await buf.cursor("a").read(0, 100)] == more
    assert [r.seq for r in await buf.cursor("b").read(0, 100)] == seqs + more
    names = await buf._on_writer(lambda conn: dict(conn.execute("SELECT name, bit FROM upstreams")))
    assert set(names) == {"a", "b"}


async def test_damage_found_by_a_read_moves_the_file_aside(buf: SqliteBuffer) -> None:
    old = await buf.append(evs(0, 50))
    await buf._on_writer(_break_schema)
    assert await buf.read(0, 100) == []  # the read meets the damage: nothing to return from that file
    seqs: list[int] = []
    async with asyncio.timeout(HANG):
        while buf.stats().corrupt_files == 0:  # the writer replaces the file, then signals
            await buf._commit_signal.wait()
    seqs = await buf.append(evs(50, 3))
    assert seqs[0] > old[-1]
    assert await read_seqs(buf) == seqs
    assert len(_moved_aside(buf.path)) == 1


async def test_a_torn_wal_keeps_every_whole_commit(tmp_path: Path) -> None:
    """A power cut in the middle of writing a commit to the WAL: SQLite ignores the torn frames. Nothing is
    damaged, nothing is moved aside, and every commit before the torn one is there."""
    path = tmp_path / "buffer.db"
    copy = tmp_path / "copy" / "buffer.db"
    copy.parent.mkdir()
    b = await SqliteBuffer.open(path)
    whole = await b.append(evs(0, 30))
    await b.append(evs(30, 30))  # the commit that will be torn
    for part_from, part_to in zip(
        (path, Path(f"{path}-wal")), (copy, Path(f"{copy}-wal")), strict=True
    ):  # as the disk holds them now, without the checkpoint a close would make
        part_to.write_bytes(part_from.read_bytes())
    await b.close()
    wal = f"{copy}-wal"
    os.truncate(wal, os.path.getsize(wal) - 100)  # noqa: ASYNC240  # a test's own file, at once
    again = await SqliteBuffer.open(copy)
    try:
        assert _moved_aside(copy) == []
        assert again.stats().corrupt_files == 0
        assert await read_seqs(again) == whole
        later = await again.append(evs(60, 1))
        assert later[0] > whole[-1]
    finally:
        await again.close()


async def test_no_room_even_for_a_new_file(small_fs: Any) -> None:
    """A first start on a filesystem with no space at all: the buffer opens without a file, refuses what
    comes (counted as disk_full), and opens the file by itself once there is room."""
    fs = small_fs(4 << 20)
    filler = fill_disk(fs)
    b = await SqliteBuffer.open(fs / "buffer.db", reserve_bytes=256 << 10)
    try:
        assert b.stats().disk_full
        assert "disk full" in (b.stats().fault or "")
        assert await b.append(evs(0, 5)) == [0] * 5
        assert b.stats().dropped["disk_full"] == 5
        assert await b.read(0, 10) == []
        filler.unlink()
        seqs: list[int] = []
        async with asyncio.timeout(HANG):
            while not seqs:
                seqs = [s for s in await b.append(evs(5, 1)) if s]
                await asyncio.sleep(0.05)  # the writer tries the file again about once a second
        assert await read_seqs(b) == seqs
        assert not b.stats().disk_full
        assert b.stats().dropped["disk_full"] >= 5
    finally:
        await b.close()
    again = await SqliteBuffer.open(fs / "buffer.db")
    assert again.stats().dropped["disk_full"] == b.stats().dropped["disk_full"]  # written once it could be
    await again.close()


@pytest.mark.parametrize("damage", ["garbage header", "truncated to a third", "full disk"])
def test_kill_9_then_restart_never_loops(tmp_path: Path, small_fs: Any, damage: str) -> None:
    """kill -9 while appending, then the file damaged or the disk full, then a restart: it opens every
    time, and seqs keep going up."""
    fs = small_fs(32 << 20)
    path = fs / "buffer.db"
    committed, _, _ = _run_child_until(path, 5)
    if damage == "full disk":
        fill_disk(fs)
    else:
        DAMAGE[damage](path)
    last = asyncio.run(_reopen_after_fault(path))
    assert last > max(committed)
    committed2, _, _ = _run_child_until(path, 3)  # and a second crash on top of it
    assert min(committed2) > max(committed)


async def _reopen_after_fault(path: Path) -> int:
    b = await SqliteBuffer.open(path)
    try:
        seqs: list[int] = []
        async with asyncio.timeout(HANG):
            while not seqs:
                await b.ack([r.seq for r in await b.read(0, 1000)])  # forwarded: room for new events
                seqs = [s for s in await b.append(evs(0, 1)) if s]
        return seqs[0]
    finally:
        await b.close()


async def test_an_ack_of_a_row_read_before_its_commit_reached_the_loop_counts(buf: SqliteBuffer) -> None:
    """The writer tells the loop after COMMIT: a read in between sees the rows, and a broker on loopback
    may acknowledge one before the loop's last_seq knows it. That ack must delete the event (it was
    filtered out as unknown, and the event stayed buffered, to be sent again at the next start)."""
    seqs = await buf.append(evs(0, 3))
    assert [r.seq for r in await buf.read(0, 10)] == seqs
    buf._state.last_seq = 0  # as before the commit's callback ran
    await buf.ack(seqs)
    buf._state.last_seq = seqs[-1]
    await buf.append(evs(3, 1))  # the deletion commits with it
    assert buf.stats().depth == 1
