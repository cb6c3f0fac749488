"""Configuration (``gateway.config``): one gateway YAML file plus, optionally, a directory of device files.

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

from gateway.config.loader import load_config
from gateway.config.models import (
    BufferConfig,
    CommandsConfig,
    Config,
    ConfigError,
    DeviceConfig,
    DriverLookup,
    GatewayConfig,
    MetricsConfig,
    MqttConfig,
    Problem,
    QueueConfig,
    ReconnectConfig,
    SupervisorConfig,
    TlsConfig,
    UpstreamConfig,
    split_listen,
)

__all__ = [
    "BufferConfig",
    "CommandsConfig",
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
