"""Budget windows: which stretch of time a budget policy counts spend over, and when it resets.

Pure arithmetic on instants: the clock is always passed in (``now``), nothing here reads the time, the
environment or the ledger. Time-zone rules come from :mod:`zoneinfo` (the IANA database: the host's copy,
or the ``tzdata`` package, a dependency, where the host has none).

Kinds of window (:class:`WindowSpec`):

- ``hourly``, ``daily``, ``weekly``, ``monthly``: calendar windows, aligned to wall-clock boundaries in the
  spec's IANA time zone: the start of the local hour, local midnight, Monday 00:00 (ISO weeks), the first of
  the month at 00:00. A budget that "resets at midnight" resets at the user's midnight, not UTC's.
- ``total``: one window covering all time; it never resets.
- ``rolling``: the last ``duration`` before ``now``, ``(now - duration, now]``. It slides with the clock, so
  it has no reset instant: spend drops out of it one event at a time.

Invariants every caller can rely on (the tests check them with Hypothesis over every IANA zone):

- Instants in and out are timezone-aware; results are always in UTC. A naive datetime is refused with
  :class:`~caracal.exceptions.InvalidPolicyError` rather than guessed at: a budget boundary that is off by
  the host's UTC offset lets an agent spend twice or locks it out for hours.
- Calendar windows are half-open, ``[start, end)``, and tile time: for every ``now``,
  ``start <= now < end``, :func:`next_reset` returns ``end``, and the window containing ``end`` starts at
  ``end``. No instant belongs to two windows or to none, so no charge is counted twice or lost at a reset.
- Durations follow the wall clock, not a fixed length: a local day lasts 23 or 25 hours across a DST change
  (23.5 or 24.5 on Lord Howe Island), a week or a month likewise. Windows are computed from instants, so a
  DST change never makes a window overlap its neighbour.

How wall-clock boundaries become instants (the rule for local times that do not exist or exist twice):

- **Daily, weekly, monthly:** a window starts at the *first instant at which the local clock reads the
  boundary or later*. An unambiguous boundary is simply that instant. A boundary that occurs twice (clocks
  set back over midnight, as in America/Havana) starts the window at its *first* occurrence, so the repeated
  stretch belongs to the new window. A boundary that does not exist (clocks jump over midnight, as in
  America/Santiago, America/Havana or, historically, Asia/Beirut and America/Sao_Paulo) starts the window at
  the transition, the first instant after the gap (local 01:00 when 00:00-01:00 is skipped). This rule is
  monotonic in the boundary, which is what makes windows tile. Two consequences, both rare and both
  deliberate: a local day that a zone skipped entirely (Pacific/Apia on 2011-12-30) is an empty window that
  no instant falls in; and when clocks are set back across midnight from a later hour (Antarctica/Casey,
  02:00 on 2010-03-05 back to 23:00 on the 4th), the re-lived "23:xx on the 4th" stays in the window of the
  5th, which had already begun: a window never hands time back to the one before it.
- **Hourly:** a window boundary is every instant at which the local clock reads a whole hour, *and* every
  instant at which the zone's UTC offset changes. So all instants of an hourly window read the same local
  date and hour at the same UTC offset. When clocks go back an hour, the repeated local hour is two distinct
  windows, each a real hour (01:00-02:00 EDT, then 01:00-02:00 EST in America/New_York); when they jump
  forward, the skipped hour has no window. With 30- and 45-minute offsets (Asia/Kolkata, Asia/Kathmandu,
  Australia/Lord_Howe, Pacific/Chatham) windows still align to the local hour, and a half-hour DST shift
  gives a 30-minute window beside it. An hourly window never lasts longer than an hour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Literal, NoReturn, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from caracal.exceptions import InvalidPolicyError

WindowKind = Literal["hourly", "daily", "weekly", "monthly", "total", "rolling"]
"""Every kind of window a policy can have."""

WINDOW_KINDS: tuple[WindowKind, ...] = get_args(WindowKind)
"""The kinds in order, for listing choices (``--window``)."""

CALENDAR_KINDS: tuple[WindowKind, ...] = ("hourly", "daily", "weekly", "monthly", "total")
"""The kinds built with :meth:`WindowSpec.calendar` (``total`` included: it is the calendar's whole span)."""

MAX_ROLLING_DURATION = timedelta(days=366)
"""Longest rolling window accepted. Anything longer is almost surely a typo (``7000d`` for ``70d``); a
budget over all time is the ``total`` window."""

MAX_TIMEZONE_NAME_LENGTH = 255
"""Longest IANA time-zone name accepted (real ones are under 40 characters)."""

_KINDS: frozenset[str] = frozenset(WINDOW_KINDS)
_UTC = timezone.utc
_ONE_MICROSECOND = timedelta(microseconds=1)
_ONE_HOUR = timedelta(hours=1)
_MIDNIGHT = time(0, 0)

# Instants outside these years are refused: window arithmetic looks a month and a day beyond ``now`` and
# must stay inside what ``datetime`` can represent. Nothing a ledger records is that far away.
_MIN_YEAR = 2
_MAX_YEAR = 9998

# Zone names that load but must not be stored: "localtime" is whatever zone the host is set to (a policy
# would change meaning between hosts), "posixrules" is an implementation file, and the "right/" tree counts
# leap seconds into its offsets (boundaries would drift by ~27 seconds). "posix/X" is "X" under another name.
_REFUSED_ZONE_NAMES = frozenset({"localtime", "posixrules"})
_REFUSED_ZONE_PREFIXES = ("posix/", "right/")

_DURATION_UNITS: dict[str, int] = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(
    r"(?:(?P<w>[0-9]+)w)?(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?"
)
_DURATION_EXAMPLES = "such as '30m', '24h', '7d' or '1h30m' (units: w, d, h, m, s)"


def _fail(message: str) -> NoReturn:
    raise InvalidPolicyError(message)


@dataclass(frozen=True)
class WindowSpec:
    """What a budget window is: its kind, the time zone calendar windows align in, and a rolling duration.

    Build one with :meth:`calendar`, :meth:`rolling` or :func:`parse_window`; the constructor validates
    too, so a ``WindowSpec`` that exists is always usable (bad input raises
    :class:`~caracal.exceptions.InvalidPolicyError`).

    Invariants:

    - ``kind`` is one of :data:`WindowKind`.
    - ``timezone`` is an IANA name that :mod:`zoneinfo` loads. Only calendar windows use it; ``total`` and
      ``rolling`` windows mean the same in every zone, so their ``timezone`` is normalized to ``"UTC"`` (two
      specs that count the same spend compare equal and serialize identically).
    - ``duration`` is set for ``rolling`` windows only: a whole number of seconds, positive, at most
      :data:`MAX_ROLLING_DURATION`. Whole seconds keep the stored form an exact integer.
    """

    kind: WindowKind
    timezone: str = "UTC"
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        kind: object = self.kind
        if not isinstance(kind, str) or kind not in _KINDS:
            _fail(f"window must be one of {', '.join(WINDOW_KINDS)}; got {kind!r}")
        _check_timezone(self.timezone)
        if kind == "rolling":
            _check_rolling_duration(self.duration)
        elif self.duration is not None:
            _fail(f"only rolling windows have a duration; a {kind} window is aligned to the calendar")
        if kind in ("rolling", "total") and self.timezone != "UTC":
            object.__setattr__(self, "timezone", "UTC")

    @classmethod
    def calendar(cls, kind: str, timezone: str = "UTC") -> WindowSpec:
        """A calendar-aligned window (``hourly``, ``daily``, ``weekly``, ``monthly`` or ``total``) in the
        IANA time zone ``timezone``."""
        if kind == "rolling":
            _fail("a rolling window is not calendar-aligned: use WindowSpec.rolling(duration)")
        if not isinstance(kind, str) or kind not in _KINDS:
            _fail(f"window must be one of {', '.join(CALENDAR_KINDS)}; got {kind!r}")
        return cls(kind=cast(WindowKind, kind), timezone=timezone)

    @classmethod
    def rolling(cls, duration: timedelta) -> WindowSpec:
        """A window covering the ``duration`` before each moment, ``(now - duration, now]``."""
        return cls(kind="rolling", duration=duration)

    def to_dict(self) -> dict[str, str | int]:
        """The JSON form: ``{"kind": "daily", "timezone": "Europe/Berlin"}``, ``{"kind": "total"}`` or
        ``{"kind": "rolling", "duration_seconds": 86400}``. :meth:`from_dict` reads it back unchanged."""
        if self.kind == "rolling":
            assert self.duration is not None  # guaranteed by __post_init__
            return {"kind": "rolling", "duration_seconds": self.duration // timedelta(seconds=1)}
        if self.kind == "total":
            return {"kind": "total"}
        return {"kind": self.kind, "timezone": self.timezone}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> WindowSpec:
        """Read the form :meth:`to_dict` writes; anything else raises InvalidPolicyError."""
        if not isinstance(data, Mapping):
            _fail(f"a window must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"kind", "timezone", "duration_seconds"}
        if unknown:
            _fail(f"unknown field(s) in window: {', '.join(sorted(map(str, unknown)))}")
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in _KINDS:
            _fail(f"window must be one of {', '.join(WINDOW_KINDS)}; got {kind!r}")
        if kind == "rolling":
            if "timezone" in data and data["timezone"] != "UTC":
                _fail("a rolling window has no time zone; remove 'timezone'")
            seconds = data.get("duration_seconds")
            if type(seconds) is not int:
                _fail(f"a rolling window needs 'duration_seconds' as a whole number, got {seconds!r}")
            if not 0 < seconds <= MAX_ROLLING_DURATION // timedelta(seconds=1):
                _fail(
                    f"duration_seconds must be between 1 and {MAX_ROLLING_DURATION.days} days, got {seconds}"
                )
            return cls.rolling(timedelta(seconds=seconds))
        if "duration_seconds" in data:
            _fail(f"only rolling windows have 'duration_seconds'; this window is {kind!r}")
        zone = data.get("timezone", "UTC")
        if not isinstance(zone, str):
            _fail(f"window 'timezone' must be a string such as 'Europe/Berlin', got {zone!r}")
        return cls.calendar(kind, zone)


def parse_window(window: str, rolling: str | None = None, timezone: str = "UTC") -> WindowSpec:
    """The :class:`WindowSpec` for command-line style input (``--window daily --timezone Europe/Berlin``,
    ``--window rolling --rolling 24h``).

    ``window`` is a kind name (case and surrounding spaces ignored). ``rolling`` is a duration such as
    ``30m``, ``24h``, ``7d`` or ``1h30m`` and is required with ``window="rolling"`` and refused with any
    other kind, so a command that names both a calendar window and a rolling duration is an error rather
    than a silent choice of one. ``timezone`` is validated whatever the kind.
    """
    if not isinstance(window, str):
        _fail(f"window must be a string such as 'daily', got {type(window).__name__}")
    kind = window.strip().lower()
    if kind == "rolling":
        _check_timezone(timezone)
        if rolling is None:
            _fail("a rolling window needs a duration, e.g. --rolling 24h")
        return WindowSpec.rolling(parse_duration(rolling))
    if kind not in _KINDS:
        _fail(
            f"unknown window {window!r}: choose one of {', '.join(WINDOW_KINDS)} "
            "(a rolling window also needs a duration, e.g. --rolling 24h)"
        )
    if rolling is not None:
        _fail(
            f"a window is either calendar-aligned or rolling, not both: got window {kind!r} and rolling "
            f"duration {rolling!r}; for a rolling window pass window 'rolling' (--window rolling --rolling "
            f"{rolling}), otherwise drop the duration"
        )
    return WindowSpec.calendar(kind, timezone)


def policy_window(window: str | None, rolling: str | None = None, timezone: str = "UTC") -> WindowSpec:
    """:func:`parse_window` with the policy default: without a ``window``, rolling when a ``rolling``
    duration is given, else daily (what ``create_policy`` in the CLI, the SDK and the API accept)."""
    kind = window if window is not None else ("rolling" if rolling is not None else "daily")
    return parse_window(kind, rolling, timezone)


def parse_duration(text: str) -> timedelta:
    """A rolling-window duration from text such as ``30m``, ``24h``, ``7d`` or ``1h30m``.

    Units are ``w``, ``d``, ``h``, ``m``, ``s``, largest first, each at most once, ASCII digits only.
    The result is positive and at most :data:`MAX_ROLLING_DURATION`; zero, negative, fractional or unitless
    values are refused with a message saying what to write instead.
    """
    if not isinstance(text, str):
        _fail(f"a duration must be a string {_DURATION_EXAMPLES}, got {type(text).__name__}")
    cleaned = text.strip().lower()
    if not cleaned:
        _fail(f"a duration must not be empty; write one {_DURATION_EXAMPLES}")
    if len(cleaned) > 64:
        _fail(f"duration {text[:20]!r}... is too long; write one {_DURATION_EXAMPLES}")
    if cleaned.startswith("-"):
        _fail(f"a duration must be positive, got {text!r}")
    if cleaned.isdigit():
        _fail(f"duration {text!r} has no unit; write e.g. '{cleaned}h' or '{cleaned}m'")
    match = _DURATION.fullmatch(cleaned)
    if match is None:
        hint = " (fractions are not accepted: write '1h30m' for an hour and a half)" if "." in cleaned else ""
        _fail(f"cannot read duration {text!r}{hint}; write one {_DURATION_EXAMPLES}")
    seconds = sum(int(value) * _DURATION_UNITS[unit] for unit, value in match.groupdict().items() if value)
    if seconds == 0:
        _fail(f"a duration must be positive, got {text!r}")
    if seconds > MAX_ROLLING_DURATION // timedelta(seconds=1):
        _fail(
            f"duration {text!r} is longer than {MAX_ROLLING_DURATION.days} days; for a budget over all time "
            "use the 'total' window"
        )
    return timedelta(seconds=seconds)


def window_bounds(spec: WindowSpec, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The window of ``spec`` that contains ``now``, as ``(start, end)`` in UTC.

    - Calendar windows: ``[start, end)`` with ``start <= now < end`` (see the module docstring for how
      local boundaries that are skipped or repeated by DST become instants).
    - ``total``: ``(None, None)``, all time.
    - ``rolling``: ``(now - duration, None)``. The start is *exclusive* (the window is
      ``(now - duration, now]``) and there is no end: a rolling window has no reset instant.

    ``now`` must be timezone-aware (any zone); a naive datetime raises InvalidPolicyError.
    """
    moment = _aware_utc(now, "now")
    if spec.kind == "total":
        return None, None
    if spec.kind == "rolling":
        assert spec.duration is not None  # guaranteed by WindowSpec.__post_init__
        return moment - spec.duration, None
    zone = _zone(spec.timezone)
    if spec.kind == "hourly":
        return _hour_bounds(zone, moment)
    return _calendar_bounds(zone, spec.kind, moment)


def next_reset(spec: WindowSpec, now: datetime) -> datetime | None:
    """When the window containing ``now`` ends and the budget starts afresh (UTC); ``None`` for ``total``
    and ``rolling`` windows, which never reset."""
    return window_bounds(spec, now)[1]


def in_window(spec: WindowSpec, now: datetime, moment: datetime) -> bool:
    """Whether an event at ``moment`` counts against the window of ``spec`` that contains ``now``.

    Calendar: ``start <= moment < end``. Rolling: ``now - duration < moment <= now`` (events after ``now``
    have not happened yet). Total: always. Both instants must be timezone-aware.
    """
    start, end = window_bounds(spec, now)
    event = _aware_utc(moment, "moment")
    if spec.kind == "total":
        return True
    if spec.kind == "rolling":
        assert start is not None
        return start < event <= _aware_utc(now, "now")
    assert start is not None and end is not None
    return start <= event < end


# --- validation ---------------------------------------------------------------------------------------------


def _check_timezone(name: object) -> None:
    if not isinstance(name, str):
        _fail(f"timezone must be an IANA time-zone name such as 'Europe/Berlin', got {type(name).__name__}")
    if not name or len(name) > MAX_TIMEZONE_NAME_LENGTH or not name.isprintable():
        _fail(f"timezone must be an IANA time-zone name such as 'Europe/Berlin', got {name[:40]!r}")
    if name in _REFUSED_ZONE_NAMES or name.startswith(_REFUSED_ZONE_PREFIXES):
        _fail(f"time zone {name!r} is not accepted: name the zone itself, such as 'Europe/Berlin' or 'UTC'")
    _zone(name)


def _zone(name: str) -> ZoneInfo:
    """The loaded zone (``ZoneInfo`` caches instances, so this is cheap after the first call)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        _fail(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC', 'Europe/Berlin' or "
            "'America/New_York' (names are case-sensitive)"
        )


def _check_rolling_duration(duration: object) -> None:
    if not isinstance(duration, timedelta):
        _fail(f"a rolling window needs a duration (a timedelta such as 24 hours), got {duration!r}")
    if duration <= timedelta(0):
        _fail(f"a rolling window's duration must be positive, got {duration}")
    if duration > MAX_ROLLING_DURATION:
        _fail(
            f"a rolling window's duration must be at most {MAX_ROLLING_DURATION.days} days, got {duration}; "
            "for a budget over all time use the 'total' window"
        )
    if duration.microseconds:
        _fail(f"a rolling window's duration must be a whole number of seconds, got {duration}")


def _aware_utc(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        _fail(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        _fail(
            f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc)), got the naive "
            f"{value.isoformat()}; a naive time could be in any zone, so Caracal will not guess"
        )
    try:
        moment = value.astimezone(_UTC)
    except (OverflowError, ValueError):
        _fail(f"{name} is out of range: {value.isoformat()}")
    if not _MIN_YEAR <= moment.year <= _MAX_YEAR:
        _fail(f"{name} must be between the years {_MIN_YEAR} and {_MAX_YEAR}, got {value.isoformat()}")
    return moment


# --- arithmetic ---------------------------------------------------------------------------------------------


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta | None:
    """The zone's UTC offset at the UTC instant ``moment``."""
    return moment.astimezone(zone).utcoffset()


def _wall(zone: ZoneInfo, moment: datetime) -> datetime:
    """The naive local wall-clock reading of the UTC instant ``moment``."""
    return moment.astimezone(zone).replace(tzinfo=None)


def _first_where(predicate: Callable[[datetime], bool], low: datetime, high: datetime) -> datetime:
    """The first instant in ``(low, high]`` for which ``predicate`` holds, to the microsecond, given that it
    is false at ``low``, true at ``high`` and flips once in between. Used only when a boundary meets an
    offset change, over spans of at most about two days; the IANA database never changes a zone's offset
    twice within four days (Africa/Freetown, 1939, is the closest pair), so one flip is all there is."""
    while high - low > _ONE_MICROSECOND:
        middle = low + (high - low) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle
    return high


def _hour_bounds(zone: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the hourly window containing ``now``: bounded by whole-hour readings of the local
    clock and by offset changes (see the module docstring)."""
    local = now.astimezone(zone)
    offset = local.utcoffset()
    # The last instant at or before ``now`` whose reading is a whole hour, if the offset held since then.
    # Comparing the offsets at two instants under two hours apart detects any change between them: offsets
    # never change twice that quickly (see _first_where).
    hour_mark = now - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    start, end = hour_mark, hour_mark + _ONE_HOUR
    if _offset(zone, start) != offset:  # the offset changed after that reading: the change starts the window
        start = _first_where(lambda moment: _offset(zone, moment) == offset, start, now)
    if _offset(zone, end) != offset:  # the offset changes before the next whole hour: the change ends it
        end = _first_where(lambda moment: _offset(zone, moment) != offset, now, end)
    return start, end


def _calendar_bounds(zone: ZoneInfo, kind: str, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the daily, weekly or monthly window containing ``now``.

    Periods are numbered (``index``) and each period's start is a function of its number alone
    (:func:`_period_start`), non-decreasing in it. The window is the period with
    ``start(index) <= now < start(index + 1)``: that makes windows tile by construction. The local date of
    ``now`` gives the right period in all but freak cases (a clock set back across midnight at another
    hour, a skipped day); the loops settle those.
    """
    index = _period_index(kind, now.astimezone(zone).date())
    start = _period_start(zone, kind, index)
    while now < start:
        index -= 1
        start = _period_start(zone, kind, index)
    end = _period_start(zone, kind, index + 1)
    while end <= now:
        index += 1
        start, end = end, _period_start(zone, kind, index + 1)
    return start, end


def _period_index(kind: str, day: date) -> int:
    if kind == "daily":
        return day.toordinal()
    if kind == "weekly":
        # Weeks numbered from the first Monday of the calendar: date(1, 1, 1) is a Monday with ordinal 1.
        return (day.toordinal() - day.weekday() - 1) // 7
    return day.year * 12 + day.month - 1  # monthly


def _period_start(zone: ZoneInfo, kind: str, index: int) -> datetime:
    if kind == "daily":
        first_day = date.fromordinal(index)
    elif kind == "weekly":
        first_day = date.fromordinal(index * 7 + 1)
    else:
        first_day = date(index // 12, index % 12 + 1, 1)
    return _first_instant_reading(zone, datetime.combine(first_day, _MIDNIGHT))


def _first_instant_reading(zone: ZoneInfo, wall: datetime) -> datetime:
    """The first instant (UTC) at which the local clock of ``zone`` reads ``wall`` or later.

    - ``wall`` exists once: that instant.
    - ``wall`` exists twice (clocks set back over it): the earlier of the two.
    - ``wall`` does not exist (clocks jump over it): the transition, the first instant after the gap.
    """
    candidates = [wall.replace(tzinfo=zone, fold=fold).astimezone(_UTC) for fold in (0, 1)]
    real = [moment for moment in candidates if _wall(zone, moment) == wall]
    if real:
        return min(real)
    # In a gap, the two folds read ``wall`` with the offsets before and after the jump; the jump lies
    # between them and is the first instant whose reading is at or past ``wall``.
    low, high = min(candidates), max(candidates)
    return _first_where(lambda moment: _wall(zone, moment) >= wall, low, high)
