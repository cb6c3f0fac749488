"""Golden event cases as data (tests/cases/README.md): for each ``tests/cases/<family>/<case>/``, the device
of ``config.yaml`` runs (its real driver, through drivers.testing) against a generic peer that plays
``frames.hex`` on a real pseudo-terminal or a real TCP socket on 127.0.0.1, and emits exactly the events of
``expected.jsonl`` (and counts what ``counters.json`` says, if there is one)."""

from __future__ import annotations

import abc
import array
import asyncio
import contextlib
import fcntl
import json
import os
import termios
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from drivers import registry
from drivers.base import Driver
from drivers.event import Event
from drivers.kinds import DEVICE_STATUS
from drivers.testing import Harness, running
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

CASES = Path(__file__).resolve().parents[1] / "cases"
FILES = ("config.yaml", "frames.hex", "expected.jsonl")
DRAIN_S = 5.0
"""How long a pseudo-terminal peer waits for the driver to read what it sent before it sends more."""


# -- the script ---------------------------------------------------------------------------------------------


class ScriptError(Exception):
    """A frames.hex that cannot be read, or a driver that did not send what it says."""


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a script: the driver sends ``data`` (``>``), or the device does (``<``)."""

    line: int
    direction: Literal[">", "<"]
    data: bytes

    def __str__(self) -> str:
        return f"line {self.line}: {self.direction} {self.data.hex(' ').upper()}"


def parse_script(text: str, name: str = "frames.hex") -> list[Step]:
    """The steps of a frames.hex (see tests/cases/README.md)."""
    steps: list[Step] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        direction, rest = line[0], line[1:]
        if direction not in "<>":
            raise ScriptError(
                f"{name}:{number}: a line is '> HEX' (the driver sends) or '< HEX' (the device)"
            )
        try:
            data = bytes.fromhex(rest.replace(":", " "))
        except ValueError as err:
            raise ScriptError(f"{name}:{number}: not hex: {rest.strip()!r} ({err})") from None
        if not data:
            raise ScriptError(f"{name}:{number}: no bytes")
        steps.append(Step(number, ">" if direction == ">" else "<", data))
    return steps


class Peer(abc.ABC):
    """The device side of the link, playing a script: it reads and checks what the driver must send, and
    sends what the device sends, one ``<`` line at a time."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.at: Step | None = None
        """The step being played (None before the first and after the last)."""
        self.received = bytearray()
        """What the driver sent that no ``>`` step has taken yet."""
        self.done = False

    @abc.abstractmethod
    async def read_more(self) -> bytes:
        """The next bytes the driver sent (b"" once the link is closed)."""

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send ``data`` to the driver, once it has taken what was sent before (where that can be told)."""

    async def play(self) -> None:
        for step in self.steps:
            self.at = step
            if step.direction == "<":
                await self.send(step.data)
                continue
            while len(self.received) < len(step.data):
                more = await self.read_more()
                if not more:
                    raise ScriptError(f"{step}: the link closed after {self.received.hex(' ').upper()!r}")
                self.received += more
            got = bytes(self.received[: len(step.data)])
            del self.received[: len(step.data)]
            if got != step.data:
                raise ScriptError(f"{step}: the driver sent {got.hex(' ').upper()}")
        self.at = None
        self.done = True

    def where(self) -> str:
        """Where the script stands, for a failure message."""
        if self.done:
            return "the script was played to its end"
        pending = f"; the driver sent {self.received.hex(' ').upper()!r} so far" if self.received else ""
        return f"the script stopped at {self.at}{pending}"


class PtyPeer(Peer):
    """A pseudo-terminal in raw mode, its slave reached through the symlink ``link``."""

    def __init__(self, steps: list[Step], link: Path) -> None:
        super().__init__(steps)
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        link.symlink_to(os.ttyname(self.slave))
        self.loop = asyncio.get_running_loop()
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            self.chunks.put_nowait(os.read(self.master, 65536))
        except BlockingIOError:
            return
        except OSError:
            self.loop.remove_reader(self.master)
            self.chunks.put_nowait(b"")

    async def read_more(self) -> bytes:
        return await self.chunks.get()

    def _unread(self) -> int:
        """Bytes sent that the driver has not read yet (the slave's input queue)."""
        count = array.array("i", [0])
        fcntl.ioctl(self.slave, termios.TIOCINQ, count)
        return count[0]

    async def send(self, data: bytes) -> None:
        # One line is one chunk for the driver: wait until it has read the previous one, so that a frame
        # split across lines reaches it in pieces. (There is no notification of a read: polled, bounded.)
        await until(
            f"{self.at}: the driver to read what was sent before", lambda: not self._unread(), DRAIN_S, 0.002
        )
        os.write(self.master, data)

    def close(self) -> None:
        self.loop.remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)


