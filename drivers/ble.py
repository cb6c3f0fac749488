"""The ``ble`` driver: BLE advertisements of sensors and beacons, heard through bleak or replayed from a file.

::

    {name: gate-ble, driver: ble, adapter: hci0}          scan with the adapter hci0
    {name: gate-ble, driver: ble, replay: adverts.jsonl}  play a capture (relative to the config file)

**Scanning.** One :class:`bleak.BleakScanner` per adapter, shared by every ``ble`` device on it through
:mod:`drivers.interfaces` (key :func:`~drivers.interfaces.bluetooth_key`): opened by the first device,
stopped with the last, each device with its own filter (applied in the interface's reader, before its
bounded queue) and its own counters. ``scanning_mode: auto`` (the default) scans passively where the
platform allows (BlueZ with advertisement monitors: the scanner sends no scan requests, so it is invisible
and saves the sensors' batteries) and actively otherwise; ``passive`` or ``active`` force one. Devices on
one adapter must agree on the mode. The scanner's callback feeds a bounded buffer (:data:`SOURCE_CAPACITY`
adverts): when the loop falls that far behind, what does not fit is dropped and counted
(``scanner_dropped``) in every device on the adapter. An adapter that hears nothing at all for
``silence_restart_s`` (default 300 s; BlueZ does not tell a scanner that its adapter went away) has its
scanner stopped and every device on it restarted with backoff, the first one back starting it again.

**Replay.** ``replay: FILE`` instead of ``adapter:`` plays a capture (JSON lines, the format of
:func:`protocols.ble_adverts.advert_from_json`, written by ``edgegw ble record``) through the same filter,
duplicate suppression and decoders, at the recorded pace (``replay_speed`` times faster; 0: as fast as the
pipeline takes them), once (then a ``device.status`` ``replay_ended`` and the device idles) or for ever
(``replay_loop: true``). Events carry the time they are replayed. A line that is not an advert is logged as
``FILE:LINE: why`` and skipped (``replay_lines_skipped``).

**Filters** (a device hears what passes every filter it sets; within one, any entry matches):
``addresses`` (MACs, any case), ``names`` (shell patterns: ``Ruuvi*``), ``service_uuids`` (16-bit ``fcd2``
or 128-bit), ``manufacturer_ids`` (company ids: ``1177`` is Ruuvi), and after decoding ``formats``.

**Duplicates.** An address repeating the same payload is reported once per ``min_interval_s`` (a beacon
advertises several times a second); a changed payload is reported at once. A beacon that rotates frames
(Eddystone UID, URL and TLM, an iBeacon between them) is compared frame kind by frame kind
(:meth:`~protocols.ble_adverts.Advert.slot`). The last payload of at most ``max_addresses`` address and
frame kinds is remembered (the least recently reported forgotten first).

**Decoding** (:mod:`protocols.ble_adverts`): BTHome v2 (with ``bindkeys`` per address for encrypted
sensors), Ruuvi RAWv2, iBeacon, Eddystone UID/URL/TLM. An advert of none of these is passed through as
``format: raw`` only with ``raw: true`` (else counted in ``adverts_unknown``). One that claims a format but
does not decode is counted in ``decode_errors`` and in the reason's own counter (``bthome_decrypt_failed``,
``ruuvi_bad_length``, ...), never emitted; a BTHome payload with unknown or out-of-order objects keeps what
decoded and counts the rest. An encrypted BTHome advert whose counter did not increase is an old one sent
again: counted (``bthome_replayed``), not reported.

Event ``ble.advert``, data: ``address``, ``rssi``, ``name``, ``format``, ``values`` (name -> number),
``units`` (name -> unit), for beacons ``uuid``, ``major``, ``minor``, ``tx_power`` (Eddystone-URL adds
``url``, Eddystone-UID ``namespace`` and ``instance``); ``text`` when the advert carries text (a BTHome text
or firmware object, a Ruuvi tag's MAC); a raw advert its ``manufacturer_data``, ``service_data``,
``service_uuids`` and advertised ``tx_power``.

Tests replace only the radio: :data:`SCANNER_BACKEND` takes a bleak scanner backend class (bleak's own
``backend=`` parameter), everything above it runs as in the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import AfterValidator, Field, SecretStr, ValidationInfo, field_validator, model_validator

from protocols.ble_adverts import (
    FORMATS,
    Advert,
    Decoded,
    advert_from_json,
    advert_to_json,
    decode,
    normalise_uuid,
)
from protocols.errors import DecodeError

from . import interfaces
from .base import DeviceContext, Driver, DriverOptions, config_path
from .bus import SharedLine
from .counters import DECODE_ERRORS
from .errors import (
    ConfigurationError,
    ConnectionLost,
    DeviceTimeout,
    DeviceUnavailable,
    MissingDependencyError,
)
from .kinds import BLE_ADVERT, DEVICE_STATUS

__all__ = [
    "SCANNER_BACKEND",
    "BleDriver",
    "BleOptions",
    "ScannerSource",
    "advert_of",
    "start_scanner",
]

# -- this driver's counters (on top of drivers.counters; decode reasons come from protocols.ble_adverts) --
ADVERTS_SUPPRESSED: Final = "adverts_suppressed"
"""Adverts not reported because the address sent the same payload within ``min_interval_s``."""
ADVERTS_UNKNOWN: Final = "adverts_unknown"
"""Adverts of no format decoded here, not reported because ``raw`` is off."""
ADVERTS_FILTERED: Final = "adverts_filtered"
"""Decoded adverts of a format the device's ``formats`` does not list."""
REPLAY_LINES_SKIPPED: Final = "replay_lines_skipped"
"""Lines of a replay file that are not an advert (each logged as FILE:LINE)."""
DECODER_FAILURES: Final = "decoder_failures"
"""Adverts a decoder failed on with an unexpected error (a bug: logged with the advert, counted, skipped)."""
SCANNER_DROPPED: Final = "scanner_dropped"
"""Adverts the scanner heard while the loop was :data:`SOURCE_CAPACITY` adverts behind: dropped."""

