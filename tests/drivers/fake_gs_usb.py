"""A candleLight-type USB-CAN adapter faked at pyusb's lowest layer: a pyusb backend
(:class:`usb.backend.IBackend`) that enumerates gs_usb devices and answers their USB transfers.

Everything above the backend is real: pyusb's ``usb.core`` (descriptors, configuration, interface claiming),
the ``gs-usb`` package's control requests and frame packing, python-can's gs_usb interface and the can
driver. Only the adapter cannot run here, so only the adapter is played, as the USB device it is:

- the device descriptor with the VID/PID the gs-usb package looks for (candleLight's 1d50:606f by default),
  one configuration, one vendor interface with a bulk IN (0x81) and a bulk OUT (0x02) endpoint;
- the vendor control requests of the gs_usb protocol (the Linux kernel's gs_usb.c and the candleLight
  firmware speak it): HOST_FORMAT, BITTIMING, MODE (start / reset, with flags), BERR, BT_CONST (the
  controller's clock, its timing limits and its feature flags), DEVICE_CONFIG; anything else stalls;
- ``struct gs_host_frame`` on the bulk endpoints (little-endian: echo_id u32, can_id u32 with the
  EFF/RTR/ERR flags, can_dlc, channel, flags, reserved, 8 data bytes, then a u32 microsecond timestamp when
  the host started the controller with GS_CAN_MODE_HW_TIMESTAMP): frames the test puts on the bus come in
  on IN (echo_id 0xFFFFFFFF: received), frames the host writes on OUT are recorded and, the controller
  being in normal mode, echoed back on IN with the host's echo_id, as the firmware confirms a transmission;
- unplugging: every transfer on a handle opened before raises ``usb.core.USBError`` with errno 19 (ENODEV,
  libusb's LIBUSB_ERROR_NO_DEVICE) and the device is no longer enumerated; plugged back, it enumerates at a
  new address with its controller in reset, as a real replug does.

What the host set is recorded (:attr:`FakeCandleLight.timing`, :attr:`~FakeCandleLight.bitrate`,
:attr:`~FakeCandleLight.modes`, :attr:`~FakeCandleLight.sent`) so a test asserts what reached the adapter.
Inject it with :func:`install`, which replaces ``usb.backend.libusb1.get_backend`` (the gs-usb package
asks it for its backend at every scan).
"""

from __future__ import annotations

import array
import errno
import itertools
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import pytest
import usb.backend  # type: ignore[import-untyped]  # pyusb ships no type hints
import usb.backend.libusb1  # type: ignore[import-untyped]
import usb.core  # type: ignore[import-untyped]

# USB identity: the gs_usb VID/PID of the Linux kernel's driver, which the gs-usb package matches first.
CANDLELIGHT_VID: Final = 0x1D50
CANDLELIGHT_PID: Final = 0x606F
EP_IN: Final = 0x81
EP_OUT: Final = 0x02

# gs_usb vendor requests (bRequest) and their arguments.
BREQ_HOST_FORMAT: Final = 0
BREQ_BITTIMING: Final = 1
BREQ_MODE: Final = 2
BREQ_BERR: Final = 3
BREQ_BT_CONST: Final = 4
BREQ_DEVICE_CONFIG: Final = 5
MODE_RESET: Final = 0
MODE_START: Final = 1

# Mode flags (GS_CAN_MODE_*) and the feature flags of BT_CONST (GS_CAN_FEATURE_*) share their bits.
LISTEN_ONLY: Final = 1 << 0
LOOP_BACK: Final = 1 << 1
TRIPLE_SAMPLE: Final = 1 << 2
ONE_SHOT: Final = 1 << 3
HW_TIMESTAMP: Final = 1 << 4
IDENTIFY: Final = 1 << 5
CANDLELIGHT_FEATURES: Final = LISTEN_ONLY | LOOP_BACK | ONE_SHOT | HW_TIMESTAMP | IDENTIFY
"""What a candleLight (STM32F072, bxCAN) announces."""

# struct gs_host_frame's can_id flags
CAN_EFF_FLAG: Final = 0x80000000
CAN_RTR_FLAG: Final = 0x40000000
CAN_ERR_FLAG: Final = 0x20000000
RX_ECHO_ID: Final = 0xFFFFFFFF
"""The echo_id of a frame received from the bus (any other is the echo of one the host sent)."""
_FRAME: Final = struct.Struct("<II4B8s")
_TIMESTAMP: Final = struct.Struct("<I")

