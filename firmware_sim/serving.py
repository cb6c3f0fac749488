"""Serving a simulator on a pty or a TCP port: what every family's ``serve_pty`` / ``serve_tcp`` shares.

A serial device's simulator answers one byte stream at a time through ``serve_link(link)`` (a
:class:`LinkSimulator`); :func:`on_pty` runs it on a pty that a disconnect closes and reopens (a USB adapter
unplugged and plugged back), :func:`on_tcp` on every connection to a port (a serial-to-Ethernet converter), a
disconnect closing them and refusing new ones for a while. :func:`tcp_server` is the connection bookkeeping
underneath, for a simulator whose sessions are more than a link (LLRP). The counters every simulator keeps
are waited on the same way (:class:`Simulator`), so a test never sleeps.

The command-line pieces of ``edgegw sim FAMILY`` live here too: where to serve (``--link`` / ``--tcp``), the
``--fault`` SPEC grammar every family splits the same way, and serving until stopped.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TextIO, TypeVar

from .pty import PtyEndpoint

__all__ = [
    "DisconnectHook",
    "Link",
    "LinkSimulator",
    "PtyLink",
    "Session",
    "Simulator",
    "TcpLink",
    "TcpServer",
    "add_link_or_tcp",
    "cancel_all",
    "check_probabilities",
    "host_port",
    "on_pty",
    "on_tcp",
    "parse_fault_specs",
    "running",
    "serve_until_stopped",
    "tcp_server",
]

READ_SIZE: Final = 65536

StatsT = TypeVar("StatsT")
OptionsT = TypeVar("OptionsT")
DisconnectHook = Callable[[float], contextlib.AbstractAsyncContextManager[None]]
"""``hook(downtime)``: entered once the link is down (and back up after ``downtime``)."""
Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""``session(reader, writer)``: one TCP connection, until it ends."""


class Link(Protocol):
    """One session's byte stream: ``read`` gives ``b""`` once it ends, ``write`` raises ConnectionError."""

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class PtyLink:
    """One pty generation: reads end (b"") and writes fail once the pty is closed or replaced."""

    def __init__(self, endpoint: PtyEndpoint) -> None:
        self.endpoint = endpoint
        self.generation = endpoint.generation

    async def read(self) -> bytes:
        return await self.endpoint.read(self.generation)

    async def write(self, data: bytes) -> None:
        await self.endpoint.write(data, self.generation)


class TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        try:
            return await self.reader.read(READ_SIZE)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionError("connection closed")
        self.writer.write(data)
        await self.writer.drain()


# ------------------------------------------------------------------------------------------ simulators


class Simulator(Generic[StatsT]):
    """Counters (:attr:`stats`) that tests and the CLI wait on: every change is followed by :meth:`_notify`,
    which wakes the waiters whose condition now holds."""

    def __init__(self, stats: StatsT) -> None:
        self.stats = stats
        self._waiters: list[tuple[Callable[[StatsT], bool], asyncio.Future[None]]] = []

    async def wait_for(self, predicate: Callable[[StatsT], bool]) -> None:
        """Return once ``predicate(stats)`` holds (wrap in ``asyncio.timeout``)."""
        if predicate(self.stats):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            await future
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate(self.stats):
                future.set_result(None)


class _CountsDisconnects(Protocol):
    disconnects: int


LinkStatsT = TypeVar("LinkStatsT", bound=_CountsDisconnects)


class LinkSimulator(Simulator[LinkStatsT], abc.ABC):
    """A simulator that answers on one byte stream at a time; served by :func:`on_pty` or :func:`on_tcp`."""

    def __init__(self, stats: LinkStatsT) -> None:
        super().__init__(stats)
        self.port: int | None = None
        """The bound TCP port (serve_tcp)."""
        self.link: Path | None = None
        """The symlink clients open (serve_pty)."""
        self._disconnect_hook: DisconnectHook | None = None

    @abc.abstractmethod
    async def serve_link(self, link: Link) -> None:
        """Answer what arrives on ``link`` until it closes."""

    async def disconnect(self, downtime: float = 0.0) -> None:
        """Drop the link: the pty is closed (and reopened after ``downtime``, the symlink re-pointed), or the
        TCP connections are closed (new ones refused during ``downtime``). Returns once the link is back."""
        if self._disconnect_hook is None:
            raise RuntimeError("the simulator is not serving")
        async with self._disconnect_hook(downtime):
            self.stats.disconnects += 1
            self._notify()


