"""The configuration's models: every option, its default and its meaning (their ``description`` is the
reference; defaults live here and nowhere else), and the validators of single values. Loading the files and
reporting problems with FILE:LINE is :mod:`gateway.config.loader`; the whole picture is :mod:`gateway.config`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializeAsAny,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import PydanticCustomError

from drivers.base import Driver, DriverOptions
from gateway.delivery.buffer import WhenFull
from gateway.delivery.upstream import UpstreamOptions
from gateway.processors.rfid import SmoothingOptions

__all__ = [
    "BufferConfig",
    "CommandsConfig",
    "Config",
    "ConfigError",
    "DedupeWindow",
    "DeviceConfig",
    "DriverLookup",
    "GatewayConfig",
    "MetricsConfig",
    "MqttConfig",
    "MqttUpstreamOptions",
    "Problem",
    "QueueConfig",
    "RateLimit",
    "ReconnectConfig",
    "SupervisorConfig",
    "TlsConfig",
    "UpstreamConfig",
    "resolve_secret",
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
    position_from: Name | None = Field(
        default=None,
        description="A gps device whose latest fix every other device's events carry as `position` "
        "(lat, lon, time), unless the device names its own position_from; see the README.",
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

    @property
    def exposed(self) -> str | None:
        """A warning when enabled on an address other than loopback (the endpoints have no
        authentication); None on loopback or when disabled."""
        if not self.enabled:
            return None
        host = self.host
        if host == "localhost":
            return None
        try:
            if ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            pass  # a host name: it may resolve to anything
        return (
            f"metrics.listen {self.listen} is not a loopback address: /metrics and /healthz have no "
            "authentication; keep them on loopback or a management network behind a firewall"
        )


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


CommandName = Annotated[str, Field(strict=True, min_length=1, max_length=64)]
Seconds = Annotated[float, Field(strict=True, gt=0, le=3600)]


class DedupeWindow(_Section):
    """``upstream.mqtt.commands.dedupe_window:`` — how long a request id is remembered."""

    count: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = Field(
        default=1000, description="The last this many request ids (per gateway) are remembered."
    )
    seconds: Annotated[float, Field(strict=True, gt=0, le=7 * 86400)] = Field(
        default=600.0, description="An id is remembered at most this long after its result, in seconds."
    )


class RateLimit(_Section):
    """``upstream.mqtt.commands.rate_limit:`` — a token bucket per device."""

    per_s: Annotated[float, Field(strict=True, gt=0, le=10_000)] = Field(
        default=1.0, description="Commands per second a device accepts on average."
    )
    burst: Annotated[int, Field(strict=True, ge=1, le=10_000)] = Field(
        default=5, description="Commands a device accepts at once after a quiet period."
    )


class CommandsConfig(_Section):
    """``upstream.mqtt.commands:`` — commands from upstream (see the README's Commands section)."""

    enabled: Annotated[bool, Field(strict=True)] = Field(
        default=False,
        description="Subscribe to <prefix>/<gateway>/+/cmd and <prefix>/<gateway>/cmd and answer requests "
        "(default false: the gateway subscribes to nothing). A device still accepts only the commands its "
        "own `commands:` lists.",
    )
    max_age_s: Annotated[float, Field(strict=True, gt=0, le=86400)] = Field(
        default=30.0,
        description="A request whose `ts` is older than this when it arrives is answered `expired` and not "
        "run (e.g. one the broker queued through an uplink outage). Also the tolerated clock skew for a "
        "`ts` in the future.",
    )
    dedupe_window: DedupeWindow = Field(
        default_factory=DedupeWindow,
        description="Request ids remembered (by count and time): a request whose id was seen gets the "
        "first result again and is not run again.",
    )
    max_in_flight: Annotated[int, Field(strict=True, ge=1, le=100)] = Field(
        default=1, description="Most commands running at once per device; more are refused."
    )
    rate_limit: RateLimit = Field(
        default_factory=RateLimit, description="Commands accepted per device over time; more are refused."
    )
    timeout_s: Annotated[float, Field(strict=True, gt=0, le=3600)] = Field(
        default=10.0, description="How long a command may run before its result is `timeout`, in seconds."
    )
    timeouts: dict[CommandName, Seconds] = Field(
        default_factory=dict,
        description="Per command name, a timeout in seconds over timeout_s, e.g. {read: 5, write: 3}.",
    )
    hmac_key_file: SecretFile | None = Field(
        default=None,
        description="File holding a shared key: when set, every request must carry `hmac`, the "
        "HMAC-SHA256 of its canonical form under this key (hex), or it is refused. See the README.",
    )
    session_expiry_s: Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)] = Field(
        default=3600,
        description="How long the broker keeps the command session (its subscription and the QoS 1 requests "
        "queued for it) while the gateway is away, in seconds (MQTT 5; 3.1.1 brokers use their own).",
    )

    @model_validator(mode="after")
    def _replays_stay_refused(self) -> CommandsConfig:
        # A signed request captured on the wire stays valid for max_age_s; an id forgotten sooner than that
        # would let its replay run a second time.
        if self.hmac_key_file is not None and self.dedupe_window.seconds < self.max_age_s:
            raise _field_error(
                "dedupe_window",
                f"with hmac_key_file, dedupe_window.seconds ({self.dedupe_window.seconds:g}) must be >= "
                f"max_age_s ({self.max_age_s:g}): a replayed signed request would run again",
            )
        return self


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
    topic_alias: Annotated[bool, Field(strict=True)] = Field(
        default=False,
        description="MQTT 5 topic aliases: after the first message on a topic, send a 2-byte alias instead "
        "of the topic name (up to the broker's Topic Alias Maximum). Needs protocol '5'.",
    )
    batch_linger_ms: Annotated[int, Field(strict=True, ge=0, le=60_000)] = Field(
        default=0,
        description="With batch_max_events > 1: how long a batch that is not full may wait for more events "
        "of its device and kind, in milliseconds (0: send what is pending at once).",
    )
    encoding: Literal["json", "cbor", "msgpack"] = Field(
        default="json",
        description="Payload encoding: 'json' (default, the documented JSON), 'cbor' (RFC 8949) or "
        "'msgpack', the same fields; the MQTT 5 Content Type says which (application/json, "
        "application/cbor, application/msgpack). cbor and msgpack need protocol '5'.",
    )
    compression: Literal["zstd", "gzip"] | None = Field(
        default=None,
        description="Compress each message (best with batch_max_events > 1): 'zstd' or 'gzip'. The codec is "
        "named in the MQTT 5 user property 'content-encoding'. Needs protocol '5'. Default none.",
    )
    stop_flush_s: Annotated[float, Field(strict=True, ge=0, le=3600)] = Field(
        default=15.0,
        description="On a clean stop, how long (in seconds, from the start of the stop) the gateway may "
        "spend publishing what is still buffered, the devices' last events included, before it publishes "
        "'offline' and disconnects; what is left stays buffered for the next start. An unreachable broker "
        "is tried once, not waited for. Keep it below systemd's TimeoutStopSec (30 s in the shipped unit) "
        "less 15 s for the rest of the stop. 0: publish nothing more at a stop.",
    )

    commands: CommandsConfig = Field(
        default_factory=CommandsConfig,
        description="Commands from upstream to the gateway and its devices (off by default).",
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
        if mqtt.protocol != "5":
            for name in ("topic_alias", "encoding", "compression"):
                if name in mqtt.model_fields_set and getattr(mqtt, name) not in (False, "json", None):
                    raise _field_error(name, "needs protocol '5' (MQTT 5 properties say how to decode)")
        return mqtt


class UpstreamConfig(_Section):
    """``upstream:`` — where accepted events go (one MQTT broker; ``upstreams:`` for several)."""

    mqtt: MqttConfig = Field(description="The MQTT broker.")


class MqttUpstreamOptions(UpstreamOptions, MqttConfig):
    """One entry of ``upstreams:`` with ``kind: mqtt``: an MQTT broker getting our JSON (or CBOR, MessagePack)
    payloads. Every option of ``upstream.mqtt``, plus ``name`` and ``route``; ``client_id`` defaults to
    ``edgegw-<gateway.id>-<name>``."""

    kind: Literal["mqtt"] = Field(default="mqtt", description="mqtt")


LEGACY_UPSTREAM_NAME: Final = "mqtt"
"""The name of the one upstream that ``upstream.mqtt`` configures (its acknowledgements in the buffer are
kept under this name: an ``upstreams:`` entry named ``mqtt`` takes over its backlog)."""

resolve_secret = _resolve_secret
"""One secret from at most one of its sources, for an upstream kind's ``Options`` (see ``MqttConfig``)."""


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
    upstream: UpstreamConfig | None = Field(
        default=None, description="Where events go: one MQTT broker (or use `upstreams` for several)."
    )
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
    upstreams: list[Any] | None = Field(
        default=None,
        description="Several upstreams fed from the one buffer, each with a name, a kind (mqtt, sparkplug, "
        "hj212), its kind's options and a route; instead of `upstream`. Validated one by one by the loader.",
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
    commands: tuple[str, ...] = Field(
        default=(),
        description="The commands upstream may send this device (names of its driver's commands); none by "
        "default. Only with upstream.mqtt.commands.enabled.",
    )
    position_from: str | None = Field(
        default=None,
        description="A gps device (its name) whose latest fix this device's events carry as `position`.",
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
    upstreams: list[SerializeAsAny[UpstreamOptions]] = Field(
        default_factory=list, description="The upstreams of `upstreams:`, validated by their kinds' Options."
    )

    @property
    def upstream_list(self) -> list[UpstreamOptions]:
        """Every upstream: ``upstreams:``, or the one that ``upstream.mqtt`` configures (named ``mqtt``)."""
        if self.upstreams:
            return list(self.upstreams)
        if self.upstream is None:
            return []
        fields = {name: getattr(self.upstream.mqtt, name) for name in type(self.upstream.mqtt).model_fields}
        legacy = MqttUpstreamOptions.model_construct(
            _fields_set=set(self.upstream.mqtt.model_fields_set), name=LEGACY_UPSTREAM_NAME, **fields
        )
        return [legacy]


_DEVICE_KEYS = ("name", "driver", "smoothing", "commands", "position_from")
"""A device's keys that belong to the gateway; every other key is the driver's."""


class _DeviceHead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name
    driver: Annotated[str, Field(strict=True, min_length=1)]
