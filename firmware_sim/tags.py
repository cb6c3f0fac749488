"""Tag populations the RFID simulators share: EPCs given on the command line, checked the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from protocols.epc import encode_epc
from protocols.errors import EncodeError

__all__ = ["check_epcs", "parse_epc"]


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
