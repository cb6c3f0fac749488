"""Helpers for storage-fault tests: filling a filesystem (see the ``small_fs`` fixture in conftest)."""

from __future__ import annotations

import os
from pathlib import Path


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def fill_disk(directory: Path, leave: int = 0, name: str = "filler") -> Path:
    """Take the free space of ``directory``'s filesystem with a file of allocated blocks, leaving about
    ``leave`` bytes free (0: none at all)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = 1 << 20
        while chunk >= 4096:
            room = free_bytes(directory) - leave
            if room < chunk:
                chunk //= 2
                continue
            size = os.fstat(fd).st_size
            try:
                os.posix_fallocate(fd, size, chunk)
            except OSError:
                chunk //= 2
    finally:
        os.close(fd)
    return path
