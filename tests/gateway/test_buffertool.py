"""``edgegw buffer inspect|export|purge`` on real buffers made by SqliteBuffer, stopped and running."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from drivers.event import Event
from gateway.cli import buffertool
from gateway.cli.buffertool import BufferInUseError, BufferToolError
from gateway.delivery.buffer import DropReason, SqliteBuffer, WhenFull
from gateway.delivery.payload import encode_payload

EDGEGW = str(Path(sys.executable).with_name("edgegw"))
GATEWAY = "lane-7"

pytestmark = pytest.mark.timeout(60)


def event(i: int, device: str = "reader-1", kind: str = "rfid.read") -> Event:
    return Event(device, kind, 1_700_000_000.0 + i, {"epc": f"{i:024X}", "antenna": 1 + i % 4, "note": "ü"})


async def make_buffer(path: Path, events: list[Event], **options: Any) -> SqliteBuffer:
    buf = await SqliteBuffer.open(path, **options)
    if events:
        await buf.append(events)
    return buf


async def stopped_buffer(path: Path, events: list[Event], **options: Any) -> None:
    buf = await make_buffer(path, events, **options)
    await buf.close()


def mixed_events() -> list[Event]:
    return (
        [event(i) for i in range(30)]
        + [event(100 + i, "reader-2", "rfid.read") for i in range(5)]
        + [
            Event(
                "reader-1", "device.status", 1_700_000_500.0, {"state": "connected", "detail": "firmware 1.7"}
            )
        ]
    )


# ---- inspect ---------------------------------------------------------------------------------------------


async def test_inspect_a_stopped_buffer(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await make_buffer(path, mixed_events())
    expected = buf.stats()
    await buf.close()

    seen = buffertool.inspect(path)
    assert seen.depth == expected.depth == 36
    assert seen.bytes == expected.bytes
    assert (seen.oldest_seq, seen.newest_seq, seen.last_seq) == (1, 36, 36)
    assert seen.oldest_ts == expected.oldest_ts == 1_700_000_000.0
    assert seen.newest_ts == 1_700_000_500.0
    assert [(k.device, k.kind, k.events, k.first_seq, k.last_seq) for k in seen.by_kind] == [
        ("reader-1", "device.status", 1, 36, 36),
        ("reader-1", "rfid.read", 30, 1, 30),
        ("reader-2", "rfid.read", 5, 31, 35),
    ]
    assert sum(k.bytes for k in seen.by_kind) == expected.bytes
    assert seen.dropped == {reason.value: 0 for reason in DropReason}
    assert seen.purged == 0
    assert seen.file_bytes >= path.stat().st_size > 0

    text = seen.render()
    assert f"buffer    {path} (" in text
    assert f"events    36 pending, {expected.bytes} bytes" in text
    assert "seq       oldest 1 (age " in text
    assert "highest ever assigned 36" in text
    assert "dropped   dropped_oldest=0 rejected_new=0 oversize=0" in text
    json.dumps(seen.to_json())  # serialisable for --json


async def test_inspect_beside_a_running_gateway_matches_its_stats(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await make_buffer(path, [event(i) for i in range(50)])
    try:
        await buf.ack(range(1, 11))
        await buf.append([event(50)])  # the acks commit with it (at the latest)
        stats = buf.stats()
        seen = await asyncio.to_thread(buffertool.inspect, path)
        assert (seen.depth, seen.bytes, seen.last_seq, seen.oldest_ts) == (
            stats.depth,
            stats.bytes,
            stats.last_seq,
            stats.oldest_ts,
        )
        assert (seen.oldest_seq, seen.newest_seq) == (11, 51)
        # The gateway carries on, untroubled by the reader that came and went.
        assert await buf.append([event(51)]) == [52]
    finally:
        await buf.close()


async def test_inspect_shows_the_drop_counters(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await make_buffer(path, [], max_bytes=2000, when_full=WhenFull.DROP_OLDEST)
    for i in range(40):
        await buf.append([event(i)])
    await buf.append([Event("reader-1", "rfid.read", 1.0, {"blob": "x" * 5000})])  # larger than the cap
    expected = buf.stats().dropped
    await buf.close()
    assert expected[DropReason.DROPPED_OLDEST] > 0
    assert expected[DropReason.OVERSIZE] == 1
    assert buffertool.inspect(path).dropped == expected


# ---- export ----------------------------------------------------------------------------------------------


async def test_export_writes_exactly_the_upstream_payloads(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    events = mixed_events()
    buf = await make_buffer(path, events)
    stored = await buf.read(0, 1000)
    await buf.close()

    out = io.BytesIO()
    result = buffertool.export(path, GATEWAY, out, page=7)
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == [encode_payload(GATEWAY, s) for s in stored]
    assert (result.events, result.first_seq, result.last_seq) == (36, 1, 36)
    for line, original, s in zip(lines, events, stored, strict=False):
        message = json.loads(line)
        assert list(message) == ["id", "seq", "device", "kind", "ts", "data"]
        assert message == {
            "id": f"{GATEWAY}:{s.seq}",
            "seq": s.seq,
            "device": original.device,
            "kind": original.kind,
            "ts": original.ts,
            "data": original.data,
        }


async def test_export_after_seq_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    await stopped_buffer(path, [event(i) for i in range(100)])

    def seqs(**options: Any) -> list[int]:
        out = io.BytesIO()
        buffertool.export(path, GATEWAY, out, page=9, **options)
        return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]

    assert seqs(after_seq=90) == list(range(91, 101))
    assert seqs(after_seq=10, limit=25) == list(range(11, 36))
    assert seqs(limit=3) == [1, 2, 3]
    assert seqs(after_seq=100) == []


class GatedOut(io.BytesIO):
    """An output that stops the export at its first line until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.go_on = threading.Event()

    def write(self, data: Any) -> int:
        if not self.started.is_set():
            self.started.set()
            assert self.go_on.wait(30), "the test never let the export go on"
        return super().write(data)


