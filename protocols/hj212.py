"""HJ 212-2017, the data transmission standard for online monitoring systems of pollutants.

Written from the standard (HJ 212-2017, published by the Ministry of Environmental Protection, 2017-04-24):
no maintained Python library covers it. A communication packet on TCP is ASCII::

    ##  0101  QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=...;Flag=5;CP=&&RtdInterval=30&&  1C80  CR LF

that is: the header ``##``; the data segment's length, 4 decimal digits (0 to 1024); the data segment; the
CRC-16 of the data segment, 4 hex digits; CR LF.

The data segment's fields, in order: ``QN`` (request code: the time to the millisecond, ``YYYYMMDDhhmmsszzz``,
which identifies one exchange), ``ST`` (system code: 32 waste water, 31 exhaust gas, 21 surface water, 22 air
quality, ..., 91 system interaction), ``CN`` (command code), ``PW`` (password), ``MN`` (the station's unique
id), ``Flag`` (bits ``V5..V0 D A``: the standard's version, 1 for 2017; D, the data is split into packets,
which then carry ``PNUM``, the number of packets, and ``PNO``, this packet's number from 1; A, a reply is
required), then ``CP=&&...&&``, the command parameters: groups separated by ``;``, the fields of a group by
``,``, each ``key=value`` (``DataTime=20240101120000;w01018-Rtd=12.3,w01018-Flag=N``).

The CRC is the standard's Appendix A algorithm: register 0xFFFF; for each byte, ``reg = (reg >> 8) ^ byte``,
then eight shifts right, xor 0xA001 when the bit shifted out is 1 (not the Modbus CRC: the byte goes in
above the register's low byte differently). It covers the data segment only and is sent as 4 hex digits.

What is here: :func:`crc16`; :func:`encode_frame`/:func:`decode_frame` and :class:`Hj212Framer` for the
packet envelope (the framer yields data segments); :class:`Packet` with :func:`parse_segment`,
:func:`format_segment` and :func:`encode_packet`; the ``CP`` area (:func:`parse_cp`, :func:`format_cp`);
splitting long data into packets (:func:`split_packets`); the reply exchange (:func:`data_reply` CN 9014,
:func:`request_reply` CN 9011, :func:`execution_result` CN 9012, their codes) and the data flags
(:class:`DataFlag`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from typing import Final

from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer

__all__ = [
    "EXECUTION_RESULTS",
    "FLAG_ACK",
    "FLAG_SPLIT",
    "FRAME_OVERHEAD",
    "MAX_SEGMENT",
    "REQUEST_RESULTS",
    "VERSION_2017",
    "Command",
    "DataFlag",
    "Group",
    "Hj212Framer",
    "Packet",
    "crc16",
    "data_reply",
    "data_time",
    "decode_frame",
    "encode_frame",
    "encode_packet",
    "execution_result",
    "format_cp",
    "format_segment",
    "parse_cp",
    "parse_data_time",
    "parse_segment",
    "qn",
    "request_reply",
    "split_packets",
]

HEADER: Final = b"##"
TRAILER: Final = b"\r\n"
MAX_SEGMENT: Final = 1024
"""The most characters a data segment may have (the length field's range is 0 to 1024)."""
FRAME_OVERHEAD: Final = 12
"""Header, length, CRC and trailer around a data segment."""

FLAG_ACK: Final = 0b01
"""Flag bit A: the receiver must reply."""
FLAG_SPLIT: Final = 0b10
"""Flag bit D: the data is split into packets; ``PNUM`` and ``PNO`` follow ``Flag``."""
VERSION_2017: Final = 1 << 2
"""Flag bits V5..V0 = 000001: HJ 212-2017 (000000 is HJ/T 212-2005)."""


class Command(IntEnum):
    """The command codes (``CN``) used here (the standard has many more: parameters, controls, logs)."""

    REALTIME = 2011
    """Real-time data of the pollutants, uploaded every real-time interval."""
    DAY = 2031
    """Daily data (one record per day)."""
    MINUTE = 2051
    """Minute data (one record per minute interval)."""
    HOUR = 2061
    """Hourly data."""
    REQUEST_REPLY = 9011
    """The receiver of a request says whether it will carry it out (``QnRtn``)."""
    EXECUTION_RESULT = 9012
    """The result of a request carried out (``ExeRtn``)."""
    NOTICE_REPLY = 9013
    """The reply to a notification."""
    DATA_REPLY = 9014
    """The reply to uploaded data: received."""


SYSTEM_INTERACTION: Final = "91"
"""``ST`` of replies and other system interaction."""

REQUEST_RESULTS: Final[dict[int, str]] = {
    1: "ready to carry out the request",
    2: "request refused",
    3: "wrong password (PW)",
    4: "wrong station id (MN)",
    5: "wrong system code (ST)",
    6: "wrong Flag",
    7: "wrong request code (QN)",
    8: "wrong command code (CN)",
    9: "CRC check failed",
    100: "unknown error",
}
"""``QnRtn`` in a CN 9011 reply: 1 accepts, every other code refuses."""

EXECUTION_RESULTS: Final[dict[int, str]] = {
    1: "carried out",
    2: "failed, no reason given",
    3: "the command's conditions were wrong",
    4: "communication timed out",
    5: "system busy",
    6: "system fault",
    100: "no data",
}
"""``ExeRtn`` in a CN 9012 result: 1 succeeds, every other code fails."""


class DataFlag(StrEnum):
    """The flag of each monitored value (``<code>-Flag``)."""

    NORMAL = "N"
    STOPPED = "F"
    """The source or the analyser is out of operation (offline)."""
    MAINTENANCE = "M"
    MANUAL = "S"
    """Set by hand."""
    FAULT = "D"
    CALIBRATION = "C"
    OVER_LIMIT = "T"
    COMMUNICATION = "B"
    """The analyser does not answer the data logger."""


# -- the CRC -----------------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        reg = byte
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
        table.append(reg)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """The standard's CRC-16 of ``data`` (Appendix A)."""
    reg = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        # (reg >> 8) ^ byte is at most 0xFF: the table holds its eight shifts.
        reg = table[(reg >> 8) ^ byte]
    return reg


# -- the envelope --------------------------------------------------------------------------------------------


def encode_frame(segment: bytes) -> bytes:
    """One data segment in its packet: header, length, segment, CRC, CR LF."""
    if len(segment) > MAX_SEGMENT:
        raise EncodeError(f"data segment of {len(segment)} characters; the most is {MAX_SEGMENT}")
    return b"##%04d%s%04X\r\n" % (len(segment), segment, crc16(segment))


def _hex4(raw: bytes) -> int | None:
    if len(raw) != 4 or any(c not in b"0123456789ABCDEFabcdef" for c in raw):
        return None
    return int(raw, 16)


def decode_frame(raw: bytes) -> bytes:
    """The data segment of exactly one whole packet; :class:`DecodeError` says what is wrong."""
    if len(raw) < FRAME_OVERHEAD or raw[:2] != HEADER:
        raise DecodeError("not an HJ 212 packet: no '##' header")
    digits = raw[2:6]
    if not digits.isdigit():
        raise DecodeError(f"length field {digits!r} is not 4 decimal digits")
    length = int(digits)
    if length > MAX_SEGMENT:
        raise DecodeError(f"length {length} exceeds {MAX_SEGMENT}")
    if len(raw) != length + FRAME_OVERHEAD:
        raise DecodeError(f"packet of {len(raw)} bytes for a data segment of {length}")
    if raw[-2:] != TRAILER:
        raise DecodeError("packet does not end in CR LF")
    segment = raw[6 : 6 + length]
    got = _hex4(raw[-6:-2])
    if got is None:
        raise DecodeError(f"CRC field {raw[-6:-2]!r} is not 4 hex digits")
    want = crc16(segment)
    if got != want:
        raise DecodeError(f"bad CRC: {got:04X} received, {want:04X} computed")
    return segment


class Hj212Framer(Framer[bytes]):
    """Splits a TCP byte stream into HJ 212 data segments (the packets' contents, CRC checked).

    Hunts for ``##``; a length field that is not 4 digits up to 1024 counts ``bad_length``, a packet not
    ending in CR LF where its length says counts ``bad_length``, a CRC that does not match counts
    ``bad_checksum``; after a rejection the framer moves one byte past the false start and hunts again, so
    a real packet inside a damaged one is still found."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        stats = self.stats
        found: list[bytes] = []
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(HEADER, pos)
            if start < 0:
                keep = n - 1 if n > pos and buf[-1] == 0x23 else n  # a lone '#' may start a header
                stats.bytes_skipped += keep - pos
                pos = keep
                break
            stats.bytes_skipped += start - pos
            pos = start
            if n - pos < 6:
                break
            digits = bytes(buf[pos + 2 : pos + 6])
            if not digits.isdigit() or int(digits) > MAX_SEGMENT:
                stats.bad_length += 1
                stats.bytes_skipped += 1
                pos += 1
                continue
            length = int(digits)
            end = pos + length + FRAME_OVERHEAD
            if n < end:
                break
            if buf[end - 2 : end] != TRAILER:
                stats.bad_length += 1
                stats.bytes_skipped += 1
                pos += 1
                continue
            segment = bytes(buf[pos + 6 : pos + 6 + length])
            if _hex4(bytes(buf[end - 6 : end - 2])) != crc16(segment):
                stats.bad_checksum += 1
                stats.bytes_skipped += 1
                pos += 1
                continue
            found.append(segment)
            stats.frames += 1
            pos = end
        del buf[:pos]
        return found


# -- the data segment ----------------------------------------------------------------------------------------

Group = tuple[tuple[str, str], ...]
"""One group of the CP area: its ``key=value`` fields in order."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One data segment's fields (strings as on the wire; ``flag`` as the integer)."""

    st: str
    cn: str
    pw: str
    mn: str
    flag: int = VERSION_2017
    cp: str = ""
    """The CP area between ``&&`` and ``&&`` (parse it with :func:`parse_cp`)."""
    qn: str | None = None
    pnum: int | None = None
    pno: int | None = None

    @property
    def needs_reply(self) -> bool:
        return bool(self.flag & FLAG_ACK)

    @property
    def split(self) -> bool:
        return bool(self.flag & FLAG_SPLIT)

    @property
    def version(self) -> int:
        return self.flag >> 2

    @property
    def groups(self) -> list[Group]:
        return parse_cp(self.cp)

    def field(self, key: str) -> str | None:
        """The first value of ``key`` in the CP area, if any."""
        for group in parse_cp(self.cp):
            for k, v in group:
                if k == key:
                    return v
        return None


_FORBIDDEN = (";", "=", "&", "\r", "\n")


def _check_value(name: str, value: str) -> None:
    if any(c in value for c in _FORBIDDEN) or not value.isascii():
        raise EncodeError(f"{name} {value!r} holds a character the data segment cannot carry")


def format_segment(packet: Packet) -> bytes:
    """The data segment of ``packet`` (:class:`EncodeError` for a value it cannot carry)."""
    parts = []
    if packet.qn is not None:
        parts.append(f"QN={packet.qn}")
    parts += [f"ST={packet.st}", f"CN={packet.cn}", f"PW={packet.pw}", f"MN={packet.mn}"]
    for name, value in (("QN", packet.qn or ""), ("ST", packet.st), ("CN", packet.cn), ("PW", packet.pw)):
        _check_value(name, value)
    _check_value("MN", packet.mn)
    if not 0 <= packet.flag <= 255:
        raise EncodeError(f"Flag {packet.flag} is not 0..255")
    parts.append(f"Flag={packet.flag}")
    if packet.pnum is not None or packet.pno is not None:
        if packet.pnum is None or packet.pno is None or not 1 <= packet.pno <= packet.pnum <= 9999:
            raise EncodeError(f"PNUM {packet.pnum} and PNO {packet.pno}: need 1 <= PNO <= PNUM <= 9999")
        parts += [f"PNUM={packet.pnum}", f"PNO={packet.pno}"]
    if "&&" in packet.cp or not packet.cp.isascii() or "\r" in packet.cp or "\n" in packet.cp:
        raise EncodeError("the CP area cannot hold '&&', CR, LF or non-ASCII characters")
    parts.append(f"CP=&&{packet.cp}&&")
    return ";".join(parts).encode("ascii")


def encode_packet(packet: Packet) -> bytes:
    """``packet`` on the wire (:class:`EncodeError` if it does not fit one packet)."""
    return encode_frame(format_segment(packet))


def parse_segment(segment: bytes) -> Packet:
    """The fields of one data segment; :class:`DecodeError` says what is wrong."""
    try:
        text = segment.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("data segment is not ASCII") from None
    at = text.find("CP=&&")
    if at < 0 or not text.endswith("&&") or len(text) < at + 7:
        raise DecodeError("data segment has no CP=&&...&& area at its end")
    if at > 0 and text[at - 1] != ";":
        raise DecodeError("CP is not separated from the fields before it by ';'")
    cp = text[at + 5 : -2]
    fields: dict[str, str] = {}
    for part in text[: max(0, at - 1)].split(";") if at else []:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise DecodeError(f"field {part!r} is not key=value")
        if key in fields:
            raise DecodeError(f"field {key} twice")
        fields[key] = value
    missing = [k for k in ("ST", "CN", "PW", "MN", "Flag") if k not in fields]
    if missing:
        raise DecodeError(f"data segment lacks {', '.join(missing)}")
    unknown = set(fields) - {"QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO"}
    if unknown:
        raise DecodeError(f"unknown field(s) {', '.join(sorted(unknown))}")
    flag_text = fields["Flag"]
    if not flag_text.isdigit() or int(flag_text) > 255:
        raise DecodeError(f"Flag {flag_text!r} is not 0..255")
    pnum = pno = None
    if "PNUM" in fields or "PNO" in fields:
        raw_pnum, raw_pno = fields.get("PNUM", ""), fields.get("PNO", "")
        if not (raw_pnum.isdigit() and raw_pno.isdigit()):
            raise DecodeError(f"PNUM {raw_pnum!r} and PNO {raw_pno!r} must both be numbers")
        pnum, pno = int(raw_pnum), int(raw_pno)
        if not 1 <= pno <= pnum:
            raise DecodeError(f"PNO {pno} is not within 1..PNUM ({pnum})")
    packet = Packet(
        qn=fields.get("QN"),
        st=fields["ST"],
        cn=fields["CN"],
        pw=fields["PW"],
        mn=fields["MN"],
        flag=int(flag_text),
        cp=cp,
        pnum=pnum,
        pno=pno,
    )
    if "&&" in cp:
        raise DecodeError("the CP area holds '&&'")
    return packet


def parse_cp(cp: str) -> list[Group]:
    """The groups of a CP area (``;`` between groups, ``,`` between fields); :class:`DecodeError` for a field
    that is not ``key=value``."""
    if not cp:
        return []
    groups: list[Group] = []
    for group_text in cp.split(";"):
        fields = []
        for part in group_text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise DecodeError(f"CP field {part!r} is not key=value")
            fields.append((key, value))
        groups.append(tuple(fields))
    return groups


def format_cp(groups: Iterable[Group]) -> str:
    """The CP area of ``groups`` (:class:`EncodeError` for a key or value it cannot carry)."""
    out = []
    for group in groups:
        fields = []
        for key, value in group:
            if not key or any(c in key or c in value for c in ";,=&\r\n") or not (key + value).isascii():
                raise EncodeError(f"CP field {key!r}={value!r} holds a character the CP area cannot carry")
            fields.append(f"{key}={value}")
        if not fields:
            raise EncodeError("an empty CP group")
        out.append(",".join(fields))
    return ";".join(out)


def split_packets(packet: Packet, groups: Sequence[Group], *, keep_first: bool = True) -> list[Packet]:
    """``packet`` carrying ``groups`` in its CP area: one packet if it fits, else as many as needed, each
    with the split flag (D), ``PNUM`` and ``PNO`` and the same ``QN``, the groups divided between them
    whole. With ``keep_first``, the first group (``DataTime``) is repeated in every packet, so each packet
    says which time its values are for. :class:`EncodeError` if one group cannot fit a packet."""
    whole = replace(packet, cp=format_cp(groups), pnum=None, pno=None, flag=packet.flag & ~FLAG_SPLIT)
    if len(format_segment(whole)) <= MAX_SEGMENT:
        return [whole]
    head = list(groups[:1]) if keep_first and groups else []
    rest = list(groups[1:]) if keep_first else list(groups)
    # The largest header a split packet can have: PNUM and PNO of 4 digits each.
    probe = replace(packet, cp="", flag=packet.flag | FLAG_SPLIT, pnum=9999, pno=9999)
    room = MAX_SEGMENT - len(format_segment(probe))
    chunks: list[list[Group]] = []
    current: list[Group] = []
    for group in rest:
        candidate = [*head, *current, group]
        if len(format_cp(candidate)) <= room:
            current.append(group)
            continue
        if not current:
            raise EncodeError(f"one CP group of {len(format_cp([group]))} characters cannot fit a packet")
        chunks.append(current)
        current = [group]
        if len(format_cp([*head, group])) > room:
            raise EncodeError(f"one CP group of {len(format_cp([group]))} characters cannot fit a packet")
    if current:
        chunks.append(current)
    total = len(chunks)
    return [
        replace(
            packet,
            cp=format_cp([*head, *chunk]),
            flag=packet.flag | FLAG_SPLIT,
            pnum=total,
            pno=number,
        )
        for number, chunk in enumerate(chunks, start=1)
    ]


# -- replies -------------------------------------------------------------------------------------------------


def data_reply(packet: Packet, *, pw: str | None = None) -> Packet:
    """The platform's CN 9014 reply to uploaded ``packet``: received (same QN)."""
    return Packet(
        qn=packet.qn,
        st=SYSTEM_INTERACTION,
        cn=str(int(Command.DATA_REPLY)),
        pw=packet.pw if pw is None else pw,
        mn=packet.mn,
        flag=VERSION_2017,
        cp="",
    )


def request_reply(packet: Packet, code: int) -> Packet:
    """The CN 9011 reply to ``packet``: ``QnRtn=code`` (1 ready; see :data:`REQUEST_RESULTS`)."""
    return Packet(
        qn=packet.qn,
        st=SYSTEM_INTERACTION,
        cn=str(int(Command.REQUEST_REPLY)),
        pw=packet.pw,
        mn=packet.mn,
        flag=VERSION_2017,
        cp=f"QnRtn={code}",
    )


def execution_result(packet: Packet, code: int) -> Packet:
    """The CN 9012 result of ``packet``: ``ExeRtn=code`` (1 done; see :data:`EXECUTION_RESULTS`)."""
    return Packet(
        qn=packet.qn,
        st=SYSTEM_INTERACTION,
        cn=str(int(Command.EXECUTION_RESULT)),
        pw=packet.pw,
        mn=packet.mn,
        flag=VERSION_2017,
        cp=f"ExeRtn={code}",
    )


# -- times ---------------------------------------------------------------------------------------------------


def qn(when: dt.datetime) -> str:
    """The request code for a time: ``YYYYMMDDhhmmsszzz``."""
    return when.strftime("%Y%m%d%H%M%S") + f"{when.microsecond // 1000:03d}"


def data_time(when: dt.datetime) -> str:
    """``DataTime``: ``YYYYMMDDhhmmss``."""
    return when.strftime("%Y%m%d%H%M%S")


def parse_data_time(text: str, tz: dt.tzinfo) -> dt.datetime:
    """``DataTime`` (or a QN's first 14 digits) as an aware time in ``tz``; :class:`DecodeError` if not."""
    if len(text) < 14 or not text[:14].isdigit():
        raise DecodeError(f"time {text!r} is not YYYYMMDDhhmmss")
    try:
        return dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=tz)
    except ValueError as err:
        raise DecodeError(f"time {text!r}: {err}") from None
