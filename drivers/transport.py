"""Byte transports shared by drivers: a serial port (RS-232/RS-485, USB adapters, ptys) and a TCP socket
(serial-to-Ethernet converters, network readers), with or without TLS. A driver opens one with
:func:`drivers.link.open_link`, from its :class:`~drivers.link.LinkOptions`.

They present the same small interface, :class:`ByteLink`: ``read()`` returns the next bytes that arrived
(at least one), ``write()`` sends, ``close()``. Failures are translated into the driver error tree:
:class:`~drivers.errors.DeviceUnavailable` when opening fails, :class:`~drivers.errors.ConnectionLost` when
the link drops.

Two ways to take the bytes in:

- **pull** (``await link.read()``): a session that reads what a device sends on its own (a reader's tag
  reports) frames each chunk as it comes. :class:`SerialLink` and :class:`TcpLink`.
- **push** (a ``receiver`` given when the link is opened): every chunk is handed to ``receiver(data)`` as
  soon as it arrives, from the event loop's own callback, with no task in between; the link's loss goes to
  ``lost(error)``. For request/response lines shared by several devices (:mod:`drivers.bus`), where a reply
  completes the future its request waits on: one wake-up per reply instead of two. :class:`SerialLink`
  (``receiver=``) and :class:`TcpPushLink`. A receiver that raises fails the link (``lost`` is told).

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
from collections.abc import Callable
from types import TracebackType
from typing import Self, overload

import serial

from .errors import ConnectionLost, DeviceUnavailable

READ_CHUNK = 65536
DEFAULT_MAX_BUFFERED = 1 << 20

Receiver = Callable[[bytes], None]
"""Push mode: called with each chunk as it arrives (see the module docstring)."""
Lost = Callable[[ConnectionLost], None]
"""Push mode: called once, with the reason, when the link drops on its own (not after ``close()``)."""


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

    def __init__(
        self,
        port: serial.Serial,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        receiver: Receiver | None = None,
        lost: Lost | None = None,
    ) -> None:
        """``receiver`` (and ``lost``): push mode, see the module docstring; else read with :meth:`read`."""
        self._port = port
        self._fd: int = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._max_buffered = max_buffered
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConnectionLost | None = None
        self._closed = False
        self._receiver = receiver
        self._lost = lost
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
        receiver = self._receiver
        if receiver is not None:
            try:
                receiver(data)
            except Exception as err:  # a bug in the receiver must not leave the line deaf: fail it
                self._fail(ConnectionLost(f"serial port {self.name}: receiver failed: {err!r}"))
                self.close()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        while self._buffered > self._max_buffered and len(self._chunks) > 1:
            dropped = self._chunks.popleft()
            self._buffered -= len(dropped)
            self.overflow_bytes += len(dropped)
        self._wake()

    def _fail(self, error: ConnectionLost) -> None:
        if self._error is not None or self._closed:
            return
        self._error = error
        self._loop.remove_reader(self._fd)
        self._wake()
        if self._lost is not None:
            self._lost(error)

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


class TcpPushLink(ByteLink, asyncio.Protocol):
    """A TCP connection (TLS or not) in push mode: the connection's protocol hands every chunk to the
    receiver from ``data_received``, and its loss to ``lost``. Writes go straight to the transport, waiting
    only while the kernel's send buffer is full. Made by :func:`open_tcp` with a ``receiver``."""

    def __init__(self, name: str, receiver: Receiver, lost: Lost | None = None) -> None:
        self.name = name
        self._receiver = receiver
        self._lost = lost
        self._transport: asyncio.Transport | None = None
        self._error: ConnectionLost | None = None
        self._closed = False
        self._writable: asyncio.Future[None] | None = None
        """Set while the transport asked us to pause writing; resolved when it may resume."""

    # -- asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._receiver(data)
        except Exception as err:  # a bug in the receiver must not leave the line deaf: fail it
            self._fail(ConnectionLost(f"tcp {self.name}: receiver failed: {err!r}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            detail = "connection closed by peer"
        else:
            detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        self._fail(ConnectionLost(f"tcp {self.name}: {detail}"))

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- ByteLink ----------------------------------------------------------------------------------------
    async def read(self) -> bytes:
        raise TypeError(f"tcp {self.name}: a push link hands its bytes to its receiver")

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        transport = self._transport
        if transport is None or self._closed:
            raise ConnectionLost(f"tcp {self.name}: closed")
        transport.write(data)
        writable = self._writable
        if writable is not None:
            await asyncio.shield(writable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._release(ConnectionLost(f"tcp {self.name}: closed"))

    def _fail(self, error: ConnectionLost) -> None:
        if self._error is not None or self._closed:
            return
        self._error = error
        self._release(error)
        if self._lost is not None:
            self._lost(error)

    def _release(self, error: ConnectionLost) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_exception(error)
            writable.exception()  # retrieved: nobody may be waiting on it


PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


async def open_serial(
    port: str,
    baudrate: int,
    *,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: float = 1,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    receiver: Receiver | None = None,
    lost: Lost | None = None,
) -> SerialLink:
    """Open a serial port (exclusively, non-blocking, raw); in push mode with ``receiver``."""
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
    return SerialLink(handle, max_buffered=max_buffered, receiver=receiver, lost=lost)


@overload
async def open_tcp(
    host: str, port: int, *, connect_timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> TcpLink: ...


@overload
async def open_tcp(
    host: str,
    port: int,
    *,
    connect_timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    receiver: Receiver,
    lost: Lost | None = None,
) -> TcpPushLink: ...


async def open_tcp(
    host: str,
    port: int,
    *,
    connect_timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    receiver: Receiver | None = None,
    lost: Lost | None = None,
) -> TcpLink | TcpPushLink:
    """Connect to ``host:port``, with TLS when ``tls`` is given (the handshake within the timeout too); in
    push mode with ``receiver``."""
    name = f"{host}:{port}"
    scheme = "tls" if tls is not None else "tcp"
    try:
        async with asyncio.timeout(connect_timeout):
            if receiver is None:
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
                return TcpLink(reader, writer, name)
            link = TcpPushLink(name, receiver, lost)
            try:
                await asyncio.get_running_loop().create_connection(lambda: link, host, port, ssl=tls)
            except BaseException:
                link.close()
                raise
            return link
    except TimeoutError as err:
        raise DeviceUnavailable(f"{scheme} {name}: no answer within {connect_timeout:g} s") from err
    except ssl.SSLCertVerificationError as err:  # said as such, and retried like any unreachable device
        raise DeviceUnavailable(f"tls {name}: certificate verify failed: {err.verify_message}") from err
    except ssl.SSLError as err:
        raise DeviceUnavailable(f"tls {name}: {err.reason or err}") from err
    except OSError as err:
        raise DeviceUnavailable(f"{scheme} {name}: {err.strerror or err}") from err
