"""An upstream that prints to the console instead of publishing: what the demo shows when no MQTT broker
answers. It reads the buffer in seq order and acknowledges what it printed, exactly like the forwarder,
with the same message ids and payloads."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .buffer import Buffer, Stored


def payload(gateway_id: str, event: Stored) -> bytes:
    """The upstream JSON payload of one event (shared by every upstream)."""
    return b'{"id":"%s:%d","seq":%d,"device":"%s","kind":"%s","ts":%r,"data":%s}' % (
        gateway_id.encode(),
        event.seq,
        event.seq,
        event.device.encode(),
        event.kind.encode(),
        event.ts,
        event.data_json,
    )


def topic(prefix: str, gateway_id: str, event: Stored) -> str:
    return f"{prefix}/{gateway_id}/{event.device}/{event.kind}"


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
        self.delivered = 0

    async def run(self) -> None:
        cursor = 0
        while True:
            await self.buffer.wait_for_new(cursor)
            events = await self.buffer.read(cursor, 500)
            for event in events:
                line = payload(self.gateway_id, event).decode()
                self.write(f"{topic(self.prefix, self.gateway_id, event)} {line}\n")
            if events:
                cursor = events[-1].seq
                await self.buffer.ack(e.seq for e in events)
                self.delivered += len(events)
