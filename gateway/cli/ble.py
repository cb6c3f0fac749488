"""``edgegw ble record``: what a Bluetooth adapter hears, written as a capture a ``ble`` device can replay.

::

    edgegw ble record --out adverts.jsonl [--adapter hci0] [--scanning-mode auto|passive|active]
                      [--duration S] [--count N]

One JSON line per advertisement heard (:func:`protocols.ble_adverts.advert_to_json`: the shape of bleak's
``AdvertisementData`` with the address and the time), flushed line by line so that a capture cut short by
Ctrl-C or a power cut keeps what it had. It scans with the same scanner code as the driver
(:func:`drivers.ble.start_scanner`): what is recorded is what a ``ble`` device on that adapter would hear.
Stops after ``--duration`` seconds or ``--count`` adverts, or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import IO, Final

from drivers.ble import ScanningMode, start_scanner
from drivers.errors import DriverError
from protocols.ble_adverts import Advert, advert_to_json

__all__ = ["record"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1


async def record_to(
    out: IO[str],
    *,
    adapter: str = "hci0",
    scanning_mode: ScanningMode = "auto",
    duration: float | None = None,
    count: int | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[int, str]:
    """Record into ``out`` until ``duration``, ``count`` or ``stop``; the adverts written and the mode."""
    done = stop or asyncio.Event()
    written = 0

    def heard(advert: Advert) -> None:
        nonlocal written
        if count is not None and written >= count:
            return
        out.write(advert_to_json(advert) + "\n")
        out.flush()
        written += 1
        if count is not None and written >= count:
            done.set()

    scanner, mode = await start_scanner(adapter, scanning_mode, heard)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await done.wait()
    finally:
        with contextlib.suppress(Exception):  # the adapter may be gone: what was written stays
            await scanner.stop()
    return written, mode


def record(
    out: Path,
    *,
    adapter: str = "hci0",
    scanning_mode: ScanningMode = "auto",
    duration: float | None = None,
    count: int | None = None,
) -> int:
    """The command: exit status 0 when the scan ran (even if nothing was heard), 1 when it could not."""

    async def main() -> tuple[int, str]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signum, stop.set)
        with out.open("a", encoding="utf-8") as file:
            return await record_to(
                file, adapter=adapter, scanning_mode=scanning_mode, duration=duration, count=count, stop=stop
            )

    try:
        written, mode = asyncio.run(main())
    except (DriverError, OSError) as err:
        print(f"edgegw ble record: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{written} advertisements recorded to {out} ({adapter}, {mode} scanning)", file=sys.stderr)
    return EXIT_OK
