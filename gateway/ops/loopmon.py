"""Event-loop lag: how late the loop runs a callback it was asked to run on time.

Everything on the gateway's loop, the serial readers included, waits at most this long for its turn. A UART
at 115,200 baud fills the kernel's 4 KiB tty buffer in about 355 ms; as long as the loop's worst lag stays
far below that, no serial port overruns, whatever the rest of the pipeline is doing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(slots=True)
class LagStats:
    samples: int = 0
    max_s: float = 0.0
    total_s: float = 0.0
    over_10ms: int = 0
    over_50ms: int = 0

    @property
    def mean_s(self) -> float:
        return self.total_s / self.samples if self.samples else 0.0


class LoopMonitor:
    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.stats = LagStats()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - due)
            stats.samples += 1
            stats.total_s += lag
            stats.max_s = max(stats.max_s, lag)
            if lag > 0.010:
                stats.over_10ms += 1
            if lag > 0.050:
                stats.over_50ms += 1
