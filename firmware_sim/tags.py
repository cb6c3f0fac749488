"""Tag populations the RFID simulators share: random or given on the command line, checked the same way, and
how strongly each tag is heard on each antenna."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence

from protocols.epc import encode_epc
from protocols.errors import EncodeError

__all__ = ["antenna_list", "check_epcs", "check_inventory", "parse_epc", "random_population", "rssi_levels"]


def parse_epc(text: str) -> bytes:
    """``--epc``: 24 hex digits (a 96-bit EPC), or an EPC URI (``urn:epc:tag:grai-96:1.0614141.12345.400``,
    ``urn:epc:id:sscc:0614141.1234567890``) encoded with :func:`protocols.epc.encode_epc`."""
    if text.startswith("urn:"):
        try:
            return encode_epc(text)
        except EncodeError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    try:
        epc = bytes.fromhex(text)
    except ValueError:
        epc = b""
    if len(epc) != 12:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 24 hex digits (a 96-bit EPC) or an EPC URI")
    return epc


def check_epcs(epcs: Sequence[bytes]) -> None:
    """ValueError unless every EPC is 96 bits and each tag is there once."""
    for epc in epcs:
        if len(epc) != 12:
            raise ValueError(f"EPC {epc.hex().upper()}: 12 bytes (96 bits) expected, got {len(epc)}")
    if len(set(epcs)) != len(epcs):
        raise ValueError("epcs: each tag once")


def check_inventory(tags: int, epcs: Sequence[bytes], rate: float, round_ms: float) -> None:
    """ValueError unless a reader's population (``tags`` random ones, or ``epcs``) and pace make sense."""
    if tags < 0:
        raise ValueError("tags must not be negative")
    check_epcs(epcs)
    if rate < 0:
        raise ValueError("rate must not be negative")
    if round_ms <= 0:
        raise ValueError("round_ms must be positive")


def random_population(family: str, tags: int, seed: int = 0) -> tuple[bytes, ...]:
    """The EPCs (12 bytes, distinct, SGTIN-96 header 0x30) of a simulated population, deterministic from
    ``family`` and ``seed`` (each family draws its own, so a test of one is not a test of the other)."""
    rng = random.Random(f"edgegw-{family}-population-{seed}")
    seen: set[bytes] = set()
    epcs: list[bytes] = []
    while len(epcs) < tags:
        epc = b"\x30" + rng.randbytes(11)
        if epc not in seen:
            seen.add(epc)
            epcs.append(epc)
    return tuple(epcs)


def rssi_levels(
    family: str, seed: int, *, tags: int, antennas: int, mean: float, spread: float
) -> list[list[float]]:
    """``levels[tag][antenna - 1]``: the dBm each tag is heard at on each antenna (normal around ``mean``),
    deterministic from ``family`` and ``seed``; a read jitters around it."""
    levels = random.Random(f"edgegw-{family}-rssi-{seed}")
    return [[levels.gauss(mean, spread) for _ in range(antennas)] for _ in range(tags)]


def antenna_list(highest: int) -> Callable[[str], tuple[int, ...]]:
    """``--antennas 1,2,3,4``: an argparse type taking antenna ports 1..``highest``."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            antennas = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a list like 1,2,3,4") from err
        if not antennas or any(not 1 <= a <= highest for a in antennas):
            raise argparse.ArgumentTypeError(f"{text!r}: antennas are 1..{highest}")
        return antennas

    return parse