# ------------------------------------------------------------------------------------------ serving


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they have ended; what they end with is dropped (they are torn down,
    nobody is left to hear it). A cancellation of the caller while it waits is the caller's own and goes on
    up, so that a session cancelled while it tears down still ends. (A CancelledError while nobody is
    cancelling the caller is dropped like the tasks' own: on Python 3.11, an ``asyncio.timeout`` that
    expired just as what it guarded finished leaves such a stray one behind.)"""
    tasks = list(tasks)
    current = asyncio.current_task()
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            if current is not None and current.cancelling():
                raise
        except Exception:  # torn down: nobody is left to hear it
            pass


@contextlib.asynccontextmanager
async def running(coroutine: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``coroutine`` as a task beside the block (periodic faults); cancelled when the block ends."""
    task = asyncio.create_task(coroutine)
    try:
        yield
    finally:
        await cancel_all((task,))


@contextlib.asynccontextmanager
async def on_pty(sim: LinkSimulator[Any], path: Path) -> AsyncIterator[None]:
    """Serve ``sim`` on a new pty whose slave ``path`` points to (removed on exit); after a disconnect, the
    next session is on a new pty, ``path`` re-pointed."""
    sim.link = path
    endpoint = PtyEndpoint(path)
    link_up = asyncio.Event()

    @contextlib.asynccontextmanager
    async def disconnect(downtime: float) -> AsyncIterator[None]:
        link_up.clear()
        endpoint.disconnect()
        if downtime > 0:
            await asyncio.sleep(downtime)
        endpoint.open()
        link_up.set()
        yield

    async def run() -> None:
        while True:
            await link_up.wait()
            session = PtyLink(endpoint)
            await sim.serve_link(session)
            if endpoint.is_open and endpoint.generation == session.generation:
                # The session ended while its pty is still up (cannot happen on a pty we hold open).
                await endpoint.wait_closed()

    endpoint.open()
    link_up.set()
    sim._disconnect_hook = disconnect
    task = asyncio.create_task(run())
    try:
        yield
    finally:
        sim._disconnect_hook = None
        await cancel_all((task,))
        endpoint.close()


class TcpServer:
    """The connections to one listening port, each running ``session(reader, writer)`` in its own task."""

    def __init__(self, session: Session) -> None:
        self.port = 0
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._down_until = 0.0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if asyncio.get_running_loop().time() < self._down_until:
            writer.close()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._session(reader, writer)
        except asyncio.CancelledError:
            # The server is closing. End normally: on Python 3.11, asyncio's stream callback calls
            # task.exception() on a cancelled connection task, which raises and logs a traceback.
            pass
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()

    @contextlib.asynccontextmanager
    async def disconnect(self, downtime: float) -> AsyncIterator[None]:
        """Close every connection and refuse new ones for ``downtime`` (a :data:`DisconnectHook`)."""
        self._down_until = asyncio.get_running_loop().time() + downtime
        self.close_connections()
        if downtime > 0:
            await asyncio.sleep(downtime)
        yield


