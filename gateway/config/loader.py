"""Loading a configuration: the gateway file, its device files, and every problem in them with FILE:LINE.

:func:`load_config` is the one entry point (``edgegw check``, ``edgegw run`` and reload call it). What the
options are and mean is :mod:`gateway.config.models`; how the YAML is read, with the line of every node, is
:mod:`gateway.config.yamlsrc`. See :mod:`gateway.config` for the whole picture.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    PlainValidator,
    ValidationError,
    WrapValidator,
)
from pydantic_core import ErrorDetails

from drivers import registry
from drivers.base import CONFIG_DIR, Driver
from drivers.bus import SharedLine
from drivers.kinds import GPS_FIX, RFID_READ
from gateway.commands.protocol import GATEWAY_COMMANDS
from gateway.config.models import (
    _CONTEXT_KEY,
    _DEVICE_KEYS,
    _FIELD_ERROR,
    Config,
    ConfigError,
    DeviceConfig,
    DriverLookup,
    MqttConfig,
    Problem,
    UpstreamConfig,
    _DeviceHead,
    _GatewayFile,
    _LoadContext,
    _reason,
)
from gateway.config.yamlsrc import Document, FieldPath, YamlError, load_file
from gateway.delivery.schema import MAX_UPSTREAMS
from gateway.delivery.upstream import UpstreamKindError, UpstreamOptions, load_kind
from gateway.processors.rfid import SmoothingOptions

__all__ = ["load_config"]


# --------------------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | os.PathLike[str],
    *,
    driver_lookup: DriverLookup = registry.load,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate the gateway file at ``path`` and every device file it points to.

    ``driver_lookup`` maps a ``driver:`` name to its class; ``environ`` is where ``*_env`` secrets are looked
    up (``os.environ`` by default). Raises :class:`ConfigError` with every problem found.
    """
    return _Loader(path, driver_lookup, os.environ if environ is None else environ).load()


_DEVICE_FILE_SUFFIXES = (".yaml", ".yml")
_TOP_LEVEL = "a mapping (gateway, buffer, upstream, ...)"


