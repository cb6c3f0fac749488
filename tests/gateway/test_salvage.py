"""Salvaging damaged buffer files (gateway/salvage.py, and `edgegw buffer inspect|export` on them).

Every file here is a real buffer, made by SqliteBuffer.open + append, then damaged the way disks and power
cuts damage files: garbage over the header, truncation, an empty file, a WAL whose last frame is torn.

Which rows a damaged file can still give back is known independently of the code under test: each event's
cell (the bytes SQLite stores for one row) is built here from the file format and found in the intact file,
so a truncation keeps exactly the cells that end before the cut, and damage to a page loses exactly the cells
on that page.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.event import Event
from gateway.cli import buffertool
from gateway.cli.buffertool import BufferDamagedError, BufferToolError
from gateway.delivery import salvage
from gateway.delivery.buffer import DropReason, SqliteBuffer, Stored
from gateway.delivery.payload import encode_payload
from gateway.delivery.schema import ROW_OVERHEAD

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
GATEWAY = "lane-7"
PAGE = 4096
MOVED = "buffer.db.corrupt-20250301T101500Z"  # as the gateway names a buffer it moved aside

pytestmark = pytest.mark.timeout(120)


def event(i: int, *, ts: float | None = None, pad: int = 0) -> Event:
    data = {"epc": f"E280{i:020X}", "antenna": 1 + i % 4, "rssi": -40 - i % 30}
    if pad:
        data["pad"] = "p" * pad
    return Event("reader-1", "rfid.read", 1_700_000_000.25 + i if ts is None else ts, data)


async def write_buffer(path: Path, events: list[Event], *, batch: int = 100) -> list[Stored]:
    """A real buffer holding ``events`` (appended in batches, one commit each), closed; what it stored."""
    buf = await SqliteBuffer.open(path)
    try:
        for i in range(0, len(events), batch):
            await buf.append(events[i : i + batch])
        stored = await buf.read(0, len(events) + 1)
    finally:
        await buf.close()
    assert len(stored) == len(events)
    return stored


def make_buffer(path: Path, events: list[Event], *, batch: int = 100) -> list[Stored]:
    return asyncio.run(write_buffer(path, events, batch=batch))


# ---- where each row lives in the file, from the file format ------------------------------------------------


def varint(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def cell_bytes(s: Stored) -> bytes:
    """The b-tree cell SQLite writes for an events row whose ts has a fraction (stored as a REAL) and whose
    size fits in one or two bytes: payload length, rowid, record header (serial types), values. The last
    column (schema 2) is ``pending``, 1 for a buffer with one upstream: serial type 9, the constant 1."""
    device, kind, data = s.device.encode(), s.kind.encode(), s.data_json
    size = len(data) + ROW_OVERHEAD + len(device) + len(kind)
    size_type, size_bytes = (1, struct.pack(">b", size)) if size < 128 else (2, struct.pack(">h", size))
    serials = [0, 13 + 2 * len(device), 13 + 2 * len(kind), 7, 12 + 2 * len(data), size_type, 9]
    header = b"".join(varint(t) for t in serials)
    header = varint(len(header) + 1) + header
    record = header + device + kind + struct.pack(">d", s.ts) + data + size_bytes
    return varint(len(record)) + varint(s.seq) + record


def cell_spans(image: bytes, stored: list[Stored]) -> dict[int, tuple[int, int]]:
    """Where each row's cell is in ``image`` (the intact file): seq -> (start, end)."""
    spans = {}
    for s in stored:
        cell = cell_bytes(s)
        assert image.count(cell) == 1, f"seq {s.seq}: its cell is not in the file exactly once"
        start = image.find(cell)
        spans[s.seq] = (start, start + len(cell))
    return spans


@dataclass
class Recovered:
    report: salvage.SalvageReport
    events: list[salvage.SalvagedEvent]

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"" for p in sorted(directory.iterdir())}


def salvaged(path: Path) -> Recovered:
    """Salvage ``path``, checking that nothing beside it was written, created or removed."""
    before = files_in(path.parent)
    with salvage.salvage(path) as found:
        recovered = Recovered(found.report, list(found.events()))
    assert files_in(path.parent) == before, "the salvage changed the files it reads"
    return recovered