@contextlib.asynccontextmanager
async def tcp_server(
    host: str, port: int, session: Session, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[TcpServer]:
    """Listen on ``host:port`` (0: any free port, see ``server.port``), over TLS with a server ``tls``
    context; on exit, stop listening, close the connections and end their sessions."""
    server = TcpServer(session)
    listener = await asyncio.start_server(server._handle, host, port, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        server.close_connections()
        await cancel_all(server._tasks)
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def on_tcp(sim: LinkSimulator[Any], host: str, port: int) -> AsyncIterator[None]:
    """Serve ``sim`` on a TCP port (0: any free port, see ``sim.port``), a session a connection."""

    def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        return sim.serve_link(TcpLink(reader, writer))

    async with tcp_server(host, port, session) as server:
        sim.port = server.port
        sim._disconnect_hook = server.disconnect
        try:
            yield
        finally:
            sim._disconnect_hook = None


# ------------------------------------------------------------------------------------------ command line


def host_port(text: str) -> tuple[str, int]:
    """``--tcp HOST:PORT`` (an empty host: 127.0.0.1; ``[::1]:5084`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_seed_and_faults(
    parser: argparse.ArgumentParser,
    family: str,
    check: Callable[[list[str]], object] | None = None,
    *,
    seed: str | None = "seed of the faults",
) -> None:
    """The ``--seed N`` (``seed`` is its help; None: no seed) and the repeatable ``--fault SPEC`` every
    simulator takes. The faults land in ``args.<family>_faults``, not ``args.fault``: ``edgegw sim`` parses
    ``args.fault`` with the R2000 fault grammar. ``check`` (the family's ``parse_faults``), if given, is
    tried on each SPEC as it is read, so that a bad one is a usage error naming it."""

    def spec(text: str) -> str:
        if check is not None:
            try:
                check([text])
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        return text

    if seed is not None:
        parser.add_argument("--seed", type=int, default=0, help=seed)
    parser.add_argument(
        "--fault",
        dest=f"{family}_faults",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject faults (below)",
        type=spec,
    )


def add_link_or_tcp(parser: argparse.ArgumentParser) -> None:
    """``--link PATH`` (a pty) or ``--tcp HOST:PORT``, one of them: a serial device's simulator."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--link", type=Path, metavar="PATH", help="serve on a pty; PATH becomes a symlink to it"
    )
    where.add_argument("--tcp", type=host_port, metavar="HOST:PORT", help="serve on a TCP port")


def parse_fault_specs(
    specs: Iterable[str], fields: Callable[[str, str | None], dict[str, Any]]
) -> dict[str, Any]:
    """The keyword arguments of a family's ``Faults`` from ``--fault`` SPECs.

    SPECs are repeated or separated by commas; each is ``NAME=VALUE`` or ``NAME`` alone. ``fields(NAME,
    VALUE)`` gives the SPEC's fields, with NAME lower-case and ``-`` for ``_``, and VALUE None without ``=``;
    a ValueError it raises comes out naming the SPEC."""
    values: dict[str, Any] = {}
    for spec in (part.strip() for item in specs for part in item.split(",")):
        if not spec:
            continue
        name, sep, value = spec.partition("=")
        try:
            values |= fields(name.strip().lower().replace("_", "-"), value if sep else None)
        except ValueError as err:
            raise ValueError(f"fault {spec!r}: {err}") from err
    return values


def check_probabilities(faults: object, names: Iterable[str]) -> None:
    """ValueError unless each attribute of ``faults`` in ``names`` is a probability (0..1)."""
    for name in names:
        value = getattr(faults, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault {name}={value}: a probability is 0..1")


class _OnPty(Protocol):
    @property
    def link(self) -> Path | None: ...


class _OnTcp(Protocol):
    @property
    def port(self) -> int | None: ...


async def serve_until_stopped(
    what: str,
    args: argparse.Namespace,
    options: OptionsT,
    serve_pty: Callable[[Path, OptionsT], contextlib.AbstractAsyncContextManager[_OnPty]] | None,
    serve_tcp: Callable[[str, int, OptionsT], contextlib.AbstractAsyncContextManager[_OnTcp]],
    *,
    stop: asyncio.Event | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve with ``options`` on the pty ``args.link`` when given (a family with ``serve_pty``), else on
    ``args.tcp``, until ``stop`` is set (forever without one).

    Prints ``WHAT on pty PATH`` or ``WHAT on tcp HOST:PORT`` (the bound port) to ``out`` (stdout) once
    listening: a script starting the simulator waits for that line."""
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    if serve_pty is not None and args.link is not None:
        async with serve_pty(args.link, options) as pty_sim:
            print(f"{what} on pty {pty_sim.link}", file=out, flush=True)
            await stop.wait()
        return
    host, port = args.tcp
    async with serve_tcp(host, port, options) as tcp_sim:
        print(f"{what} on tcp {host}:{tcp_sim.port}", file=out, flush=True)
        await stop.wait()
