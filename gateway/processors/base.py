"""The processor contract: a per-device stage between a driver and the buffer.

::

    driver --emit--> processors of that device --> bounded queue --> buffer

A processor turns each event into zero or more events (:meth:`Processor.process`: a tag read becomes nothing,
or an arrival), and produces what time alone makes (:meth:`Processor.tick`: a departure, a count per minute).
Both are synchronous and pure apart from the processor's own state: no clock (``tick`` is told the time), no
I/O, no asyncio, so the same sequence of calls always gives the same events and tests need no sleeps. The
state is bounded: a processor that tracks things has a cap, and counts what the cap made it drop.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from drivers.event import Event

__all__ = ["Chain", "Processor"]


class Processor(abc.ABC):
    """Base of every processor."""

    @abc.abstractmethod
    def process(self, event: Event) -> list[Event]:
        """The events that ``event`` gives, in order (possibly none, possibly ``event`` itself). Never
        raises for a malformed event: it is counted and dropped or passed on."""

    def tick(self, now: float) -> list[Event]:
        """The events due by ``now`` (UTC epoch seconds), called periodically by the runtime. The default
        has none."""
        return []

    def flush(self) -> list[Event]:
        """The events that stopping now gives (called once, when the device stops for good): what a
        processor holds that would otherwise be lost. The default has none."""
        return []

    def counters(self) -> dict[str, int]:
        """Named counters (and gauges) for metrics and the shutdown summary. The default has none."""
        return {}


class Chain(Processor):
    """Processors in series: each event a processor gives (from ``process`` or ``tick``) goes through the
    processors after it."""

    def __init__(self, processors: Sequence[Processor]) -> None:
        self.processors = tuple(processors)

    def _through(self, events: list[Event], first: int) -> list[Event]:
        for processor in self.processors[first:]:
            if not events:
                break
            out: list[Event] = []
            for event in events:
                out.extend(processor.process(event))
            events = out
        return events

    def process(self, event: Event) -> list[Event]:
        return self._through([event], 0)

    def tick(self, now: float) -> list[Event]:
        out: list[Event] = []
        for index, processor in enumerate(self.processors):
            out.extend(self._through(processor.tick(now), index + 1))
        return out

    def flush(self) -> list[Event]:
        out: list[Event] = []
        for index, processor in enumerate(self.processors):
            out.extend(self._through(processor.flush(), index + 1))
        return out

    def counters(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for processor in self.processors:
            for name, value in processor.counters().items():
                merged[name] = merged.get(name, 0) + value
        return merged