def assert_intact(recovered: Recovered, stored: list[Stored]) -> None:
    """In seq order, once each, and every event exactly as it was stored."""
    assert recovered.seqs == sorted(set(recovered.seqs))
    by_seq = {s.seq: s for s in stored}
    for e in recovered.events:
        assert e.stored() == by_seq[e.seq]
    assert recovered.report.events == len(recovered.events)


def edgegw(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([EDGEGW, *args], capture_output=True, timeout=60, check=False)


# ---- garbage over the header -------------------------------------------------------------------------------


def test_garbage_over_the_header(tmp_path: Path) -> None:
    path = tmp_path / MOVED
    stored = make_buffer(path, [event(i) for i in range(2000)])
    with path.open("r+b") as f:
        f.write(bytes(range(7, 107)))  # the first 100 bytes: magic, page size, freelist, application id
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True).execute("PRAGMA page_count")

    recovered = salvaged(path)
    assert recovered.seqs == list(range(1, 2001))
    assert_intact(recovered, stored)
    report = recovered.report
    assert (report.by_sqlite, report.by_page_scan, report.page_size) == (0, 2000, PAGE)
    assert report.damaged
    assert any("file is not a database" in line for line in report.damage)
    assert any("header is damaged" in line for line in report.damage)
    # Without the header the freelist is unknown: deleted rows could be among these, and the report says so.
    assert report.may_include_delivered
    assert (report.sequence, report.meta) == (None, None)


def test_the_command_exports_a_file_with_a_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / MOVED
    stored = make_buffer(path, [event(i) for i in range(300)])
    with path.open("r+b") as f:
        f.write(b"\xff" * 100)

    done = edgegw("buffer", "export", "--buffer", str(path), "--gateway-id", GATEWAY)
    assert done.returncode == 0, done.stderr
    # The same lines a healthy export writes: the upstream payloads, ids included, in seq order.
    assert done.stdout.splitlines() == [encode_payload(GATEWAY, s) for s in stored]
    err = done.stderr.decode()
    assert f"{path} is damaged:" in err
    assert "file is not a database" in err
    assert "recovered 300 events from it (0 read by SQLite, 300 more by the page scan); " in err
    assert "exported 300 (seq 1..300) to stdout" in err
    assert "already delivered (and deleted) may be among the recovered ones" in err
    assert "consumer deduplicates on id" in err
    assert "Traceback" not in err
    assert "purge" not in err  # the moved file is not the gateway's buffer any more

    shown = edgegw("buffer", "inspect", "--buffer", str(path))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "DAMAGED   SQLite cannot read it: file is not a database" in text
    assert "recovered 300 events" in text
    assert "seq       oldest 1 (age " in text
    assert "newest 300 (age " in text
    assert "highest ever assigned at least 300 (its record cannot be read)" in text
    assert "reader-1  rfid.read        300 events" in text
    assert "dropped   unknown" in text
    assert "warning   the freelist cannot be read" in text
    as_json = json.loads(edgegw("buffer", "inspect", "--buffer", str(path), "--json").stdout)
    assert (as_json["depth"], as_json["oldest_seq"], as_json["newest_seq"]) == (300, 1, 300)
    assert as_json["damaged"]["by_page_scan"] == 300
    assert as_json["damaged"]["may_include_delivered"] is True
    assert as_json["dropped"] is None


# ---- truncation ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_thousand(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[Stored]]:
    path = tmp_path_factory.mktemp("intact") / "buffer.db"
    stored = make_buffer(path, [event(i) for i in range(2000)])
    return path.read_bytes(), stored


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda n: n // 3, id="a third"),
        pytest.param(lambda n: n // 2, id="half"),
        pytest.param(lambda n: n - 1000, id="the last 1000 bytes"),
        pytest.param(lambda n: 9 * PAGE + 1500, id="inside the tenth page"),
        pytest.param(lambda n: 120, id="just past the header"),
    ],
)
def test_a_truncated_file_gives_back_every_row_before_the_cut(
    tmp_path: Path, two_thousand: tuple[bytes, list[Stored]], cut: object
) -> None:
    image, stored = two_thousand
    assert callable(cut)
    length = cut(len(image))
    path = tmp_path / MOVED
    path.write_bytes(image[:length])

    recovered = salvaged(path)
    spans = cell_spans(image, stored)
    before_cut = sorted(seq for seq, (_, end) in spans.items() if end <= length)
    assert recovered.seqs == before_cut
    assert_intact(recovered, stored)
    report = recovered.report
    assert any("truncated" in line for line in report.damage)
    assert not report.may_include_delivered  # the header is intact: the freelist was read
    if length >= 3 * PAGE:
        assert report.sequence == 2000  # sqlite_sequence is on page 3: SQLite still reads it
    if before_cut:
        # SQLite reads what it can reach; the page scan adds the cells of the page it could not finish.
        assert report.by_sqlite > 0
        assert report.by_sqlite + report.by_page_scan == len(before_cut)


