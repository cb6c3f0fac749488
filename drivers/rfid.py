"""What every RFID driver shares: the EPC Tag Data Standard URI of the tags it reads, and what a session's
``rfid.read`` records have in common."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from protocols.epc import epc_uri

from .event import encode

__all__ = ["ReadShape", "UriCache"]

CAPACITY: Final = 8192


class UriCache:
    """EPC -> its pure-identity URI ("" when it has none), for ``epc_uri`` on every ``rfid.read``.

    A reader sees the same tags many times a second; one dict lookup per read beats decoding each time. At
    most ``capacity`` EPCs are kept (the cache starts over when full: a simple bound that costs one decode
    per tag afterwards)."""

    __slots__ = ("_capacity", "_uris")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._uris: dict[bytes, str] = {}
        self._capacity = capacity

    def __len__(self) -> int:
        return len(self._uris)

    def get(self, epc: bytes) -> str:
        uri = self._uris.get(epc)
        if uri is None:
            if len(self._uris) >= self._capacity:
                self._uris.clear()
            uri = self._uris[epc] = epc_uri(epc) or ""
        return uri


class ReadShape:
    """What a session's reads share: the antenna names (and their JSON, encoded once) and the EPC URI cache.
    The R2000 and LLRP drivers' ``rfid.read`` records build their mapping or JSON from it."""

    __slots__ = ("names", "names_json", "uris")

    def __init__(self, names: Mapping[int, str], uris: UriCache) -> None:
        self.names = names
        self.names_json = {antenna: encode(name) for antenna, name in names.items()}
        self.uris = uris
