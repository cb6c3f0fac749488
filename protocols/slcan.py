"""The LAWICEL (slcan) serial line protocol of CAN adapters such as the CANable, the adapter's side.

ASCII lines ended by CR. The host sends commands (``C`` close, ``S0``-``S8`` bitrate, ``O`` open, ``L``
open listen-only, ``V`` version, ``N`` serial number, ``F`` status flags, ``tiiildd..`` / ``Tiiiiiiiildd..``
transmit, ``riiil`` / ``Riiiiiiiil`` remote frames); the adapter answers CR for done, BEL (0x07) for an
error, and sends every frame it hears as the same ``t``/``T``/``r``/``R`` line.

Here: :func:`encode_frame` / :func:`decode_frame` for the frame lines, :data:`BITRATES` for ``S0``-``S8``,
and :class:`LineFramer`, which splits what the host writes into lines (CR ends one; BEL is an adapter's
reply, never a host's: it is skipped). The driver does not use this module: python-can's slcan interface
reads the adapter. The simulator does (it is the adapter).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .errors import DecodeError, EncodeError
from .framing import Framer

__all__ = ["BITRATES", "MAX_LINE", "CanFrame", "LineFramer", "decode_frame", "encode_frame"]

BITRATES: Final = {
    "S0": 10000,
    "S1": 20000,
    "S2": 50000,
    "S3": 100000,
    "S4": 125000,
    "S5": 250000,
    "S6": 500000,
    "S7": 750000,
    "S8": 1000000,
}
"""The bitrate commands and their speeds (bit/s)."""
MAX_LINE: Final = 64
"""The longest line of classic CAN (``T`` + 8 + 1 + 16, and a 4-digit timestamp) with room to spare."""

_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")


class CanFrame(NamedTuple):
    """One classic CAN frame."""

    arbitration_id: int
    data: bytes
    extended: bool = True
    remote: bool = False
    dlc: int | None = None
    """A remote frame's length (its data is empty); None: ``len(data)``."""


def encode_frame(frame: CanFrame) -> bytes:
    """The line (CR included) of ``frame``."""
    limit = 0x1FFFFFFF if frame.extended else 0x7FF
    if not 0 <= frame.arbitration_id <= limit:
        raise EncodeError(f"identifier 0x{frame.arbitration_id:X} does not fit")
    if len(frame.data) > 8 or (frame.remote and frame.data):
        raise EncodeError("classic CAN carries 0..8 bytes, a remote frame none")
    dlc = len(frame.data) if frame.dlc is None else frame.dlc
    if not 0 <= dlc <= 8:
        raise EncodeError(f"DLC {dlc} is not 0..8")
    letter = ("R" if frame.remote else "T") if frame.extended else ("r" if frame.remote else "t")
    ident = f"{frame.arbitration_id:08X}" if frame.extended else f"{frame.arbitration_id:03X}"
    return f"{letter}{ident}{dlc}{frame.data.hex().upper()}\r".encode()


def decode_frame(line: bytes) -> CanFrame:
    """The frame of one ``t``/``T``/``r``/``R`` line (CR optional); DecodeError says what is wrong."""
    line = line.removesuffix(b"\r")
    if not line or line[0] not in b"tTrR":
        raise DecodeError(f"not a frame line: {line[:16]!r}")
    extended = line[0] in b"TR"
    remote = line[0] in b"rR"
    width = 8 if extended else 3
    head = line[1 : 2 + width]
    if len(head) != width + 1 or not all(c in _HEX for c in head[:width]) or not head[width:].isdigit():
        raise DecodeError(f"bad identifier or DLC: {line[:16]!r}")
    arbitration_id = int(head[:width], 16)
    dlc = head[width] - 0x30
    if dlc > 8 or (not extended and arbitration_id > 0x7FF):
        raise DecodeError(f"DLC {dlc} or identifier out of range")
    body = line[2 + width :]
    if remote:
        if body:
            raise DecodeError("a remote frame has no data")
        return CanFrame(arbitration_id, b"", extended, True, dlc)
    if len(body) != 2 * dlc or not all(c in _HEX for c in body):
        raise DecodeError(f"DLC {dlc} disagrees with the data ({len(body)} hex digits)")
    return CanFrame(arbitration_id, bytes.fromhex(body.decode()), extended)


class LineFramer(Framer[bytes]):
    """The host's lines, without their CR (an empty line is a line). A line longer than :data:`MAX_LINE`
    is rejected (``bad_length``) and its bytes skipped up to its CR; BEL and NUL bytes are skipped."""

    def __init__(self) -> None:
        super().__init__()
        self._partial = bytearray()
        self._overlong = False

    @property
    def pending(self) -> int:
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        stats = self.stats
        partial = self._partial
        start = 0
        while start < len(data):
            end = data.find(b"\r", start)
            piece = data[start:] if end < 0 else data[start:end]
            clean = piece.replace(b"\x07", b"").replace(b"\x00", b"")
            stats.bytes_skipped += len(piece) - len(clean)
            if self._overlong:
                stats.bytes_skipped += len(clean)
            else:
                partial += clean
                if len(partial) > MAX_LINE:
                    stats.bytes_skipped += len(partial)
                    stats.bad_length += 1
                    partial.clear()
                    self._overlong = True
            if end < 0:
                break
            if self._overlong:
                stats.bytes_skipped += 1  # its CR
                self._overlong = False
            else:
                lines.append(bytes(partial))
                stats.frames += 1
                partial.clear()
            start = end + 1
        return lines
