"""A simulated HJ 212-2017 environmental platform: ``edgegw sim hj212-platform --tcp HOST:PORT``.

It listens on a TCP port like a provincial or city platform does: a data logger (our gateway's ``hj212``
upstream) connects and uploads. Every packet is framed with :class:`protocols.hj212.Hj212Framer`, so a bad
CRC or a length that does not fit is counted (``bad_crc``, ``bad_length``) and skipped; a whole packet is
parsed (``decode_errors`` when it does not parse), its password and station id are checked when the
platform was given them (``--password``, ``--mn``: a mismatch is refused with ``QnRtn`` 3 or 4), and a
packet whose Flag asks for a reply gets the CN 9014 data reply with its QN. Packets split into PNUM/PNO
parts are put back together; each complete upload is kept (:attr:`PlatformSim.uploads`) and, from the
command line, printed as one JSON line.

Faults, to test the logger's side: ``refuse=P`` (reply CN 9011 with ``QnRtn`` ``--refuse-code``, default
2, instead of 9014), ``drop-reply=P`` (no reply at all), ``bad-crc=P`` (the reply's CRC damaged),
``disconnect=EVERY[/DOWN]`` (connections closed, new ones refused for DOWN seconds). Tests switch the
same behaviours on and off directly (:attr:`PlatformSim.refuse_code`, :attr:`PlatformSim.drop_replies`,
:attr:`PlatformSim.damage_replies`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, TextIO

from protocols import hj212
from protocols.errors import DecodeError

from . import serving
from .serving import Link, LinkSimulator

__all__ = [
    "Faults",
    "PlatformSim",
    "PlatformStats",
    "SimOptions",
    "Upload",
    "add_parser",
    "run_from_args",
    "serve_tcp",
]

KEEP_UPLOADS: Final = 100_000
"""Uploads kept in memory (oldest forgotten first)."""

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas):
  refuse=P           reply CN 9011 with QnRtn=--refuse-code instead of the CN 9014 data reply, probability P
  drop-reply=P       send no reply, probability P
  bad-crc=P          damage the reply's CRC, probability P
  disconnect=EVERY[/DOWN]
                     close the connections every EVERY seconds and refuse new ones for DOWN seconds
example: --fault drop-reply=0.05 --fault bad-crc=0.01,disconnect=300/10
"""


@dataclass(frozen=True, slots=True)
class Faults:
    refuse: float = 0.0
    drop_reply: float = 0.0
    bad_crc: float = 0.0
    disconnect_every_s: float = 0.0
    disconnect_down_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SimOptions:
    password: str | None = None
    """Expected PW; None: any."""
    mns: tuple[str, ...] = ()
    """Accepted station ids; empty: any."""
    refuse_code: int = 2
    reply_delay_s: float = 0.0
    """How long the platform takes to reply (a slow platform)."""
    seed: int = 0
    faults: Faults = Faults()
    out: TextIO | None = None
    """Where each complete upload is printed as a JSON line (the command line's stdout); None: nowhere."""


@dataclass(slots=True)
class PlatformStats:
    connections: int = 0
    disconnects: int = 0
    packets: int = 0
    """Whole packets with a good CRC that parsed."""
    by_cn: Counter[str] = field(default_factory=Counter)
    uploads: int = 0
    """Complete uploads (split packets put together)."""
    replies: int = 0
    """CN 9014 data replies sent."""
    refused: int = 0
    """CN 9011 refusals sent (a fault, or a wrong PW or MN)."""
    replies_dropped: int = 0
    replies_damaged: int = 0
    bad_crc: int = 0
    bad_length: int = 0
    bytes_skipped: int = 0
    decode_errors: int = 0


@dataclass(frozen=True, slots=True)
class Upload:
    """One complete upload (all its packets)."""

    cn: str
    qn: str | None
    mn: str
    st: str
    data_time: str | None
    values: dict[str, str]
    """Every ``key=value`` of the CP area but ``DataTime`` (``w01018-Avg`` -> ``"12.3"``)."""
    packets: int


