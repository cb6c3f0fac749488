"""An upstream that prints to the console instead of publishing: what the demo shows when no MQTT broker
answers. It reads the buffer in seq order and acknowledges what it printed, like the forwarder, with the
same message ids, topics and payloads."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .buffer import Buffer
from .forwarder import encode_payload


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

    async def run(self) -> None:
        cursor = 0
        topic = f"{self.prefix}/{self.gateway_id}"
        while True:
            await self.buffer.wait_for_new(cursor)
            events = await self.buffer.read(cursor, 500)
            for event in events:
                payload = encode_payload(self.gateway_id, event).decode()
                self.write(f"{topic}/{event.device}/{event.kind} {payload}\n")
            if events:
                cursor = events[-1].seq
                await self.buffer.ack(e.seq for e in events)
