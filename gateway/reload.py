"""Hot reload (SIGHUP, ``systemctl reload edgegw``): what changes, what stays.

The gateway re-reads and re-validates its whole configuration (:func:`gateway.config.load_config`). If it is
invalid, nothing changes: every problem is logged, one line each, and the running config stays. If it is
valid, :func:`plan_reload` compares it with the running one:

- devices are matched by name; a device whose configuration changed in any way (driver, options, processing
  such as ``smoothing:``: every field of its :class:`~gateway.config.DeviceConfig` except where it is written)
  is stopped and started again with the new one; new devices start; removed devices stop; the others keep
  running untouched;
- ``gateway.log_level`` and ``gateway.log_levels`` apply at once;
- everything else (the gateway id, ``buffer``, ``upstream``, ``queue``, ``supervisor``, ``metrics``) is
  kept as it runs: the buffer and the upstream session stay open through a reload, which is what keeps
  every event. A change there is logged by field name (never by value: a value may be a secret) as
  needing a restart.

Events a stopped device had already emitted are in the pipeline queue, committed like any other: a reload
loses none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from pydantic import BaseModel

from gateway.config import Config, DeviceConfig

__all__ = [
    "LIVE_GATEWAY_FIELDS",
    "ReloadPlan",
    "RetiredCounts",
    "changed_fields",
    "plan_reload",
    "same_device",
]

LIVE_GATEWAY_FIELDS: Final = ("log_level", "log_levels")
"""The fields of ``gateway:`` a reload applies; the rest of the section needs a restart."""
_KEPT_SECTIONS: Final = ("buffer", "upstream", "queue", "supervisor", "metrics")
_WHERE_FIELDS: Final = frozenset({"file", "line"})


def same_device(old: DeviceConfig, new: DeviceConfig) -> bool:
    """Whether a device's configuration is unchanged: every field but where it is written (moving a device
    to another file, or a line further down, does not restart it). New fields count automatically."""
    return all(
        getattr(old, name) == getattr(new, name)
        for name in type(old).model_fields
        if name not in _WHERE_FIELDS
    )


def changed_fields(old: BaseModel, new: BaseModel, prefix: str) -> list[str]:
    """The dotted paths of the leaf fields that differ (names only, never values)."""
    return list(_diff(old, new, prefix))


def _diff(old: object, new: object, path: str) -> Iterator[str]:
    if old == new:
        return
    if isinstance(old, BaseModel) and isinstance(new, BaseModel) and type(old) is type(new):
        for name in type(old).model_fields:
            yield from _diff(getattr(old, name), getattr(new, name), f"{path}.{name}")
        return
    yield path


@dataclass(frozen=True)
class ReloadPlan:
    """What a valid new config changes, and the config to run from then on."""

    config: Config
    """The running config's kept sections, the new devices and the new log levels."""
    added: list[DeviceConfig]
    changed: list[DeviceConfig]
    """The new configurations of devices to restart."""
    removed: list[str]
    unchanged: list[str]
    needs_restart: list[str]
    """Fields that changed but keep their running value until the gateway restarts."""
    logging_changed: bool

    @property
    def touches_devices(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        def names(what: list[str]) -> str:
            return f" ({', '.join(what)})" if what else ""

        changed = [d.name for d in self.changed]
        added = [d.name for d in self.added]
        return (
            f"{len(changed)} device(s) restarted{names(changed)}, {len(added)} added{names(added)}, "
            f"{len(self.removed)} removed{names(self.removed)}, {len(self.unchanged)} unchanged"
        )


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    old_devices = {d.name: d for d in running.devices}
    new_devices = {d.name: d for d in new.devices}
    added = [d for name, d in new_devices.items() if name not in old_devices]
    changed = [
        d for name, d in new_devices.items() if name in old_devices and not same_device(old_devices[name], d)
    ]
    unchanged = [
        name for name, d in new_devices.items() if name in old_devices and same_device(old_devices[name], d)
    ]
    removed = [name for name in old_devices if name not in new_devices]

    live = {name: getattr(new.gateway, name) for name in LIVE_GATEWAY_FIELDS}
    gateway = running.gateway.model_copy(update=live)
    needs_restart = changed_fields(gateway, new.gateway, "gateway")
    for section in _KEPT_SECTIONS:
        needs_restart += changed_fields(getattr(running, section), getattr(new, section), section)
    logging_changed = any(getattr(running.gateway, n) != getattr(new.gateway, n) for n in LIVE_GATEWAY_FIELDS)
    config = running.model_copy(
        update={"gateway": gateway, "devices": new.devices, "devices_dir": new.devices_dir}
    )
    return ReloadPlan(
        config=config,
        added=added,
        changed=changed,
        removed=removed,
        unchanged=unchanged,
        needs_restart=needs_restart,
        logging_changed=logging_changed,
    )


@dataclass
class RetiredCounts:
    """The counters of a device's earlier runners (before a reload restarted it), so that the device's
    metrics keep counting up instead of starting again from 0."""

    emitted: int = 0
    dropped: int = 0
    restarts: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    processor: Counter[str] = field(default_factory=Counter)
