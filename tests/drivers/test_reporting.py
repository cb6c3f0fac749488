"""drivers.reporting: when a polled value is worth reporting (report on change, deadband, max interval).

The property tests compare :class:`Reporter` with a model written from the rule itself, in exact arithmetic:
a value is reported iff it is the first, or ``max_interval_s`` has passed since the last report, or it
differs from the last *reported* value by more than the deadband (absolute, or a percentage of the last
reported value; without a deadband, by anything)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from drivers.dlt645 import Dlt645Point
from drivers.modbus import ModbusPoint
from drivers.reporting import Deadband, MaxInterval, Reporter, ReportOnChange, reports_on_change


class Point(BaseModel):
    """The reporting options alone, as a driver's point model declares them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadband: Deadband | None = None
    report_on_change: ReportOnChange = False
    max_interval_s: MaxInterval = None


def reporter(**options: Any) -> Reporter:
    return Reporter.of(Point(**options))


def offers(r: Reporter, samples: Sequence[tuple[float, object]]) -> list[bool]:
    return [r.offer(value, t) for t, value in samples]


# ------------------------------------------------------------------------------------------ the options


@pytest.mark.parametrize(
    ("given", "kept"),
    [(0.5, 0.5), (0, 0), ("1%", "1%"), (" 1.50 % ", "1.5%"), ("0%", "0%"), ("12.25%", "12.25%")],
)
def test_a_deadband_is_a_number_or_a_percentage(given: float | str, kept: float | str) -> None:
    assert Point(deadband=given).deadband == kept


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"deadband": "5 percent"}, "a deadband is a number"),
        ({"deadband": "0.5"}, "a deadband is a number"),
        ({"deadband": "-1%"}, "a deadband is a number"),
        ({"deadband": -0.1}, "a number >= 0"),
        ({"deadband": math.nan}, "a number >= 0"),
        ({"deadband": math.inf}, "a number >= 0"),
        ({"max_interval_s": 0}, "greater than 0"),
        ({"max_interval_s": 8 * 86400}, "less than or equal to 604800"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Point(**options)


def test_both_drivers_points_carry_the_same_options() -> None:
    modbus = ModbusPoint.model_validate(
        {"name": "v", "address": 0, "type": "float32", "deadband": "2%", "max_interval_s": 60}
    )
    dlt645 = Dlt645Point(point="voltage_a", deadband="2%", max_interval_s=60)
    assert Reporter.of(modbus) == Reporter.of(dlt645) == Reporter(True, None, 2.0, 60.0)
    assert reports_on_change(modbus) and modbus.reports_on_change
    assert Reporter.of(Dlt645Point(point="voltage_a", deadband=0.5)) == Reporter(True, 0.5)
    assert Reporter.of(Dlt645Point(point="voltage_a", report_on_change=True)) == Reporter(True)
    assert Reporter.of(Dlt645Point(point="voltage_a", max_interval_s=5)) == Reporter(False, None, None, 5.0)


# ------------------------------------------------------------------------------------------ examples


def test_without_options_every_value_is_reported() -> None:
    r = reporter()
    assert offers(r, [(0, 1.0), (0, 1.0), (1, 1.0), (2, "x"), (2, "x")]) == [True] * 5


def test_report_on_change_reports_the_first_value_and_changes() -> None:
    r = reporter(report_on_change=True)
    samples: list[tuple[float, object]] = [(0, 1.0), (1, 1.0), (2, 1.5), (3, 1.5), (4, True), (5, True)]
    assert offers(r, samples) == [True, False, True, False, True, False]
    r = reporter(report_on_change=True)
    assert offers(r, [(0, "run"), (1, "run"), (2, "stop"), (3, False), (4, True), (5, True)]) == [
        True,
        False,
        True,
        True,
        True,
        False,
    ]


def test_an_absolute_deadband_counts_from_the_last_report() -> None:
    r = reporter(deadband=0.5)
    # A slow drift, 0.2 a poll, is reported once it adds up to more than 0.5 from the last report.
    values = [230.0, 230.2, 230.4, 230.6, 230.8, 231.0, 231.2]
    assert offers(r, [(i, v) for i, v in enumerate(values)]) == [True, False, False, True, False, False, True]
    # Exactly the deadband is not more than it, whatever binary floating point makes of the difference.
    r = reporter(deadband=0.3)
    assert offers(r, [(0, 10.1), (1, 10.4), (2, 9.8), (3, 10.41)]) == [True, False, False, True]
    assert 10.4 - 10.1 > 0.3  # what a plain float comparison would have said


def test_a_percent_deadband_is_relative_to_the_last_reported_value() -> None:
    r = reporter(deadband="10%")
    assert offers(r, [(0, 100.0), (1, 110.0), (2, 110.5), (3, 121.0), (4, 99.45), (5, 121.6)]) == [
        True,
        False,  # exactly 10%
        True,
        False,  # 10% of 110.5 is 11.05: 10.5 is less
        False,  # exactly 11.05
        True,  # 11.1
    ]
    r = reporter(deadband="10%")
    assert offers(r, [(0, -50.0), (1, -55.0), (2, -55.1)]) == [True, False, True]


def test_zero_as_the_last_value_and_as_the_deadband() -> None:
    # From a reported 0, a percentage of it is 0: any change is more.
    r = reporter(deadband="5%")
    assert offers(r, [(0, 0.0), (1, 0.0), (2, 0), (3, 1e-9), (4, 1e-9)]) == [True, False, False, True, False]
    # A deadband of 0 reports any change, and nothing else.
    r = reporter(deadband=0)
    assert offers(r, [(0, 0.0), (1, -0.0), (2, 0.0), (3, 0.001), (4, 0.001)]) == [
        True,
        False,
        False,
        True,
        False,
    ]
    r = reporter(deadband="0%")
    assert offers(r, [(0, 7.0), (1, 7.0), (2, 7.1)]) == [True, False, True]


def test_the_max_interval_forces_a_report_and_restarts_the_count() -> None:
    r = reporter(report_on_change=True, max_interval_s=10)
    samples = [(0.0, 1.0), (9.9, 1.0), (10.0, 1.0), (15.0, 2.0), (24.9, 2.0), (25.0, 2.0), (34.0, 2.0)]
    assert offers(r, samples) == [True, False, True, True, False, True, False]
    r = reporter(deadband="1%", max_interval_s=0.5)
    assert offers(r, [(0.0, 50.0), (0.3, 50.1), (0.5, 50.1), (0.6, 50.2), (1.0, 50.3)]) == [
        True,
        False,
        True,
        False,
        True,
    ]


def test_nan_and_infinities_are_values_like_any_other() -> None:
    nan, inf = math.nan, math.inf
    r = reporter(deadband=0.5)
    samples = [(0, nan), (1, nan), (2, 1.0), (3, nan), (4, inf), (5, inf), (6, -inf), (7, 1e308), (8, 1e308)]
    assert offers(r, samples) == [True, False, True, True, True, False, True, True, False]
    r = reporter(deadband="1%")
    assert offers(r, [(0, inf), (1, 5.0), (2, 5.0), (3, nan), (4, nan), (5, 5.0)]) == [
        True,
        True,  # from inf, 1% of it is inf: the change is there all the same
        False,
        True,
        False,
        True,
    ]


def test_due_does_not_record() -> None:
    r = reporter(deadband=1)
    assert r.due(5.0, 0) and r.due(5.0, 0)
    assert r.offer(5.0, 0) and not r.due(5.5, 1) and r.due(6.5, 1)
    assert (r.last, r.last_at) == (5.0, 0)


# ------------------------------------------------------------------------------------------ properties


@dataclass(frozen=True)
class Case:
    deadband: Decimal | None
    percent: bool
    report_on_change: bool
    max_interval_s: float | None

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "report_on_change": self.report_on_change,
            "max_interval_s": self.max_interval_s,
        }
        if self.deadband is not None:
            out["deadband"] = f"{self.deadband}%" if self.percent else float(self.deadband)
        return out


