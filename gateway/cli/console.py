"""An upstream that prints to the console instead of publishing: what the demo shows when no MQTT broker
answers. It reads the buffer in seq order and acknowledges what it printed, like the forwarder, with the
same message ids, topics and payloads."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from gateway.delivery.buffer import Buffer
from gateway.delivery.payload import encode_payload


class ConsoleUpstream:
    def __init__(
        self,
        buffer: Buffer,
        *,
        gateway_id: str,
        prefix: str,
        write: Callable[[str], object] = sys.stdout.write,
    ) -> None:
        self.buffer = buffer
        self.gateway_id = gateway_id
        self.prefix = prefix
        self.write = write
        self._cursor = 0
        self._running = False
        self._printing = asyncio.Lock()  # run and drain: each event printed once

    async def run(self) -> None:
        self._running = True
        try:
            while True:
                await self.buffer.wait_for_new(self._cursor)
                await self._print_pending()
        finally:
            self._running = False

    async def drain(self) -> str | None:
        """Print what is left (at a stop, after the last commit)."""
        if not self._running:
            return "the console upstream is not running"
        while await self._print_pending():
            pass
        return None

    async def _print_pending(self) -> bool:
        topic = f"{self.prefix}/{self.gateway_id}"
        async with self._printing:
            events = await self.buffer.read(self._cursor, 500)
            for event in events:
                payload = encode_payload(self.gateway_id, event).decode()
                self.write(f"{topic}/{event.device}/{event.kind} {payload}\n")
            if events:
                self._cursor = events[-1].seq
                await self.buffer.ack(e.seq for e in events)
        return bool(events)
