"""Tests for caracal.core.windows: budget-window arithmetic.

A budget that resets at the wrong instant lets an agent spend twice or locks it out (DESIGN.md: "budgets that
never reset" is one of the failures we beat), so these tests pin exact instants for the cases that go wrong
in practice: hour/day/ISO-week/month boundaries, 30- and 45-minute offsets, DST days of 23 and 25 hours,
local midnights that are skipped or repeated, and days a zone skipped altogether. Hypothesis then checks the
invariants over every IANA zone: each instant lies in exactly one window, windows tile time, and each window
starts where the module docstring's rule says it does.

Every clock value is injected; nothing reads the wall clock. Zone oracles use :mod:`zoneinfo` directly, never
the module's helpers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from caracal.core.windows import (
    CALENDAR_KINDS,
    MAX_ROLLING_DURATION,
    WindowSpec,
    in_window,
    next_reset,
    parse_duration,
    parse_window,
    window_bounds,
)
from caracal.exceptions import InvalidPolicyError, PolicyError

UTC = timezone.utc
US = timedelta(microseconds=1)
H = timedelta(hours=1)
D = timedelta(days=1)

ALL_ZONES = sorted(available_timezones() - {"localtime"})  # "localtime" is the host's zone, refused by design
DST_ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "America/Havana",
    "Asia/Beirut",
    "Australia/Sydney",
    "UTC",
]
PERIODIC_KINDS = ("hourly", "daily", "weekly", "monthly")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *rest: int) -> datetime:
    second, microsecond = (*rest, 0, 0)[:2]
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def local(
    zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0
) -> datetime:
    """The UTC instant at which ``zone``'s clock reads the given wall time (fold picks a repeated reading)."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


def bounds(kind: str, zone: str, now: datetime) -> tuple[datetime, datetime]:
    start, end = window_bounds(WindowSpec.calendar(kind, zone), now)
    assert start is not None and end is not None
    return start, end


def wall(zone: str, moment: datetime) -> datetime:
    return moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def offset(zone: str, moment: datetime) -> timedelta | None:
    return moment.astimezone(ZoneInfo(zone)).utcoffset()


def windows_between(kind: str, zone: str, first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
    """Every window from the one containing ``first`` up to the one containing ``last``, by following ends."""
    found = [bounds(kind, zone, first)]
    while found[-1][1] <= last:
        found.append(bounds(kind, zone, found[-1][1]))
    return found


# --- WindowSpec: construction and validation ----------------------------------------------------------------


@pytest.mark.parametrize("kind", CALENDAR_KINDS)
def test_calendar_constructor_defaults_to_utc(kind: str) -> None:
    spec = WindowSpec.calendar(kind)
    assert spec.kind == kind
    assert spec.timezone == "UTC"
    assert spec.duration is None


def test_calendar_keeps_its_zone_and_rolling_keeps_its_duration() -> None:
    assert WindowSpec.calendar("daily", "Europe/Berlin").timezone == "Europe/Berlin"
    spec = WindowSpec.rolling(timedelta(hours=24))
    assert (spec.kind, spec.duration, spec.timezone) == ("rolling", timedelta(hours=24), "UTC")


def test_spec_is_frozen_and_hashable() -> None:
    spec = WindowSpec.calendar("daily", "Asia/Kolkata")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "hourly"  # type: ignore[misc]
    assert {spec, WindowSpec.calendar("daily", "Asia/Kolkata")} == {spec}


def test_zone_independent_windows_normalize_their_zone() -> None:
    """A total or rolling window means the same in every zone: equal specs must compare and store equal."""
    assert WindowSpec.calendar("total", "Europe/Berlin") == WindowSpec.calendar("total")
    assert WindowSpec("rolling", "Asia/Tokyo", timedelta(hours=1)) == WindowSpec.rolling(timedelta(hours=1))


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus_Mons", "america/new_york", "EST+5", "America", "../etc/passwd", "/etc/localtime", "Utc"],
)
def test_unknown_time_zone_is_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidPolicyError, match="unknown time zone") as caught:
        WindowSpec.calendar("daily", name)
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize("name", ["localtime", "posixrules", "right/UTC", "posix/Europe/Berlin"])
def test_host_dependent_or_alias_zone_files_are_refused(name: str) -> None:
    with pytest.raises(InvalidPolicyError, match="not accepted") as caught:
        WindowSpec.calendar("daily", name)
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize("name", ["", " ", "Europe/Berlin\n", "a\x00b", "x" * 300, 5, None, b"UTC"])
def test_malformed_time_zone_is_refused(name: object) -> None:
    with pytest.raises(InvalidPolicyError, match=r"time.zone"):
        WindowSpec.calendar("daily", name)  # type: ignore[arg-type]


def test_unknown_zone_is_refused_even_where_the_zone_is_unused() -> None:
    with pytest.raises(InvalidPolicyError, match="Mars/Base"):
        WindowSpec("total", "Mars/Base")
    with pytest.raises(InvalidPolicyError, match="Mars/Base"):
        parse_window("rolling", "24h", timezone="Mars/Base")