def test_the_command_on_a_file_truncated_to_nothing_useful(tmp_path: Path) -> None:
    path = tmp_path / MOVED
    make_buffer(path, [event(i) for i in range(500)])
    with path.open("r+b") as f:
        f.truncate(120)
    done = edgegw("buffer", "export", "--buffer", str(path), "--gateway-id", GATEWAY)
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"truncated" in done.stderr
    assert b"nothing could be recovered from it" in done.stderr
    assert b"Traceback" not in done.stderr
    shown = edgegw("buffer", "inspect", "--buffer", str(path))
    assert shown.returncode == 1
    assert b"recovered 0 events" in shown.stdout
    assert b"seq       none recovered; highest ever assigned" in shown.stdout


# ---- an empty file ---------------------------------------------------------------------------------------


def test_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / MOVED
    path.write_bytes(b"")
    recovered = salvaged(path)
    assert recovered.events == []
    assert "the file is empty (0 bytes)" in recovered.report.damage

    seen = buffertool.inspect(path)
    assert (seen.depth, seen.oldest_seq, seen.salvage is not None) == (0, None, True)
    assert "DAMAGED   the file is empty (0 bytes)" in seen.render()
    out = io.BytesIO()
    result = buffertool.export(path, GATEWAY, out)
    assert (result.events, out.getvalue()) == (0, b"")
    assert result.salvage is not None
    assert "nothing could be recovered" in buffertool.salvage_summary(result, "stdout")

    done = edgegw("buffer", "export", "--buffer", str(path), "--gateway-id", GATEWAY)
    assert done.returncode == 1
    assert b"the file is empty (0 bytes)" in done.stderr
    assert b"Traceback" not in done.stderr


# ---- the WAL ----------------------------------------------------------------------------------------------


async def crashed_buffer(directory: Path, events: list[Event], *, batch: int) -> list[Stored]:
    """The files of a gateway killed right after its last commit: appended in batches (one commit each),
    then the database and its WAL copied as they are on disk while the buffer is still open (a copy taken
    between commits is what `kill -9` leaves). Moved aside under the gateway's name for a corrupt buffer."""
    live = directory / "live" / "buffer.db"
    live.parent.mkdir()
    buf = await SqliteBuffer.open(live)
    try:
        for i in range(0, len(events), batch):
            await buf.append(events[i : i + batch])
        stored = await buf.read(0, len(events) + 1)
        shutil.copyfile(live, directory / MOVED)
        shutil.copyfile(live.with_name("buffer.db-wal"), directory / f"{MOVED}-wal")
    finally:
        await buf.close()
    return stored


