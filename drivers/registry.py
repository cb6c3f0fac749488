"""A small, lazy driver registry.

Drivers are declared under the entry-point group ``edgegw.drivers`` as ``name = "module:Class"``. Nothing is
imported until a device asks for that name, so an optional dependency of one driver never affects the
others; a driver whose import fails raises :class:`~drivers.errors.MissingDependencyError` naming what is
missing.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .base import Driver
from .errors import ConfigurationError, MissingDependencyError

GROUP = "edgegw.drivers"

_loaded: dict[str, type[Driver[Any]]] = {}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """Every registered driver name, sorted."""
    return sorted(_entry_points())


def load(name: str) -> type[Driver[Any]]:
    """The driver class registered as ``name``."""
    if name in _loaded:
        return _loaded[name]
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ConfigurationError(f"unknown driver {name!r} (known: {known})")
    try:
        cls = eps[name].load()
    except ImportError as err:
        raise MissingDependencyError(
            f"driver {name!r} cannot be loaded: {err} (install the package it needs)"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise ConfigurationError(f"driver {name!r} ({eps[name].value}) is not a Driver class")
    _loaded[name] = cls
    return cls
