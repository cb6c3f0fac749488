"""Clients of a simulator's link, for the simulators' tests: a real pty opened through its symlink, or a
real TCP connection on 127.0.0.1; each family's test wraps one in its own protocol host."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["Client", "Lines", "PtyClient", "TcpClient", "over_pty", "over_tcp"]

H = TypeVar("H")


class PtyClient:
    """A client of the pty, opened through the symlink, raw mode, read on the event loop."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.buffer = bytearray()
        self.closed = False
        self.event = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as err:
            assert err.errno == errno.EIO
            chunk = b""
        if not chunk:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.fd)
        self.buffer += chunk
        self.event.set()

    async def read(self) -> bytes:
        while not self.buffer and not self.closed:
            self.event.clear()
            await self.event.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def until_closed(self) -> None:
        """Read until the port reports EIO / end of file, as an unplugged adapter does."""
        while await self.read():
            pass

    def close(self) -> None:
        if not self.closed:
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


class TcpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        return await self.reader.read(65536)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


Client = PtyClient | TcpClient


@contextlib.asynccontextmanager
async def over_pty(path: Path, host: Callable[[Client], H]) -> AsyncIterator[H]:
    """``host`` (a family's protocol side) on a client of the pty at ``path``, closed on exit."""
    client = PtyClient(path)
    try:
        yield host(client)
    finally:
        client.close()


@contextlib.asynccontextmanager
async def over_tcp(port: int | None, host: Callable[[Client], H]) -> AsyncIterator[H]:
    """``host`` on a TCP connection to ``port`` on 127.0.0.1, closed on exit."""
    assert port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = TcpClient(reader, writer)
    try:
        yield host(client)
    finally:
        client.close()


class Lines(io.StringIO):
    """Captures what a command prints, and says when a line came."""

    def __init__(self) -> None:
        super().__init__()
        self.line = asyncio.Event()

    def write(self, text: str) -> int:
        if "\n" in text:
            self.line.set()
        return super().write(text)