class PlatformSim(LinkSimulator[PlatformStats]):
    """The platform's side of HJ 212 on each connection."""

    def __init__(self, options: SimOptions) -> None:
        super().__init__(PlatformStats())
        self.options = options
        self.uploads: deque[Upload] = deque(maxlen=KEEP_UPLOADS)
        self.refuse_code: int | None = None
        """When set: every upload is refused with this QnRtn (tests)."""
        self.drop_replies = False
        """When True: no reply is sent (tests)."""
        self.damage_replies = False
        """When True: every reply's CRC is damaged (tests)."""
        self._random = random.Random(options.seed)
        self._links: set[Link] = set()
        self._qn = 0
        self._parts: dict[tuple[str, str | None], dict[int, hj212.Packet]] = {}

    async def serve_link(self, link: Link) -> None:
        framer = hj212.Hj212Framer()
        self.stats.connections += 1
        self._notify()
        self._links.add(link)
        try:
            await self._serve(link, framer)
        finally:
            self._links.discard(link)

    async def request(self, cn: str, cp: str = "", *, pw: str = "123456", mn: str = "") -> str:
        """Send a request (CN ``cn``, Flag A) to every connected data logger, as a platform asks a station
        for its time (1011) or its real-time interval (1061); return its QN. The answers arrive as uploads
        (CN 9011, the data under ``cn``, 9012)."""
        self._qn += 1
        qn = f"20240101000000{self._qn % 1000:03d}"
        packet = hj212.Packet(qn=qn, st="91", cn=cn, pw=pw, mn=mn or "0", flag=hj212.VERSION_2017 | 1, cp=cp)
        raw = hj212.encode_packet(packet)
        for link in list(self._links):
            with contextlib.suppress(ConnectionError):
                await link.write(raw)
        return qn

    async def _serve(self, link: Link, framer: hj212.Hj212Framer) -> None:
        while True:
            data = await link.read()
            if not data:
                return
            segments = framer.feed(data)
            s = self.stats
            s.bad_crc, s.bad_length = framer.stats.bad_checksum, framer.stats.bad_length
            s.bytes_skipped = framer.stats.bytes_skipped
            for segment in segments:
                reply = self._handle(segment)
                if reply is not None:
                    if self.options.reply_delay_s > 0:
                        await asyncio.sleep(self.options.reply_delay_s)
                    with contextlib.suppress(ConnectionError):
                        await link.write(reply)
            self._notify()

    def _chance(self, p: float) -> bool:
        return p > 0 and self._random.random() < p

    def _handle(self, segment: bytes) -> bytes | None:
        s = self.stats
        try:
            packet = hj212.parse_segment(segment)
            groups = packet.groups
        except DecodeError:
            s.decode_errors += 1
            return None
        s.packets += 1
        s.by_cn[packet.cn] += 1
        options = self.options
        faults = options.faults
        code: int | None = None
        if options.password is not None and packet.pw != options.password:
            code = 3
        elif options.mns and packet.mn not in options.mns:
            code = 4
        elif self.refuse_code is not None:
            code = self.refuse_code
        elif self._chance(faults.refuse):
            code = options.refuse_code
        if code is None:
            self._collect(packet, groups)
        if not packet.needs_reply:
            return None
        if self.drop_replies or self._chance(faults.drop_reply):
            s.replies_dropped += 1
            return None
        if code is None:
            raw = hj212.encode_packet(hj212.data_reply(packet))
            s.replies += 1
        else:
            raw = hj212.encode_packet(hj212.request_reply(packet, code))
            s.refused += 1
        if self.damage_replies or self._chance(faults.bad_crc):
            s.replies_damaged += 1
            crc = raw[-6:-2]
            raw = raw[:-6] + (b"0000" if crc != b"0000" else b"FFFF") + raw[-2:]
        return raw

    def _collect(self, packet: hj212.Packet, groups: list[hj212.Group]) -> None:
        if packet.pnum is None or packet.pno is None:
            self._complete(packet, [packet], [groups])
            return
        key = (packet.cn, packet.qn)
        parts = self._parts.setdefault(key, {})
        parts[packet.pno] = packet
        if len(self._parts) > 1000:  # never held without bound: the oldest incomplete upload goes
            self._parts.pop(next(iter(self._parts)))
        if len(parts) == packet.pnum:
            del self._parts[key]
            ordered = [parts[n] for n in sorted(parts)]
            self._complete(packet, ordered, [p.groups for p in ordered])

    def _complete(
        self, packet: hj212.Packet, packets: list[hj212.Packet], groups: list[list[hj212.Group]]
    ) -> None:
        values: dict[str, str] = {}
        data_time = None
        for part in groups:
            for group in part:
                for key, value in group:
                    if key == "DataTime":
                        data_time = value
                    else:
                        values[key] = value
        upload = Upload(packet.cn, packet.qn, packet.mn, packet.st, data_time, values, len(packets))
        self.uploads.append(upload)
        self.stats.uploads += 1
        out = self.options.out
        if out is not None:
            line = {
                "cn": upload.cn,
                "qn": upload.qn,
                "mn": upload.mn,
                "data_time": data_time,
                "values": values,
            }
            print(json.dumps(line, separators=(",", ":")), file=out, flush=True)