def test_a_wal_whose_last_frame_is_torn(tmp_path: Path) -> None:
    stored = asyncio.run(crashed_buffer(tmp_path, [event(i) for i in range(1000)], batch=100))
    path, wal = tmp_path / MOVED, tmp_path / f"{MOVED}-wal"
    assert path.stat().st_size <= PAGE  # everything after the schema is in the WAL
    intact = salvaged(path)
    assert intact.seqs == list(range(1, 1001))
    assert_intact(intact, stored)

    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 100)  # the last frame (the last commit's) cut short
    recovered = salvaged(path)
    # SQLite drops the transaction whose commit frame is torn, and keeps every one before it.
    assert recovered.seqs == list(range(1, 901))
    assert_intact(recovered, stored)
    report = recovered.report
    assert report.by_sqlite == 900
    assert any("the WAL ends in a partial frame" in line for line in report.damage)
    assert any("never committed" in note for note in report.notes)

    done = edgegw("buffer", "inspect", "--buffer", str(path), "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["depth"], shown["oldest_seq"], shown["newest_seq"]) == (900, 1, 900)
    assert any("partial frame" in line for line in shown["damaged"]["damage"])


def test_a_wal_frame_that_fails_its_checksum(tmp_path: Path) -> None:
    stored = asyncio.run(crashed_buffer(tmp_path, [event(i) for i in range(1000)], batch=100))
    path, wal = tmp_path / MOVED, tmp_path / f"{MOVED}-wal"
    with wal.open("r+b") as f:
        f.seek(wal.stat().st_size - 2000)
        f.write(b"\x00" * 1000)  # inside the last frame: the sectors that never reached the disk
    recovered = salvaged(path)
    assert recovered.seqs == list(range(1, 901))
    assert_intact(recovered, stored)
    assert any("fails its checksum" in line for line in recovered.report.damage)


def test_an_empty_file_beside_its_wal(tmp_path: Path) -> None:
    # SQLite would take the empty file for a new database, and delete the WAL: the page scan reads the WAL.
    stored = asyncio.run(crashed_buffer(tmp_path, [event(i) for i in range(500)], batch=50))
    path = tmp_path / MOVED
    path.write_bytes(b"")
    recovered = salvaged(path)
    assert recovered.seqs == list(range(1, 501))
    assert_intact(recovered, stored)
    assert recovered.report.by_page_scan == 500
    assert (tmp_path / f"{MOVED}-wal").stat().st_size > 0


def test_garbage_over_the_header_with_the_wal_beside_it(tmp_path: Path) -> None:
    # The WAL holds a newer page 1, header included: SQLite reads everything through it.
    stored = asyncio.run(crashed_buffer(tmp_path, [event(i) for i in range(500)], batch=50))
    path = tmp_path / MOVED
    with path.open("r+b") as f:
        f.write(b"\x00" * 100)
    recovered = salvaged(path)
    assert recovered.seqs == list(range(1, 501))
    assert_intact(recovered, stored)
    assert not recovered.report.may_include_delivered


# ---- damage inside the file ----------------------------------------------------------------------------


def test_a_damaged_leaf_page_costs_its_rows_only(
    tmp_path: Path, two_thousand: tuple[bytes, list[Stored]]
) -> None:
    image, stored = two_thousand
    spans = cell_spans(image, stored)
    page = spans[700][0] // PAGE  # the page (0-based) holding seq 700
    damaged = bytearray(image)
    damaged[page * PAGE : (page + 1) * PAGE] = bytes([0xA5]) * PAGE
    path = tmp_path / MOVED
    path.write_bytes(damaged)

    recovered = salvaged(path)
    lost = {seq for seq, (start, _) in spans.items() if start // PAGE == page}
    assert 700 in lost
    assert recovered.seqs == sorted(set(range(1, 2001)) - lost)
    assert_intact(recovered, stored)
    # SQLite skipped ahead past the damaged page and read on: it alone read rows on both sides of it.
    assert recovered.report.by_sqlite == 2000 - len(lost)
    assert any("malformed" in line for line in recovered.report.damage)


def test_a_damaged_interior_page_costs_nothing(
    tmp_path: Path, two_thousand: tuple[bytes, list[Stored]]
) -> None:
    image, stored = two_thousand
    damaged = bytearray(image)
    damaged[PAGE : 2 * PAGE] = bytes(PAGE)  # page 2: the root of the events table, pointing to every leaf
    path = tmp_path / MOVED
    path.write_bytes(damaged)
    recovered = salvaged(path)
    assert recovered.seqs == list(range(1, 2001))
    assert_intact(recovered, stored)
    assert recovered.report.by_page_scan > 0


def test_large_events_on_overflow_pages_and_whole_second_timestamps(tmp_path: Path) -> None:
    # Data larger than a page continues on overflow pages; a time without a fraction is stored by SQLite as
    # an integer: the page scan reads both back as they were.
    events = [event(i, ts=1_700_000_000.0 + i, pad=9000 if i % 10 == 3 else 0) for i in range(120)]
    path = tmp_path / MOVED
    stored = make_buffer(path, events, batch=7)
    with path.open("r+b") as f:
        f.write(b"\x00" * 100)
    recovered = salvaged(path)
    assert recovered.seqs == list(range(1, 121))
    assert_intact(recovered, stored)
    assert len(recovered.events[3].data_json) > 9000
    assert recovered.events[0].ts == 1_700_000_000.0


def deleted_without_secure_delete(path: Path, up_to: int) -> None:
    """Delete seq <= ``up_to`` as the gateway's acks do, by an SQLite built without SECURE_DELETE (this
    Python's SQLite zeroes freed pages, which would hide what a freelist holds elsewhere)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("DELETE FROM events WHERE seq <= ?", (up_to,))
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 10
    finally:
        conn.close()


def test_rows_on_the_freelist_never_come_back_while_the_header_is_intact(tmp_path: Path) -> None:
    path = tmp_path / MOVED
    stored = make_buffer(path, [event(i) for i in range(2000)])
    deleted_without_secure_delete(path, 1500)
    image = path.read_bytes()
    still_there = [s.seq for s in stored[:1500] if cell_bytes(s) in image]
    assert len(still_there) > 100  # deleted, but still in the file, on the pages now on the freelist

    path.write_bytes(image[: len(image) * 3 // 4])
    recovered = salvaged(path)
    assert recovered.seqs
    assert min(recovered.seqs) > 1500
    assert_intact(recovered, stored)
    assert not recovered.report.may_include_delivered

    # Without the header the freelist cannot be found: deleted (delivered) rows come back, and it is said.
    path.write_bytes(b"\x00" * 100 + image[100:])
    recovered = salvaged(path)
    assert set(range(1501, 2001)) <= set(recovered.seqs)
    assert len(set(still_there) & set(recovered.seqs)) > 100
    assert_intact(recovered, stored)
    assert recovered.report.may_include_delivered


# ---- the tool on damaged files ----------------------------------------------------------------------------


def test_export_goes_on_past_damage_that_sqlite_meets_half_way(
    tmp_path: Path, two_thousand: tuple[bytes, list[Stored]]
) -> None:
    # A file under its ordinary name, healthy at first sight: the export reads it with SQLite until the
    # damaged page, then salvages the rest, each event once, in seq order.
    image, stored = two_thousand
    spans = cell_spans(image, stored)
    page = spans[1200][0] // PAGE
    damaged = bytearray(image)
    damaged[page * PAGE : page * PAGE + 200] = bytes([0x5A]) * 200
    path = tmp_path / "buffer.db"
    path.write_bytes(damaged)
    lost = {seq for seq, (start, _) in spans.items() if start // PAGE == page}

    out = io.BytesIO()
    result = buffertool.export(path, GATEWAY, out, page=100)
    expected = [s for s in stored if s.seq not in lost]
    assert out.getvalue().splitlines() == [encode_payload(GATEWAY, s) for s in expected]
    assert (result.events, result.first_seq, result.last_seq) == (len(expected), 1, 2000)
    assert result.salvage is not None
    assert any("malformed" in line for line in result.salvage.damage)

    out = io.BytesIO()
    result = buffertool.export(path, GATEWAY, out, after_seq=1000, limit=300)
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == [
        s.seq for s in expected if s.seq > 1000
    ][:300]

    seen = buffertool.inspect(path)
    assert seen.salvage is not None
    assert seen.depth == len(expected)
    assert seen.dropped == {reason.value: 0 for reason in DropReason}
    assert "DAMAGED   SQLite stopped after seq" in seen.render()


def test_purge_never_writes_to_a_damaged_file(
    tmp_path: Path, two_thousand: tuple[bytes, list[Stored]]
) -> None:
    image, _ = two_thousand
    path = tmp_path / MOVED
    path.write_bytes(image[: len(image) // 2])
    for action in (buffertool.purge, buffertool.plan_purge):
        with pytest.raises(BufferDamagedError, match="purge never writes to a damaged file"):
            action(path, None)
    assert path.read_bytes() == image[: len(image) // 2]
    done = edgegw("buffer", "purge", "--buffer", str(path), "--all", "--yes")
    assert done.returncode == 1
    assert b"edgegw buffer export --buffer" in done.stderr


def test_a_file_that_never_was_a_buffer_is_still_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("no pages, no cells, nothing shaped like an event " * 200)
    with pytest.raises(BufferToolError, match="not an edgegw buffer, or one damaged beyond recovery"):
        buffertool.inspect(text)
    with pytest.raises(BufferToolError, match="not an edgegw buffer"):
        buffertool.export(text, GATEWAY, io.BytesIO())


# ---- any damage at all (hypothesis) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    image: bytes
    wal: bytes | None
    stored: list[Stored]
    spans: dict[int, tuple[int, int]]
    """Where each row's cell is in ``image`` (rows that are only in the WAL have none)."""

    def __repr__(self) -> str:  # what a failing example prints
        wal = "no WAL" if self.wal is None else f"a WAL of {len(self.wal)} bytes"
        return f"Sample({len(self.image)} bytes, {wal}, {len(self.stored)} events)"


def _sample_spans(image: bytes, stored: list[Stored]) -> dict[int, tuple[int, int]]:
    spans = {}
    for s in stored:
        cell = cell_bytes(s)
        if (start := image.find(cell)) >= 0:
            assert image.count(cell) == 1
            spans[s.seq] = (start, start + len(cell))
    return spans


@pytest.fixture(scope="module")
def closed_sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    path = tmp_path_factory.mktemp("closed") / "buffer.db"
    stored = make_buffer(path, [event(i, pad=i % 7 * 40) for i in range(300)], batch=40)
    image = path.read_bytes()
    return Sample(image, None, stored, cell_spans(image, stored))


@pytest.fixture(scope="module")
def crashed_sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """Half the events checkpointed into the file, half only in the WAL (a gateway killed after a restart)."""
    directory = tmp_path_factory.mktemp("crashed")
    live = directory / "live"
    live.mkdir()
    earlier = make_buffer(live / "buffer.db", [event(i) for i in range(150)], batch=30)
    later = asyncio.run(_append_and_copy(live / "buffer.db", [event(i) for i in range(150, 300)], directory))
    image = (directory / MOVED).read_bytes()
    wal = (directory / f"{MOVED}-wal").read_bytes()
    stored = earlier + later
    return Sample(image, wal, stored, _sample_spans(image, stored))


async def _append_and_copy(path: Path, events: list[Event], directory: Path) -> list[Stored]:
    buf = await SqliteBuffer.open(path)
    try:
        for i in range(0, len(events), 30):
            await buf.append(events[i : i + 30])
        stored = await buf.read(150, 1000)
        shutil.copyfile(path, directory / MOVED)
        shutil.copyfile(path.with_name("buffer.db-wal"), directory / f"{MOVED}-wal")
    finally:
        await buf.close()
    return stored


overwrites = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
        st.builds(
            lambda at, n, fill: (at, bytes([fill]) * n),
            st.integers(0, 1 << 20),
            st.integers(1, 5000),
            st.integers(0, 255),
        ),
    ),
    min_size=1,
    max_size=4,
)


