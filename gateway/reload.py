"""Hot reload (SIGHUP, ``systemctl reload edgegw``): what changes, what stays.

The gateway re-reads and re-validates its whole configuration (:func:`gateway.config.load_config`). If it is
invalid, nothing changes: every problem is logged, one line each, and the running config stays. If it is
valid, :func:`plan_reload` compares it with the running one:

- devices are matched by name; a device whose configuration changed in any way (driver, options, processing
  such as ``smoothing:``: every field of its :class:`~gateway.config.DeviceConfig` except where it is written)
  is stopped and started again with the new one; new devices start; removed devices stop; the others keep
  running untouched;
- ``gateway.log_level`` and ``gateway.log_levels`` apply at once;
- the entries of ``upstreams:`` are matched by name like devices: a new one starts, reading what is
  committed from then on; a removed one stops, and what only it still needed leaves the buffer; a changed
  one (any option, its route) restarts on its own cursor, keeping its acknowledgements; the others keep
  their connections and cursors untouched. No upstream loses or repeats what another has acknowledged (the
  buffer keeps each upstream's acknowledgements by name). The first MQTT entry's ``commands`` still need a
  restart;
- everything else (the gateway id, ``buffer``, ``upstream`` (the single ``upstream.mqtt`` form, and a
  switch between it and ``upstreams:``), ``queue``, ``supervisor``, ``metrics``) is kept as it runs: the
  buffer and the upstream sessions stay open through a reload, which is what keeps every event. A change
  there is logged by field name (never by value: a value may be a secret) as needing a restart.

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
from gateway.delivery.upstream import UpstreamOptions

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
    upstreams_added: list[UpstreamOptions] = field(default_factory=list)
    upstreams_changed: list[UpstreamOptions] = field(default_factory=list)
    """The new options of upstreams to restart (on their own cursors)."""
    upstreams_removed: list[str] = field(default_factory=list)

    @property
    def touches_upstreams(self) -> bool:
        return bool(self.upstreams_added or self.upstreams_changed or self.upstreams_removed)

    @property
    def touches_devices(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        def names(what: list[str]) -> str:
            return f" ({', '.join(what)})" if what else ""

        changed = [d.name for d in self.changed]
        added = [d.name for d in self.added]
        text = (
            f"{len(changed)} device(s) restarted{names(changed)}, {len(added)} added{names(added)}, "
            f"{len(self.removed)} removed{names(self.removed)}, {len(self.unchanged)} unchanged"
        )
        if self.touches_upstreams:
            restarted = [u.name for u in self.upstreams_changed]
            new = [u.name for u in self.upstreams_added]
            text += (
                f"; upstreams: {len(restarted)} restarted{names(restarted)}, {len(new)} added{names(new)}, "
                f"{len(self.upstreams_removed)} removed{names(self.upstreams_removed)}"
            )
        return text


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
    live_upstreams = bool(running.upstreams) and bool(new.upstreams)  # both the `upstreams:` list form
    for section in _KEPT_SECTIONS:
        if section == "upstream" and live_upstreams:
            continue
        needs_restart += changed_fields(getattr(running, section), getattr(new, section), section)
    if live_upstreams:
        # The command service runs on its own session, made at start: its options need a restart.
        old_commands = {u.name: getattr(u, "commands", None) for u in running.upstream_list}
        new_commands = {u.name: getattr(u, "commands", None) for u in new.upstream_list}
        for name in sorted(set(old_commands) | set(new_commands)):
            before, after = old_commands.get(name), new_commands.get(name)
            if isinstance(before, BaseModel) and isinstance(after, BaseModel):
                needs_restart += changed_fields(before, after, f"upstreams.{name}.commands")
            elif getattr(before, "enabled", False) or getattr(after, "enabled", False):
                needs_restart.append(f"upstreams.{name}.commands")  # an entry with commands came or went
        old_up = {u.name: u for u in running.upstream_list}
        new_up = {u.name: u for u in new.upstream_list}
    else:
        if running.upstreams != new.upstreams:
            needs_restart.append("upstreams")
        old_up = new_up = {}
    logging_changed = any(getattr(running.gateway, n) != getattr(new.gateway, n) for n in LIVE_GATEWAY_FIELDS)
    config = running.model_copy(
        update={
            "gateway": gateway,
            "devices": new.devices,
            "devices_dir": new.devices_dir,
            **({"upstream": new.upstream, "upstreams": new.upstreams} if live_upstreams else {}),
        }
    )
    return ReloadPlan(
        config=config,
        added=added,
        changed=changed,
        removed=removed,
        unchanged=unchanged,
        needs_restart=needs_restart,
        logging_changed=logging_changed,
        upstreams_added=[u for name, u in new_up.items() if name not in old_up],
        upstreams_changed=[u for name, u in new_up.items() if name in old_up and old_up[name] != u],
        upstreams_removed=[name for name in old_up if name not in new_up],
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