BTHOME_REPLAYED: Final = "bthome_replayed"
"""Encrypted BTHome adverts whose counter did not increase (an old advert sent again): not reported."""
COUNTER_RESTART: Final = 16
"""An encrypted BTHome counter below this is taken as the sensor counting again from 0 (a new battery)."""

REPLAY_ENDED: Final = "replay_ended"
"""The ``device.status`` state of a replay that played its file to the end (without ``replay_loop``)."""

SOURCE_CAPACITY: Final = 4096
"""Adverts the scanner's callback holds for the interface's reader before dropping."""

SCANNER_BACKEND: type[Any] | None = None
"""A bleak scanner backend class (a ``bleak.backends.scanner.BaseBleakScanner``) passed to
``BleakScanner(backend=...)``; None: the platform's. Tests set it to a backend without a radio."""

ScanningMode = Literal["auto", "passive", "active"]
_MAC: Final = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_BEACONS: Final = frozenset({"ibeacon", "eddystone-uid", "eddystone-url", "eddystone-tlm"})
FormatName = Literal["bthome", "ruuvi", "ibeacon", "eddystone-uid", "eddystone-url", "eddystone-tlm", "raw"]
assert set(FormatName.__args__) == set(FORMATS)  # type: ignore[attr-defined]  # one list of formats


def _readable(value: Path, info: ValidationInfo) -> Path:
    if not str(value).strip():
        raise ValueError("must not be empty")
    path = config_path(value, info)
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise ValueError(f"cannot read {str(value)!r}: {err.strerror or err}") from None
    return path


ConfigFile = Annotated[Path, AfterValidator(_readable)]
"""A file readable when the config is loaded, relative to the directory of the file that names the device."""


def _norm_address(address: str) -> str:
    return address.upper().replace("-", ":")


