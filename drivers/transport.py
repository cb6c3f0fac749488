"""Byte transports shared by drivers: a serial port (RS-232/RS-485, USB adapters, ptys) and a TCP socket
(serial-to-Ethernet converters, network readers).

Both present the same small interface, :class:`ByteLink`: ``read()`` returns the next bytes that arrived
(at least one), ``write()`` sends, ``close()``. Failures are translated into the driver error tree:
:class:`~drivers.errors.DeviceUnavailable` when opening fails, :class:`~drivers.errors.ConnectionLost` when
the link drops.

The serial link reads on the event loop with ``add_reader`` on the port's file descriptor: the kernel wakes
the loop as soon as bytes arrive and the callback drains them at once, so the port's input queue is emptied
as fast as the loop turns. What has been read and not yet consumed is held in a bounded buffer; if a consumer
falls that far behind, the oldest bytes are discarded and counted (``overflow_bytes``), never an unbounded
queue.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import os
import ssl
import termios
from collections import deque
from types import TracebackType
from typing import Self

import serial

from .errors import ConnectionLost, DeviceUnavailable

READ_CHUNK = 65536
DEFAULT_MAX_BUFFERED = 1 << 20


class ByteLink(abc.ABC):
    """A bidirectional byte stream to one device."""

    overflow_bytes: int = 0

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The bytes that arrived since the last read (at least one); raises ConnectionLost."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send ``data``; raises ConnectionLost."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the port or socket. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SerialLink(ByteLink):
    """A serial port read with ``add_reader`` on its file descriptor (no thread, no polling)."""

    def __init__(self, port: serial.Serial, *, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        self._port = port
        self._fd: int = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._max_buffered = max_buffered
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConnectionLost | None = None
        self._closed = False
        self.overflow_bytes = 0
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def name(self) -> str:
        return str(self._port.port)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as err:
            # EIO: the pty's other side went away or the USB adapter was unplugged.
            self._fail(ConnectionLost(f"serial port {self.name}: {os.strerror(err.errno or errno.EIO)}"))
            return
        if not data:
            self._fail(ConnectionLost(f"serial port {self.name}: end of file"))
            return
        self._chunks.append(data)
        self._buffered += len(data)
        while self._buffered > self._max_buffered and len(self._chunks) > 1:
            dropped = self._chunks.popleft()
            self._buffered -= len(dropped)
            self.overflow_bytes += len(dropped)
        self._wake()

    def _fail(self, error: ConnectionLost) -> None:
        self._error = error
        self._loop.remove_reader(self._fd)
        self._wake()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise ConnectionLost(f"serial port {self.name}: closed")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._error is not None:
                raise self._error
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                n = 0
            except OSError as err:
                raise ConnectionLost(f"serial port {self.name}: write failed: {err.strerror}") from err
            view = view[n:]
            if view:
                await self._writable()

    async def _writable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_writer(self._fd, ready)
        try:
            await fut
        finally:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            self._port.close()
        self._wake()


class TcpLink(ByteLink):
    """A TCP connection (asyncio streams; the stream's own limit bounds what is held)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self._reader = reader
        self._writer = writer
        self.name = name

    async def read(self) -> bytes:
        try:
            data = await self._reader.read(READ_CHUNK)
        except OSError as err:
            raise ConnectionLost(f"tcp {self.name}: {err.strerror or err}") from err
        if not data:
            raise ConnectionLost(f"tcp {self.name}: connection closed by peer")
        return data

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as err:
            raise ConnectionLost(f"tcp {self.name}: write failed: {err.strerror or err}") from err

    def close(self) -> None:
        self._writer.close()


PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


async def open_serial(
    port: str,
    baudrate: int,
    *,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: float = 1,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
) -> SerialLink:
    """Open a serial port (exclusively, non-blocking, raw)."""
    try:
        handle = serial.Serial(
            port=port,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=PARITIES[parity],
            stopbits=stopbits,
            timeout=0,
            write_timeout=0,
            exclusive=True,
        )
    except (serial.SerialException, OSError, termios.error) as err:
        # termios.error is no OSError: pyserial lets it out of open() when the line settings are refused
        # (even parity on a pty, say); it must be retried like any port that cannot open, not crash.
        raise DeviceUnavailable(f"serial port {port}: {err}") from err
    # pyserial's open() has already discarded input waiting from before (stale bytes); from here on every
    # byte is read, and the framer resynchronises on whatever partial frame the stream starts with.
    return SerialLink(handle, max_buffered=max_buffered)


async def open_tcp(
    host: str, port: int, *, connect_timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> TcpLink:
    """Connect to ``host:port``, with TLS when ``tls`` is given (the handshake within the timeout too)."""
    name = f"{host}:{port}"
    scheme = "tls" if tls is not None else "tcp"
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    except TimeoutError as err:
        raise DeviceUnavailable(f"{scheme} {name}: no answer within {connect_timeout:g} s") from err
    except ssl.SSLCertVerificationError as err:  # said as such, and retried like any unreachable device
        raise DeviceUnavailable(f"tls {name}: certificate verify failed: {err.verify_message}") from err
    except ssl.SSLError as err:
        raise DeviceUnavailable(f"tls {name}: {err.reason or err}") from err
    except OSError as err:
        raise DeviceUnavailable(f"{scheme} {name}: {err.strerror or err}") from err
    return TcpLink(reader, writer, name)