@pytest.mark.parametrize("kind", ["yearly", "", "Daily", "rolling ", None, 3])
def test_unknown_kind_is_refused(kind: object) -> None:
    with pytest.raises(InvalidPolicyError, match="window must be one of"):
        WindowSpec.calendar(kind)  # type: ignore[arg-type]
    with pytest.raises(InvalidPolicyError, match="window must be one of"):
        WindowSpec(kind)  # type: ignore[arg-type]


def test_calendar_constructor_refuses_rolling() -> None:
    with pytest.raises(InvalidPolicyError, match=r"WindowSpec\.rolling"):
        WindowSpec.calendar("rolling")


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        (timedelta(0), "positive"),
        (timedelta(hours=-1), "positive"),
        (MAX_ROLLING_DURATION + timedelta(seconds=1), "at most 366 days"),
        (timedelta(seconds=1, microseconds=500), "whole number of seconds"),
        (3600, "needs a duration"),
        (None, "needs a duration"),
    ],
)
def test_bad_rolling_duration_is_refused(duration: Any, message: str) -> None:
    with pytest.raises(InvalidPolicyError, match=message):
        WindowSpec.rolling(duration)


def test_rolling_duration_limits_are_inclusive() -> None:
    assert WindowSpec.rolling(MAX_ROLLING_DURATION).duration == timedelta(days=366)
    assert WindowSpec.rolling(timedelta(seconds=1)).duration == timedelta(seconds=1)


def test_calendar_window_with_a_duration_is_refused() -> None:
    with pytest.raises(InvalidPolicyError, match="only rolling windows have a duration"):
        WindowSpec("daily", "UTC", timedelta(hours=1))


def test_invalid_policy_error_is_a_value_error_and_a_policy_error() -> None:
    with pytest.raises(ValueError):
        WindowSpec.calendar("fortnightly")
    with pytest.raises(PolicyError):
        WindowSpec.calendar("fortnightly")


# --- parse_window and parse_duration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(minutes=90)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(days=14)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(hours=36)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        (" 24H ", timedelta(hours=24)),
        ("366d", timedelta(days=366)),
        ("0h30m", timedelta(minutes=30)),
    ],
)
def test_parse_duration_accepts_common_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("24", "no unit; write e.g. '24h'"),
        ("0h", "must be positive"),
        ("0d0h0m", "must be positive"),
        ("-1h", "must be positive"),
        ("1.5h", "write '1h30m'"),
        ("abc", "cannot read duration 'abc'"),
        ("30m1h", "cannot read duration"),  # units must be largest first
        ("1h1h", "cannot read duration"),
        ("1h 30m", "cannot read duration"),
        ("24 hours", "cannot read duration"),
        ("\u0661\u0662h", "cannot read duration"),  # Arabic-Indic digits: ASCII only
        ("1y", "cannot read duration"),
        ("367d", "longer than 366 days"),
        ("53w", "longer than 366 days"),
        ("99999999999999999999999d", "longer than 366 days"),
        ("9" * 80 + "s", "too long"),
    ],
)
def test_parse_duration_refuses_with_an_actionable_message(text: str, message: str) -> None:
    with pytest.raises(InvalidPolicyError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_duration(text)


def test_parse_duration_refuses_non_strings() -> None:
    with pytest.raises(InvalidPolicyError, match="must be a string"):
        parse_duration(24)  # type: ignore[arg-type]


@given(
    st.tuples(*(st.integers(min_value=0, max_value=400) for _ in range(5))),
)
def test_parse_duration_matches_its_components(parts: tuple[int, int, int, int, int]) -> None:
    weeks, days, hours, minutes, seconds = parts
    expected = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    text = "".join(f"{value}{unit}" for value, unit in zip(parts, "wdhms", strict=True) if value)
    if not text or expected > MAX_ROLLING_DURATION:
        with pytest.raises(InvalidPolicyError):
            parse_duration(text or "0s")
    else:
        assert parse_duration(text) == expected


@pytest.mark.parametrize("kind", CALENDAR_KINDS)
def test_parse_window_calendar(kind: str) -> None:
    assert parse_window(kind) == WindowSpec.calendar(kind)
    assert parse_window(f" {kind.upper()} ", timezone="Asia/Kolkata") == WindowSpec.calendar(
        kind, "Asia/Kolkata"
    )


def test_parse_window_rolling() -> None:
    assert parse_window("rolling", "24h") == WindowSpec.rolling(timedelta(hours=24))
    assert parse_window("Rolling", "1h30m") == WindowSpec.rolling(timedelta(minutes=90))


@pytest.mark.parametrize(
    ("window", "rolling", "zone", "message"),
    [
        ("rolling", None, "UTC", r"needs a duration, e\.g\. --rolling 24h"),
        ("daily", "24h", "UTC", "not both: .* pass window 'rolling' \\(--window rolling --rolling 24h\\)"),
        ("yearly", None, "UTC", "unknown window 'yearly': choose one of hourly, daily"),
        ("", None, "UTC", "unknown window"),
        ("daily", None, "Europe/Berln", "unknown time zone 'Europe/Berln'"),
        ("rolling", "0m", "UTC", "must be positive"),
        ("rolling", "500d", "UTC", "longer than 366 days"),
        ("rolling", "soon", "UTC", "cannot read duration 'soon'"),
    ],
)
def test_parse_window_errors(window: str, rolling: str | None, zone: str, message: str) -> None:
    with pytest.raises(InvalidPolicyError, match=message):
        parse_window(window, rolling, zone)


def test_parse_window_refuses_non_string_window() -> None:
    with pytest.raises(InvalidPolicyError, match="must be a string"):
        parse_window(None)  # type: ignore[arg-type]


# --- to_dict / from_dict ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "stored"),
    [
        (WindowSpec.calendar("daily", "Europe/Berlin"), {"kind": "daily", "timezone": "Europe/Berlin"}),
        (WindowSpec.calendar("hourly"), {"kind": "hourly", "timezone": "UTC"}),
        (WindowSpec.calendar("total"), {"kind": "total"}),
        (WindowSpec.rolling(timedelta(hours=24)), {"kind": "rolling", "duration_seconds": 86400}),
    ],
)
def test_stored_form(spec: WindowSpec, stored: dict[str, object]) -> None:
    assert spec.to_dict() == stored
    assert WindowSpec.from_dict(json.loads(json.dumps(stored))) == spec


