"""The HJ 212 platform simulator (``edgegw sim hj212-platform``), as a data logger meets it over a real TCP
socket: an upload with Flag A gets the CN 9014 reply with its QN; a packet with a bad CRC or a wrong length
is counted and gets nothing; a wrong password or station id is refused (CN 9011, QnRtn 3 or 4); split
packets are put back together; the faults refuse, drop or damage replies. And the command line: it serves,
prints where, and prints each upload as a JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_sim import hj212 as platform
from protocols import hj212

pytestmark = pytest.mark.timeout(60)

MN = "010000A8900016F000169DC0"
EDGEGW = str(Path(sys.executable).with_name("edgegw"))


def upload(qn: str, cp: str = "DataTime=20240101120000;w01018-Rtd=12.5,w01018-Flag=N") -> bytes:
    return hj212.encode_packet(hj212.Packet(qn=qn, st="32", cn="2011", pw="123456", mn=MN, flag=5, cp=cp))


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def reply(reader: asyncio.StreamReader) -> hj212.Packet:
    framer = hj212.Hj212Framer()
    async with asyncio.timeout(10):
        while True:
            found = framer.feed(await reader.read(4096))
            if found:
                return hj212.parse_segment(found[0])


async def test_uploads_are_acknowledged_and_bad_packets_counted() -> None:
    options = platform.SimOptions(password="123456", mns=(MN,))
    async with (
        platform.serve_tcp("127.0.0.1", 0, options) as sim,
        connected(sim.port or 0) as (reader, writer),
    ):
        writer.write(upload("20240101120000001"))
        got = await reply(reader)
        assert (got.cn, got.qn, got.st, got.mn) == ("9014", "20240101120000001", "91", MN)
        # A bad CRC, then a length that does not fit: counted, no reply; the next good one is answered.
        bad = bytearray(upload("20240101120000002"))
        bad[-4] = ord("0") if bad[-4] != ord("0") else ord("1")
        writer.write(bytes(bad) + b"##9999garbage\r\n" + upload("20240101120000003"))
        got = await reply(reader)
        assert got.qn == "20240101120000003"
        assert sim.stats.bad_crc == 1 and sim.stats.bad_length >= 1
        # A wrong password is refused.
        wrong = hj212.Packet(qn="20240101120000004", st="32", cn="2011", pw="999999", mn=MN, flag=5, cp="")
        writer.write(hj212.encode_packet(wrong))
        got = await reply(reader)
        assert got.cn == "9011" and got.field("QnRtn") == "3"
        # Split packets make one upload.
        head = hj212.Packet(qn="20240101120000005", st="32", cn="2051", pw="123456", mn=MN, flag=5)
        groups = [(("DataTime", "20240101120000"),)] + [
            ((f"w{i:05d}-Avg", "1.5"), (f"w{i:05d}-Flag", "N")) for i in range(60)
        ]
        parts = hj212.split_packets(head, groups)
        assert len(parts) > 1
        for part in parts:
            writer.write(hj212.encode_packet(part))
            assert (await reply(reader)).cn == "9014"
        await sim.wait_for(lambda s: s.uploads == 3)
    uploads = list(sim.uploads)
    assert [u.cn for u in uploads] == ["2011", "2011", "2051"]
    assert uploads[0].values == {"w01018-Rtd": "12.5", "w01018-Flag": "N"}
    assert len(uploads[2].values) == 120 and uploads[2].packets == len(parts)
    assert sim.stats.refused == 1 and sim.stats.replies == 2 + len(parts)


async def test_refusal_drop_and_damage_switches() -> None:
    async with (
        platform.serve_tcp("127.0.0.1", 0, platform.SimOptions()) as sim,
        connected(sim.port or 0) as (
            reader,
            writer,
        ),
    ):
        sim.refuse_code = 2
        writer.write(upload("20240101120000001"))
        got = await reply(reader)
        assert got.cn == "9011" and got.field("QnRtn") == "2"
        sim.refuse_code = None
        sim.damage_replies = True
        writer.write(upload("20240101120000002"))
        framer = hj212.Hj212Framer()
        async with asyncio.timeout(10):
            while framer.stats.bad_checksum == 0:
                framer.feed(await reader.read(4096))
        sim.damage_replies = False
        sim.drop_replies = True
        writer.write(upload("20240101120000003"))
        await sim.wait_for(lambda s: s.replies_dropped == 1)
        sim.drop_replies = False
        writer.write(upload("20240101120000004"))
        assert (await reply(reader)).qn == "20240101120000004"


async def test_the_command_line_serves_and_prints_uploads() -> None:
    proc = await asyncio.create_subprocess_exec(
        EDGEGW,
        "sim",
        "hj212-platform",
        "--tcp",
        "127.0.0.1:0",
        "--password",
        "123456",
        "--fault",
        "bad-crc=0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = (await proc.stdout.readline()).decode()
            assert first.startswith("hj212 platform simulator on tcp 127.0.0.1:"), first
            port = int(first.rsplit(":", 1)[1])
            async with connected(port) as (reader, writer):
                writer.write(upload("20240101120000001"))
                assert (await reply(reader)).cn == "9014"
                line = json.loads(await proc.stdout.readline())
        assert line == {
            "cn": "2011",
            "qn": "20240101120000001",
            "mn": MN,
            "data_time": "20240101120000",
            "values": {"w01018-Rtd": "12.5", "w01018-Flag": "N"},
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