class _Loader:
    def __init__(
        self, path: str | os.PathLike[str], driver_lookup: DriverLookup, environ: Mapping[str, str]
    ) -> None:
        self.display = os.fspath(path)
        self.source = Path(path).absolute()
        self.context = _LoadContext(base_dir=self.source.parent, environ=environ)
        self.driver_lookup = driver_lookup
        self.problems: list[Problem] = []
        self.found: list[_Found] = []
        self.file_order: dict[str, int] = {}
        self.devices: list[DeviceConfig] = []
        self.placed: list[_Placed] = []  # the valid devices, with where they are written
        self.device_names: dict[tuple[int, FieldPath], str] = {}  # (id(doc), device path) -> name
        self.names: dict[str, str] = {}  # device name -> "FILE:LINE" of its first definition
        self.upstreams: list[UpstreamOptions] = []

    def load(self) -> Config:
        doc = self._read(self.display, self.source)
        sections: _GatewayFile | None = None
        devices_dir: Path | None = None
        if doc is not None and self._is_mapping(doc, self.display, _TOP_LEVEL):
            data: dict[Hashable, Any] = doc.value
            sections = self._validate_sections(doc)
            raw_devices = data.get("devices")
            if isinstance(raw_devices, list):
                for index, raw in enumerate(raw_devices):
                    self._device(raw, doc, self.display, self.source, ("devices", index))
            raw_dir = data.get("devices_dir")
            if isinstance(raw_dir, str) and raw_dir:
                devices_dir = self._devices_dir(doc, raw_dir)
            self._upstreams(doc, data)
        self._check_shared_lines()
        if doc is not None and isinstance(doc.value, dict):
            self._check_routes(doc, doc.value)
        if doc is not None and sections is not None:
            self._check_positions(doc, sections.gateway.position_from)
            if sections.upstream is not None:
                self._check_command_timeouts(doc, sections.upstream.mqtt.commands.timeouts)
        self.problems = self._merge_anchored()
        if self.problems or sections is None:
            order = self.file_order
            self.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
            raise ConfigError(self.problems)
        upstream = sections.upstream
        if upstream is None:  # the first MQTT upstream is the primary one (status, commands)
            first = next((u for u in self.upstreams if isinstance(u, MqttConfig)), None)
            if first is not None:
                # constructed, not validated again: its secrets are resolved already (validating
                # password and password_env together again would refuse them)
                upstream = UpstreamConfig.model_construct(
                    mqtt=MqttConfig.model_construct(
                        _fields_set=set(first.model_fields_set),
                        **{name: getattr(first, name) for name in MqttConfig.model_fields},
                    )
                )
        return Config(
            gateway=sections.gateway,
            buffer=sections.buffer,
            upstream=upstream,
            upstreams=self.upstreams,
            supervisor=sections.supervisor,
            queue=sections.queue,
            metrics=sections.metrics,
            devices=self.devices,
            devices_dir=devices_dir,
            source=self.source,
        )

    # -- files --

    def _problem(self, file: str, line: int, path: FieldPath, message: str, doc: Document | None) -> None:
        self.file_order.setdefault(file, len(self.file_order))
        problem = Problem(file, line, _format_path(doc.value if doc else None, path), message)
        self.found.append(_Found(problem, doc, path))

    def _merge_anchored(self) -> list[Problem]:
        """The problems found, those inside an anchored value that aliases reuse reported once: where the
        anchored text is, naming the devices that share it (else an anchor reused by eight devices would
        give eight copies of each of its problems)."""
        groups: dict[tuple[str, FieldPath, str], list[_Found]] = {}
        out: list[Problem | tuple[str, FieldPath, str]] = []
        for found in self.found:
            if found.doc is None:
                out.append(found.problem)
                continue
            anchored = found.doc.anchored(found.path)
            key = (found.problem.file, anchored[0] if anchored else found.path, found.problem.message)
            if key not in groups:
                out.append(key)
            groups.setdefault(key, []).append(found)
        problems: list[Problem] = []
        for item in out:
            if isinstance(item, Problem):
                problems.append(item)
                continue
            members = groups[item]
            anchors = [a[1] for m in members if m.doc is not None and (a := m.doc.anchored(m.path))]
            if not anchors:
                problems.extend(m.problem for m in members)
                continue
            if len(members) == 1:  # only one of the places that reuse it has this problem: that one
                (member,) = members
                problem = member.problem
                problems.append(
                    Problem(
                        problem.file, problem.line, problem.field, f"{problem.message} (in &{anchors[0]})"
                    )
                )
                continue
            file, where, message = item
            doc = members[0].doc
            assert doc is not None
            users = list(dict.fromkeys(self._user(m) for m in members))
            if all(is_device for _, is_device in users):
                shared = f"shared by {len(users)} devices: " if len(users) > 1 else "used by "
                note = shared + ", ".join(name for name, _ in users)
            else:
                note = "used at " + ", ".join(name for name, _ in users)
            text = f"{message} (in &{anchors[0]}, {note})"
            problems.append(Problem(file, doc.line_of(where), _format_path(doc.value, where), text))
        return problems

    def _user(self, found: _Found) -> tuple[str, bool]:
        """Whose problem this is: the device's name (and True), else its field path."""
        assert found.doc is not None
        for end in range(len(found.path), -1, -1):
            name = self.device_names.get((id(found.doc), found.path[:end]))
            if name is not None:
                return name, True
        return found.problem.field, False

    def _read(self, display: str, path: Path) -> Document | None:
        self.file_order.setdefault(display, len(self.file_order))
        try:
            doc = load_file(path)
        except OSError as err:
            self._problem(display, 0, (), f"cannot read the file: {_reason(err)}", None)
            return None
        except YamlError as err:
            self._problem(display, err.line, (), f"invalid YAML: {err.message}", None)
            return None
        for problem in doc.problems:
            self._problem(display, problem.line, problem.path, problem.message, doc)
        return doc

    def _is_mapping(self, doc: Document, display: str, expected: str) -> bool:
        if doc.value is None:
            self._problem(display, doc.line_of(()), (), f"empty file: expected {expected}", doc)
            return False
        if not isinstance(doc.value, dict):
            got = _kind(doc.value)
            self._problem(display, doc.line_of(()), (), f"expected {expected}, got {got}", doc)
            return False
        return True

    def _validate_sections(self, doc: Document) -> _GatewayFile | None:
        not_integers = self._integers(_GatewayFile, doc.value, doc, self.display, ())
        try:
            return _GatewayFile.model_validate(doc.value, context={_CONTEXT_KEY: self.context})
        except ValidationError as err:
            self._add_validation_problems(
                err, doc=doc, display=self.display, prefix=(), model=_GatewayFile, skip=not_integers
            )
            return None

    def _integers(
        self, model: type[BaseModel], raw: Any, doc: Document, display: str, prefix: FieldPath
    ) -> set[FieldPath]:
        """Report every value that ``model`` means as an integer but the YAML does not give as one; their
        paths (pydantic's own complaints there, if any, say less)."""
        paths: set[FieldPath] = set()
        for path, message in _integer_problems(model, raw, prefix):
            self._problem(display, doc.line_of(path), path, message, doc)
            paths.add(path)
        return paths

    def _devices_dir(self, doc: Document, raw_dir: str) -> Path | None:
        directory = self.context.path(Path(raw_dir))
        display_dir = Path(self.display).parent / raw_dir
        line = doc.line_of(("devices_dir",))
        try:
            entries = sorted(
                entry
                for entry in directory.iterdir()
                if entry.suffix in _DEVICE_FILE_SUFFIXES
                and not entry.name.startswith(".")
                and entry.is_file()
            )
        except FileNotFoundError:
            self._problem(self.display, line, ("devices_dir",), f"directory {raw_dir!r} not found", doc)
            return None
        except OSError as err:
            self._problem(
                self.display, line, ("devices_dir",), f"cannot list {raw_dir!r}: {_reason(err)}", doc
            )
            return None
        for entry in entries:
            display = str(display_dir / entry.name)
            device_doc = self._read(display, entry)
            if device_doc is None:
                continue
            value = device_doc.value
            if isinstance(value, dict):
                self._device(value, device_doc, display, entry, ())
            elif isinstance(value, list):
                for index, raw in enumerate(value):
                    self._device(raw, device_doc, display, entry, (index,))
            else:
                got = "nothing" if value is None else _kind(value)
                message = f"expected a device (a mapping) or a list of devices, got {got}"
                self._problem(display, device_doc.line_of(()), (), message, device_doc)
        return directory

    # -- upstreams --

    def _upstreams(self, doc: Document, data: dict[Hashable, Any]) -> None:
        """``upstreams:`` entry by entry, each with its kind's ``Options`` (as devices with their driver's);
        and exactly one of ``upstream`` and ``upstreams``."""
        raw_list = data.get("upstreams")
        has_legacy = data.get("upstream") is not None
        path: FieldPath
        if raw_list is None:
            if not has_legacy:  # said as pydantic says a missing section, naming the other way too
                path = ("upstream",)
                message = "missing (required)"  # or `upstreams:`; the README says both
                self._problem(self.display, doc.line_of(()), path, message, doc)
            return
        if has_legacy:
            path = ("upstream",)
            message = "give either `upstream` (one MQTT broker) or `upstreams` (a list), not both"
            self._problem(self.display, doc.line_of(path), path, message, doc)
            return
        if not isinstance(raw_list, list) or not raw_list:
            path = ("upstreams",)
            self._problem(
                self.display, doc.line_of(path), path, "expected a non-empty list of upstreams", doc
            )
            return
        if len(raw_list) > MAX_UPSTREAMS:
            path = ("upstreams", MAX_UPSTREAMS)
            message = (
                f"{len(raw_list)} upstreams; at most {MAX_UPSTREAMS} (the buffer keeps one bit per upstream "
                "on every stored event)"
            )
            self._problem(self.display, doc.line_of(path), path, message, doc)
            return
        seen: dict[str, int] = {}
        gateway = data.get("gateway")
        gateway_id = gateway.get("id") if isinstance(gateway, dict) else None
        for index, raw in enumerate(raw_list):
            prefix: FieldPath = ("upstreams", index)
            if not isinstance(raw, dict):
                message = f"expected an upstream (a mapping with name, kind, ...), got {_kind(raw)}"
                self._problem(self.display, doc.line_of(prefix), prefix, message, doc)
                continue
            kind = raw.get("kind")
            if not isinstance(kind, str) or not kind:
                at = (*prefix, "kind") if "kind" in raw else prefix
                self._problem(
                    self.display, doc.line_of(at), at, "needs a kind: mqtt, sparkplug or hj212", doc
                )
                continue
            try:
                cls = load_kind(kind)
            except UpstreamKindError as err:
                at = (*prefix, "kind")
                self._problem(self.display, doc.line_of(at), at, str(err), doc)
                continue
            values = dict(raw)
            if kind == "mqtt" and "client_id" not in values and isinstance(raw.get("name"), str):
                values["client_id"] = f"edgegw-{gateway_id}-{raw['name']}"
            not_integers = self._integers(cls.Options, values, doc, self.display, prefix)
            try:
                options = cls.Options.model_validate(values, context={_CONTEXT_KEY: self.context})
            except ValidationError as err:
                self._add_validation_problems(
                    err, doc=doc, display=self.display, prefix=prefix, model=cls.Options, skip=not_integers
                )
                continue
            if not_integers:
                continue
            if options.name in seen:
                at = (*prefix, "name")
                message = f"duplicate upstream name {options.name!r} (also upstreams[{seen[options.name]}])"
                self._problem(self.display, doc.line_of(at), at, message, doc)
                continue
            seen[options.name] = index
            self.upstreams.append(options)

    def _check_routes(self, doc: Document, data: dict[Hashable, Any]) -> None:
        """A route's device that is a plain name (no glob) names a configured device (or the gateway, whose
        own events carry its id): a misspelt name would leave that upstream without the device's events,
        silently."""
        raw_list = data.get("upstreams")
        valid = {options.name for options in self.upstreams}
        if not isinstance(raw_list, list) or not valid:
            return
        gateway = data.get("gateway")
        gateway_id = gateway.get("id") if isinstance(gateway, dict) else None
        for index, raw in enumerate(raw_list):
            if not isinstance(raw, dict) or raw.get("name") not in valid:
                continue
            route = raw.get("route")
            if not isinstance(route, dict):
                continue
            for key in ("devices", "exclude_devices"):
                names = route.get(key)
                if not isinstance(names, list):
                    continue
                for position, name in enumerate(names):
                    if not isinstance(name, str) or any(c in name for c in "*?[") or name in self.names:
                        continue
                    if name == gateway_id:
                        continue
                    at = ("upstreams", index, "route", key, position)
                    known = ", ".join(sorted(self.names)) or "none configured"
                    message = f"no device named {name!r} (devices: {known})"
                    self._problem(self.display, doc.line_of(at), at, message, doc)

    # -- devices --

    def _device(self, raw: Any, doc: Document, display: str, file: Path, prefix: FieldPath) -> None:
        line = doc.line_of(prefix)
        if not isinstance(raw, dict):
            message = f"expected a device (a mapping with name, driver, ...), got {_kind(raw)}"
            self._problem(display, line, prefix, message, doc)
            return
        if isinstance(raw.get("name"), str):
            self.device_names[(id(doc), prefix)] = raw["name"]
        name: str | None = None
        driver_name: str | None = None
        try:
            head = _DeviceHead.model_validate(raw)
            name, driver_name = head.name, head.driver
        except ValidationError as err:
            self._add_validation_problems(err, doc=doc, display=display, prefix=prefix, model=None)
            if isinstance(raw.get("driver"), str) and raw["driver"]:
                driver_name = raw["driver"]
        if name is not None:
            where = f"{display}:{doc.line_of((*prefix, 'name'))}"
            first = self.names.setdefault(name, where)
            if first != where:
                message = f"duplicate device name {name!r} (first defined at {first})"
                self._problem(display, doc.line_of((*prefix, "name")), (*prefix, "name"), message, doc)
                name = None
        if driver_name is None:
            return
        try:
            driver_class = self.driver_lookup(driver_name)
        except Exception as err:  # an unknown name, a missing dependency, a broken driver module
            self._problem(display, doc.line_of((*prefix, "driver")), (*prefix, "driver"), str(err), doc)
            return
        raw_options = {key: value for key, value in raw.items() if key not in _DEVICE_KEYS}
        smoothing = self._smoothing(raw, driver_class, doc, display, prefix)
        commands = self._commands(raw, driver_class, doc, display, prefix)
        position_ok, position_from = self._position_from(raw, doc, display, prefix)
        not_integers = self._integers(driver_class.Options, raw_options, doc, display, prefix)
        try:
            options = driver_class.Options.model_validate(
                raw_options, context={_CONTEXT_KEY: self.context, CONFIG_DIR: os.path.abspath(file.parent)}
            )
        except ValidationError as err:
            self._add_validation_problems(
                err,
                doc=doc,
                display=display,
                prefix=prefix,
                model=driver_class.Options,
                root_keys=_DEVICE_KEYS,
                skip=not_integers,
            )
            return
        if smoothing is not None:
            antennas = getattr(options, "antennas", None)
            if isinstance(antennas, Mapping):
                for lane in smoothing.lanes_without_antenna(antennas):
                    lanes_at = (*prefix, "smoothing", "lanes")
                    problem = f"lane {lane!r} is no zone of this device's antennas (see smoothing.zones)"
                    self._problem(display, doc.line_of(lanes_at), lanes_at, problem, doc)
                    smoothing = None
        if (
            name is None
            or ("smoothing" in raw and smoothing is None)
            or not_integers
            or commands is None
            or not position_ok
        ):
            return
        device = DeviceConfig(
            name=name,
            driver=driver_name,
            options=options,
            smoothing=smoothing,
            commands=commands,
            position_from=position_from,
            file=file,
            line=line,
        )
        device._driver_class = driver_class
        self.devices.append(device)
        self.placed.append(_Placed(device, doc, display, prefix))

    def _check_shared_lines(self) -> None:
        """Devices on one line must agree on its settings: each one that does not is a problem at its own
        option, naming the first device on the line (which the bus would otherwise have kept). A link one
        device opens alone (:meth:`~drivers.base.DriverOptions.exclusive_link`) is named by no other."""
        first_on: dict[str, tuple[_Placed, SharedLine]] = {}
        owner: dict[str, _Placed] = {}
        for placed in self.placed:
            options = placed.device.options
            line = options.shared_line()
            exclusive = options.exclusive_link()
            key = line.key if line is not None else exclusive
            if key is not None:
                if key in owner or (exclusive is not None and key in first_on):
                    other = owner.get(key) or first_on[key][0]
                    self._link_taken(placed, other, key)
                    continue
                if exclusive is not None:
                    owner[key] = placed
            if line is None:
                continue
            first, first_line = first_on.setdefault(line.key, (placed, line))
            if first is placed or first_line.settings == line.settings:
                continue
            theirs, mine = dict(first_line.settings), dict(line.settings)
            differing = [k for k in dict.fromkeys([*theirs, *mine]) if theirs.get(k) != mine.get(k)]
            if "driver" in differing:  # another protocol: its other settings are no comparison
                differing = ["driver"]
            for option in differing:
                path = (*placed.prefix, option)
                their_line = first.doc.line_of((*first.prefix, option))
                message = (
                    f"{_setting(placed, option, mine)}, but {first.device.name} on the same line "
                    f"({line.where}) has {_setting(first, option, theirs)} ({first.display}:{their_line}): "
                    + (
                        "a line speaks one protocol, so the devices sharing it must use the same driver"
                        if option == "driver"
                        else "devices sharing a line must use the same settings"
                    )
                )
                self._problem(placed.display, placed.doc.line_of(path), path, message, placed.doc)

    def _link_taken(self, placed: _Placed, other: _Placed, key: str) -> None:
        """``placed`` names a link that ``other`` already has, and one of them opens it alone."""
        option = next(
            (o for o in ("port", "host", "channel") if o in placed.device.options.model_fields_set), "port"
        )
        path = (*placed.prefix, option)
        their_option = next(
            (o for o in ("port", "host", "channel") if o in other.device.options.model_fields_set), "port"
        )
        their_line = other.doc.line_of((*other.prefix, their_option))
        where = key.partition(":")[2]
        message = (
            f"{where} is already the link of {other.device.name} ({other.display}:{their_line}), which "
            "opens it alone: two devices cannot read one port or one reader connection (each would take "
            "part of the other's traffic)"
        )
        self._problem(placed.display, placed.doc.line_of(path), path, message, placed.doc)

    def _check_command_timeouts(self, doc: Document, timeouts: Mapping[str, float]) -> None:
        """``upstream.mqtt.commands.timeouts`` may name only commands that a device here or the gateway
        offers: a misspelt name would silently leave that command on the default timeout."""
        known = {*GATEWAY_COMMANDS, *(name for d in self.devices for name in d.driver_class.commands)}
        for name in timeouts:
            if name not in known:
                path = ("upstream", "mqtt", "commands", "timeouts", name)
                message = (
                    f"no device of this gateway offers a command {name!r}, nor does the gateway "
                    f"(commands here: {', '.join(sorted(known))})"
                )
                self._problem(self.display, doc.line_of(path), path, message, doc)

    def _commands(
        self,
        raw: dict[str, Any],
        driver_class: type[Driver[Any]],
        doc: Document,
        display: str,
        prefix: FieldPath,
    ) -> tuple[str, ...] | None:
        """The device's ``commands:`` (the allow-list), each a command of its driver; None when wrong."""
        if "commands" not in raw or raw["commands"] is None:
            return ()
        where = (*prefix, "commands")
        value = raw["commands"]
        if not isinstance(value, list):
            message = f"expected a list of command names, e.g. [write, read], got {_kind(value)}"
            self._problem(display, doc.line_of(where), where, message, doc)
            return None
        offered = driver_class.commands
        has = ", ".join(sorted(offered)) or "none"
        names: list[str] = []
        ok = True
        for index, item in enumerate(value):
            at = (*where, index)
            if not isinstance(item, str):
                message = f"expected a command name, got {_kind(item)}"
            elif item not in offered:
                message = f"driver {driver_class.name!r} has no command {item!r} (its commands: {has})"
            elif item in names:
                message = f"{item!r} is listed twice"
            else:
                names.append(item)
                continue
            self._problem(display, doc.line_of(at), at, message, doc)
            ok = False
        return tuple(names) if ok else None

    def _position_from(
        self, raw: dict[str, Any], doc: Document, display: str, prefix: FieldPath
    ) -> tuple[bool, str | None]:
        """The device's ``position_from`` as written: a device name or null (checked against the other
        devices once all are read, :meth:`_check_positions`); False when it is not even a name."""
        value = raw.get("position_from")
        if value is None or (isinstance(value, str) and value):
            return True, value
        where = (*prefix, "position_from")
        message = f"expected the name of a gps device (position_from: gps), got {_kind(value)}"
        self._problem(display, doc.line_of(where), where, message, doc)
        return False, None

    def _check_positions(self, doc: Document, gateway_default: str | None) -> None:
        """Each ``position_from`` (a device's, and the gateway's) names a device whose driver emits
        ``gps.fix``, other than the device itself. A device that exists but is invalid has its own problem
        reported already."""
        fixes = {p.device.name: p for p in self.placed if GPS_FIX in p.device.driver_class.emits}
        receivers = ", ".join(sorted(fixes)) or "none configured"

        def problem(source: str, display: str, where: FieldPath, at: Document, own: str | None) -> None:
            if source in fixes and source != own:
                return
            if source == own:
                message = f"{source!r} is this device: a receiver cannot take positions from itself"
            elif source in self.names and source not in {p.device.name for p in self.placed}:
                return  # an invalid device: reported as such
            elif source in self.names:
                message = f"device {source!r} is no gps receiver: its driver emits no gps.fix ({receivers})"
            else:
                message = f"no device named {source!r} (gps receivers: {receivers})"
            self._problem(display, at.line_of(where), where, message, at)

        if gateway_default is not None:
            problem(gateway_default, self.display, ("gateway", "position_from"), doc, None)
        for placed in self.placed:
            source = placed.device.position_from
            if source is not None:
                where = (*placed.prefix, "position_from")
                problem(source, placed.display, where, placed.doc, placed.device.name)

    def _smoothing(
        self,
        raw: dict[str, Any],
        driver_class: type[Driver[Any]],
        doc: Document,
        display: str,
        prefix: FieldPath,
    ) -> SmoothingOptions | None:
        if "smoothing" not in raw:
            return None
        where = (*prefix, "smoothing")
        if RFID_READ not in driver_class.emits:
            message = f"only RFID devices can smooth reads; driver {driver_class.name!r} emits no rfid.read"
            self._problem(display, doc.line_of(where), where, message, doc)
            return None
        not_integers = self._integers(SmoothingOptions, raw["smoothing"], doc, display, where)
        try:
            smoothing = SmoothingOptions.model_validate(raw["smoothing"] or {})
            return None if not_integers else smoothing
        except ValidationError as err:
            self._add_validation_problems(
                err, doc=doc, display=display, prefix=where, model=SmoothingOptions, skip=not_integers
            )
            return None

    # -- pydantic errors --

    def _add_validation_problems(
        self,
        err: ValidationError,
        *,
        doc: Document,
        display: str,
        prefix: FieldPath,
        model: type[BaseModel] | None,
        root_keys: Sequence[str] = (),
        skip: Collection[FieldPath] = (),
    ) -> None:
        for error in err.errors(include_url=False, include_input=False):
            loc: FieldPath = tuple(error["loc"])
            located_field = (error.get("ctx") or {}).get("field") if error["type"] == _FIELD_ERROR else None
            if isinstance(located_field, str):
                loc = (*loc, located_field)
            keep_last = error["type"] == "missing" or located_field is not None
            path = _data_path(doc.value, (*prefix, *loc), keep_last=keep_last)
            if path in skip:
                continue
            message = _message(error, _value_at(doc.value, path), model, loc, root_keys)
            self._problem(display, doc.line_of(path), path, message, doc)


