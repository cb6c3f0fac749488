"""A pseudo-terminal endpoint for serial-device simulators.

The simulator holds the master side; a client opens the slave through a symlink at a path the caller chooses
(``/tmp/ttyR2000`` rather than ``/dev/pts/7``, which changes). Both sides are put in raw mode, otherwise the
line discipline echoes input back and rewrites bytes (CR/LF, 0x7F, ^C). The endpoint keeps a slave fd open
itself, so the master never sees EIO while no client has the port open.

:meth:`PtyEndpoint.disconnect` closes the pty: a client reading the slave sees EIO or end of file, as when a
USB serial adapter is unplugged. :meth:`PtyEndpoint.open` then makes a new pty and re-points the symlink
(plugged back in). Reads and writes go through the event loop (``add_reader`` / ``add_writer``) on the
non-blocking master; the write buffer is bounded: :meth:`PtyEndpoint.write` waits while it is above its
high-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from pathlib import Path
from typing import Final

__all__ = ["PtyEndpoint", "point_symlink"]

READ_SIZE: Final = 65536


def point_symlink(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target``, replacing an existing symlink atomically.

    A regular file or directory at ``link`` is not replaced (FileExistsError).
    """
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class PtyEndpoint:
    """The device side of a pty, reachable by clients through the symlink ``link``."""

    def __init__(self, link: Path, *, high_water: int = 256 * 1024) -> None:
        self.link = link
        self.high_water = high_water
        self.slave_name: str | None = None
        self.generation = 0
        """Incremented by every :meth:`open`: a session compares it to learn that its pty was replaced."""
        self._master = -1
        self._slave = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = bytearray()
        self._in = bytearray()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed_event = asyncio.Event()
        self._writer_armed = False

    @property
    def is_open(self) -> bool:
        return self._master >= 0

    def open(self) -> None:
        """Create a new pty and point the symlink at its slave."""
        if self.is_open:
            raise RuntimeError("pty already open")
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
            slave_name = os.ttyname(slave)
            point_symlink(self.link, slave_name)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._loop = loop
        self._master, self._slave, self.slave_name = master, slave, slave_name
        self._out.clear()
        self._in.clear()
        self._readable.clear()
        self._writable.set()
        self._closed_event.clear()
        self._writer_armed = False
        self.generation += 1
        loop.add_reader(master, self._on_readable)

    def disconnect(self) -> None:
        """Close the pty (clients see EIO / EOF); the symlink is left dangling until :meth:`open`."""
        if not self.is_open:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        if self._writer_armed:
            self._loop.remove_writer(self._master)
            self._writer_armed = False
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        self._out.clear()
        self._closed_event.set()
        self._readable.set()
        self._writable.set()

    def close(self) -> None:
        """Close the pty and remove the symlink if it still points at our slave."""
        slave_name = self.slave_name
        self.disconnect()
        with contextlib.suppress(OSError):
            if slave_name is not None and os.readlink(self.link) == slave_name:
                self.link.unlink()

    def _current(self, generation: int | None) -> bool:
        return self.is_open and (generation is None or generation == self.generation)

    async def read(self, generation: int | None = None) -> bytes:
        """The next bytes a client wrote; ``b""`` once the pty is closed.

        With ``generation``, also ``b""`` once that pty has been replaced by a newer one.
        """
        while not self._in or not self._current(generation):
            if not self._current(generation):
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._in)
        self._in.clear()
        return data

    async def write(self, data: bytes, generation: int | None = None) -> None:
        """Queue ``data`` for the client; waits while the buffer is above its high-water mark.

        Raises ConnectionError if the pty (or, with ``generation``, that pty) is closed.
        """
        while len(self._out) >= self.high_water:
            if not self._current(generation):
                raise ConnectionError("pty closed")
            self._writable.clear()
            await self._writable.wait()
        if not self._current(generation):
            raise ConnectionError("pty closed")
        if not self._out:
            try:
                written = os.write(self._master, data)
            except BlockingIOError:
                written = 0
            except OSError as err:
                raise ConnectionError(f"pty write failed: {err}") from err
            data = data[written:]
        if data:
            self._out += data
            self._arm_writer()

    async def wait_closed(self) -> None:
        """Return once the current pty has been closed."""
        await self._closed_event.wait()

    def _arm_writer(self) -> None:
        if not self._writer_armed and self._loop is not None:
            self._loop.add_writer(self._master, self._on_writable)
            self._writer_armed = True

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno == errno.EIO:  # cannot happen while we hold the slave; treat as closed
                self.disconnect()
                return
            raise
        if chunk:
            self._in += chunk
            self._readable.set()

    def _on_writable(self) -> None:
        if not self._out:
            return
        try:
            written = os.write(self._master, self._out)
        except BlockingIOError:
            return
        except OSError:
            self.disconnect()
            return
        del self._out[:written]
        if not self._out and self._loop is not None:
            self._loop.remove_writer(self._master)
            self._writer_armed = False
        if len(self._out) < self.high_water // 2:
            self._writable.set()
