"""Configuration: one gateway YAML file plus, optionally, a directory of device files.

:func:`load_config` reads and validates everything before anything starts (``edgegw check`` calls it) and
returns a :class:`Config`, or raises :class:`ConfigError` listing *every* problem found, one per line::

    FILE:LINE: field.path: message

The gateway file::

    gateway:   {id: lane-demo, log_level: INFO, log_levels: {edgegw.forwarder: DEBUG}}
    buffer:    {path: buffer.db, max_bytes: 512MiB, when_full: drop_oldest, ...}
    upstream:
      mqtt:    {url: mqtts://broker:8883, prefix: edgegw, username: gw, password_file: mqtt.pass, tls: {...}}
    supervisor: {backoff_initial_s: 1.0, backoff_max_s: 30.0}
    queue:     {max_events: 10000}
    metrics:   {enabled: true, listen: "127.0.0.1:9108"}
    devices:                                  # a list of devices (may be empty or absent) ...
      - {name: reader-1, driver: uhf-r2000, port: /dev/ttyUSB0, ...}
    devices_dir: devices.d                    # ... and/or a directory of device files

Every option, its default and its meaning is a field of the models below (their ``description`` is the
reference; defaults live there and nowhere else). Unknown keys are errors everywhere.

Paths (``buffer.path``, ``devices_dir``, TLS files, ``*_file`` secrets) are relative to the directory of the
file that names them. A device file in ``devices_dir`` (every ``*.yaml`` / ``*.yml`` file, hidden files
excepted, read in sorted name order, after the gateway file's ``devices``) holds either one device mapping or
a list of device mappings.

A device is ``name`` (unique across all files), ``driver`` (a registered driver name, see
:mod:`drivers.registry`) and the driver's own options, validated by the driver's ``Options`` model.

Problem locations: FILE is the path as given to :func:`load_config` (device files: joined with
``devices_dir`` as written). The field path is relative to that file's top: ``devices[0].antennas.9`` or
``upstream.mqtt.url`` in the gateway file; in a device file ``baudrate`` (the file holds one mapping) or
``[1].baudrate`` (it holds a list); empty for the file as a whole (then ``FILE:LINE: message``). LINE is the
line of the offending key (for an unknown key, that key; for a missing key, its parent mapping); 0 when the
file itself cannot be read.

Integers are integers: wherever an option means an integer (a count, an address, a unit id, a baud rate, an
antenna number, ...), the YAML value must be one. ``1.0``, ``"1"`` or ``true`` there is a problem, not
silently an integer (pydantic alone would take them), while an option that means a number takes ``5`` as
well as ``5.0``. The loader checks this against the models' own types (:func:`_integer_problems`), so it holds
for every model, a driver's from a plug-in included.

A value written once with an anchor (``points: &feeder_points [...]``) and reused by aliases (``points:
*feeder_points``) is one text: a problem inside it is reported once, where it is written, naming the devices
that share it, rather than once per device.

Devices on one line (a serial port, or a ``host:tcp_port``) share it (:mod:`drivers.bus`): each driver says
which line its device uses and the settings every device on it must share
(:meth:`drivers.base.DriverOptions.shared_line`). Devices that disagree (9600 and 19200 baud on one port, a
Modbus and a DL/T 645 meter on one line, Modbus TCP and RTU over TCP to one ``host:tcp_port``) are a
problem at the later device's option, naming the first device and its FILE:LINE; devices with identical
settings share the line, which is what an RS-485 bus is for.

Secrets (``password_file`` / ``password_env``, ``tls.key_password_file`` / ``tls.key_password_env``) are
resolved at load time, into :class:`~pydantic.SecretStr` values (``MqttConfig.password``,
``TlsConfig.key_password``). No secret value ever appears in a message or a repr: problems are built from
the validation error's type and message, never its input.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from drivers import registry
from drivers.base import Driver, DriverOptions
from drivers.bus import SharedLine

from .buffer import WhenFull
from .processors.rfid import SmoothingOptions
from .yamlsrc import Document, FieldPath, YamlError, load_file

__all__ = [
    "BufferConfig",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "DriverLookup",
    "GatewayConfig",
    "MetricsConfig",
    "MqttConfig",
    "Problem",
    "QueueConfig",
    "ReconnectConfig",
    "SupervisorConfig",
    "TlsConfig",
    "UpstreamConfig",
    "load_config",
    "split_listen",
]

DriverLookup = Callable[[str], type[Driver[Any]]]
"""Maps a ``driver:`` name to its class; :func:`drivers.registry.load` unless a test injects its own."""


# --------------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, located."""

    file: str
    """The file, as given to :func:`load_config` (a device file: joined with ``devices_dir`` as written)."""
    line: int
    """1-based line of the offending key or value (0: the file as a whole)."""
    field: str
    """Dotted path from the file's top, e.g. ``devices[0].antennas.9``; empty for the file as a whole."""
    message: str

    def __str__(self) -> str:
        if self.field:
            return f"{self.file}:{self.line}: {self.field}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` lists every problem found, by file then line;
    ``str()`` gives one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------------------------------------
