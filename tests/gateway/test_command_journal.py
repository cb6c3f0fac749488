"""The command ids journal on its own, on real SQLite files: what is written is read back after a reopen (the
first result stays), forgotten ids are gone, and storage faults (a path it cannot open, a full disk) are
counted and logged, never raised: the command service then goes on with its window in memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.commands.journal import CommandJournal, Entry


def test_ids_and_results_survive_a_reopen_and_the_first_result_stays(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db.commands"
    journal = CommandJournal(path)
    journal.running("meter", "a", 1000.0)
    journal.done("meter", "a", ("ok", None, {"written": {"vt_ratio": 7}}), 1001.0, 1000.0)
    journal.done("meter", "a", ("error", "a second result", None), 1002.0, 1000.0)  # ignored: not the first
    journal.running(None, "a", 0.0)  # the same id for the gateway is another request
    journal.done("meter", "b", ("refused", "not allowed", None), 1003.0, 0.0)
    journal.running("meter", "c", 1004.0)
    journal.close()

    again = CommandJournal(path)
    assert again.load() == [
        Entry("meter", "a", ("ok", None, {"written": {"vt_ratio": 7}}), 1001.0, 1000.0),
        Entry(None, "a", None, 0.0, 0.0),
        Entry("meter", "b", ("refused", "not allowed", None), 1003.0, 0.0),
        Entry("meter", "c", None, 0.0, 1004.0),
    ]
    again.forget([("meter", "a"), ("meter", "b")])
    assert [(e.device, e.id) for e in again.load()] == [(None, "a"), ("meter", "c")]
    assert again.faults == 0
    again.close()


def test_a_path_it_cannot_open_is_a_fault_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = tmp_path / "buffer.db.commands"
    where.mkdir()  # not a file: SQLite cannot open it; nothing is moved aside
    (where / "keep").write_text("someone's")
    caplog.set_level(logging.ERROR, logger="edgegw.commands")
    journal = CommandJournal(where)
    assert journal.faults == 1 and not journal.usable
    journal.running("meter", "a", 0.0)
    journal.done("meter", "a", ("ok", None, None), 1.0, 0.0)
    journal.forget([("meter", "a")])
    assert journal.load() == []
    assert (where / "keep").read_text() == "someone's"
    assert not (tmp_path / "buffer.db.commands.corrupt").exists()
    assert f"the id journal {where} cannot be opened" in caplog.text


def test_a_full_disk_is_counted_not_raised_and_writing_resumes_when_space_returns(
    small_fs: Callable[[int], Path], caplog: pytest.LogCaptureFixture
) -> None:
    fs = small_fs(256 * 1024)
    journal = CommandJournal(fs / "buffer.db.commands")
    journal.running("meter", "first", 0.0)
    filler = fs / "filler"
    with filler.open("wb", buffering=0) as f, pytest.raises(OSError):  # the disk fills up (ENOSPC)
        while True:
            f.write(b"\0" * 4096)
    caplog.set_level(logging.ERROR, logger="edgegw.commands")
    for n in range(50):
        journal.running("meter", f"id-{n}-" + "x" * 2000, 0.0)
        if journal.faults:
            break
    assert journal.faults >= 1
    assert "cannot be written" in caplog.text
    filler.unlink()
    journal.done("meter", "first", ("ok", None, None), 5.0, 0.0)
    assert ("meter", "first", ("ok", None, None)) in [(e.device, e.id, e.result) for e in journal.load()]
    journal.close()
