"""The upstream contract: what every kind of upstream (``mqtt``, ``sparkplug``, ``hj212``) implements, how
it is configured, and which events reach it.

A gateway feeds one or more upstreams (``upstreams:`` in the config) from one durable buffer. Each
upstream reads the buffer through its own :class:`Cursor`, which returns only the events its
:class:`Route` matches and that it has not acknowledged yet; an event leaves the buffer once every upstream
that routes it has acknowledged it (:mod:`gateway.delivery.buffer`). One slow or dead upstream never delays
another: its cursor holds, its backlog stays in the buffer under the whole buffer's cap.

A kind is a subclass of :class:`Upstream` with an ``Options`` model (a subclass of
:class:`UpstreamOptions`), named in :data:`KINDS` and imported only when a config uses it.
"""

from __future__ import annotations

import abc
import collections
import fnmatch
import importlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.delivery.buffer import Stored, UpstreamShare

__all__ = [
    "KINDS",
    "Backlog",
    "Cursor",
    "Route",
    "Upstream",
    "UpstreamContext",
    "UpstreamKindError",
    "UpstreamOptions",
    "UpstreamStats",
    "load_kind",
    "save_state",
]

KINDS: Final[dict[str, str]] = {
    "mqtt": "gateway.delivery.forwarder:MqttUpstream",
    "sparkplug": "gateway.delivery.sparkplug:SparkplugUpstream",
    "hj212": "gateway.delivery.hj212:Hj212Upstream",
}
"""Upstream kinds by their ``kind:`` name -> ``module:Class``, imported lazily."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("must match [A-Za-z0-9][A-Za-z0-9_.-]* (letters, digits, '_', '.', '-')")
    return value


def _check_globs(value: list[str]) -> list[str]:
    for pattern in value:
        if not pattern:
            raise ValueError("an empty pattern matches nothing; use '*' for everything")
    return value


Globs = Annotated[list[Annotated[str, Field(strict=True)]], AfterValidator(_check_globs)]


class Route(BaseModel):
    """``route:`` of an upstream: which events it gets. Shell-style globs (``*``, ``?``, ``[...]``) on the
    device name and the event kind. An event is routed when its device matches one of ``devices`` and none
    of ``exclude_devices``, and its kind matches one of ``kinds`` and none of ``exclude_kinds``. Omitted:
    everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: Globs = Field(
        default_factory=lambda: ["*"], description="Device names (globs) to include; default all ['*']."
    )
    kinds: Globs = Field(
        default_factory=lambda: ["*"],
        description="Event kinds (globs, e.g. meter.reading, rfid.*) to include; default all ['*'].",
    )
    exclude_devices: Globs = Field(
        default_factory=list, description="Device names (globs) to leave out, over `devices`."
    )
    exclude_kinds: Globs = Field(default_factory=list, description="Event kinds (globs) to leave out.")

    @property
    def everything(self) -> bool:
        return (
            self.devices == ["*"]
            and self.kinds == ["*"]
            and not self.exclude_devices
            and not self.exclude_kinds
        )

    def matches(self, device: str, kind: str) -> bool:
        """Whether an event of this device and kind goes to the upstream."""
        match = fnmatch.fnmatchcase
        return (
            any(match(device, p) for p in self.devices)
            and not any(match(device, p) for p in self.exclude_devices)
            and any(match(kind, p) for p in self.kinds)
            and not any(match(kind, p) for p in self.exclude_kinds)
        )

    def matches_device(self, device: str) -> bool:
        """Whether some event of this device can be routed (its kind aside)."""
        match = fnmatch.fnmatchcase
        return any(match(device, p) for p in self.devices) and not any(
            match(device, p) for p in self.exclude_devices
        )


class UpstreamOptions(BaseModel):
    """The fields every upstream has; a kind's ``Options`` adds its own and narrows ``kind``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(strict=True, min_length=1, max_length=64), AfterValidator(_check_name)] = (
        Field(
            description="This upstream's name, unique among the upstreams: in metrics, status and logs, and "
            "the key of its acknowledgements in the buffer (renaming an upstream starts it afresh).",
        )
    )
    kind: str = Field(description="The upstream kind: " + ", ".join(KINDS) + ".")
    route: Route = Field(default_factory=Route, description="Which events this upstream gets (default all).")


Backlog = UpstreamShare
"""An upstream's share of the buffer: routed to it and not acknowledged by it (events, bytes), and the events
dropped while it had not acknowledged them, by reason."""


class Cursor(Protocol):
    """One upstream's view of the buffer (:meth:`gateway.delivery.buffer.SqliteBuffer.cursor`)."""

    name: str

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        """Up to ``limit`` events routed to this upstream, not acknowledged by it, ``seq > after_seq``, in
        seq order."""
        ...

    async def ack(self, seqs: Iterable[int]) -> None:
        """This upstream delivered these. An event is deleted once every upstream routing it acked it."""
        ...

    async def wait_for_new(self, after_seq: int) -> None:
        """Return once an event with ``seq > after_seq`` is committed (maybe not routed here: read again)."""
        ...

    def backlog(self) -> Backlog: ...