# libusb's error codes, and the errno pyusb's libusb1 backend gives each
_NO_DEVICE: Final = (-4, errno.ENODEV, "No such device (it may have been disconnected)")
_TIMEOUT: Final = (-7, errno.ETIMEDOUT, "Operation timed out")
_OVERFLOW: Final = (-8, errno.EOVERFLOW, "Overflow")
_PIPE: Final = (-9, errno.EPIPE, "Pipe error")
_INVALID: Final = (-2, errno.EINVAL, "Invalid parameter")


def _usb_error(what: tuple[int, int, str]) -> Any:
    code, number, text = what
    kind = usb.core.USBTimeoutError if code == _TIMEOUT[0] else usb.core.USBError
    return kind(text, code, number)


class BitTiming(NamedTuple):
    """struct gs_device_bittiming, as the host wrote it."""

    prop_seg: int
    phase_seg1: int
    phase_seg2: int
    sjw: int
    brp: int


class HostFrame(NamedTuple):
    """struct gs_host_frame, as the host wrote it on the bulk OUT endpoint."""

    echo_id: int
    can_id: int
    dlc: int
    channel: int
    flags: int
    data: bytes

    @property
    def arbitration_id(self) -> int:
        return self.can_id & 0x1FFFFFFF if self.extended else self.can_id & 0x7FF

    @property
    def extended(self) -> bool:
        return bool(self.can_id & CAN_EFF_FLAG)


@dataclass
class FakeCandleLight:
    """One single-channel gs_usb adapter: its controller's state, what the host set, what it sent."""

    features: int = CANDLELIGHT_FEATURES
    """BT_CONST's feature flags (GS_CAN_FEATURE_*)."""
    fclk_can: int = 48_000_000
    """The CAN controller's clock (a candleLight's STM32F072: 48 MHz)."""
    vendor: int = CANDLELIGHT_VID
    product: int = CANDLELIGHT_PID
    host_format: int | None = None
    """HOST_FORMAT's word as the host sent it (0x0000BEEF little-endian), None if never sent."""
    timing: BitTiming | None = None
    """The last BITTIMING the host set."""
    modes: list[tuple[int, int]] = field(default_factory=list)
    """Every MODE request (mode, flags), in order."""
    sent: list[HostFrame] = field(default_factory=list)
    """Every frame the host wrote on the bulk OUT endpoint, in order."""
    missed: int = 0
    """Frames put on the bus while the controller was not started (or the adapter unplugged)."""
    plugged: bool = True
    address: int = 5
    """The USB address of the current plug-in (each plug-in gets a new one)."""
    _started: bool = False
    _flags: int = 0
    _rx: deque[bytes] = field(default_factory=deque)
    _ready: threading.Condition = field(default_factory=threading.Condition)
    _plugins: itertools.count[int] = field(default_factory=lambda: itertools.count(6))

    # -- the test's side ---------------------------------------------------------------------------------
    @property
    def bitrate(self) -> int | None:
        """The bit rate the timing the host set gives on this controller's clock, None before any."""
        t = self.timing
        if t is None or t.brp == 0:
            return None
        return self.fclk_can // (t.brp * (1 + t.prop_seg + t.phase_seg1 + t.phase_seg2))

    @property
    def started(self) -> bool:
        """Whether the controller is on the bus (started and not reset since)."""
        with self._ready:
            return self._started

    @property
    def flags(self) -> int:
        """The mode flags of the last start (0 when never started)."""
        with self._ready:
            return self._flags

    def serve(self, can_id: int, data: bytes, *, extended: bool = True) -> None:
        """A frame heard on the bus: the controller passes it to the host on the bulk IN endpoint (lost when
        the controller is not started, as a controller in reset hears nothing)."""
        if len(data) > 8:
            raise ValueError("a classic CAN frame carries at most 8 bytes")
        word = can_id | (CAN_EFF_FLAG if extended else 0)
        with self._ready:
            if not (self.plugged and self._started):
                self.missed += 1
                return
            self._queue(RX_ECHO_ID, word, len(data), bytes(data))

    def unplug(self) -> None:
        """The adapter is pulled out: transfers fail with ENODEV, and it is no longer enumerated."""
        with self._ready:
            self.plugged = False
            self._started = False
            self._rx.clear()
            self._ready.notify_all()

    def plug(self) -> None:
        """The adapter is put back: enumerated at a new address, its controller in reset."""
        with self._ready:
            self.address = next(self._plugins)
            self.plugged = True

    # -- the device's side -------------------------------------------------------------------------------
    def _queue(self, echo_id: int, can_id: int, dlc: int, data: bytes) -> None:
        packed = _FRAME.pack(echo_id, can_id, dlc, 0, 0, 0, data.ljust(8, b"\0"))
        if self._flags & HW_TIMESTAMP:
            packed += _TIMESTAMP.pack(int(time.monotonic() * 1e6) & 0xFFFFFFFF)
        self._rx.append(packed)
        self._ready.notify_all()

    def _control_out(self, request: int, data: bytes) -> int:
        if request == BREQ_HOST_FORMAT and len(data) == 4:
            (self.host_format,) = struct.unpack("<I", data)
        elif request == BREQ_BITTIMING and len(data) == 20:
            self.timing = BitTiming(*struct.unpack("<5I", data))
        elif request == BREQ_MODE and len(data) == 8:
            mode, flags = struct.unpack("<2I", data)
            self.modes.append((mode, flags))
            with self._ready:
                self._started = mode == MODE_START
                self._flags = flags if self._started else 0
                self._rx.clear()
        elif request == BREQ_BERR and len(data) == 4:
            pass
        else:
            raise _usb_error(_PIPE)
        return len(data)

    def _control_in(self, request: int, length: int) -> bytes:
        if request == BREQ_BT_CONST:
            # feature, fclk_can, tseg1 1..16, tseg2 1..8, sjw_max 4, brp 1..1024 in steps of 1 (bxCAN's)
            answer = struct.pack("<10I", self.features, self.fclk_can, 1, 16, 1, 8, 4, 1, 1024, 1)
        elif request == BREQ_DEVICE_CONFIG:
            # reserved x3, icount (channels - 1), sw_version, hw_version
            answer = struct.pack("<4B2I", 0, 0, 0, 0, 2, 1)
        else:
            raise _usb_error(_PIPE)
        return answer[:length]

    def _read(self, size: int, timeout_ms: int, plugin: int) -> bytes:
        deadline = None if timeout_ms == 0 else time.monotonic() + timeout_ms / 1000  # libusb's 0: no limit
        with self._ready:
            while True:
                if not self.plugged or plugin != self.address:
                    raise _usb_error(_NO_DEVICE)
                if self._rx:
                    packed = self._rx[0]
                    if size < len(packed):
                        raise _usb_error(_OVERFLOW)
                    return self._rx.popleft()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise _usb_error(_TIMEOUT)
                self._ready.wait(left)

    def _write(self, data: bytes, plugin: int) -> int:
        with self._ready:
            if not self.plugged or plugin != self.address:
                raise _usb_error(_NO_DEVICE)
            if len(data) < _FRAME.size:
                raise _usb_error(_INVALID)
            echo_id, can_id, dlc, channel, flags, _, payload = _FRAME.unpack_from(data)
            self.sent.append(HostFrame(echo_id, can_id, dlc, channel, flags, payload[: min(dlc, 8)]))
            if self._started and not self._flags & LISTEN_ONLY:
                self._queue(echo_id, can_id, dlc, payload[: min(dlc, 8)])
            return len(data)


