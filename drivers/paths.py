"""A file named in a device's options, relative to the directory of the config file that names it.

The runtime validates a device's options with a validation context that knows that directory (the loader's
``edgegw.config`` context, an object with a ``base_dir``); a driver cannot import the runtime, so it reads
the directory from that context by name here. Without a context (options validated directly, in a test or
a tool), a relative path stays relative to the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, ValidationInfo

__all__ = ["ConfigFile", "resolve"]

CONTEXT_KEY: Final = "edgegw.config"


def resolve(value: Path, info: ValidationInfo) -> Path:
    """``value`` made absolute against the config file's directory (when the context gives one)."""
    if value.is_absolute():
        return value
    context = info.context.get(CONTEXT_KEY) if isinstance(info.context, dict) else None
    base = getattr(context, "base_dir", None)
    return Path(base) / value if isinstance(base, Path) else value


def _readable(value: Path, info: ValidationInfo) -> Path:
    if not str(value).strip():
        raise ValueError("must not be empty")
    path = resolve(value, info)
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise ValueError(f"cannot read {str(value)!r}: {err.strerror or err}") from None
    return path


ConfigFile = Annotated[Path, AfterValidator(_readable)]
"""A file that must be readable when the config is loaded, relative to the config file's directory."""
