"""Where a device is reached, said once: :class:`LinkOptions`, and :func:`open_link` to open it.

A device sits on a serial port (RS-232/RS-485, a USB adapter) with its line settings, or behind a
serial-to-Ethernet converter or on the network (``host`` + ``tcp_port``), over TLS where the device speaks
it. :class:`LinkOptions` is that, validated; :func:`open_link` opens any of them as a
:class:`~drivers.transport.ByteLink` (pull or push, see :mod:`drivers.transport`), within
``connect_timeout_s``, and says what failed in the driver error tree.

In YAML the link is not a block of its own: its keys sit beside the device's other options
(``port: /dev/ttyUSB0``, ``baudrate: 9600``, ...), and each driver keeps the keys and defaults its devices
have always had. Drivers of devices on a serial port or a converter (``uhf-r2000``, ``dlt645``, ``modbus``)
base their options on :class:`SerialOrTcpOptions`, which declares ``port``, ``host``, ``tcp_port``,
``baudrate`` and ``connect_timeout_s`` once, checks that they name one link, and gathers them, with the
line settings the driver declares under the same names (``parity``, ``bytesize``, ``stopbits``), into
:attr:`SerialOrTcpOptions.link`. A driver narrows ``baudrate`` to the speeds its devices have (and sets its
default) by declaring it again; a device whose line is fixed (the R2000's 8N1) declares no ``parity`` and
gets 8N1. A network device with a port of its own meaning (LLRP's ``port`` is a TCP port) builds its
:class:`LinkOptions` itself.
"""

from __future__ import annotations

import ssl
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import bus
from .base import DriverOptions
from .transport import ByteLink, Lost, Receiver, open_serial, open_tcp

__all__ = ["LinkOptions", "Parity", "SerialOrTcpOptions", "TlsOptions", "link_problem", "open_link"]

Parity = Literal["N", "E", "O"]
"""None, even, odd."""

DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0