def test_from_dict_defaults_missing_zone_to_utc() -> None:
    assert WindowSpec.from_dict({"kind": "monthly"}) == WindowSpec.calendar("monthly")


specs = st.one_of(
    st.builds(WindowSpec.calendar, st.sampled_from(CALENDAR_KINDS), st.sampled_from(ALL_ZONES)),
    st.builds(
        WindowSpec.rolling,
        st.integers(min_value=1, max_value=366 * 86400).map(lambda seconds: timedelta(seconds=seconds)),
    ),
)


@given(specs)
def test_to_dict_round_trips_through_json(spec: WindowSpec) -> None:
    stored = json.loads(json.dumps(spec.to_dict()))
    assert WindowSpec.from_dict(stored) == spec
    assert WindowSpec.from_dict(stored).to_dict() == stored


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "window must be one of"),
        ({"kind": "yearly"}, "window must be one of"),
        ({"kind": "daily", "timezone": "Nowhere/Town"}, "unknown time zone 'Nowhere/Town'"),
        ({"kind": "daily", "timezone": 1}, "'timezone' must be a string"),
        ({"kind": ["daily"]}, "window must be one of"),
        ({"kind": "daily", "duration_seconds": 60}, "only rolling windows"),
        ({"kind": "daily", "reset": "midnight"}, "unknown field"),
        ({"kind": "rolling"}, "duration_seconds"),
        ({"kind": "rolling", "duration_seconds": 60.0}, "whole number"),
        ({"kind": "rolling", "duration_seconds": "60"}, "whole number"),
        ({"kind": "rolling", "duration_seconds": True}, "whole number"),
        ({"kind": "rolling", "duration_seconds": 0}, "between 1 and 366 days"),
        ({"kind": "rolling", "duration_seconds": 366 * 86400 + 1}, "between 1 and 366 days"),
        ({"kind": "rolling", "duration_seconds": 60, "timezone": "Europe/Berlin"}, "has no time zone"),
    ],
)
def test_from_dict_refuses_malformed_input(data: Any, message: str) -> None:
    with pytest.raises(InvalidPolicyError, match=message):
        WindowSpec.from_dict(data)


# --- window_bounds: UTC calendar boundaries -----------------------------------------------------------------


def test_hour_day_week_month_in_utc() -> None:
    now = utc(2026, 3, 14, 15, 42, 7, 123456)  # a Saturday
    assert bounds("hourly", "UTC", now) == (utc(2026, 3, 14, 15), utc(2026, 3, 14, 16))
    assert bounds("daily", "UTC", now) == (utc(2026, 3, 14), utc(2026, 3, 15))
    assert bounds("weekly", "UTC", now) == (utc(2026, 3, 9), utc(2026, 3, 16))
    assert bounds("monthly", "UTC", now) == (utc(2026, 3, 1), utc(2026, 4, 1))


@pytest.mark.parametrize("kind", PERIODIC_KINDS)
def test_a_boundary_instant_belongs_to_the_window_it_starts(kind: str) -> None:
    start, end = bounds(kind, "UTC", utc(2026, 6, 1))  # a Monday, the first of a month, midnight
    assert start == utc(2026, 6, 1)
    _, before_end = bounds(kind, "UTC", utc(2026, 6, 1) - US)
    assert before_end == start
    assert bounds(kind, "UTC", end - US) == (start, end)