def damage(original: bytes, writes: list[tuple[int, bytes]], cut: int | None) -> tuple[bytes, list[range]]:
    """``original`` with ``writes`` laid over it (each at its offset modulo the length) and then cut to
    ``cut`` bytes (None: not cut); and the byte ranges the writes changed."""
    image = bytearray(original)
    hit = []
    for offset, data in writes:
        at = offset % max(1, len(original))
        piece = data[: len(original) - at]
        image[at : at + len(piece)] = piece
        hit.append(range(at, at + len(piece)))
    if cut is not None:
        del image[cut % (len(original) + 1) :]
    return bytes(image), hit


def check_property(sample: Sample, recovered: Recovered, hit: list[range], length: int) -> None:
    """Every event that comes back is an original one, unless the damage hit its cell; any row whose page
    and the header are untouched (and not cut off) comes back."""
    by_seq = {s.seq: s for s in sample.stored}
    by_content = {(s.device, s.kind, s.ts, s.data_json): s.seq for s in sample.stored}
    assert recovered.seqs == sorted(set(recovered.seqs))

    def touched(seq: int | None) -> bool:
        if seq is None or seq not in sample.spans:
            return False
        start, end = sample.spans[seq]
        return any(r.start < end and start < r.stop for r in hit)

    for e in recovered.events:
        payload = json.loads(encode_payload(GATEWAY, e.stored()))
        assert payload["seq"] == e.seq
        if e.seq in by_seq and e.stored() == by_seq[e.seq]:
            continue
        owner = by_content.get((e.device, e.kind, e.ts, e.data_json))
        assert touched(e.seq) or touched(owner) or (owner is None and any(map(touched, sample.spans))), (
            f"seq {e.seq} came back altered, but the damage never touched its cell"
        )
    if sample.wal is None and not any(r.start < 100 for r in hit):
        for seq, (start, end) in sample.spans.items():
            page = range(start // PAGE * PAGE, (start // PAGE + 1) * PAGE)
            if end <= length and not any(r.start < page.stop and page.start < r.stop for r in hit):
                assert seq in recovered.seqs, f"seq {seq}: its page is intact, but it did not come back"


@settings(max_examples=120)
@given(writes=overwrites, cut=st.none() | st.integers(0, 1 << 20))
def test_any_damage_to_a_closed_buffer(
    closed_sample: Sample, writes: list[tuple[int, bytes]], cut: int | None
) -> None:
    image, hit = damage(closed_sample.image, writes, cut)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / MOVED
        path.write_bytes(image)
        recovered = salvaged(path)
    check_property(closed_sample, recovered, hit, len(image))


@settings(max_examples=120)
@given(
    target=st.sampled_from(["file", "wal"]),
    writes=overwrites,
    cut=st.none() | st.integers(0, 1 << 20),
)
def test_any_damage_to_a_crashed_buffer_and_its_wal(
    crashed_sample: Sample, target: str, writes: list[tuple[int, bytes]], cut: int | None
) -> None:
    assert crashed_sample.wal is not None
    image, wal = crashed_sample.image, crashed_sample.wal
    hit: list[range] = []
    if target == "file":
        image, hit = damage(image, writes, cut)
    else:
        wal, _ = damage(wal, writes, cut)  # frames are checksummed: damage there only costs frames
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / MOVED
        path.write_bytes(image)
        path.with_name(f"{MOVED}-wal").write_bytes(wal)
        recovered = salvaged(path)
    check_property(crashed_sample, recovered, hit, len(image))


def test_check_event_keeps_only_what_the_buffer_could_have_written() -> None:
    good = (7, "reader-1", "rfid.read", 1.5, b'{"epc":"E2"}', 12 + ROW_OVERHEAD + 8 + 9)
    assert salvage.check_event(good) == salvage.SalvagedEvent(*good)
    assert salvage.check_event((7, b"reader-1", b"rfid.read", 2, *good[4:])) == salvage.SalvagedEvent(
        7, "reader-1", "rfid.read", 2.0, *good[4:]
    )
    for bad in (
        (0, *good[1:]),  # seqs start at 1
        (7, "", *good[2:]),
        (7, "reader-1", "rfid.read", float("inf"), *good[4:]),
        (7, "reader-1", "rfid.read", 1.5, b'{"epc":"E3"}', good[5] + 1),  # the size does not add up
        (7, "reader-1", "rfid.read", 1.5, b'["E2", 1]   ', good[5]),  # not an object
        (7, "reader-1", "rfid.read", 1.5, b'{"v":NaN}   ', good[5]),  # the buffer never writes NaN
        (7, "reader-1", "rfid.read", 1.5, b'{"epc":"\xff"}', good[5] + 1),  # not UTF-8
        (7, b"reader-\xff", *good[2:]),
        good[:5],
    ):
        assert salvage.check_event(bad) is None, bad


def test_the_damage_hint_reads_name_size_and_header(
    tmp_path: Path, two_thousand: tuple[bytes, list[Stored]]
) -> None:
    image, _ = two_thousand
    cases = {
        "healthy.db": (image, None),
        MOVED: (image, "moved it aside as corrupt"),
        "empty.db": (b"", "the file is empty"),
        "garbage.db": (b"\x00" * 100 + image[100:], "no valid SQLite header"),
        "short.db": (image[: 10 * PAGE], "shorter than its header says"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        hint = salvage.damage_hint(path)
        if expected is None:
            assert hint is None
        else:
            assert hint is not None
            assert expected in hint
