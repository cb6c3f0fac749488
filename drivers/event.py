"""The one type that crosses the pipeline (:class:`Event`), the one JSON encoder of its data (:func:`encode`),
and the record a driver on a hot path hands over as its data (:class:`Record`): built as a mapping or as
JSON only when first asked for, so that the same driver code is fast whether a processor reads its events
or the buffer only stores them."""

from __future__ import annotations

import json as _json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["RECORD_TYPES", "EncodedData", "Event", "Record", "encode", "encode_data"]


@dataclass(slots=True)
class Event:
    """Something a device reported.

    ``device`` is the device's name from the config; ``kind`` a dotted type (``rfid.read``,
    ``device.status``, ...); ``ts`` the event time in UTC epoch seconds (device time where the device gives
    one, else receive time); ``data`` a JSON-compatible mapping documented per kind; ``seq`` is assigned by
    the buffer when the event is committed (None before), strictly increasing per gateway, never reused.
    """

    device: str
    kind: str
    ts: float
    data: Mapping[str, Any]
    seq: int | None = None


_ENCODER: Final = _json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
encode: Final = _ENCODER.encode
"""The one JSON encoder of event data: compact separators, no ASCII escaping, no NaN (``ValueError``), a
``str``. What the buffer stores and the upstream payload carries is this, in UTF-8."""
_loads: Final = _json.loads


def _sanitise(value: object) -> object:
    """``value`` with what JSON cannot carry replaced: NaN and infinities by null, other non-JSON values
    by their string form."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitise(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def encode_data(data: object) -> tuple[bytes, bool]:
    """An event's data as compact, strictly valid JSON (UTF-8), and whether it had to be sanitised. Never
    raises: a driver emitting a NaN or a non-JSON value must not stop the pipeline nor lose the event."""
    try:
        return encode(data).encode(), False
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return encode(_sanitise(data)).encode(), True
    except (ValueError, TypeError, RecursionError):  # a circular structure
        return encode({"unencodable": repr(data)[:4096]}).encode(), True


RECORD_TYPES: Final[set[type[Record]]] = set()
""":class:`Record` and its subclasses: ``type(data) in RECORD_TYPES`` is the hot path's test (``isinstance``
against an abstract base class such as ``Mapping`` costs a Python call per event)."""


class Record(Mapping[str, Any]):
    """Event data that a driver hands over as it decoded it, and that becomes a mapping or JSON only when
    something asks, once: the one record shape of the hot path (tens of thousands of reads a second).

    The buffer asks for :attr:`json` (the stored and published bytes); a processor (tag smoothing) reads
    it as a mapping. A read nobody processes is never a dict, a processed one is never JSON to decode: no
    driver needs to know which it will be. A subclass keeps the decoded values in its own slots and
    implements :meth:`_build` (the mapping: a fresh dict) and, where it can do better than :func:`encode`
    of that dict, :meth:`_encode`, which must return exactly the bytes :func:`encode` would (a driver that
    overrides it tests this, escapes and non-ASCII included). A value JSON cannot carry (NaN) makes
    :attr:`json` raise ``ValueError``; the buffer then stores :func:`encode_data`'s sanitised form.

    Read-only: a processor that wants other data makes a new mapping (a plain dict), which the buffer
    encodes itself.
    """

    __slots__ = ("_decoded", "_encoded")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RECORD_TYPES.add(cls)

    def __init__(self) -> None:
        self._encoded: bytes | None = None
        self._decoded: dict[str, Any] | None = None

    def _build(self) -> dict[str, Any]:
        raise NotImplementedError

    def _encode(self) -> bytes:
        return encode(self._mapping()).encode()

    @property
    def json(self) -> bytes:
        """The data as the buffer stores it: :func:`encode` of the mapping, in UTF-8; built on first use."""
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = self._encode()
        return encoded

    def _mapping(self) -> dict[str, Any]:
        mapping = self._decoded
        if mapping is None:
            mapping = self._decoded = self._build()
        return mapping

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the data (a copy: the record stays as it is)."""
        return dict(self._mapping())

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def get(self, key: str, default: Any = None) -> Any:
        return self._mapping().get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            mine, theirs = self._encoded, other._encoded
            if mine is not None and mine == theirs:
                return True
            return self._mapping() == other._mapping()
        if isinstance(other, Mapping):
            return self._mapping() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mapping: unhashable, like dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.json.decode()!r})"


class EncodedData(Record):
    """A :class:`Record` that arrives as its own compact JSON encoding (UTF-8 bytes), decoded only when read
    as a mapping: data that came encoded (from the buffer, from a device that speaks JSON).

    ``json`` must be exactly what :func:`encode` would have produced for the mapping it decodes to (compact
    separators, no ASCII escaping, no NaN); it is kept as given.
    """

    __slots__ = ()

    def __init__(self, json: bytes) -> None:
        self._encoded = json
        self._decoded = None

    def _build(self) -> dict[str, Any]:
        decoded: dict[str, Any] = _loads(self.json)
        return decoded


RECORD_TYPES.add(Record)