# Validation context: where relative paths start, where secrets come from

_CONTEXT_KEY = "edgegw.config"
_FIELD_ERROR = "edgegw_field"
_MAX_SECRET_BYTES = 64 * 1024


@dataclass
class _LoadContext:
    base_dir: Path
    environ: Mapping[str, str]
    _secret_files: dict[Path, SecretStr] = field(default_factory=dict)

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else self.base_dir / value

    def secret_file(self, path: Path, written: str) -> SecretStr:
        """The content of a secret file (one trailing newline removed), read once per load."""
        if path not in self._secret_files:
            try:
                with path.open("rb") as f:
                    data = f.read(_MAX_SECRET_BYTES + 1)
            except OSError as err:
                raise _error("secret_file", f"cannot read {written!r}: {_reason(err)}") from None
            if len(data) > _MAX_SECRET_BYTES:
                raise _error("secret_file", f"{written!r} is larger than {_MAX_SECRET_BYTES} bytes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _error("secret_file", f"{written!r} is not UTF-8 text") from None
            text = text.removesuffix("\n").removesuffix("\r")
            if not text:
                raise _error("secret_file", f"{written!r} is empty")
            self._secret_files[path] = SecretStr(text)
        return self._secret_files[path]

    def secret_env(self, name: str) -> SecretStr:
        value = self.environ.get(name)
        if value is None:
            raise _error("secret_env", f"environment variable {name} is not set")
        if not value:
            raise _error("secret_env", f"environment variable {name} is empty")
        return SecretStr(value)


def _context(info: ValidationInfo) -> _LoadContext:
    """The loader's context; without one (a model validated directly), the current directory and
    ``os.environ``."""
    if isinstance(info.context, dict):
        ctx = info.context.get(_CONTEXT_KEY)
        if isinstance(ctx, _LoadContext):
            return ctx
    return _LoadContext(base_dir=Path.cwd(), environ=os.environ)


def _error(kind: str, message: str) -> PydanticCustomError:
    # The message is a template: braces would be read as placeholders.
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"))


def _field_error(field_name: str, message: str) -> PydanticCustomError:
    """A cross-field error raised by a model validator, located at one of the model's fields."""
    return PydanticCustomError(
        _FIELD_ERROR, message.replace("{", "(").replace("}", ")"), {"field": field_name}
    )


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


# --------------------------------------------------------------------------------------------------------
# Field types

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise _error(
            "name",
            "must start with a letter or digit and hold only letters, digits, '_', '.' and '-' "
            "(it goes into MQTT topics)",
        )
    return value


Name = Annotated[str, Field(strict=True, min_length=1, max_length=64), AfterValidator(_check_name)]


def _parse_size(value: Any) -> Any:
    if isinstance(value, bool):
        raise _error("size", "expected a size: an integer number of bytes or a string such as '512MiB'")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return value
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise _error("size", "expected a size: an integer number of bytes or a string such as '512MiB'")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise _error(
            "size", f"unknown unit {unit!r} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB; k=1000, Ki=1024)"
        )
    return int(float(number) * factor) if "." in number else int(number) * factor


ByteCount = Annotated[int, BeforeValidator(_parse_size), Field(strict=True, ge=1)]


def _parse_size_or_zero(value: Any) -> Any:
    """:func:`_parse_size` for a size where 0 means none (its own function: the schema says minimum 0)."""
    return _parse_size(value)


ByteCountOrZero = Annotated[int, BeforeValidator(_parse_size_or_zero), Field(strict=True, ge=0)]


def _check_prefix(value: str) -> str:
    if any(c in value for c in "+#\0"):
        raise _error("topic_prefix", "must not contain the MQTT wildcards '+' or '#' (or NUL)")
    if value.startswith("$"):
        raise _error("topic_prefix", "must not start with '$' (reserved for broker topics)")
    if any(level == "" for level in value.split("/")):
        raise _error("topic_prefix", "must not start or end with '/' or contain '//'")
    return value


TopicPrefix = Annotated[str, Field(strict=True, min_length=1, max_length=200), AfterValidator(_check_prefix)]


def _check_client_id(value: str) -> str:
    if any(c in value for c in "+#/\0") or not value.isprintable() or value != value.strip():
        raise _error("client_id", "must be printable, without spaces at the ends, '/', '+', '#'")
    return value


ClientId = Annotated[str, Field(strict=True, min_length=1, max_length=128), AfterValidator(_check_client_id)]


def _check_url(value: str) -> str:
    if "://" not in value:
        raise _error("url", "must start with mqtt:// or mqtts:// (mqtts for TLS)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise _error("url", "not a valid URL (bad host or port)") from None
    if parts.scheme.lower() not in ("mqtt", "mqtts"):
        raise _error("url", f"scheme must be mqtt:// or mqtts:// (mqtts for TLS), not {parts.scheme}://")
    if "@" in parts.netloc:
        raise _error("url", "must not hold credentials: use username and password_file or password_env")
    if not parts.hostname:
        raise _error("url", "missing host")
    if port == 0:
        raise _error("url", "port must be 1..65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _error("url", "must be just mqtt[s]://HOST[:PORT], without a path, query or fragment")
    return value


MqttUrl = Annotated[str, Field(strict=True), AfterValidator(_check_url)]


def _check_not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise _error("path_empty", "must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    return _context(info).path(value)


ConfigPath = Annotated[Path, BeforeValidator(_check_not_empty), AfterValidator(_resolve_path)]
"""A path, relative to the directory of the file that names it."""


def _check_readable(value: Path, info: ValidationInfo) -> Path:
    path = _context(info).path(value)
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise _error("file", f"cannot read {str(value)!r}: {_reason(err)}") from None
    return path


ReadableFile = Annotated[Path, BeforeValidator(_check_not_empty), AfterValidator(_check_readable)]
"""A file that must exist and be readable at load time."""


def _read_secret_file(value: Path, info: ValidationInfo) -> Path:
    ctx = _context(info)
    path = ctx.path(value)
    ctx.secret_file(path, str(value))
    return path


SecretFile = Annotated[Path, BeforeValidator(_check_not_empty), AfterValidator(_read_secret_file)]
"""A file holding a secret (read at load time; one trailing newline is ignored)."""


def _check_env(value: str, info: ValidationInfo) -> str:
    if not _ENV_RE.fullmatch(value):
        raise _error("env_name", "not a valid environment variable name")
    _context(info).secret_env(value)
    return value


SecretEnv = Annotated[str, Field(strict=True), AfterValidator(_check_env)]
"""The name of an environment variable holding a secret (must be set, not empty, at load time)."""


def _none_is_empty(value: Any) -> Any:
    return [] if value is None else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _protocol_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _resolve_secret(
    info: ValidationInfo,
    names: tuple[str, str, str],
    inline: SecretStr | None,
    file: Path | None,
    env: str | None,
) -> SecretStr | None:
    """One secret from at most one of its three sources (inline, file, environment variable)."""
    given = [name for name, value in zip(names, (inline, file, env), strict=True) if value is not None]
    if len(given) > 1:
        raise _field_error(given[1], f"give at most one of {', '.join(names)} (got {' and '.join(given)})")
    ctx = _context(info)
    if file is not None:
        return ctx.secret_file(file, str(file))
    if env is not None:
        return ctx.secret_env(env)
    return inline


# --------------------------------------------------------------------------------------------------------
# Models


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)]
_LOGGER_RE = re.compile(r"[^\s.]+(\.[^\s.]+)*")


def _check_logger_names(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not _LOGGER_RE.fullmatch(name):
            raise _field_error(name, "not a logger name: dotted words without spaces, e.g. edgegw.forwarder")
    return value


class GatewayConfig(_Section):
    """``gateway:`` — who this gateway is."""

    id: Name = Field(
        description="This gateway's id: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters. It goes into "
        "MQTT topics and the default client id, so it never holds '/', '+' or '#'.",
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = Field(
        default="INFO", description="Root log level (case-insensitive): " + ", ".join(_LOG_LEVELS) + "."
    )
    log_levels: Annotated[dict[str, LogLevel], AfterValidator(_check_logger_names)] = Field(
        default_factory=dict,
        description="Levels of single loggers, over log_level, e.g. {edgegw.forwarder: debug}. The "
        "gateway's loggers: edgegw (the runtime), edgegw.forwarder, edgegw.mqtt, edgegw.device.<name>, "
        "edgegw.reload, edgegw.metrics, edgegw.sdnotify. Applied again on reload (SIGHUP).",
    )


def split_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> (host, port); ValueError saying what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9108 ([::1]:9108 for IPv6)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:9108")
    if not host or any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"bad host {host!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0..65535 (0: any free port), not {port_text!r}")
    return host, int(port_text)


def _check_listen(value: str) -> str:
    try:
        split_listen(value)
    except ValueError as err:
        raise _error("listen", str(err)) from None
    return value


class MetricsConfig(_Section):
    """``metrics:`` — Prometheus metrics (``/metrics``) and the health check (``/healthz``) over HTTP."""

    enabled: Annotated[bool, Field(strict=True)] = Field(
        default=True, description="Serve /metrics and /healthz (default true)."
    )
    listen: Annotated[str, Field(strict=True), AfterValidator(_check_listen)] = Field(
        default="127.0.0.1:9108",
        description="HOST:PORT to serve on ([::1]:9108 for IPv6; port 0: any free port, logged). Keep it on "
        "loopback or a management network: the endpoints are not authenticated.",
    )

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class BufferConfig(_Section):
    """``buffer:`` — the durable on-disk buffer where an event becomes accepted."""

    path: ConfigPath = Field(
        description="The buffer's database file, relative to the config file's directory unless absolute. "
        "Its directory is created by the runtime, not checked here."
    )
    max_bytes: ByteCount = Field(
        default=2**30,
        description="Cap on the bytes of stored events: an integer, or a string with a unit, e.g. "
        "'512MiB', '1GB' (k/M/G/T = powers of 1000, Ki/Mi/Gi/Ti = powers of 1024). Default 1 GiB.",
    )
    when_full: WhenFull = Field(
        default=WhenFull.DROP_OLDEST,
        description="What to do when an append would exceed max_bytes: 'drop_oldest' (default: keep the "
        "newest data) or 'reject_new' (keep the oldest). Every dropped event is counted.",
    )
    commit_interval_ms: Annotated[int, Field(strict=True, ge=0, le=60_000)] = Field(
        default=20,
        description="Group commit: an appended event waits at most this long for others to share its "
        "commit (0: commit every append on its own).",
    )
    commit_max_events: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = Field(
        default=1000, description="Group commit: commit at once when this many events are waiting."
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite synchronous mode: 'full' (default: a committed event survives a power cut) "
        "or 'normal' (faster; the last commits may be lost on power loss, never corrupted).",
    )
    disk_reserve: ByteCountOrZero = Field(
        default=8 * 2**20,
        description="A spare file of this size kept beside the buffer (<path>.reserve) and deleted when "
        "the filesystem fills, so that the buffer can still commit deletions and forward what it holds; "
        "re-created when space returns. 0 keeps none. Default 8 MiB.",
    )


class ReconnectConfig(_Section):
    """``upstream.mqtt.reconnect:`` — backoff between broker connection attempts."""

    initial_s: Annotated[float, Field(strict=True, gt=0)] = Field(
        default=0.5, description="First delay before reconnecting, in seconds; doubles per failed attempt."
    )
    max_s: Annotated[float, Field(strict=True, gt=0)] = Field(
        default=30.0, description="Longest delay between attempts, in seconds (>= initial_s)."
    )

    @model_validator(mode="after")
    def _check_order(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise _field_error("max_s", "must be >= initial_s")
        return self


class TlsConfig(_Section):
    """``upstream.mqtt.tls:`` — TLS options; only with an ``mqtts://`` url (which alone means TLS with the
    system's CAs and hostname verification)."""

    ca_file: ReadableFile | None = Field(
        default=None, description="CA bundle (PEM) to verify the broker with, instead of the system's CAs."
    )
    cert_file: ReadableFile | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS; may also hold the key."
    )
    key_file: ReadableFile | None = Field(
        default=None, description="Client private key (PEM), when not in cert_file. Needs cert_file."
    )
    key_password: SecretStr | None = Field(
        default=None,
        description="Password of an encrypted client key. Prefer key_password_file or key_password_env. "
        "After loading, holds the resolved password whichever way it was given.",
    )
    key_password_file: SecretFile | None = Field(
        default=None, description="File holding the client key's password (read at load time)."
    )
    key_password_env: SecretEnv | None = Field(
        default=None, description="Environment variable holding the client key's password (must be set)."
    )
    insecure: Annotated[bool, Field(strict=True)] = Field(
        default=False,
        description="Skip verifying the broker's certificate and host name. Off by default; for tests only.",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _resolve(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> TlsConfig:
        tls: TlsConfig = handler(data)
        if tls.key_file is not None and tls.cert_file is None:
            raise _field_error("key_file", "needs cert_file")
        names = ("key_password", "key_password_file", "key_password_env")
        secret = _resolve_secret(info, names, tls.key_password, tls.key_password_file, tls.key_password_env)
        if secret is not None and tls.cert_file is None:
            raise _field_error("key_password", "a key password needs cert_file (and key_file)")
        if secret is not tls.key_password:
            tls = tls.model_copy(update={"key_password": secret})
        return tls


class MqttConfig(_Section):
    """``upstream.mqtt:`` — the MQTT broker events are forwarded to."""

    url: MqttUrl = Field(
        description="Broker URL: mqtt://HOST[:PORT] (port 1883 by default) or mqtts://HOST[:PORT] for TLS "
        "(port 8883 by default). No credentials in the URL."
    )
    prefix: TopicPrefix = Field(
        default="edgegw",
        description="First topic level(s) of every topic this gateway publishes; no '+', '#', empty levels "
        "or leading '$'.",
    )
    client_id: ClientId = Field(
        description="MQTT client id; defaults to 'edgegw-<gateway.id>' (filled in by Config)."
    )
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol_text)] = Field(
        default="5", description="MQTT protocol version: '5' (default) or '3.1.1'."
    )
    qos: Literal[1] = Field(
        default=1,
        description="QoS of published events. Only 1 for now: an event leaves the buffer only once the "
        "broker acknowledged it (at-least-once).",
    )
    keepalive_s: Annotated[int, Field(strict=True, ge=1, le=65535)] = Field(
        default=30, description="MQTT keepalive interval, in seconds."
    )
    max_inflight: Annotated[int, Field(strict=True, ge=1, le=65535)] = Field(
        default=100, description="Most publishes awaiting the broker's acknowledgement at once."
    )
    batch_max_events: Annotated[int, Field(strict=True, ge=1, le=10_000)] = Field(
        default=1, description="Most events per MQTT message (1: one message per event)."
    )
    username: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None, description="Username for the broker; required when a password is given."
    )
    password: SecretStr | None = Field(
        default=None,
        description="Broker password, inline (prefer password_file or password_env; at most one of the "
        "three). After loading, holds the resolved password whichever way it was given.",
    )
    password_file: SecretFile | None = Field(
        default=None,
        description="File holding the broker password (read at load time; one trailing newline ignored).",
    )
    password_env: SecretEnv | None = Field(
        default=None,
        description="Environment variable holding the broker password (must be set at load time).",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS options (only with an mqtts:// url).")
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff between connection attempts."
    )
    stop_flush_s: Annotated[float, Field(strict=True, ge=0, le=3600)] = Field(
        default=15.0,
        description="On a clean stop, how long (in seconds, from the start of the stop) the gateway may "
        "spend publishing what is still buffered, the devices' last events included, before it publishes "
        "'offline' and disconnects; what is left stays buffered for the next start. An unreachable broker "
        "is tried once, not waited for. Keep it below systemd's TimeoutStopSec (30 s in the shipped unit) "
        "less 15 s for the rest of the stop. 0: publish nothing more at a stop.",
    )

    @property
    def tls_enabled(self) -> bool:
        """Whether the connection uses TLS (the url's scheme is mqtts)."""
        return urlsplit(self.url).scheme.lower() == "mqtts"

    @property
    def host(self) -> str:
        """The broker's host name or address (IPv6 without brackets)."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The broker's port: the url's, else 8883 with TLS, 1883 without."""
        return urlsplit(self.url).port or (8883 if self.tls_enabled else 1883)

    @model_validator(mode="wrap")
    @classmethod
    def _resolve(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> MqttConfig:
        mqtt: MqttConfig = handler(data)
        if "tls" in mqtt.model_fields_set and not mqtt.tls_enabled:
            raise _field_error("tls", "TLS options need an mqtts:// url")
        names = ("password", "password_file", "password_env")
        secret = _resolve_secret(info, names, mqtt.password, mqtt.password_file, mqtt.password_env)
        if secret is not None and mqtt.username is None:
            raise _field_error("username", "required when a password is given")
        if secret is not mqtt.password:
            mqtt = mqtt.model_copy(update={"password": secret})
        return mqtt


class UpstreamConfig(_Section):
    """``upstream:`` — where accepted events go."""

    mqtt: MqttConfig = Field(description="The MQTT broker.")


class SupervisorConfig(_Section):
    """``supervisor:`` — restarting failed devices."""

    backoff_initial_s: Annotated[float, Field(strict=True, gt=0)] = Field(
        default=1.0,
        description="Delay before the first restart of a failed device, in seconds; doubles per failure.",
    )
    backoff_max_s: Annotated[float, Field(strict=True, gt=0)] = Field(
        default=30.0, description="Longest delay between restarts, in seconds (>= backoff_initial_s)."
    )

    @model_validator(mode="after")
    def _check_order(self) -> SupervisorConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise _field_error("backoff_max_s", "must be >= backoff_initial_s")
        return self


class QueueConfig(_Section):
    """``queue:`` — the bounded in-memory queue between drivers and the buffer."""

    max_events: Annotated[int, Field(strict=True, ge=1, le=10_000_000)] = Field(
        default=10_000,
        description="Capacity of the pipeline queue; when full, new events are dropped and counted "
        "(a driver never blocks).",
    )


class _Sections(_Section):
    gateway: GatewayConfig = Field(description="Who this gateway is.")
    buffer: BufferConfig = Field(description="The durable buffer.")
    upstream: UpstreamConfig = Field(description="Where events go.")
    supervisor: SupervisorConfig = Field(
        default_factory=SupervisorConfig, description="Restarting failed devices."
    )
    queue: QueueConfig = Field(default_factory=QueueConfig, description="The pipeline queue.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics and the health check."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_client_id(cls, data: Any) -> Any:
        """Fill in ``upstream.mqtt.client_id`` from ``gateway.id`` when absent."""
        if not isinstance(data, dict):
            return data
        upstream, gateway = data.get("upstream"), data.get("gateway")
        if not (isinstance(upstream, dict) and isinstance(upstream.get("mqtt"), dict)):
            return data
        if "client_id" in upstream["mqtt"]:
            return data
        gateway_id = gateway.get("id") if isinstance(gateway, dict) else None
        # With no usable gateway.id, that is the error to report, not a missing client_id.
        ok = isinstance(gateway_id, str) and _NAME_RE.fullmatch(gateway_id)
        client_id = f"edgegw-{gateway_id}" if ok else "edgegw"
        return {**data, "upstream": {**upstream, "mqtt": {**upstream["mqtt"], "client_id": client_id}}}


class _GatewayFile(_Sections):
    """The gateway file as written; devices are validated one by one by the loader."""

    devices: Annotated[list[Any], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list, description="Devices (mappings), in order; empty (null) means none."
    )
    devices_dir: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None,
        description="Directory of device files (*.yaml, *.yml; each one device mapping or a list of them), "
        "relative to this file's directory. Read in sorted name order, after `devices`.",
    )


class DeviceConfig(BaseModel):
    """One device: its name, its driver and the driver's validated options, and where it was defined."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str = Field(description="Unique device name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters.")
    driver: str = Field(description="The registered driver name (`driver:` in YAML).")
    options: SerializeAsAny[DriverOptions] = Field(
        description="Every other key of the device, validated by the driver's `Options` model."
    )
    smoothing: SmoothingOptions | None = Field(
        default=None,
        description="RFID devices only: turn raw reads into arrivals, departures, moves and lane counts.",
    )
    file: Path = Field(description="The absolute path of the file the device is defined in.")
    line: int = Field(description="The line its mapping starts on.")
    _driver_class: type[Driver[Any]] | None = PrivateAttr(None)

    @property
    def driver_class(self) -> type[Driver[Any]]:
        """The driver class the loader resolved ``driver`` to (with the loader's ``driver_lookup``)."""
        if self._driver_class is None:
            raise LookupError(f"device {self.name!r} was not built by load_config")
        return self._driver_class


class Config(_Sections):
    """A validated configuration (see :func:`load_config`)."""

    devices: list[DeviceConfig] = Field(
        default_factory=list, description="Every device: the gateway file's, then devices_dir's."
    )
    devices_dir: Path | None = Field(
        default=None, description="The devices directory, resolved; None if not used."
    )
    source: Path = Field(description="The gateway file, absolute.")


_DEVICE_KEYS = ("name", "driver", "smoothing")
"""A device's keys that belong to the gateway; every other key is the driver's."""


class _DeviceHead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name
    driver: Annotated[str, Field(strict=True, min_length=1)]


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
        self._check_shared_lines()
        self.problems = self._merge_anchored()
        if self.problems or sections is None:
            order = self.file_order
            self.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
            raise ConfigError(self.problems)
        return Config(
            gateway=sections.gateway,
            buffer=sections.buffer,
            upstream=sections.upstream,
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
        not_integers = self._integers(driver_class.Options, raw_options, doc, display, prefix)
        try:
            options = driver_class.Options.model_validate(raw_options, context={_CONTEXT_KEY: self.context})
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
        if name is None or ("smoothing" in raw and smoothing is None) or not_integers:
            return
        device = DeviceConfig(
            name=name, driver=driver_name, options=options, smoothing=smoothing, file=file, line=line
        )
        device._driver_class = driver_class
        self.devices.append(device)
        self.placed.append(_Placed(device, doc, display, prefix))

    def _check_shared_lines(self) -> None:
        """Devices on one line must agree on its settings: each one that does not is a problem at its own
        option, naming the first device on the line (which the bus would otherwise have kept)."""
        first_on: dict[str, tuple[_Placed, SharedLine]] = {}
        for placed in self.placed:
            line = placed.device.options.shared_line()
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
        if "rfid.read" not in driver_class.emits:
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