@contextlib.asynccontextmanager
async def serve_tcp(host: str, port: int, options: SimOptions) -> AsyncIterator[PlatformSim]:
    """The platform listening on ``host:port`` (0: any free port, see ``sim.port``)."""
    sim = PlatformSim(options)
    async with serving.on_tcp(sim, host, port):
        faults = options.faults
        if faults.disconnect_every_s > 0:
            async with serving.running(_disconnecting(sim, faults)):
                yield sim
        else:
            yield sim


async def _disconnecting(sim: PlatformSim, faults: Faults) -> None:
    while True:
        await asyncio.sleep(faults.disconnect_every_s)
        await sim.disconnect(faults.disconnect_down_s)


# -- command line -----------------------------------------------------------------------------------------


def _fault_fields(name: str, value: str | None) -> dict[str, float]:
    if not value:
        raise ValueError("expected NAME=VALUE")
    if name in ("refuse", "drop-reply", "bad-crc"):
        p = float(value)
        if not 0 <= p <= 1:
            raise ValueError(f"{name}={value}: a probability is 0..1")
        return {name.replace("-", "_"): p}
    if name == "disconnect":
        every, _, down = value.partition("/")
        if float(every) <= 0 or (down and float(down) < 0):
            raise ValueError("disconnect=EVERY[/DOWN] with EVERY > 0 and DOWN >= 0")
        return {"disconnect_every_s": float(every), "disconnect_down_s": float(down) if down else 0.0}
    raise ValueError(f"unknown fault {name!r}")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hj212-platform`` to the ``edgegw sim`` subcommands."""
    parser = sub.add_parser(
        "hj212-platform",
        help="HJ 212-2017 environmental monitoring platform (the data logger's upstream)",
        description="A simulated HJ 212-2017 platform on a TCP port: checks each packet's CRC and length, "
        "acknowledges uploads (CN 9014), prints each complete upload as a JSON line.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tcp",
        type=serving.host_port,
        default=("127.0.0.1", 9001),
        metavar="HOST:PORT",
        help="listen here (default 127.0.0.1:9001; port 0: any free port)",
    )
    parser.add_argument("--password", default=None, help="the PW uploads must carry (default: any)")
    parser.add_argument(
        "--mn", action="append", default=[], metavar="MN", help="an accepted station id (repeat; default any)"
    )
    parser.add_argument("--refuse-code", type=int, default=2, help="QnRtn of the refuse fault (default 2)")
    parser.add_argument("--reply-delay", type=float, default=0.0, metavar="S", help="reply S seconds late")
    serving.add_seed_and_faults(parser, "hj212", seed="seed of the faults' randomness")
    return parser


async def run_from_args(
    args: argparse.Namespace, stop: asyncio.Event | None = None, out: TextIO | None = None
) -> None:
    """Serve the platform described by ``args`` until ``stop`` is set (or the task is cancelled)."""
    faults = Faults(**serving.parse_fault_specs(args.hj212_faults, _fault_fields))
    options = SimOptions(
        password=args.password,
        mns=tuple(args.mn),
        refuse_code=args.refuse_code,
        reply_delay_s=args.reply_delay,
        seed=args.seed,
        faults=faults,
        out=out,
    )
    await serving.serve_until_stopped(
        "hj212 platform simulator", args, options, None, serve_tcp, stop=stop, out=out
    )
