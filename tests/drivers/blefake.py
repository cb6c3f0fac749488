"""A bleak scanner backend without a radio: the lowest layer a BLE test can replace.

It is a real :class:`bleak.backends.scanner.BaseBleakScanner` subclass handed to ``BleakScanner(backend=...)``
(:data:`drivers.ble.SCANNER_BACKEND`): bleak's own scanner front end, its callback registration and
``AdvertisementData`` run as they do in the field; only what BlueZ would report is scripted here. A test
puts adverts on the air with :meth:`Air.advertise` (to every scanner started on that adapter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any, ClassVar, Literal

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError

from protocols.ble_adverts import Advert


class Air:
    """The adverts on the air and the scanners listening (one per started backend)."""

    passive_supported: ClassVar[bool] = True
    on_start: ClassVar[list[Advert]] = []
    """Adverts every scanner hears as soon as it has started (for code that blocks, like a CLI)."""
    started: ClassVar[list[FakeScanner]] = []
    stopped: ClassVar[list[FakeScanner]] = []

    @classmethod
    def reset(cls, *, passive_supported: bool = True) -> None:
        cls.passive_supported = passive_supported
        cls.on_start = []
        cls.started = []
        cls.stopped = []

    @classmethod
    def listening(cls) -> list[FakeScanner]:
        return [s for s in cls.started if s not in cls.stopped]

    @classmethod
    def advertise(cls, advert: Advert, adapter: str = "hci0") -> int:
        """``advert`` heard by every listening scanner of ``adapter``; how many heard it."""
        heard = 0
        for scanner in cls.listening():
            if scanner.adapter == adapter:
                scanner.hear(advert)
                heard += 1
        return heard


class FakeScanner(BaseBleakScanner):
    """What BlueZ's scanner backend does, minus D-Bus: start, stop, report adverts through bleak's
    ``create_or_update_device`` and ``call_detection_callbacks``."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"],
        *,
        bluez: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.mode = scanning_mode
        self.adapter = bluez.get("adapter", "hci0")
        self.patterns = bluez.get("or_patterns")
        if scanning_mode == "passive" and not self.patterns:
            raise BleakError("passive scanning mode requires bluez or_patterns")  # as BlueZ's backend

    async def start(self) -> None:
        if self.mode == "passive" and not Air.passive_supported:
            raise BleakError("org.bluez.Error.NotSupported: advertisement monitors are not available")
        self.seen_devices = {}
        Air.started.append(self)
        loop = asyncio.get_running_loop()
        for advert in Air.on_start:
            loop.call_soon(self.hear, advert)

    async def stop(self) -> None:
        Air.stopped.append(self)

    def hear(self, advert: Advert) -> None:
        data = AdvertisementData(
            local_name=advert.name,
            manufacturer_data=dict(advert.manufacturer_data),
            service_data=dict(advert.service_data),
            service_uuids=list(advert.service_uuids),
            tx_power=advert.tx_power,
            rssi=advert.rssi,
            platform_data=(),
        )
        key: Hashable = advert.address
        device: BLEDevice = self.create_or_update_device(str(key), advert.address, advert.name, None, data)
        self.call_detection_callbacks(device, data)