@dataclass(frozen=True, slots=True)
class UpstreamContext:
    gateway_id: str
    device_names: Callable[[], list[str]] = list
    """The devices configured now (changes on reload)."""


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """What every upstream reports (cheap, no I/O)."""

    connected: bool
    published: int = 0
    """Events sent (resends included)."""
    acked: int = 0
    """Events the far end acknowledged."""
    resent: int = 0
    refused: int = 0
    """Events the far end refused (they stay buffered)."""
    connects: int = 0
    disconnects: int = 0
    last_error: str | None = None


class Upstream(abc.ABC):
    """One upstream: reads its cursor, delivers, acknowledges. Subclasses set ``kind`` and ``Options``."""

    kind: ClassVar[str]
    Options: ClassVar[type[UpstreamOptions]]

    def __init__(self, options: UpstreamOptions, cursor: Cursor, context: UpstreamContext) -> None:
        self.options = options
        self.name = options.name
        self.cursor = cursor
        self.context = context
        self.counters: collections.Counter[str] = collections.Counter()
        """Bad input and other kind-specific events by snake_case reason (edgegw_upstream_errors_total)."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Deliver until cancelled, reconnecting with backoff; never raise for a transient fault."""

    async def drain(self) -> str | None:
        """At a clean stop, once nothing more is committed: deliver what is buffered for this upstream and
        wait for its acknowledgements. None when nothing is left, else why not. Bounded by the caller."""
        return f"upstream kind {self.kind!r} does not drain at a stop"

    @abc.abstractmethod
    def stats(self) -> UpstreamStats: ...


class UpstreamKindError(LookupError):
    """A ``kind:`` that is unknown or cannot be imported."""


_loaded: dict[str, type[Upstream]] = {}


def load_kind(kind: str) -> type[Upstream]:
    """The class of an upstream kind, imported on first use."""
    cls = _loaded.get(kind)
    if cls is not None:
        return cls
    target = KINDS.get(kind)
    if target is None:
        raise UpstreamKindError(f"unknown upstream kind {kind!r}; known: {', '.join(KINDS)}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        found: Any = getattr(module, attr)
    except (ImportError, AttributeError) as err:
        raise UpstreamKindError(f"upstream kind {kind!r} is not available here ({err})") from err
    if not (isinstance(found, type) and issubclass(found, Upstream)):
        raise UpstreamKindError(f"{target} is not an Upstream class")
    _loaded[kind] = found
    return found


def unrouted_devices(route: Route, devices: Sequence[str]) -> bool:
    """Whether no configured device can reach this route (``edgegw check`` warns)."""
    return not any(route.matches_device(d) for d in devices)


def route_warnings(
    upstreams: Sequence[UpstreamOptions], devices: Sequence[tuple[str, frozenset[str]]]
) -> list[str]:
    """What ``edgegw check`` warns about: a route that no configured device (by name) or no kind those
    devices can emit matches. ``devices``: each device's name and the kinds it may emit (empty: not known,
    any kind assumed)."""
    warnings = []
    for u in upstreams:
        route = u.route
        reached = [(name, kinds) for name, kinds in devices if route.matches_device(name)]
        if not reached:
            warnings.append(
                f"upstreams: {u.name!r}: its route matches no configured device "
                f"(devices {route.devices}, exclude_devices {route.exclude_devices}): it will get nothing"
            )
            continue
        if any(not kinds for _, kinds in reached):
            continue
        possible = {kind for _, kinds in reached for kind in kinds}
        if not any(route.matches(name, kind) for name, kinds in reached for kind in kinds):
            warnings.append(
                f"upstreams: {u.name!r}: its route matches none of the kinds its devices emit "
                f"({', '.join(sorted(possible))}): it will get nothing"
            )
    return warnings


def save_state(path: Path, state: object) -> None:
    """Write a kind's ``state_file`` as JSON, whole or not at all: a temporary file beside it, synced, then
    renamed over it (a crash leaves the old state or the new, never half of one). OSError if it cannot."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
