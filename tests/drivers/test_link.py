"""drivers.link: one LinkOptions and one open_link for every driver, over real ptys and real TCP sockets;
the link keys each driver accepts (public: they are YAML) kept exactly; the push mode of the transports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers import bus, registry
from drivers.dlt645 import Dlt645Options
from drivers.errors import ConnectionLost, DeviceUnavailable
from drivers.link import LinkOptions, SerialOrTcpOptions, TlsOptions, open_link
from drivers.llrp import LlrpOptions
from drivers.modbus import ModbusOptions
from drivers.r2000 import R2000Options
from drivers.transport import SerialLink, TcpLink, TcpPushLink
from firmware_sim.pty import PtyEndpoint

pytestmark = pytest.mark.timeout(30)

# -- the YAML keys and defaults of every driver, as they were before the link options were shared -----------

LINK_KEYS: dict[str, dict[str, Any]] = {
    "uhf-r2000": {
        "port": None,
        "host": None,
        "tcp_port": None,
        "baudrate": 115200,
        "connect_timeout_s": 5.0,
    },
    "dlt645": {
        "port": None,
        "host": None,
        "tcp_port": None,
        "baudrate": 2400,
        "parity": "E",
        "connect_timeout_s": 5.0,
    },
    "modbus": {
        "transport": None,
        "port": None,
        "host": None,
        "tcp_port": 502,
        "baudrate": 9600,
        "parity": "N",
        "stopbits": 1,
        "connect_timeout_s": 5.0,
    },
    "llrp": {"host": ..., "port": None, "tls": False, "connect_timeout_s": 5.0},
}
"""The link keys of each driver and their defaults (``...``: required)."""


@pytest.mark.parametrize("driver", sorted(LINK_KEYS))
def test_every_driver_keeps_its_link_keys_and_defaults(driver: str) -> None:
    fields = registry.load(driver).Options.model_fields
    for key, default in LINK_KEYS[driver].items():
        assert key in fields, key
        field = fields[key]
        assert (... if field.is_required() else field.default) == default, key
    for key in ("parity", "stopbits", "bytesize"):  # no line setting a driver did not have
        assert (key in fields) == (key in LINK_KEYS[driver]), key


def test_the_link_of_each_driver_carries_its_line_settings() -> None:
    r2000 = R2000Options.model_validate({"port": "/dev/ttyUSB0"})
    assert r2000.link == LinkOptions(port="/dev/ttyUSB0", baudrate=115200)  # 8N1: the reader's fixed line
    dlt = Dlt645Options.model_validate({"port": "/dev/ttyS1", "address": "000000000001", "baudrate": 1200})
    assert (dlt.link.baudrate, dlt.link.parity, dlt.link.bytesize, dlt.link.stopbits) == (1200, "E", 8, 1)
    points = [{"name": "x", "address": 0}]
    rtu = ModbusOptions.model_validate({"port": "/dev/ttyS2", "parity": "O", "stopbits": 2, "points": points})
    assert (rtu.link.port, rtu.link.parity, rtu.link.stopbits, rtu.link.baudrate) == (
        "/dev/ttyS2",
        "O",
        2,
        9600,
    )
    tcp = ModbusOptions.model_validate({"host": "10.0.0.7", "points": points, "connect_timeout_s": 2})
    assert tcp.link == LinkOptions(host="10.0.0.7", tcp_port=502, connect_timeout_s=2)
    converter = Dlt645Options.model_validate(
        {"host": "10.0.0.8", "tcp_port": 4001, "address": "000000000001"}
    )
    assert converter.link.name == "tcp 10.0.0.8:4001" and converter.link.key == bus.tcp_key("10.0.0.8", 4001)
    assert dlt.link.key == bus.serial_key("/dev/ttyS1") == dlt.bus_key
    reader = LlrpOptions.model_validate({"host": "reader-7", "tls": True, "tls_check_hostname": False})
    assert reader.link == LinkOptions(
        host="reader-7", tcp_port=5085, tls=TlsOptions(check_hostname=False), connect_timeout_s=5.0
    )
    assert reader.link.name == "tls reader-7:5085"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "give port \\(serial\\) or host \\+ tcp_port"),
        ({"port": "/dev/ttyUSB0", "host": "10.0.0.7", "tcp_port": 4001}, "not both"),
        ({"host": "10.0.0.7"}, "needs both host and tcp_port"),
        ({"tcp_port": 4001}, "needs both host and tcp_port"),
    ],
)
def test_the_link_keys_must_name_one_link(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SerialOrTcpOptions.model_validate(keys)
    with pytest.raises(ValidationError, match=message):
        R2000Options.model_validate(keys)
    with pytest.raises(ValidationError, match=message):
        LinkOptions.model_validate(keys)


def test_tls_goes_with_tcp_and_a_client_certificate_with_its_key() -> None:
    with pytest.raises(ValidationError, match="tls goes with host"):
        LinkOptions(port="/dev/ttyUSB0", tls=TlsOptions())
    with pytest.raises(ValidationError, match="both cert_file and key_file"):
        TlsOptions(cert_file="client.pem")


# -- opening, pull and push ---------------------------------------------------------------------------------


class Pushed:
    """What a push link handed over: its chunks, and its loss."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.losses: list[ConnectionLost] = []
        self.changed = asyncio.Event()

    def receive(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def lost(self, error: ConnectionLost) -> None:
        self.losses.append(error)
        self.changed.set()

    async def until(self, what: str, done: Any) -> None:
        async with asyncio.timeout(10):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def pty(tmp_path: Path) -> AsyncIterator[PtyEndpoint]:
    endpoint = PtyEndpoint(tmp_path / "tty")
    endpoint.open()
    try:
        yield endpoint
    finally:
        endpoint.close()


async def test_a_serial_link_pulls_and_a_push_link_hands_each_chunk_over(tmp_path: Path) -> None:
    async with pty(tmp_path) as device:
        link = await open_link(LinkOptions(port=str(tmp_path / "tty"), baudrate=19200))
        assert isinstance(link, SerialLink)
        async with link:
            await device.write(b"pulled")
            assert await link.read() == b"pulled"
        pushed = Pushed()
        link = await open_link(
            LinkOptions(port=str(tmp_path / "tty")), receiver=pushed.receive, lost=pushed.lost
        )
        assert isinstance(link, SerialLink)
        await link.write(b"ping")
        assert await device.read() == b"ping"
        await device.write(b"pong")
        await pushed.until("pong", lambda: pushed.data == b"pong")
        link.close()
        link.close()
    assert pushed.losses == []  # closed by us: not a loss


async def test_an_unplugged_push_link_says_so_once(tmp_path: Path) -> None:
    async with pty(tmp_path) as device:
        pushed = Pushed()
        link = await open_link(
            LinkOptions(port=str(tmp_path / "tty")), receiver=pushed.receive, lost=pushed.lost
        )
        device.disconnect()
        await pushed.until("the loss", lambda: pushed.losses)
        with pytest.raises(ConnectionLost):
            await link.write(b"x")
        link.close()
    assert len(pushed.losses) == 1 and f"serial port {tmp_path / 'tty'}" in str(pushed.losses[0])


async def test_a_receiver_that_raises_fails_its_link(tmp_path: Path) -> None:
    pushed = Pushed()

    def broken(data: bytes) -> None:
        raise ValueError("a bug")

    async with pty(tmp_path) as device:
        link = await open_link(LinkOptions(port=str(tmp_path / "tty")), receiver=broken, lost=pushed.lost)
        await device.write(b"x")
        await pushed.until("the loss", lambda: pushed.losses)
        link.close()
    assert len(pushed.losses) == 1 and "receiver failed: ValueError('a bug')" in str(pushed.losses[0])


@contextlib.asynccontextmanager
async def peer() -> AsyncIterator[
    tuple[int, asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
]:
    """A TCP server on loopback: its port, and the connections it accepted."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()


async def test_tcp_links_pull_and_push() -> None:
    async with peer() as (port, accepted):
        where = LinkOptions(host="127.0.0.1", tcp_port=port)
        link = await open_link(where)
        assert isinstance(link, TcpLink)
        reader, writer = await accepted.get()
        async with link:
            writer.write(b"pulled")
            assert await link.read() == b"pulled"
        pushed = Pushed()
        link = await open_link(where, receiver=pushed.receive, lost=pushed.lost)
        assert isinstance(link, TcpPushLink)
        reader, writer = await accepted.get()
        await link.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.write(b"pong")
        await pushed.until("pong", lambda: pushed.data == b"pong")
        writer.close()  # the peer hangs up
        await pushed.until("the loss", lambda: pushed.losses)
        with pytest.raises(ConnectionLost):
            await link.write(b"x")
        link.close()
    assert [str(e) for e in pushed.losses] == [f"tcp 127.0.0.1:{port}: connection closed by peer"]


async def test_closing_a_tcp_push_link_is_no_loss() -> None:
    async with peer() as (port, accepted):
        pushed = Pushed()
        link = await open_link(
            LinkOptions(host="127.0.0.1", tcp_port=port), receiver=pushed.receive, lost=pushed.lost
        )
        reader, _ = await accepted.get()
        link.close()
        assert await reader.read() == b""  # the connection is closed
    assert pushed.losses == []


async def test_what_cannot_be_opened_is_unavailable_and_named(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"
    with pytest.raises(DeviceUnavailable, match=f"serial port {missing}: "):
        await open_link(LinkOptions(port=str(missing)))
    async with peer() as (port, _):
        pass  # closed: nothing listens there any more
    for receiver in (None, Pushed().receive):
        with pytest.raises(DeviceUnavailable, match=f"tcp 127.0.0.1:{port}: "):
            await open_link(LinkOptions(host="127.0.0.1", tcp_port=port), receiver=receiver)