@dataclass(frozen=True)
class _Found:
    """A problem, and where in which document it was found (None: the file as a whole)."""

    problem: Problem
    doc: Document | None
    path: FieldPath


@dataclass(frozen=True)
class _Placed:
    """A valid device and where it is written."""

    device: DeviceConfig
    doc: Document
    display: str
    prefix: FieldPath


def _setting(placed: _Placed, option: str, settings: Mapping[str, Hashable]) -> str:
    """A line setting of a device as a problem shows it: ``9600``, ``N (the default)``, ``nothing``."""
    if option not in settings:
        return "nothing"
    value = settings[option]
    default = option != "driver" and option not in placed.device.options.model_fields_set
    return f"{value}{' (the default)' if default else ''}"


# -- integers are integers ---------------------------------------------------------------------------------

_CONVERTS = (BeforeValidator, WrapValidator, PlainValidator)
"""Validators that take the input before its type does: a value they convert (``max_bytes: 1.5GiB``) is no
integer yet, and its own validator says what is wrong with it."""
_INTEGER_TEXT = re.compile(r"\s*[-+]?[0-9]+\s*")


def _integer_problems(model: type[BaseModel], raw: Any, path: FieldPath) -> Iterator[tuple[FieldPath, str]]:
    """(path, message) for every value in ``raw`` (as read from YAML) that ``model`` means as an integer
    (an ``int`` field, a ``Literal`` of integers, an ``int`` mapping key, ... at any depth of nested models,
    lists and mappings) and that is not a YAML integer. Pydantic's lax mode would take ``1.0``, ``"1"`` and
    ``true`` there; its strict mode would also refuse a string for an enum or a path, so the config checks
    integers itself, from each model's own types."""
    if not isinstance(raw, dict):
        return
    decorators = model.__pydantic_decorators__.field_validators.values()
    converted = {name for d in decorators if d.info.mode != "after" for name in d.info.fields}
    for name, info in model.model_fields.items():
        key = info.alias if isinstance(info.alias, str) and info.alias in raw else name
        if key not in raw:
            continue
        converts = name in converted or any(isinstance(m, _CONVERTS) for m in info.metadata)
        yield from _integers_in(info.annotation, raw[key], (*path, key), converts=converts)