@pytest.mark.parametrize(
    ("now", "monday", "iso_year", "iso_week"),
    [
        (utc(2025, 1, 1, 12), utc(2024, 12, 30), 2025, 1),  # week 1 of 2025 starts in December 2024
        (utc(2024, 12, 31, 23, 59), utc(2024, 12, 30), 2025, 1),
        (utc(2020, 1, 1), utc(2019, 12, 30), 2020, 1),
        (utc(2021, 1, 3, 23, 59, 59, 999999), utc(2020, 12, 28), 2020, 53),  # a 53-week year
        (utc(2021, 1, 4), utc(2021, 1, 4), 2021, 1),
        (utc(2027, 1, 1), utc(2026, 12, 28), 2026, 53),
    ],
)
def test_iso_weeks_across_year_boundaries(
    now: datetime, monday: datetime, iso_year: int, iso_week: int
) -> None:
    start, end = bounds("weekly", "UTC", now)
    assert (start, end) == (monday, monday + 7 * D)
    assert start.isocalendar()[:3] == (iso_year, iso_week, 1)


@pytest.mark.parametrize(
    ("now", "first", "days"),
    [
        (utc(2024, 2, 29, 23, 59, 59, 999999), utc(2024, 2, 1), 29),  # leap year
        (utc(2023, 2, 14), utc(2023, 2, 1), 28),
        (utc(2000, 2, 29), utc(2000, 2, 1), 29),  # divisible by 400: leap
        (utc(2100, 2, 28), utc(2100, 2, 1), 28),  # divisible by 100 only: not leap
        (utc(2025, 12, 31, 23, 59, 59, 999999), utc(2025, 12, 1), 31),  # December ends in next year's January
        (utc(2026, 1, 1), utc(2026, 1, 1), 31),
        (utc(2026, 4, 30, 12), utc(2026, 4, 1), 30),
    ],
)
def test_months(now: datetime, first: datetime, days: int) -> None:
    assert bounds("monthly", "UTC", now) == (first, first + days * D)


# --- window_bounds: time zones ------------------------------------------------------------------------------


def test_new_york_day_starts_at_local_midnight() -> None:
    now = utc(2026, 1, 15, 3)  # 22:00 on the 14th in New York
    assert bounds("daily", "America/New_York", now) == (utc(2026, 1, 14, 5), utc(2026, 1, 15, 5))


def test_berlin_month_starts_at_local_midnight_and_loses_the_dst_hour() -> None:
    now = utc(2026, 3, 31, 22, 30)  # 00:30 CEST on 1 April
    assert bounds("monthly", "Europe/Berlin", now) == (utc(2026, 3, 31, 22), utc(2026, 4, 30, 22))
    march = bounds("monthly", "Europe/Berlin", utc(2026, 3, 15))
    assert march == (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))
    assert march[1] - march[0] == 31 * D - H  # 29 March 2026 has 23 hours


def test_kolkata_half_hour_offset() -> None:
    now = utc(2026, 1, 1, 0, 10)  # 05:40 IST
    assert bounds("hourly", "Asia/Kolkata", now) == (utc(2025, 12, 31, 23, 30), utc(2026, 1, 1, 0, 30))
    assert bounds("daily", "Asia/Kolkata", now) == (utc(2025, 12, 31, 18, 30), utc(2026, 1, 1, 18, 30))
    assert bounds("weekly", "Asia/Kolkata", now) == (utc(2025, 12, 28, 18, 30), utc(2026, 1, 4, 18, 30))


def test_kathmandu_quarter_hour_offset() -> None:
    now = utc(2026, 1, 1, 0, 10)  # 05:55 NPT (+05:45)
    assert bounds("hourly", "Asia/Kathmandu", now) == (utc(2025, 12, 31, 23, 15), utc(2026, 1, 1, 0, 15))
    assert bounds("daily", "Asia/Kathmandu", now) == (utc(2025, 12, 31, 18, 15), utc(2026, 1, 1, 18, 15))


def test_aware_input_in_any_zone_gives_utc_output() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    now = datetime(2026, 1, 1, 5, 40, tzinfo=ist)
    start, end = bounds("hourly", "Asia/Kolkata", now)
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert (start, end) == bounds("hourly", "Asia/Kolkata", now.astimezone(UTC))
    berlin_now = datetime(2026, 1, 1, 5, 40, tzinfo=ZoneInfo("Europe/Berlin"))
    assert bounds("daily", "UTC", berlin_now) == (utc(2026, 1, 1), utc(2026, 1, 2))


# --- DST: 23- and 25-hour days, repeated and skipped hours --------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
        ("Europe/Berlin", date(2026, 3, 29), 23),
        ("Europe/Berlin", date(2026, 10, 25), 25),
        ("Australia/Sydney", date(2026, 4, 5), 25),
        ("Australia/Sydney", date(2026, 10, 4), 23),
        ("Australia/Lord_Howe", date(2026, 4, 5), 24.5),  # clocks go back only 30 minutes
        ("Australia/Lord_Howe", date(2025, 10, 5), 23.5),
        ("Pacific/Chatham", date(2026, 4, 5), 25),
        ("Pacific/Chatham", date(2025, 9, 28), 23),
        ("Asia/Kolkata", date(2026, 3, 29), 24),
    ],
)
def test_dst_day_lengths(zone: str, day: date, hours: float) -> None:
    start, end = bounds("daily", zone, local(zone, day.year, day.month, day.day, 12))
    assert wall(zone, start) == datetime.combine(day, time(0))
    assert wall(zone, end) == datetime.combine(day + D, time(0))
    assert end - start == timedelta(hours=hours)