class TcpPeer(Peer):
    """A TCP server on 127.0.0.1 playing the script on the first connection (later ones are closed)."""

    def __init__(self, steps: list[Step]) -> None:
        super().__init__(steps)
        self.connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.connected.done():
            writer.close()
        else:
            self.connected.set_result((reader, writer))

    async def read_more(self) -> bytes:
        reader, _ = await self.connected
        return await reader.read(65536)

    async def send(self, data: bytes) -> None:
        # TCP may join lines into one segment: a split frame is not guaranteed to arrive in pieces.
        _, writer = await self.connected
        writer.write(data)
        await writer.drain()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# -- the case -----------------------------------------------------------------------------------------------


def case_dirs() -> list[Path]:
    return sorted(p.parent for p in CASES.glob("*/*/config.yaml"))


@dataclass
class Case:
    path: Path
    config: dict[str, Any]
    steps: list[Step]
    expected: list[dict[str, Any]]
    counters: dict[str, int]

    @classmethod
    def load(cls, path: Path) -> Case:
        config = yaml.safe_load((path / "config.yaml").read_text())
        assert isinstance(config, dict), f"{path}/config.yaml: one device mapping"
        steps = parse_script((path / "frames.hex").read_text(), f"{path.name}/frames.hex")
        expected = [json.loads(line) for line in (path / "expected.jsonl").read_text().splitlines() if line]
        counters_file = path / "counters.json"
        counters = json.loads(counters_file.read_text()) if counters_file.exists() else {}
        return cls(path, config, steps, expected, counters)

    @property
    def over_tcp(self) -> bool:
        return "host" in self.config

    @property
    def port_key(self) -> str:
        """The key of the config that the test points at its peer (with ``host``, over TCP; ``channel`` for
        a CAN adapter on a serial port)."""
        if self.over_tcp:
            return "tcp_port" if "tcp_port" in self.config else "port"
        return "channel" if "channel" in self.config and "port" not in self.config else "port"  # can: slcan

    def configured(self) -> str:
        """Where the config says the device is, as a driver names it."""
        if self.over_tcp:
            return f"{self.config['host']}:{self.config[self.port_key]}"
        return str(self.config[self.port_key])

    def actual(self, where: Path | int) -> str:
        """Where the test put it, as a driver names it."""
        return f"127.0.0.1:{where}" if isinstance(where, int) else str(where)

    @property
    def name(self) -> str:
        name: str = self.config["name"]
        return name

    @property
    def driver_class(self) -> type[Driver[Any]]:
        return registry.load(self.config["driver"])

    def driver(self, port: Path | int) -> Driver[Any]:
        """A driver of the device, its link pointed at the peer."""
        options = {k: v for k, v in self.config.items() if k not in ("name", "driver")}
        if isinstance(port, int):
            options["host"] = "127.0.0.1"
        options[self.port_key] = port if isinstance(port, int) else str(port)
        cls = self.driver_class
        return cls(self.name, cls.Options.model_validate(options))


