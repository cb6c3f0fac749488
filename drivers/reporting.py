"""Report on change: which of a polled device's values are worth an event.

A meter polled every second repeats itself: the energy register moves once a minute, a breaker's state once a
month. Every driver that polls values (``modbus``, ``dlt645``) lets a point say when it is worth reporting,
with the same three options and the same meaning::

    deadband: 0.5            # report a change larger than 0.5 (absolute), or
    deadband: "1%"           #   larger than 1% of the last reported value
    report_on_change: true   # report any change (implied by a deadband)
    max_interval_s: 300      # and in any case at least this often (a heartbeat: the point is alive)

A point without them is reported at every poll. A point with them is reported:

- the first time it is read (in a device's session: after a reconnect the values are reported afresh);
- when it changed by more than its deadband since it was *last reported* (not since the last poll, so a slow
  drift is reported once it adds up); without a deadband, when it changed at all. "More than" is decided on
  the values as the device gave them (10.1 -> 10.4 is a change of exactly 0.3, not of the binary floats'
  0.3000000000000007, so a deadband of 0.3 does not report it);
- when ``max_interval_s`` has passed since it was last reported, changed or not.

A percent deadband is relative to the last reported value; from 0, any change is more than any percentage.
A value that is not a number (a bool, a string) is reported when it differs. NaN (a float register saying
"no measurement") is a value like any other: a change to or from NaN is reported, NaN after NaN is not.

The options are pydantic field types (:data:`Deadband`, :data:`ReportOnChange`, :data:`MaxInterval`), so a
driver's point model declares them among its own fields, in its own order; :class:`Reporter` holds one point's
state and decides; :class:`Reports` decides for the points of one event (what of a poll goes into it), which
is what :class:`drivers.polled.PolledDevice` asks before it emits.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Final, Protocol

from pydantic import AfterValidator, Field

__all__ = [
    "MAX_INTERVAL_S",
    "Deadband",
    "MaxInterval",
    "ReportOnChange",
    "Reporter",
    "ReportingOptions",
    "Reports",
    "check_deadband",
    "reports_on_change",
]

_PERCENT: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
MAX_INTERVAL_S: Final = 86400 * 7
"""The longest ``max_interval_s``: a week."""


def check_deadband(value: float | str) -> float | str:
    """A deadband as given in YAML, checked: a number >= 0, or a percentage normalised to ``"N%"``."""
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            raise ValueError('a deadband is a number (0.5) or a percentage ("1%")')
        return f"{float(match.group(1)):g}%"
    if not math.isfinite(value) or value < 0:
        raise ValueError("a deadband must be a number >= 0")
    return value


Deadband = Annotated[
    float | str,
    AfterValidator(check_deadband),
    Field(
        description="Report only changes larger than this: an absolute amount (0.5) or a percentage of the "
        'last reported value ("1%").'
    ),
]
"""A point's ``deadband``: declare it as ``deadband: Deadband | None = None``."""

ReportOnChange = Annotated[
    bool, Field(description="Report the point only when its value changed (any change; see deadband).")
]
"""A point's ``report_on_change``: declare it as ``report_on_change: ReportOnChange = False``."""

MaxInterval = Annotated[
    float | None,
    Field(
        gt=0, le=MAX_INTERVAL_S, description="With report_on_change or deadband: report at least this often."
    ),
]
"""A point's ``max_interval_s``: declare it as ``max_interval_s: MaxInterval = None``."""


_CLOSE: Final = 1e-12
"""Relative distance from a deadband under which float arithmetic may decide wrong (it errs by a few units
in the last place, about 1e-16): closer than this, the change is computed exactly."""


def _exact(number: float) -> Fraction:
    """A finite number as the decimal it was written as (its shortest repr), exactly."""
    return Fraction(number) if isinstance(number, int) else Fraction(repr(number))


class ReportingOptions(Protocol):
    """What :meth:`Reporter.of` reads from a point's options (the fields above, already validated)."""

    @property
    def deadband(self) -> float | str | None: ...

    @property
    def report_on_change(self) -> bool: ...

    @property
    def max_interval_s(self) -> float | None: ...


def reports_on_change(options: ReportingOptions) -> bool:
    """Whether a point is reported only when due (else at every poll): a deadband implies it."""
    return options.report_on_change or options.deadband is not None