def test_dst_weeks_are_an_hour_short_or_long() -> None:
    spring = bounds("weekly", "Europe/Berlin", utc(2026, 3, 29, 12))
    autumn = bounds("weekly", "Europe/Berlin", utc(2026, 10, 25, 12))
    assert spring == (local("Europe/Berlin", 2026, 3, 23), local("Europe/Berlin", 2026, 3, 30))
    assert spring[1] - spring[0] == 7 * D - H
    assert autumn == (local("Europe/Berlin", 2026, 10, 19), local("Europe/Berlin", 2026, 10, 26))
    assert autumn[1] - autumn[0] == 7 * D + H


def test_new_york_fall_back_repeated_hour_is_two_real_hourly_windows() -> None:
    zone = "America/New_York"
    first = bounds("hourly", zone, local(zone, 2026, 11, 1, 1, 30, fold=0))  # 01:30 EDT
    second = bounds("hourly", zone, local(zone, 2026, 11, 1, 1, 30, fold=1))  # 01:30 EST
    assert first == (utc(2026, 11, 1, 5), utc(2026, 11, 1, 6))
    assert second == (utc(2026, 11, 1, 6), utc(2026, 11, 1, 7))
    assert wall(zone, first[0]) == wall(zone, second[0]) == datetime(2026, 11, 1, 1)


@pytest.mark.parametrize(
    ("zone", "day", "count"),
    [
        ("America/New_York", date(2026, 11, 1), 25),
        ("America/New_York", date(2026, 3, 8), 23),
        ("Europe/Berlin", date(2026, 10, 25), 25),
        ("Europe/Berlin", date(2026, 3, 29), 23),
    ],
)
def test_hourly_windows_of_a_dst_day_are_each_a_real_hour(zone: str, day: date, count: int) -> None:
    day_start, day_end = bounds("daily", zone, local(zone, day.year, day.month, day.day, 12))
    hours = windows_between("hourly", zone, day_start, day_end - US)
    assert len(hours) == count
    assert all(end - start == H for start, end in hours)
    assert hours[0][0] == day_start and hours[-1][1] == day_end
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(hours))


def test_new_york_spring_forward_skips_the_local_two_oclock_hour() -> None:
    zone = "America/New_York"
    assert bounds("hourly", zone, utc(2026, 3, 8, 6, 30)) == (utc(2026, 3, 8, 6), utc(2026, 3, 8, 7))
    assert bounds("hourly", zone, utc(2026, 3, 8, 7, 30)) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 8))
    day_start, day_end = bounds("daily", zone, utc(2026, 3, 8, 12))
    readings = [
        wall(zone, start).hour for start, _ in windows_between("hourly", zone, day_start, day_end - US)
    ]
    assert 2 not in readings


def test_lord_howe_half_hour_fall_back() -> None:
    """At 02:00 (+11) clocks go back to 01:30 (+10:30): local hour 01 runs 60 minutes at +11, then its
    repeated half hour at +10:30 is a 30-minute window of its own."""
    zone = "Australia/Lord_Howe"
    transition = utc(2026, 4, 4, 15)  # 02:00 +11 == 01:30 +10:30
    first = bounds("hourly", zone, utc(2026, 4, 4, 14, 45))
    second = bounds("hourly", zone, transition)
    third = bounds("hourly", zone, transition + 30 * timedelta(minutes=1))
    assert first == (utc(2026, 4, 4, 14), transition)
    assert second == (transition, utc(2026, 4, 4, 15, 30))
    assert third == (utc(2026, 4, 4, 15, 30), utc(2026, 4, 4, 16, 30))
    assert wall(zone, second[0]) == datetime(2026, 4, 5, 1, 30)
    assert wall(zone, third[0]) == datetime(2026, 4, 5, 2)


def test_lord_howe_half_hour_spring_forward() -> None:
    """At 02:00 (+10:30) clocks jump to 02:30 (+11): local hour 02 lasts only 30 minutes."""
    zone = "Australia/Lord_Howe"
    transition = utc(2025, 10, 4, 15, 30)
    assert bounds("hourly", zone, utc(2025, 10, 4, 15, 20)) == (utc(2025, 10, 4, 14, 30), transition)
    assert bounds("hourly", zone, transition) == (transition, utc(2025, 10, 4, 16))
    assert wall(zone, transition) == datetime(2025, 10, 5, 2, 30)


def test_chatham_quarter_hour_offset_fall_back() -> None:
    """Chatham (+13:45 -> +12:45 at 03:45): local 02:45-03:45 repeats. Hour 03 at +13:45 ends after 45
    minutes at the transition; the repeat gives a 15-minute window for the rest of hour 02, then hour 03
    again at +12:45."""
    zone = "Pacific/Chatham"
    transition = utc(2026, 4, 4, 14)  # 03:45 +13:45 == 02:45 +12:45
    assert bounds("hourly", zone, utc(2026, 4, 4, 13, 20)) == (utc(2026, 4, 4, 13, 15), transition)
    assert bounds("hourly", zone, transition) == (transition, utc(2026, 4, 4, 14, 15))
    assert bounds("hourly", zone, utc(2026, 4, 4, 14, 15)) == (
        utc(2026, 4, 4, 14, 15),
        utc(2026, 4, 4, 15, 15),
    )
    assert wall(zone, utc(2026, 4, 4, 14, 15)) == datetime(2026, 4, 5, 3)