def _integers_in(
    annotation: Any, raw: Any, path: FieldPath, *, converts: bool = False
) -> Iterator[tuple[FieldPath, str]]:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        converts = converts or any(isinstance(m, _CONVERTS) for m in metadata)
        yield from _integers_in(base, raw, path, converts=converts)
        return
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if raw is None:
            return
        if all(_means_integer(m) for m in members):
            annotation, origin = members[0], get_origin(members[0])
        else:
            shaped = [m for m in members if _fits(m, raw)]
            if len(shaped) == 1:
                yield from _integers_in(shaped[0], raw, path, converts=converts)
            return
    if _means_integer(annotation):
        message = None if converts else _not_an_integer(raw)
        if message is not None:
            yield path, message
        return
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _integer_problems(annotation, raw, path)
        return
    args = get_args(annotation)
    if isinstance(raw, list) and origin in (list, tuple, set, frozenset, Sequence, Collection) and args:
        item = args[0]
        for index, value in enumerate(raw):
            yield from _integers_in(item, value, (*path, index))
    elif isinstance(raw, dict) and origin in (dict, Mapping) and len(args) == 2:
        key_type, value_type = args
        for key, value in raw.items():
            if _means_integer(key_type):
                message = _not_an_integer(key)
                if message is not None:
                    yield (*path, key), message
            yield from _integers_in(value_type, value, (*path, key))