class TlsOptions(BaseModel):
    """TLS to a device: its certificate chain is always verified (against ``ca_file``, else the system's
    CAs); ``check_hostname`` false still verifies the chain but accepts a certificate for another name;
    ``cert_file`` + ``key_file`` when the device wants a client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = Field(default=None, description="The CA bundle that signed the device's cert.")
    cert_file: str | None = Field(default=None, description="A client certificate (with key_file).")
    key_file: str | None = Field(default=None, description="The client certificate's key.")
    check_hostname: bool = Field(default=True, description="The certificate must name the host.")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self

    def context(self) -> ssl.SSLContext:
        """The client's TLS context (reads the files: call it when connecting)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.check_hostname = self.check_hostname
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class LinkOptions(BaseModel):
    """One link to a device: a serial ``port`` with its line settings, or ``host`` + ``tcp_port`` (a
    serial-to-Ethernet converter, a networked device), with ``tls`` where the device speaks it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: str | None = Field(default=None, description="Serial port device path, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, gt=0, description="Serial line speed.")
    parity: Parity = Field(default="N", description="Serial parity: N, E or O.")
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="Serial data bits.")
    stopbits: Literal[1, 2] = Field(default=1, description="Serial stop bits.")
    host: str | None = Field(default=None, description="Host of a serial-to-Ethernet converter or a device.")
    tcp_port: int | None = Field(default=None, ge=1, le=65535, description="Its TCP port.")
    tls: TlsOptions | None = Field(default=None, description="TLS on the TCP connection.")
    connect_timeout_s: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=300, description="Opening the port or the TCP connection."
    )

    @model_validator(mode="after")
    def _one_link(self) -> Self:
        message = link_problem(self.port, self.host, self.tcp_port)
        if message is not None:
            raise ValueError(message)
        if self.tls is not None and self.port is not None:
            raise ValueError("tls goes with host + tcp_port, not with a serial port")
        return self

    @property
    def serial(self) -> bool:
        """A serial port (else TCP)."""
        return self.port is not None

    @property
    def where(self) -> str:
        """The port, or ``host:tcp_port``, as an operator writes it."""
        return self.port if self.port is not None else f"{self.host}:{self.tcp_port}"

    @property
    def name(self) -> str:
        """What the link is, for messages: ``serial port /dev/ttyUSB0``, ``tcp 10.0.0.7:502``, ``tls ...``."""
        if self.port is not None:
            return f"serial port {self.port}"
        return f"{'tls' if self.tls is not None else 'tcp'} {self.host}:{self.tcp_port}"

    @property
    def key(self) -> str:
        """The bus key of this link (:mod:`drivers.bus`): devices with the same key share one line."""
        if self.port is not None:
            return bus.serial_key(self.port)
        assert self.host is not None and self.tcp_port is not None  # checked by the validator
        return bus.tcp_key(self.host, self.tcp_port)


def link_problem(port: str | None, host: str | None, tcp_port: int | None) -> str | None:
    """What is wrong with a serial ``port`` / ``host`` + ``tcp_port`` choice, or None when it names one
    link."""
    serial_given = port is not None
    tcp_given = host is not None or tcp_port is not None
    if serial_given and tcp_given:
        return "give either port (serial) or host + tcp_port (TCP), not both"
    if not serial_given and not tcp_given:
        return "give port (serial) or host + tcp_port (TCP)"
    if tcp_given and (host is None or tcp_port is None):
        return "a TCP link needs both host and tcp_port"
    return None


class SerialOrTcpOptions(DriverOptions):
    """Base of the options of a driver whose devices sit on a serial port or behind a serial-to-Ethernet
    converter: the link's YAML keys, declared once (see the module docstring)."""

    # A base, never validated on its own in a running gateway: its validator is built only if it is (each
    # driver's subclass builds its own when the config is loaded), which spares a gateway's memory.
    model_config = ConfigDict(defer_build=True)

    port: str | None = Field(default=None, description="Serial port device path, e.g. /dev/ttyUSB0.")
    host: str | None = Field(
        default=None, description="Host of a serial-to-Ethernet converter (with tcp_port)."
    )
    tcp_port: int | None = Field(default=None, ge=1, le=65535, description="TCP port of the converter.")
    baudrate: int = Field(default=9600, gt=0, description="Serial line speed.")
    connect_timeout_s: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT_S,
        gt=0,
        le=300,
        description="Opening the port or TCP connection.",
    )

    @model_validator(mode="after")
    def _one_link(self) -> Self:
        self.check_link()
        return self

    def check_link(self) -> None:
        """Raise ValueError unless the link keys name one link. A driver with its own rules (Modbus's
        ``transport``) overrides it and checks them with its other options."""
        message = link_problem(self.port, self.host, self.tcp_port)
        if message is not None:
            raise ValueError(message)

    def exclusive_link(self) -> str | None:
        """A device on its own link (not a shared line) owns the port or the TCP connection."""
        return self.link.key if self.shared_line() is None else None

    @property
    def link(self) -> LinkOptions:
        """These options' link: the keys above and the line settings this driver's options declare under
        :class:`LinkOptions`' names (else LinkOptions' defaults: 8N1)."""
        declared = type(self).model_fields
        values: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("baudrate", "parity", "bytesize", "stopbits", "connect_timeout_s")
            if name in declared
        }
        if self.port is not None:
            return LinkOptions(port=self.port, **values)
        return LinkOptions(host=self.host, tcp_port=self.tcp_port, **values)


async def open_link(
    link: LinkOptions, *, receiver: Receiver | None = None, lost: Lost | None = None
) -> ByteLink:
    """Open ``link``: a :class:`~drivers.transport.SerialLink` or a TCP link, within its
    ``connect_timeout_s``; in push mode when ``receiver`` is given (see :mod:`drivers.transport`).

    Raises :class:`~drivers.errors.DeviceUnavailable` naming the link (``serial port ...: ...``,
    ``tcp host:port: ...``) when it cannot be opened."""
    if link.port is not None:
        return await open_serial(
            link.port,
            link.baudrate,
            bytesize=link.bytesize,
            parity=link.parity,
            stopbits=link.stopbits,
            receiver=receiver,
            lost=lost,
        )
    assert link.host is not None and link.tcp_port is not None  # checked by LinkOptions
    tls = link.tls.context() if link.tls is not None else None
    if receiver is None:
        return await open_tcp(link.host, link.tcp_port, connect_timeout=link.connect_timeout_s, tls=tls)
    return await open_tcp(
        link.host,
        link.tcp_port,
        connect_timeout=link.connect_timeout_s,
        tls=tls,
        receiver=receiver,
        lost=lost,
    )