# --- midnights that do not exist, or exist twice ------------------------------------------------------------


def test_santiago_skipped_midnight_starts_the_day_at_one() -> None:
    """Chile springs forward at 24:00: 00:00-01:00 never happens; the day starts at the first instant after
    the gap, 01:00 (-03), and lasts 23 hours. The day before is a normal 24 hours."""
    zone = "America/Santiago"
    start, end = bounds("daily", zone, utc(2025, 9, 7, 12))
    assert (start, end) == (utc(2025, 9, 7, 4), utc(2025, 9, 8, 3))
    assert wall(zone, start) == datetime(2025, 9, 7, 1)
    assert bounds("daily", zone, start - US) == (utc(2025, 9, 6, 4), start)


def test_santiago_fall_back_before_midnight_makes_a_25_hour_day() -> None:
    zone = "America/Santiago"
    start, end = bounds("daily", zone, utc(2026, 4, 5, 3, 30))  # 23:30 (-04), the repeated hour of the 4th
    assert (wall(zone, start), wall(zone, end)) == (datetime(2026, 4, 4), datetime(2026, 4, 5))
    assert end - start == 25 * H


def test_havana_repeated_midnight_starts_the_day_at_its_first_occurrence() -> None:
    """Cuba falls back at 01:00 (-04) to 00:00 (-05): midnight happens twice. The day starts at the first;
    the repeated hour belongs to the same day, which lasts 25 hours."""
    zone = "America/Havana"
    first_midnight = local(zone, 2023, 11, 5, 0, fold=0)
    assert first_midnight == utc(2023, 11, 5, 4)
    for now in (utc(2023, 11, 5, 4, 30), utc(2023, 11, 5, 5, 30), utc(2023, 11, 5, 20)):
        assert bounds("daily", zone, now) == (first_midnight, utc(2023, 11, 6, 5))
    assert bounds("daily", zone, first_midnight - US) == (utc(2023, 11, 4, 4), first_midnight)


def test_havana_skipped_midnight() -> None:
    zone = "America/Havana"
    start, end = bounds("daily", zone, utc(2023, 3, 12, 12))
    assert wall(zone, start) == datetime(2023, 3, 12, 1)
    assert (start, end) == (utc(2023, 3, 12, 5), utc(2023, 3, 13, 4))
    # 12 March 2023 is a Sunday, the last day of its ISO week: the week is an hour short.
    week_start, week_end = bounds("weekly", zone, utc(2023, 3, 12, 12))
    assert (week_start, week_end) == (local(zone, 2023, 3, 6), end)
    assert week_end - week_start == 7 * D - H


def test_beirut_historical_month_starting_in_a_gap() -> None:
    """On 1 June 1988 Beirut sprang forward at midnight: June starts at 01:00 (+03), the first valid
    instant, and May ends there."""
    zone = "Asia/Beirut"
    june = bounds("monthly", zone, utc(1988, 6, 15))
    assert june[0] == utc(1988, 5, 31, 22)
    assert wall(zone, june[0]) == datetime(1988, 6, 1, 1)
    assert bounds("monthly", zone, june[0] - US)[1] == june[0]
    assert bounds("daily", zone, utc(1988, 5, 31, 22))[0] == june[0]


def test_beirut_current_rules_skip_midnight_in_march() -> None:
    zone = "Asia/Beirut"
    start, end = bounds("daily", zone, utc(2026, 3, 29, 3))
    assert wall(zone, start) == datetime(2026, 3, 29, 1)
    assert end - start == 23 * H


def test_clock_set_back_across_midnight_keeps_the_instant_in_the_new_day() -> None:
    """Antarctica/Casey went from +11 to +08 at 02:00 on 5 March 2010, back to 23:00 on the 4th. The 5th had
    already started at its first midnight, so the re-lived hour reading "23:xx on the 4th" belongs to the
    5th: windows never go back in time, and that day lasts 27 hours."""
    zone = "Antarctica/Casey"
    now = utc(2010, 3, 4, 15, 30)
    assert wall(zone, now) == datetime(2010, 3, 4, 23, 30)
    start, end = bounds("daily", zone, now)
    assert (wall(zone, start), wall(zone, end)) == (datetime(2010, 3, 5), datetime(2010, 3, 6))
    assert end - start == 27 * H


def test_a_day_the_zone_skipped_is_an_empty_window_no_instant_falls_in() -> None:
    """Samoa skipped 30 December 2011 (from -10 to +14). The 29th is followed directly by the 31st, and the
    ISO week containing the skip is six days long."""
    zone = "Pacific/Apia"
    jump = utc(2011, 12, 30, 10)
    assert bounds("daily", zone, jump - US) == (local(zone, 2011, 12, 29), jump)
    assert bounds("daily", zone, jump) == (jump, local(zone, 2012, 1, 1))
    assert wall(zone, jump) == datetime(2011, 12, 31)
    week_start, week_end = bounds("weekly", zone, jump)
    assert week_end - week_start == 6 * D
    month_start, month_end = bounds("monthly", zone, jump)
    assert month_end - month_start == 30 * D