def as_json(event: Event, where: str = "", configured: str = "") -> dict[str, Any]:
    """An event as expected.jsonl has it: its device, kind and data (JSON, as it goes upstream), with the
    link the test made (``where``: a pseudo-terminal's path, 127.0.0.1:PORT) said as the config says it
    (``configured``)."""
    text = json.dumps(dict(event.data), ensure_ascii=False)
    if where:
        text = text.replace(json.dumps(where)[1:-1], json.dumps(configured)[1:-1])
    return {"device": event.device, "kind": event.kind, "data": json.loads(text)}


@contextlib.asynccontextmanager
async def peer_for(case: Case, tmp_path: Path) -> AsyncIterator[tuple[Peer, Path | int]]:
    if case.over_tcp:
        tcp = TcpPeer(case.steps)
        port = await tcp.start()
        try:
            yield tcp, port
        finally:
            await tcp.close()
        return
    link = tmp_path / "tty"
    pty = PtyPeer(case.steps, link)
    try:
        yield pty, link
    finally:
        pty.close()


@pytest.mark.parametrize("path", case_dirs(), ids=lambda p: f"{p.parent.name}/{p.name}")
async def test_golden_case(path: Path, tmp_path: Path) -> None:
    case = Case.load(path)
    async with peer_for(case, tmp_path) as (peer, where):
        name = case.name
        playing = asyncio.create_task(peer.play())
        try:
            async with running({name: lambda: case.driver(where)}) as run:

                def finished() -> bool:
                    if playing.done():
                        playing.result()  # a script error fails the wait at once, with its message
                    counted = run.counters(name)
                    return (
                        peer.done
                        and len(run.events) >= len(case.expected)
                        and all(counted.get(k, 0) >= n for k, n in case.counters.items())
                    )

                try:
                    await run.until(f"the events of {path.name}", finished, timeout=20)
                except AssertionError as err:
                    emitted = got(run, case, where)
                    raise AssertionError(f"{err}\n{peer.where()}; emitted: {emitted}") from None
        finally:
            playing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await playing
    assert got(run, case, where) == case.expected
    counted = run.counters(name)
    assert {k: counted.get(k, 0) for k in case.counters} == case.counters
    assert {e["kind"] for e in case.expected} <= case.driver_class.emits | {DEVICE_STATUS}


def got(run: Harness, case: Case, where: Path | int) -> list[dict[str, Any]]:
    """What the device emitted, as expected.jsonl has it."""
    return [as_json(e, case.actual(where), case.configured()) for e in run.events]


def test_every_case_is_whole() -> None:
    # A case missing a file would never run as meant: every directory under a family is a whole case.
    dirs = [p for family in CASES.iterdir() if family.is_dir() for p in family.iterdir() if p.is_dir()]
    assert dirs and sorted(dirs) == case_dirs()
    for path in dirs:
        assert all((path / f).is_file() for f in FILES), path
        assert {p.name for p in path.iterdir()} <= {*FILES, "counters.json"}, path


# -- the script format --------------------------------------------------------------------------------------


def test_a_script_reads_both_directions_with_comments() -> None:
    steps = parse_script("# the handshake\n> A0 03 01 72 EA   # firmware?\n\n<a0:05:01:72:01:07:e0\n<  A0\n")
    assert steps == [
        Step(2, ">", bytes.fromhex("A00301 72EA")),
        Step(4, "<", bytes.fromhex("A0050172 0107E0")),
        Step(5, "<", b"\xa0"),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("A0 03", "x.hex:1: a line is '> HEX'"),
        ("> A0 0", "x.hex:1: not hex"),
        ("\n<   # nothing\n", "x.hex:2: no bytes"),
    ],
)
def test_a_bad_script_line_is_named(text: str, problem: str) -> None:
    with pytest.raises(ScriptError, match=problem):
        parse_script(text, "x.hex")