def _means_integer(annotation: Any) -> bool:
    """An ``int`` (or an int enum, never a bool), or a ``Literal`` of integers, possibly ``Annotated``."""
    if get_origin(annotation) is Annotated:
        return _means_integer(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return isinstance(annotation, type) and issubclass(annotation, int) and not issubclass(annotation, bool)


def _fits(annotation: Any, raw: Any) -> bool:
    """Whether ``raw`` has the shape of a structured ``annotation`` (a model, a list, a mapping)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation) or annotation
    if isinstance(raw, dict):
        return origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, BaseModel))
    if isinstance(raw, list):
        return origin in (list, tuple, set, frozenset, Sequence, Collection)
    return False


def _not_an_integer(value: Any) -> str | None:
    """Why a YAML value is no integer, without showing it; None for an integer, and for what the
    model's own validation describes better (a list, a mapping, null, a date)."""
    if isinstance(value, bool):
        return "expected an integer, got a boolean"
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return "expected an integer, got a number with a decimal point"
    if isinstance(value, str):
        hint = ": write it without quotes" if _INTEGER_TEXT.fullmatch(value) else ""
        return "expected an integer, got a string" + hint
    return None


def _data_path(data: Any, loc: FieldPath, *, keep_last: bool) -> FieldPath:
    """The part of a validation error's location that exists in the data (pydantic adds steps such as
    ``[key]`` or union member names); plus the last step when it names a missing key."""
    out: list[Hashable] = []
    node = data
    for index, step in enumerate(loc):
        if _has(node, step):
            node = node[step]
        else:
            if keep_last and index == len(loc) - 1 and isinstance(node, dict):
                out.append(step)
            break
        out.append(step)
    return tuple(out)


def _has(node: Any, step: Hashable) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)