# --- total, rolling, next_reset, in_window ------------------------------------------------------------------


def test_total_window_is_all_time() -> None:
    spec = WindowSpec.calendar("total", "Europe/Berlin")
    now = utc(2026, 5, 5, 12)
    assert window_bounds(spec, now) == (None, None)
    assert next_reset(spec, now) is None
    assert in_window(spec, now, utc(1990, 1, 1))
    assert in_window(spec, now, utc(2100, 1, 1))


def test_rolling_window_has_an_exclusive_start_and_no_reset() -> None:
    spec = WindowSpec.rolling(timedelta(hours=24))
    now = utc(2026, 5, 5, 12, 0, 0, 500)
    assert window_bounds(spec, now) == (now - 24 * H, None)
    assert next_reset(spec, now) is None
    assert not in_window(spec, now, now - 24 * H)
    assert in_window(spec, now, now - 24 * H + US)
    assert in_window(spec, now, now)
    assert not in_window(spec, now, now + US)


def test_rolling_window_ignores_dst() -> None:
    spec = WindowSpec.rolling(timedelta(hours=24))
    now = local("America/New_York", 2026, 11, 1, 12)
    assert window_bounds(spec, now)[0] == now - 24 * H


def test_in_window_calendar_is_half_open() -> None:
    spec = WindowSpec.calendar("daily", "Europe/Berlin")
    now = utc(2026, 7, 1, 12)
    start, end = bounds("daily", "Europe/Berlin", now)
    assert in_window(spec, now, start)
    assert in_window(spec, now, end - US)
    assert not in_window(spec, now, end)
    assert not in_window(spec, now, start - US)
    assert next_reset(spec, now) == end == utc(2026, 7, 1, 22)