class BleOptions(DriverOptions):
    """Options of a ``ble`` device (see the module docstring)."""

    adapter: str | None = Field(default=None, description="The Bluetooth adapter to scan with, e.g. hci0.")
    replay: ConfigFile | None = Field(
        default=None,
        description="Instead of adapter: a capture (JSON lines, from `edgegw ble record`) to play, "
        "relative to this config file.",
    )
    replay_speed: float = Field(
        default=1.0, ge=0, le=1_000_000, description="Play the capture this many times faster; 0: no pacing."
    )
    replay_loop: bool = Field(default=False, description="Start the capture again at its end.")
    scanning_mode: ScanningMode = Field(
        default="auto", description="passive, active, or auto: passive where the platform allows."
    )
    addresses: list[str] = Field(default_factory=list, description="Only these device addresses (MACs).")
    names: list[str] = Field(default_factory=list, description="Only local names matching these patterns.")
    service_uuids: list[str] = Field(
        default_factory=list, description="Only adverts with one of these service UUIDs (fcd2 or 128-bit)."
    )
    manufacturer_ids: list[int] = Field(
        default_factory=list, description="Only adverts with manufacturer data of these company ids."
    )
    formats: list[FormatName] = Field(default_factory=list, description="Only adverts of these formats.")
    raw: bool = Field(default=False, description="Report adverts of no known format, undecoded.")
    bindkeys: dict[str, SecretStr] = Field(
        default_factory=dict, description="BTHome bind keys (32 hex digits) by device address."
    )
    bindkeys_file: ConfigFile | None = Field(
        default=None,
        description="BTHome bind keys kept out of the config: a file of `ADDRESS KEY` lines (32 hex digits; "
        "blank lines and # comments skipped), relative to this config file; readable by the gateway only.",
    )
    min_interval_s: float = Field(
        default=10.0, ge=0, le=86_400, description="Report an unchanged payload at most this often."
    )
    max_addresses: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Addresses (and frame kinds) whose last payload is remembered.",
    )
    queue_size: int = Field(
        default=1024, ge=1, le=1_000_000, description="Adverts waiting for this device before drops."
    )
    silence_restart_s: float | None = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Restart the adapter's scanner after this long without any advert (null: never).",
    )

    @field_validator("addresses")
    @classmethod
    def _macs(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _MAC.match(address):
                raise ValueError(f"{address!r} is no MAC address (AA:BB:CC:DD:EE:FF)")
        return [_norm_address(a) for a in value]

    @field_validator("service_uuids")
    @classmethod
    def _uuids(cls, value: list[str]) -> list[str]:
        return [normalise_uuid(text) for text in value]

    @field_validator("manufacturer_ids")
    @classmethod
    def _companies(cls, value: list[int]) -> list[int]:
        for company in value:
            if not 0 <= company <= 0xFFFF:
                raise ValueError(f"{company} is no company id (0-65535)")
        return value

    @field_validator("bindkeys")
    @classmethod
    def _keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        out = {}
        for address, key in value.items():
            if not _MAC.match(address):
                raise ValueError(f"{address!r} is no MAC address (AA:BB:CC:DD:EE:FF)")
            if not re.fullmatch(r"[0-9A-Fa-f]{32}", key.get_secret_value()):
                raise ValueError(f"the bind key of {address} is not 32 hex digits")
            out[_norm_address(address)] = key
        return out

    def shared_line(self) -> SharedLine | None:
        """The adapter, shared by every ``ble`` device on it: they must agree on the scanning mode (a
        replay shares nothing)."""
        if self.adapter is None:
            return None
        settings = (("driver", "ble"), ("scanning_mode", self.scanning_mode))
        return SharedLine(interfaces.bluetooth_key(self.adapter), settings)

    @model_validator(mode="after")
    def _source(self) -> Self:
        if (self.adapter is None) == (self.replay is None):
            raise ValueError("give adapter (a Bluetooth adapter, e.g. hci0) or replay (a capture file), one")
        if self.bindkeys_file is not None:
            twice = sorted(read_bindkeys(self.bindkeys_file).keys() & self.bindkeys.keys())
            if twice:
                raise ValueError(
                    f"bind keys of {', '.join(twice)} in both bindkeys and bindkeys_file: give one"
                )
        return self

    def all_bindkeys(self) -> dict[str, bytes]:
        """Every bind key by normalised address: ``bindkeys_file``'s, then ``bindkeys``."""
        keys = read_bindkeys(self.bindkeys_file) if self.bindkeys_file is not None else {}
        keys.update(
            (address, bytes.fromhex(key.get_secret_value())) for address, key in self.bindkeys.items()
        )
        return keys


def read_bindkeys(path: Path) -> dict[str, bytes]:
    """The bind keys of a ``bindkeys_file``: ``ADDRESS KEY`` a line. ValueError names the file and the line of
    a bad one, never its contents (a key is a secret)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or not _MAC.match(fields[0]) or not re.fullmatch(r"[0-9A-Fa-f]{32}", fields[1]):
            raise ValueError(f"{path}:{number}: not an `ADDRESS KEY` line (a MAC address, 32 hex digits)")
        address = _norm_address(fields[0])
        if address in keys:
            raise ValueError(f"{path}:{number}: a second key for {address}")
        keys[address] = bytes.fromhex(fields[1])
    return keys


# -- the scanner ----------------------------------------------------------------------------------------

PASSIVE_FLAGS: Final = (0x02, 0x04, 0x05, 0x06, 0x18, 0x1A)
"""The advertising Flags values a passive BlueZ scan matches (BlueZ passive scanning needs patterns):
the common ones of sensors and beacons. An advert without a Flags element is heard only actively."""


def advert_of(device: Any, data: Any, ts: float | None = None) -> Advert:
    """An :class:`~protocols.ble_adverts.Advert` of what bleak's callback got (a ``BLEDevice`` and its
    ``AdvertisementData``)."""
    return Advert(
        address=device.address,
        rssi=data.rssi,
        name=data.local_name,
        manufacturer_data=dict(data.manufacturer_data),
        service_data={k.lower(): v for k, v in data.service_data.items()},
        service_uuids=tuple(u.lower() for u in data.service_uuids),
        tx_power=data.tx_power,
        ts=time.time() if ts is None else ts,
    )


async def start_scanner(
    adapter: str, mode: ScanningMode, callback: Callable[[Advert], None]
) -> tuple[Any, str]:
    """A started ``BleakScanner`` on ``adapter`` calling ``callback`` with each advert, and the mode it
    scans in (``auto``: passive, else active when passive cannot start). Raises
    :class:`~drivers.errors.DeviceUnavailable` naming the adapter when no scan can start."""
    try:
        from bleak import BleakScanner  # noqa: PLC0415  # bleak loads only when a device scans
        from bleak.args.bluez import OrPattern  # noqa: PLC0415
        from bleak.assigned_numbers import AdvertisementDataType  # noqa: PLC0415
    except ImportError as err:
        raise MissingDependencyError(f"the ble driver needs bleak: {err}") from err

    def on_advert(device: Any, data: Any) -> None:
        callback(advert_of(device, data))

    tried: list[str] = []
    for attempt in ("passive", "active") if mode == "auto" else (mode,):
        bluez: dict[str, Any] = {"adapter": adapter}
        if attempt == "passive":
            bluez["or_patterns"] = [
                OrPattern(0, AdvertisementDataType.FLAGS, bytes([flags])) for flags in PASSIVE_FLAGS
            ]
        try:
            scanner = BleakScanner(on_advert, None, attempt, bluez=bluez, backend=SCANNER_BACKEND)  # type: ignore[arg-type]
            await scanner.start()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # bleak's errors, D-Bus's, a platform without the mode: try the next
            tried.append(f"{attempt}: {err or type(err).__name__}")
            continue
        return scanner, attempt
    raise DeviceUnavailable(f"bluetooth {adapter}: cannot scan ({'; '.join(tried)})")


class ScannerSource:
    """A scanning adapter as a :class:`~drivers.interfaces.SharedSource` of adverts: the scanner's callback
    appends to a bounded buffer that :meth:`receive` takes from."""

    def __init__(self, capacity: int = SOURCE_CAPACITY) -> None:
        self.capacity = capacity
        self.mode = ""
        self.dropped = 0
        self._adverts: deque[Advert] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._scanner: Any = None
        self._closed = False
        self._stopping: asyncio.Task[None] | None = None

    def put(self, advert: Advert) -> None:
        """The scanner's callback (in the event loop's thread)."""
        if len(self._adverts) >= self.capacity:
            self.dropped += 1
            return
        self._adverts.append(advert)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start(self, adapter: str, mode: ScanningMode) -> None:
        self._scanner, self.mode = await start_scanner(adapter, mode, self.put)

    async def receive(self) -> Advert:
        while not self._adverts:
            if self._closed:
                raise ConnectionLost("scanner stopped")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._adverts.popleft()

    async def send(self, frame: object) -> None:
        raise ConfigurationError("a BLE scanner does not transmit")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            with contextlib.suppress(RuntimeError):  # no loop any more: nothing to stop
                self._stopping = asyncio.get_running_loop().create_task(_stop(scanner))


async def _stop(scanner: Any) -> None:
    with contextlib.suppress(Exception):  # the adapter may be gone already
        await scanner.stop()


_sources: weakref.WeakValueDictionary[str, ScannerSource] = weakref.WeakValueDictionary()
"""The open scanner of each adapter key (for the mode it scans in and its drops)."""


# -- the filter and the device's state ------------------------------------------------------------------


class _Filter:
    """What a device hears: every filter it sets must pass; within one, any entry."""

    def __init__(self, options: BleOptions) -> None:
        self.addresses = frozenset(options.addresses)
        self.names = (
            re.compile("|".join(fnmatch.translate(n) for n in options.names)) if options.names else None
        )
        self.uuids = frozenset(options.service_uuids)
        self.companies = frozenset(options.manufacturer_ids)

    @property
    def passes_all(self) -> bool:
        return not (self.addresses or self.names or self.uuids or self.companies)

    def accepts(self, advert: Advert) -> bool:
        if self.addresses and _norm_address(advert.address) not in self.addresses:
            return False
        if self.names is not None and (advert.name is None or not self.names.match(advert.name)):
            return False
        if (
            self.uuids
            and self.uuids.isdisjoint(advert.service_uuids)
            and self.uuids.isdisjoint(advert.service_data)
        ):
            return False
        return not (self.companies and self.companies.isdisjoint(advert.manufacturer_data))


class BleDriver(Driver[BleOptions]):
    """Scan (or replay) BLE advertisements and report them decoded (see the module docstring)."""

    name: ClassVar[str] = "ble"
    Options: ClassVar[type[DriverOptions]] = BleOptions
    emits: ClassVar[frozenset[str]] = frozenset({BLE_ADVERT, DEVICE_STATUS})

    def __init__(self, device: str, options: BleOptions) -> None:
        super().__init__(device, options)
        self._filter = _Filter(options)
        self._seen: dict[tuple[object, ...], tuple[tuple[object, ...], float]] = {}
        """The last payload reported of each kind of advert of each address, and when (least recent first)."""
        self._counters: dict[str, int] = {}
        """The last encryption counter of each encrypted BTHome sensor (those with a bind key: bounded)."""
        try:
            self._keys = options.all_bindkeys()
        except ValueError as err:  # the key file went away or changed since the config was checked
            raise ConfigurationError(f"bindkeys_file: {err}") from None
        self._formats = frozenset(options.formats)

    async def run(self, ctx: DeviceContext) -> None:
        if self.options.replay is not None:
            await self._replay(ctx, self.options.replay)
        else:
            assert self.options.adapter is not None  # one of the two, checked by the options
            await self._scan(ctx, self.options.adapter)

    # -- scanning ---------------------------------------------------------------------------------------
    async def _scan(self, ctx: DeviceContext, adapter: str) -> None:
        line = self.options.shared_line()
        assert line is not None  # an adapter is given
        key = line.key
        mode = self.options.scanning_mode

        async def open_source() -> ScannerSource:
            source = ScannerSource()
            await source.start(adapter, mode)
            _sources[key] = source
            return source

        accept = None if self._filter.passes_all else self._filter.accepts
        async with interfaces.attach(
            key,
            open_source,
            settings=line.settings,
            device=self.device,
            accept=accept,
            queue_size=self.options.queue_size,
            count=ctx.count,
        ) as sub:
            source = _sources.get(key)
            ctx.connected(f"bluetooth {adapter}, {source.mode if source else mode} scanning")
            dropped = source.dropped if source is not None else 0
            silence = self.options.silence_restart_s
            heard = sub.interface.stats.frames_read
            while True:
                try:
                    async with asyncio.timeout(silence):
                        adverts = await sub.receive_many(256)
                except TimeoutError:
                    if sub.interface.stats.frames_read == heard:  # the adapter heard nothing, for anyone
                        sub.interface.fail(
                            DeviceTimeout(f"bluetooth {adapter}: nothing heard for {silence:g} s")
                        )
                    heard = sub.interface.stats.frames_read
                    continue
                if source is not None and source.dropped != dropped:
                    ctx.count(SCANNER_DROPPED, source.dropped - dropped)
                    dropped = source.dropped
                for advert in adverts:
                    self._handle(advert, ctx)

    # -- replay -----------------------------------------------------------------------------------------
    async def _replay(self, ctx: DeviceContext, path: Path) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        try:
            with path.open("rb"):
                pass
        except OSError as err:
            raise DeviceUnavailable(f"replay {path}: {err.strerror or err}") from err
        ctx.connected(f"replay of {path.name}")
        played = skipped = rounds = 0
        while True:
            rounds += 1
            self._counters.clear()  # the capture's encrypted adverts are not replay attacks, each round
            start = loop.time()
            first: float | None = None
            with path.open("rb") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        advert = advert_from_json(line)
                    except DecodeError as err:
                        skipped += 1
                        ctx.count(REPLAY_LINES_SKIPPED, 1)
                        ctx.log.warning("%s:%d: %s (line skipped)", path, number, err)
                        continue
                    if options.replay_speed > 0:
                        if first is None:
                            first = advert.ts
                        delay = start + (advert.ts - first) / options.replay_speed - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await ctx.room()
                    played += 1
                    if self._filter.accepts(advert):
                        self._handle(_now(advert), ctx)
                    if played % 64 == 0:
                        await asyncio.sleep(0)  # an unpaced replay lets the others run
            if not options.replay_loop:
                break
            if played == 0:
                raise DeviceUnavailable(f"replay {path}: no advert in the file")
        ctx.emit(
            DEVICE_STATUS,
            {
                "state": REPLAY_ENDED,
                "adverts": played,
                "lines_skipped": skipped,
                "detail": f"replay of {path.name} ended: {played} adverts, {skipped} lines skipped",
            },
        )
        await asyncio.Event().wait()  # the device idles until the gateway stops or reloads it

    # -- one advert -------------------------------------------------------------------------------------
    def _handle(self, advert: Advert, ctx: DeviceContext) -> None:
        address = advert.address
        slot = advert.slot()
        payload = advert.payload_key()
        seen = self._seen
        last = seen.get(slot)
        if last is not None:
            if last[0] == payload and advert.ts - last[1] < self.options.min_interval_s:
                ctx.count(ADVERTS_SUPPRESSED, 1)
                return
            del seen[slot]  # re-inserted below: the dict's order is the order of last use
        elif len(seen) >= self.options.max_addresses:
            del seen[next(iter(seen))]
        seen[slot] = (payload, advert.ts)
        try:
            found, errors = decode(advert, self._keys.get(_norm_address(address)) if self._keys else None)
        except (
            Exception
        ):  # a decoder's bug: this advert is lost and counted, the device and the adapter go on
            ctx.count(DECODE_ERRORS, 1)
            ctx.count(DECODER_FAILURES, 1)
            ctx.log.exception("%s: a decoder failed on %s", address, advert_to_json(advert))
            return
        for err in errors:
            ctx.count(DECODE_ERRORS, 1)
            ctx.count(err.reason, 1)
            ctx.log.debug("%s: %s", address, err)
        if not found:
            if errors:
                return
            if not self.options.raw:
                ctx.count(ADVERTS_UNKNOWN, 1)
                return
            found = [Decoded("raw")]
        for decoded in found:
            for problem in decoded.problems:
                ctx.count(problem, 1)
            counter = decoded.values.get("encryption_counter") if decoded.format == "bthome" else None
            if counter is not None:
                previous = self._counters.get(address)
                if previous is not None and previous >= counter >= COUNTER_RESTART:
                    ctx.count(BTHOME_REPLAYED, 1)  # an old advert sent again: bthome.io/encryption
                    continue
                self._counters[address] = int(counter)
            if self._formats and decoded.format not in self._formats:
                ctx.count(ADVERTS_FILTERED, 1)
                continue
            ctx.emit(BLE_ADVERT, event_data(advert, decoded), advert.ts)


def _now(advert: Advert) -> Advert:
    """The advert as heard now (a replayed one carries the time it is played)."""
    return Advert(
        advert.address,
        advert.rssi,
        advert.name,
        advert.manufacturer_data,
        advert.service_data,
        advert.service_uuids,
        advert.tx_power,
        time.time(),
    )


def event_data(advert: Advert, decoded: Decoded) -> dict[str, Any]:
    """The ``ble.advert`` event's data (see the module docstring)."""
    data: dict[str, Any] = {
        "address": advert.address,
        "rssi": advert.rssi,
        "name": advert.name,
        "format": decoded.format,
        "values": decoded.values,
        "units": decoded.units,
    }
    fmt = decoded.format
    if fmt in _BEACONS:
        data["uuid"] = decoded.uuid
        data["major"] = decoded.major
        data["minor"] = decoded.minor
        data["tx_power"] = decoded.tx_power
        data.update(decoded.text)
    elif fmt == "raw":
        data["manufacturer_data"] = _hex_map(advert.manufacturer_data)
        data["service_data"] = _hex_map(advert.service_data)
        data["service_uuids"] = list(advert.service_uuids)
        data["tx_power"] = advert.tx_power
    elif decoded.text:
        data["text"] = decoded.text
    return data


def _hex_map(mapping: Mapping[Any, bytes]) -> dict[str, str]:
    return {str(key): value.hex() for key, value in mapping.items()}