def _value_at(data: Any, path: FieldPath) -> Any:
    node = data
    for step in path:
        if not _has(node, step):
            return None
        node = node[step]
    return node


def _format_path(data: Any, path: FieldPath) -> str:
    """``("devices", 0, "antennas", 9)`` -> ``devices[0].antennas.9`` (``[i]`` for list indexes only)."""
    out = ""
    node = data
    for step in path:
        if isinstance(node, list) and isinstance(step, int):
            out += f"[{step}]"
            node = node[step] if 0 <= step < len(node) else None
        else:
            out += f".{step}" if out else str(step)
            node = node.get(step) if isinstance(node, dict) else None
    return out


def _kind(value: Any) -> str:
    """What a YAML value is, never what it holds."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


_SCALAR_KINDS: Final = {
    "literal_error": "", "enum": "", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
}  # fmt: skip
"""Pydantic's errors for a value that should have been one scalar: what it should have been ("": one of
the values its message lists)."""


def _message(
    error: ErrorDetails,
    value: Any,
    model: type[BaseModel] | None,
    loc: FieldPath,
    root_keys: Sequence[str],
) -> str:
    """A problem's message, from the error's type and message only (never its input: it may be a secret)."""
    kind = error["type"]
    if kind == "missing":
        return "missing (required)"
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1], root_keys) if model is not None else None
        return "unknown key" + _suggestion(loc[-1] if loc else None, known)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_kind(value)}"
    if kind == "list_type":
        return f"expected a list, got {_kind(value)}"
    message = error["msg"]
    if kind in _SCALAR_KINDS and isinstance(value, (list, dict)):  # `baudrate: [115200]` is no 115200
        wanted = _SCALAR_KINDS[kind]
        if wanted:
            return f"expected {wanted}, got {_kind(value)}"
        message = message.removeprefix("Input should be ").removeprefix("input should be ")
        return f"expected one value, got {_kind(value)}: it should be {message}"
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    return message


def _suggestion(key: Hashable, known: list[str] | None) -> str:
    if not known:
        return ""
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(known)})"


def _known_keys(model: type[BaseModel], path: FieldPath, root_keys: Sequence[str]) -> list[str] | None:
    """The keys a mapping at ``path`` (relative to ``model``) accepts, when the path leads through models."""
    current = model
    for step in path:
        sub = None
        for name, info in current.model_fields.items():
            if step in (name, info.alias):
                sub = _model_in(info.annotation)
                break
        if sub is None:
            return None
        current = sub
    keys = [info.alias or name for name, info in current.model_fields.items()]
    if not path:
        keys.extend(root_keys)
    return sorted(keys)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