@pytest.mark.parametrize(
    "spec",
    [WindowSpec.calendar("daily"), WindowSpec.calendar("total"), WindowSpec.rolling(timedelta(hours=1))],
)
def test_naive_or_non_datetime_instants_are_refused(spec: WindowSpec) -> None:
    naive = datetime(2026, 1, 1, 12)
    with pytest.raises(InvalidPolicyError, match="now must be timezone-aware"):
        window_bounds(spec, naive)
    with pytest.raises(InvalidPolicyError, match="now must be timezone-aware"):
        next_reset(spec, naive)
    with pytest.raises(InvalidPolicyError, match="moment must be timezone-aware"):
        in_window(spec, utc(2026, 1, 1), naive)
    with pytest.raises(InvalidPolicyError, match="now must be a datetime"):
        window_bounds(spec, date(2026, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(InvalidPolicyError, match="now must be a datetime"):
        window_bounds(spec, "2026-01-01T00:00:00Z")  # type: ignore[arg-type]


@pytest.mark.parametrize("now", [datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)])
def test_instants_at_the_edge_of_datetime_are_refused(now: datetime) -> None:
    with pytest.raises(InvalidPolicyError, match="between the years"):
        window_bounds(WindowSpec.calendar("monthly", "Pacific/Kiritimati"), now)


# --- Hypothesis: invariants over every zone -----------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def _next_offset_change(zone: ZoneInfo, after: datetime) -> datetime | None:
    """Test oracle: the first instant after ``after`` (within about a year) at which ``zone``'s offset
    changes, or None."""
    step = timedelta(hours=6)
    low, base = after, after.astimezone(zone).utcoffset()
    for _ in range(4 * 400):
        high = low + step
        if high.astimezone(zone).utcoffset() != base:
            while high - low > US:
                middle = low + (high - low) // 2
                if middle.astimezone(zone).utcoffset() == base:
                    low = middle
                else:
                    high = middle
            return high
        low = high
    return None


@st.composite
def zone_and_instant(draw: st.DrawFn, zones: list[str] = ALL_ZONES) -> tuple[str, datetime]:
    """A zone and an instant, half the time within a day and a half of one of the zone's offset changes
    (DST or otherwise), where window arithmetic goes wrong if it is going to."""
    zone = draw(st.sampled_from(zones))
    moment = draw(instants)
    if draw(st.booleans()):
        change = _next_offset_change(ZoneInfo(zone), moment)
        if change is not None:
            moment = change + draw(st.timedeltas(min_value=-36 * H, max_value=36 * H))
    return zone, moment


def _boundary_reading(kind: str, reading: datetime) -> datetime:
    """Test oracle: the local wall-clock boundary at or before ``reading`` for a day, ISO week or month."""
    day = reading.date()
    if kind == "weekly":
        day -= timedelta(days=day.weekday())
    elif kind == "monthly":
        day = day.replace(day=1)
    return datetime.combine(day, time(0))


UNIVERSAL_LIMITS = {
    # Offset changes of up to seven hours (Antarctica/Vostok, 1994) stretch or shrink a day; a skipped day
    # (Pacific/Apia, 2011) shortens its week and month by 24 hours.
    "hourly": (US, H),
    "daily": (D - 8 * H, D + 8 * H),
    "weekly": (7 * D - 32 * H, 7 * D + 8 * H),
    "monthly": (28 * D - 32 * H, 31 * D + 8 * H),
}
DST_LIMITS = {
    # Zones whose offset changes by at most an hour at a time, after 1970 (half hours on Lord Howe, Chatham's
    # changes are whole hours; Kathmandu's 15-minute shift was in 1986).
    "hourly": (15 * timedelta(minutes=1), H),
    "daily": (D - H, D + H),
    "weekly": (7 * D - H, 7 * D + H),
    "monthly": (28 * D - H, 31 * D + H),
}


@settings(max_examples=300, deadline=None)
@given(zone_and_instant(), st.sampled_from(PERIODIC_KINDS))
def test_windows_contain_now_and_tile_time(case: tuple[str, datetime], kind: str) -> None:
    zone, now = case
    spec = WindowSpec.calendar(kind, zone)
    start, end = bounds(kind, zone, now)
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert start <= now < end
    assert next_reset(spec, now) == end
    # No gap and no overlap with the neighbours on either side.
    assert bounds(kind, zone, end)[0] == end
    assert bounds(kind, zone, start - US)[1] == start
    # The window is the same whichever of its instants asks.
    assert bounds(kind, zone, start) == (start, end)
    assert bounds(kind, zone, end - US) == (start, end)
    low, high = UNIVERSAL_LIMITS[kind]
    assert low <= end - start <= high


@settings(max_examples=200, deadline=None)
@given(zone_and_instant(DST_ZONES), st.sampled_from(PERIODIC_KINDS))
def test_window_lengths_in_dst_zones(case: tuple[str, datetime], kind: str) -> None:
    zone, now = case
    assume(now.year >= 1990)  # before that some of these zones had double summer time or offset reforms
    start, end = bounds(kind, zone, now)
    low, high = DST_LIMITS[kind]
    assert low <= end - start <= high


@settings(max_examples=300, deadline=None)
@given(zone_and_instant(), st.sampled_from(["daily", "weekly", "monthly"]))
def test_calendar_windows_start_at_the_first_instant_reading_the_boundary(
    case: tuple[str, datetime], kind: str
) -> None:
    """The documented rule: a window starts at the first instant at which the local clock reads its
    boundary (midnight, Monday 00:00, the first at 00:00) or later, i.e. at the boundary itself, or at the
    end of a DST gap that swallowed it."""
    zone, now = case
    start, _ = bounds(kind, zone, now)
    boundary = _boundary_reading(kind, wall(zone, start))
    assert wall(zone, start - US) < boundary <= wall(zone, start)
    if wall(zone, start) != boundary:
        assert offset(zone, start - US) != offset(zone, start)  # only a gap may move a start off the boundary


@settings(max_examples=300, deadline=None)
@given(zone_and_instant())
def test_hourly_windows_read_one_local_hour_at_one_offset(case: tuple[str, datetime]) -> None:
    """Every instant of an hourly window reads the same local date and hour at the same UTC offset, and a
    window starts at a whole-hour reading unless the offset changes right there."""
    zone, now = case
    start, end = bounds("hourly", zone, now)
    first, last = wall(zone, start), wall(zone, end - US)
    assert (first.date(), first.hour) == (last.date(), last.hour)
    assert offset(zone, start) == offset(zone, end - US)
    if (first.minute, first.second, first.microsecond) != (0, 0, 0):
        assert offset(zone, start - US) != offset(zone, start)


@settings(deadline=None)
@given(
    zone_and_instant(), st.sampled_from(PERIODIC_KINDS), st.timedeltas(min_value=-40 * D, max_value=40 * D)
)
def test_in_window_agrees_with_bounds(case: tuple[str, datetime], kind: str, delta: timedelta) -> None:
    zone, now = case
    spec = WindowSpec.calendar(kind, zone)
    start, end = bounds(kind, zone, now)
    moment = now + delta
    assert in_window(spec, now, moment) == (start <= moment < end)


@given(instants, st.integers(min_value=1, max_value=366 * 86400), st.timedeltas(-400 * D, 400 * D))
def test_rolling_windows(now: datetime, seconds: int, delta: timedelta) -> None:
    duration = timedelta(seconds=seconds)
    spec = WindowSpec.rolling(duration)
    assert window_bounds(spec, now) == (now - duration, None)
    assert next_reset(spec, now) is None
    moment = now + delta
    assert in_window(spec, now, moment) == (now - duration < moment <= now)


@settings(deadline=None)
@given(
    zone_and_instant(), st.sampled_from(PERIODIC_KINDS), st.integers(min_value=-14 * 60, max_value=14 * 60)
)
def test_result_does_not_depend_on_the_zone_now_is_expressed_in(
    case: tuple[str, datetime], kind: str, minutes: int
) -> None:
    zone, now = case
    shifted = now.astimezone(timezone(timedelta(minutes=minutes)))
    assert bounds(kind, zone, shifted) == bounds(kind, zone, now)