def model(case: Case, samples: Sequence[tuple[float, float]]) -> list[bool]:
    """The rule, in exact arithmetic on the values as written (their shortest decimal form)."""
    if case.deadband is None and not case.report_on_change:
        return [True] * len(samples)
    out = []
    last: Fraction | None = None
    last_at = 0.0
    for t, reading in samples:
        value = Fraction(repr(reading))
        overdue = case.max_interval_s is not None and t - last_at >= case.max_interval_s
        if last is None or overdue:
            due = True
        elif case.deadband is None:
            due = value != last
        elif case.percent:
            due = abs(value - last) > abs(last) * Fraction(case.deadband) / 100
        else:
            due = abs(value - last) > Fraction(case.deadband)
        if due:
            last, last_at = value, t
        out.append(due)
    return out


def decimals(places: int, limit: int) -> st.SearchStrategy[Decimal]:
    return st.integers(-limit, limit).map(lambda n: Decimal(n).scaleb(-places))


cases = st.builds(
    Case,
    deadband=st.none() | decimals(2, 2000).map(abs),
    percent=st.booleans(),
    report_on_change=st.booleans(),
    max_interval_s=st.none() | st.floats(0.01, 100),
)


@st.composite
def meter_readings(draw: st.DrawFn) -> tuple[Case, list[tuple[float, float]]]:
    """A point's options and its readings as a meter gives them (decimals on a grid of 1, 0.1, 0.01 or
    0.001), made so that what the rule turns on comes up often: steady stretches, changes of exactly the
    deadband (from the value before, which is often the last reported one), drifts in small steps, polls
    exactly ``max_interval_s`` apart."""
    unit = Decimal(1).scaleb(-draw(st.integers(0, 3)))
    percent = draw(st.booleans())
    deadband: Decimal | None
    if draw(st.booleans()):
        deadband = None
    elif percent:
        deadband = Decimal(draw(st.sampled_from(["0", "0.5", "1", "2.5", "10", "12.5", "50", "100"])))
    else:
        deadband = unit * draw(st.integers(0, 20))
    max_interval = draw(st.none() | st.sampled_from([0.5, 1.0, 2.5, 10.0]))
    case = Case(deadband, percent, draw(st.booleans()), max_interval)
    band = deadband or unit
    value = unit * draw(st.integers(-(10**6), 10**6))
    t = 0.0
    out = []
    for _ in range(draw(st.integers(0, 40))):
        step = draw(st.sampled_from(["same", "small", "band", "far", "zero"]))
        sign = draw(st.sampled_from([-1, 1]))
        if step == "small":
            value += sign * unit * draw(st.integers(1, 3))
        elif step == "band":
            value += sign * (value * band / 100 if percent else band)
        elif step == "far":
            value = unit * draw(st.integers(-(10**6), 10**6))
        elif step == "zero":
            value = Decimal(0)
        value = value.quantize(unit)  # on the grid, as the meter would give it
        t += draw(st.sampled_from([0.0, 0.1, 0.25, 1.0, max_interval or 3.0]))
        out.append((t, float(value)))
    return case, out