# -- the pyusb backend ------------------------------------------------------------------------------------


class _Descriptor:
    """A descriptor as a pyusb backend gives it: its fields as attributes."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)


@dataclass(frozen=True)
class _Handle:
    adapter: FakeCandleLight
    plugin: int
    """The address the adapter had when the handle was opened: a handle does not survive a replug."""


class FakeBackend(usb.backend.IBackend):  # type: ignore[misc]  # pyusb is untyped
    """A pyusb backend whose bus holds the given adapters (those plugged in are enumerated)."""

    def __init__(self, *adapters: FakeCandleLight) -> None:
        super().__init__()
        self.adapters = adapters
        self.opens = 0
        """How many times a device was opened (the host opens it again after each replug)."""
        self.resets = 0

    def enumerate_devices(self) -> list[FakeCandleLight]:
        return [a for a in self.adapters if a.plugged]

    def get_parent(self, dev: FakeCandleLight) -> None:
        return None

    def get_device_descriptor(self, dev: FakeCandleLight) -> _Descriptor:
        return _Descriptor(
            {
                "bLength": 18,
                "bDescriptorType": 1,
                "bcdUSB": 0x0200,
                "bDeviceClass": 0,
                "bDeviceSubClass": 0,
                "bDeviceProtocol": 0,
                "bMaxPacketSize0": 64,
                "idVendor": dev.vendor,
                "idProduct": dev.product,
                "bcdDevice": 0x0000,
                "iManufacturer": 1,
                "iProduct": 2,
                "iSerialNumber": 3,
                "bNumConfigurations": 1,
                "address": dev.address,
                "bus": 1,
                "port_number": 2,
                "port_numbers": (2,),
                "speed": 2,  # full speed
            }
        )

    def get_configuration_descriptor(self, dev: FakeCandleLight, config: int) -> _Descriptor:
        if config != 0:
            raise IndexError("configuration index out of range")
        return _Descriptor(
            {
                "bLength": 9,
                "bDescriptorType": 2,
                "wTotalLength": 32,
                "bNumInterfaces": 1,
                "bConfigurationValue": 1,
                "iConfiguration": 0,
                "bmAttributes": 0x80,
                "bMaxPower": 75,
                "extra_descriptors": [],
            }
        )

    def get_interface_descriptor(self, dev: FakeCandleLight, intf: int, alt: int, config: int) -> _Descriptor:
        if config != 0 or intf != 0 or alt != 0:
            raise IndexError("interface index out of range")
        return _Descriptor(
            {
                "bLength": 9,
                "bDescriptorType": 4,
                "bInterfaceNumber": 0,
                "bAlternateSetting": 0,
                "bNumEndpoints": 2,
                "bInterfaceClass": 0xFF,
                "bInterfaceSubClass": 0xFF,
                "bInterfaceProtocol": 0xFF,
                "iInterface": 0,
                "extra_descriptors": [],
            }
        )

    def get_endpoint_descriptor(
        self, dev: FakeCandleLight, ep: int, intf: int, alt: int, config: int
    ) -> _Descriptor:
        if config != 0 or intf != 0 or alt != 0 or ep not in (0, 1):
            raise IndexError("endpoint index out of range")
        return _Descriptor(
            {
                "bLength": 7,
                "bDescriptorType": 5,
                "bEndpointAddress": EP_IN if ep == 0 else EP_OUT,
                "bmAttributes": 0x02,  # bulk
                "wMaxPacketSize": 64,
                "bInterval": 0,
                "bRefresh": 0,
                "bSynchAddress": 0,
                "extra_descriptors": [],
            }
        )

    # -- handles --------------------------------------------------------------------------------------
    def _alive(self, handle: _Handle) -> FakeCandleLight:
        if not handle.adapter.plugged or handle.plugin != handle.adapter.address:
            raise _usb_error(_NO_DEVICE)
        return handle.adapter

    def open_device(self, dev: FakeCandleLight) -> _Handle:
        if not dev.plugged:
            raise _usb_error(_NO_DEVICE)
        self.opens += 1
        return _Handle(dev, dev.address)

    def close_device(self, dev_handle: _Handle) -> None:
        return None

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._alive(dev_handle)

    def get_configuration(self, dev_handle: _Handle) -> int:
        self._alive(dev_handle)
        return 1

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._alive(dev_handle)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._alive(dev_handle)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._alive(dev_handle)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        self._alive(dev_handle)

    def reset_device(self, dev_handle: _Handle) -> None:
        """A USB port reset: the firmware stops the controller (the host starts it again)."""
        adapter = self._alive(dev_handle)
        self.resets += 1
        with adapter._ready:
            adapter._started = False
            adapter._flags = 0
            adapter._rx.clear()

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        self._alive(dev_handle)
        return False  # a kernel without gs_usb.ko: why the host reaches it through pyusb

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        raise _usb_error((-5, errno.ENOENT, "Entity not found"))

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        raise _usb_error((-5, errno.ENOENT, "Entity not found"))

    # -- transfers ------------------------------------------------------------------------------------
    def ctrl_transfer(  # noqa: PLR0917 - IBackend's signature, called positionally by usb.core
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        adapter = self._alive(dev_handle)
        if bmRequestType & 0x60 != 0x40 or bmRequestType & 0x1F != 0x01:
            raise _usb_error(_PIPE)  # only vendor requests to the interface are the gs_usb protocol's
        if bmRequestType & 0x80:
            answer = adapter._control_in(bRequest, len(data) * data.itemsize)
            data[: len(answer)] = array.array("B", answer)
            return len(answer)
        return adapter._control_out(bRequest, data.tobytes())

    def bulk_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        adapter = self._alive(dev_handle)
        if ep != EP_OUT:
            raise _usb_error(_PIPE)
        return adapter._write(data.tobytes(), dev_handle.plugin)

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        adapter = self._alive(dev_handle)
        if ep != EP_IN:
            raise _usb_error(_PIPE)
        packed = adapter._read(len(buff) * buff.itemsize, timeout, dev_handle.plugin)
        buff[: len(packed)] = array.array("B", packed)
        return len(packed)


def install(monkeypatch: pytest.MonkeyPatch, *adapters: FakeCandleLight) -> FakeBackend:
    """Put ``adapters`` on a fake USB bus: pyusb's libusb1 backend lookup returns it (the gs-usb package
    scans with ``libusb1.get_backend()``), so everything from ``usb.core.find`` up is real."""
    backend = FakeBackend(*adapters)
    monkeypatch.setattr(usb.backend.libusb1, "get_backend", lambda *args, **kwargs: backend)
    return backend