@dataclass(slots=True)
class Reporter:
    """One point's reporting: its options, and the value and time it was last reported.

    Times are a monotonic clock's seconds, given by the caller, so the decision is a pure function of the
    values and times offered (and testable without waiting)."""

    on_change: bool = False
    """Report only when due; False: every value offered is reported."""
    absolute: float | None = None
    """An absolute deadband."""
    percent: float | None = None
    """A deadband in percent of the last reported value."""
    max_interval_s: float | None = None
    last: object = None
    """The last reported value."""
    last_at: float | None = None
    """When it was reported (None: never)."""

    @classmethod
    def of(cls, options: ReportingOptions) -> Reporter:
        absolute: float | None = None
        percent: float | None = None
        if isinstance(options.deadband, str):
            percent = float(options.deadband.rstrip("%"))
        elif options.deadband is not None:
            absolute = float(options.deadband)
        return cls(reports_on_change(options), absolute, percent, options.max_interval_s)

    def due(self, value: object, now: float) -> bool:
        """Whether ``value``, read at ``now``, is to be reported (without recording it: see :meth:`offer`)."""
        if not self.on_change or self.last_at is None:
            return True
        if self.max_interval_s is not None and now - self.last_at >= self.max_interval_s:
            return True
        last = self.last
        if isinstance(value, bool) or isinstance(last, bool) or not isinstance(value, int | float):
            return value != last
        if not isinstance(last, int | float):
            return True
        if value == last:
            return False
        if not (math.isfinite(value) and math.isfinite(last)):
            # inf - inf and anything with NaN is NaN, which no threshold compares with; NaN is never equal
            # to itself, so NaN after NaN is caught here.
            return not (math.isnan(value) and math.isnan(last))
        if self.absolute is not None:
            threshold = self.absolute
        elif self.percent is not None:
            threshold = abs(last) * self.percent / 100
        else:
            return True
        change = abs(value - last)
        if abs(change - threshold) > _CLOSE * (abs(value) + abs(last) + threshold):
            return change > threshold
        return self._exceeds_exactly(value, last)

    def _exceeds_exactly(self, value: float, last: float) -> bool:
        """Whether ``value`` is more than the deadband away from ``last``, in exact arithmetic on their
        decimal forms (their shortest reprs), which are what the device sent."""
        change = abs(_exact(value) - _exact(last))
        if self.absolute is not None:
            return change > _exact(self.absolute)
        assert self.percent is not None
        return change > abs(_exact(last)) * _exact(self.percent) / 100

    def offer(self, value: object, now: float) -> bool:
        """Whether ``value``, read at ``now``, is to be reported; if it is, it becomes the last reported."""
        if not self.due(value, now):
            return False
        self.last = value
        self.last_at = now
        return True


class Reports:
    """The points of one event (a poll of a schedule): their :class:`Reporter`\\ s by value name, in the
    order the config gives them, and their units. :meth:`due` says what of a poll's values goes into the
    event.

    Times are ``clock``'s seconds (monotonic; injectable so that ``max_interval_s`` can be tested without
    waiting). Made afresh for each session of a device: after a reconnect every value is reported again."""

    __slots__ = ("_clock", "on_change", "reporters", "units")

    def __init__(
        self,
        reporters: Mapping[str, Reporter],
        units: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``units``: value name -> unit, for the points that have one (shared by the events it makes: it
        is never changed)."""
        self.reporters = dict(reporters)
        self.units = dict(units)
        self.on_change = any(reporter.on_change for reporter in self.reporters.values())
        """Some point reports only when due; else every value offered is reported, with no state kept."""
        self._clock = clock

    def due(self, values: Mapping[str, object]) -> tuple[Mapping[str, object], Mapping[str, str]] | None:
        """The values of ``values`` (a poll's, by name) to report now and their units; None when none is
        due. The values reported become their points' last reported."""
        if not self.on_change:
            # Every value at every poll: the common case, and the hot path (no per-point work).
            units = self.units
            if len(values) != len(self.reporters):
                units = {name: unit for name, unit in units.items() if name in values}
            return values, units
        now = self._clock()
        report: dict[str, object] = {}
        report_units: dict[str, str] = {}
        point_units = self.units
        for name, reporter in self.reporters.items():
            if name not in values:
                continue
            value = values[name]
            if reporter.offer(value, now):
                report[name] = value
                unit = point_units.get(name)
                if unit is not None:
                    report_units[name] = unit
        return (report, report_units) if report else None