@given(meter_readings())
def test_a_point_is_reported_iff_first_or_changed_beyond_its_deadband_or_overdue(
    scenario: tuple[Case, list[tuple[float, float]]],
) -> None:
    case, samples = scenario
    r = reporter(**case.options())
    assert [r.offer(value, t) for t, value in samples] == model(case, samples)


increments = st.floats(0, 50) | st.just(0.0)


@given(
    st.builds(
        Case,
        deadband=st.none() | st.floats(0, 1e6).map(lambda x: Decimal(repr(x))),
        percent=st.just(False),
        report_on_change=st.booleans(),
        max_interval_s=st.none() | st.floats(0.01, 100),
    )
    | cases,
    st.lists(st.tuples(increments, st.floats(allow_nan=False, allow_infinity=False)), max_size=30),
)
def test_any_finite_floats_follow_the_rule_too(case: Case, picks: list[tuple[float, float]]) -> None:
    """Any magnitude, subnormals, -0.0: the float shortcut never decides otherwise than the exact rule."""
    samples = []
    t = 0.0
    for dt, value in picks:
        t += dt
        samples.append((t, value))
    r = reporter(**case.options())
    assert [r.offer(value, at) for at, value in samples] == model(case, samples)


@given(
    cases,
    st.lists(
        st.tuples(
            increments,
            st.floats() | st.integers(-(2**63), 2**64) | st.booleans() | st.sampled_from(["on", "off"]),
        ),
        max_size=30,
    ),
)
def test_any_values_never_raise_and_a_repeat_is_never_reported_early(
    case: Case, picks: list[tuple[float, object]]
) -> None:
    r = reporter(**case.options())
    t = 0.0
    for index, (dt, value) in enumerate(picks):
        t += dt
        last, last_at = r.last, r.last_at
        reported = r.offer(value, t)
        if index == 0:
            assert reported
        same = (value == last and type(value) is type(last)) or _both_nan(value, last)
        overdue = (
            last_at is not None and case.max_interval_s is not None and t - last_at >= case.max_interval_s
        )
        if reports_on_change(Point(**case.options())) and same and not overdue:
            assert not reported
        if reported:
            assert r.last is value and r.last_at == t
        else:
            assert (r.last, r.last_at) == (last, last_at) or _both_nan(r.last, last)


def _both_nan(a: object, b: object) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