async def test_export_while_another_connection_appends(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await make_buffer(path, [event(i) for i in range(200)])
    try:
        out = GatedOut()
        exporting = asyncio.create_task(asyncio.to_thread(buffertool.export, path, GATEWAY, out, page=16))
        assert await asyncio.to_thread(out.started.wait, 30)
        # The export is in the middle of its first page. The gateway keeps committing beside it: no lock
        # or snapshot of the export's stands in its way.
        appended: list[int] = []
        for i in range(20):
            appended += await buf.append([event(200 + 10 * i + j) for j in range(10)])
        await buf.ack(range(150, 161))  # delivered meanwhile: the gateway deletes them
        await buf.append([event(999)])
        out.go_on.set()
        result = await exporting
    finally:
        await buf.close()

    assert appended == list(range(201, 401))
    exported = [json.loads(line)["seq"] for line in out.getvalue().splitlines()]
    # Everything present when the export started, in order, once each; nothing appended after it started.
    # Events deleted before the export reached them may be missing (they were delivered).
    assert exported == sorted(set(exported))
    assert set(range(1, 150)) <= set(exported) <= set(range(1, 201))
    assert exported[-1] == 200
    assert result.last_seq == 200


async def test_export_to_a_file_is_atomic_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    await stopped_buffer(path, [event(i) for i in range(10)])
    target = tmp_path / "stick" / "backlog.jsonl"
    target.parent.mkdir()
    result = buffertool.export_to_file(path, GATEWAY, target)
    assert result.events == 10
    assert len(target.read_bytes().splitlines()) == 10
    assert sorted(p.name for p in target.parent.iterdir()) == ["backlog.jsonl"]
    with pytest.raises(BufferToolError, match="exists"):
        buffertool.export_to_file(path, GATEWAY, target)
    assert len(target.read_bytes().splitlines()) == 10


# ---- purge -----------------------------------------------------------------------------------------------


async def test_purge_up_to_a_seq_keeps_seqs_unique_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    await stopped_buffer(path, [event(i) for i in range(40)])

    plan = buffertool.plan_purge(path, 25)
    assert (plan.events, plan.first_seq, plan.last_seq, plan.remaining) == (25, 1, 25, 15)
    assert buffertool.inspect(path).depth == 40  # planning deletes nothing

    done = buffertool.purge(path, 25)
    assert (done.events, done.bytes) == (plan.events, plan.bytes)
    seen = buffertool.inspect(path)
    assert (seen.depth, seen.oldest_seq, seen.newest_seq, seen.purged) == (15, 26, 40, 25)
    assert "purged    25" in seen.render()

    # The gateway reopens with the right counts and never hands out a purged seq again.
    buf = await SqliteBuffer.open(path)
    try:
        assert buf.stats().depth == 15
        assert buf.stats().bytes == seen.bytes
        assert buf.stats().dropped == {reason.value: 0 for reason in DropReason}
        assert [s.seq for s in await buf.read(0, 100)] == list(range(26, 41))
        assert await buf.append([event(40)]) == [41]
    finally:
        await buf.close()


async def test_purge_all_then_seqs_go_on(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    await stopped_buffer(path, [event(i) for i in range(12)])
    assert buffertool.purge(path, None).events == 12
    assert buffertool.purge(path, None).events == 0
    seen = buffertool.inspect(path)
    assert (seen.depth, seen.bytes, seen.oldest_seq, seen.last_seq, seen.purged) == (0, 0, None, 12, 12)
    assert "seq       none pending; highest ever assigned 12" in seen.render()
    buf = await SqliteBuffer.open(path)
    try:
        assert await buf.append([event(0)]) == [13]
    finally:
        await buf.close()


async def test_purge_is_refused_while_a_gateway_has_the_buffer_open(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await make_buffer(path, [event(i) for i in range(20)])
    try:
        with pytest.raises(
            BufferInUseError, match=rf"running gateway \(pid {os.getpid()}\).*systemctl stop edgegw"
        ):
            await asyncio.to_thread(buffertool.purge, path, None)
        # Another process is refused the same way.
        done = await asyncio.to_thread(
            subprocess.run,
            [EDGEGW, "buffer", "purge", "--buffer", str(path), "--all", "--yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert f"is open by a running gateway (pid {os.getpid()})" in done.stderr
        # Nothing was deleted, and the gateway goes on as before.
        assert [s.seq for s in await buf.read(0, 100)] == list(range(1, 21))
        assert await buf.append([event(20)]) == [21]
        assert (await asyncio.to_thread(buffertool.inspect, path)).depth == 21
    finally:
        await buf.close()
    assert buffertool.purge(path, None).events == 21  # stopped: now it may


async def test_purge_never_creates_the_gateways_lock_file(tmp_path: Path) -> None:
    # Made by root, it would keep the service's user from opening the buffer.
    path = tmp_path / "buffer.db"
    await stopped_buffer(path, [event(i) for i in range(3)])
    lock = path.with_name("buffer.db.lock")
    assert lock.exists()
    lock.unlink()
    assert buffertool.purge(path, 2).events == 2
    assert not lock.exists()
    buf = await SqliteBuffer.open(path)  # the gateway makes its own, as ever
    await buf.close()
    assert lock.exists()


# ---- files that are not buffers --------------------------------------------------------------------------


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    for action in (buffertool.inspect, lambda p: buffertool.purge(p, None)):
        with pytest.raises(BufferToolError, match="no such file"):
            action(path)
    assert not path.exists()


def test_other_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE events (x)")
    conn.close()
    with pytest.raises(BufferToolError, match="not an edgegw buffer"):
        buffertool.inspect(other)
    with pytest.raises(BufferToolError, match="not an edgegw buffer"):
        buffertool.purge(other, None)
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, but long enough to have a header of sorts " * 10)
    with pytest.raises(BufferToolError, match="not an edgegw buffer"):
        buffertool.inspect(text)
    with pytest.raises(BufferToolError, match="is a directory"):
        buffertool.inspect(tmp_path)


# ---- finding the buffer from the gateway's config --------------------------------------------------------


def test_locate_reads_only_the_buffer_path_and_the_gateway_id(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway: {id: lane-7}\nbuffer: {path: data/buffer.db}\n"
        "upstream: {mqtt: {url: mqtt://broker, username: u, password_env: NOT_SET_ON_THIS_LAPTOP}}\n"
    )
    assert buffertool.locate(config, None) == (tmp_path / "data" / "buffer.db", "lane-7")
    assert buffertool.locate(None, tmp_path / "x.db") == (tmp_path / "x.db", None)
    config.write_text("gateway: {id: lane-7}\nbuffer: {max_bytes: 1GiB}\n")
    with pytest.raises(BufferToolError, match=r"gateway\.yaml:2: buffer\.path: missing"):
        buffertool.locate(config, None)
    with pytest.raises(BufferToolError, match="cannot read"):
        buffertool.locate(tmp_path / "absent.yaml", None)


# ---- the command -----------------------------------------------------------------------------------------


def edgegw(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([EDGEGW, *args], capture_output=True, timeout=60, check=False)


async def test_the_buffer_command(tmp_path: Path) -> None:
    path = tmp_path / "var" / "buffer.db"
    path.parent.mkdir()
    events = [event(i) for i in range(25)]
    buf = await make_buffer(path, events)
    stored = await buf.read(0, 100)
    await buf.close()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{id: {GATEWAY}}}\nbuffer: {{path: var/buffer.db}}\n")

    inspected = edgegw("buffer", "inspect", "-c", str(config))
    assert inspected.returncode == 0, inspected.stderr
    assert b"events    25 pending" in inspected.stdout
    as_json = json.loads(edgegw("buffer", "inspect", "--buffer", str(path), "--json").stdout)
    assert (as_json["depth"], as_json["oldest_seq"], as_json["newest_seq"]) == (25, 1, 25)

    exported = edgegw("buffer", "export", "-c", str(config), "--after-seq", "5", "--limit", "10")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.splitlines() == [encode_payload(GATEWAY, s) for s in stored[5:15]]
    assert b"exported 10 events (seq 6..15) to stdout" in exported.stderr
    assert b"edgegw buffer purge --up-to 15 --yes" in exported.stderr

    stick = tmp_path / "backlog.jsonl"
    to_file = edgegw("buffer", "export", "--buffer", str(path), "--gateway-id", GATEWAY, "--out", str(stick))
    assert to_file.returncode == 0, to_file.stderr
    assert stick.read_bytes().splitlines() == [encode_payload(GATEWAY, s) for s in stored]

    no_id = edgegw("buffer", "export", "--buffer", str(path))
    assert no_id.returncode == 2
    assert b"--gateway-id" in no_id.stderr

    unconfirmed = edgegw("buffer", "purge", "-c", str(config), "--up-to", "20")
    assert unconfirmed.returncode == 1
    assert b"would purge 20 events, seq 1..20" in unconfirmed.stdout
    assert b"add --yes" in unconfirmed.stdout
    assert buffertool.inspect(path).depth == 25

    purged = edgegw("buffer", "purge", "-c", str(config), "--up-to", "20", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert b"purged 20 events, seq 1..20" in purged.stdout
    assert buffertool.inspect(path).depth == 5

    both = edgegw("buffer", "purge", "-c", str(config), "--up-to", "3", "--all")
    assert both.returncode == 2
    missing = edgegw("buffer", "inspect", "--buffer", str(tmp_path / "none.db"))
    assert missing.returncode == 1
    assert b"no such file" in missing.stderr
