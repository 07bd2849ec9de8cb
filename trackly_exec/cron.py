"""Five-field cron expressions, evaluated in a timezone, DST-correct.

``minute hour day-of-month month day-of-week`` with ``*``, lists (``1,15``), ranges (``1-5``), steps
(``*/15``, ``8-18/2``), month and day names (``jan``, ``mon-fri``), day-of-week 0-7 (0 and 7 are Sunday)
and the aliases ``@hourly @daily @midnight @weekly @monthly @yearly @annually``. As in Vixie cron, when both
day fields are restricted a day matches either of them.

Daylight-saving rule (a campaign's wall-clock times, in its own timezone):

* **spring forward** (a wall time that does not exist, e.g. 02:30 on the night clocks jump 02:00 -> 03:00):
  the occurrence runs once, at the same distance past the jump (02:30 -> 03:30 local); an occurrence that
  lands on an instant that already fires (``0 * * * *`` at 02:00 -> 03:00) runs once, not twice;
* **fall back** (a wall time that happens twice, e.g. 01:30 on the night clocks go 02:00 -> 01:00): a fixed
  hour (``30 1 * * *``) runs once, at the first of the two instants; an expression whose hour field is ``*``
  (``*/15 * * * *``) keeps its interval and runs at both.

So a daily schedule runs exactly once every day, whatever the day's length.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import TracklyError

_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = {
    m: i
    for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_SEARCH_YEARS = 8  # Feb 29 on a given weekday recurs within 28 years; 8 covers every sane expression
_MAX_SHIFT = dt.timedelta(hours=3)
_MONTH_MAX = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class CronError(TracklyError):
    """An invalid cron expression or timezone."""


def _value(token: str, lo: int, hi: int, names: dict[str, int], what: str) -> int:
    t = token.lower()
    if t in names:
        return names[t]
    if not t.isdigit():
        raise CronError(f"{what}: {token!r} is not a number{' or name' if names else ''}")
    v = int(t)
    if not lo <= v <= hi:
        raise CronError(f"{what}: {v} is outside {lo}-{hi}")
    return v


def _parse_field(text: str, lo: int, hi: int, names: dict[str, int], what: str) -> tuple[frozenset[int], bool]:
    """The values of one field, and whether it is unrestricted (``*``)."""
    out: set[int] = set()
    star = False
    for part in text.split(","):
        if not part:
            raise CronError(f"{what}: empty list item in {text!r}")
        base, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise CronError(f"{what}: bad step {step_s!r}")
            step = int(step_s)
        if base == "*":
            a, b = lo, hi
            star = star or not step_s
        elif "-" in base:
            a_s, _, b_s = base.partition("-")
            a, b = _value(a_s, lo, hi, names, what), _value(b_s, lo, hi, names, what)
            if a > b:
                raise CronError(f"{what}: range {base!r} runs backwards")
        else:
            a = _value(base, lo, hi, names, what)
            b = hi if step_s else a
        out.update(range(a, b + 1, step))
    return frozenset(out), star


@dataclass(frozen=True)
class Cron:
    """A parsed expression; :meth:`next_after` gives occurrences as UTC instants."""

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday ... 6 = Sunday (Python's weekday())
    dom_star: bool
    dow_star: bool
    hour_star: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = _ALIASES.get(expr.strip().lower(), expr.strip())
        fields = text.split()
        if len(fields) != 5:
            raise CronError(f"expected 5 fields (minute hour day month weekday), got {len(fields)} in {expr!r}")
        parsed = [
            _parse_field(f, lo, hi, names, what) for f, (what, lo, hi, names) in zip(fields, _FIELDS, strict=True)
        ]
        (mins, _), (hours, hour_star), (days, dom_star), (months, _), (dows, dow_star) = parsed
        weekdays = frozenset((d - 1) % 7 for d in dows)  # cron 0/7 = Sunday -> 6; 1 = Monday -> 0
        if not dom_star and dow_star and all(min(days) > _MONTH_MAX[m] for m in months):
            raise CronError(f"day {min(days)} never occurs in the selected months")
        return cls(
            expr, tuple(sorted(mins)), tuple(sorted(hours)), days, months, weekdays, dom_star, dow_star, hour_star
        )

    def _day_matches(self, d: dt.date) -> bool:
        if d.month not in self.months:
            return False
        dom_ok, dow_ok = d.day in self.days, d.weekday() in self.weekdays
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def _wall_times(self, start: dt.datetime) -> Iterator[dt.datetime]:
        """Matching naive wall times >= ``start`` (naive), in increasing order."""
        day = start.date()
        end = day + dt.timedelta(days=366 * _SEARCH_YEARS)
        while day <= end:
            if self._day_matches(day):
                for h in self.hours:
                    for m in self.minutes:
                        wall = dt.datetime(day.year, day.month, day.day, h, m)
                        if wall >= start:
                            yield wall
            day += dt.timedelta(days=1)

    def _instants(self, wall: dt.datetime, tz: ZoneInfo) -> list[dt.datetime]:
        """The UTC instants a wall time fires at under the DST rule of this module."""
        first = wall.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
        if first == second:
            return [first]
        # The two folds differ: either the wall time happens twice (fall back) or never (spring forward).
        exists = first.astimezone(tz).replace(tzinfo=None) == wall
        if not exists:
            # Gap: fold=0 reads it with the offset before the jump, i.e. the same distance past the jump.
            return [first]
        return sorted({first, second}) if self.hour_star else [min(first, second)]

    def next_after(self, after: dt.datetime, tz: str | ZoneInfo) -> dt.datetime:
        """The first occurrence strictly after ``after`` (aware), as an aware UTC datetime."""
        zone = get_zone(tz) if isinstance(tz, str) else tz
        after = after.astimezone(dt.UTC)
        local = after.astimezone(zone).replace(tzinfo=None)
        best: dt.datetime | None = None
        best_wall: dt.datetime | None = None
        # Near a DST transition a later instant can have an earlier wall time: look back then; else start here.
        offsets = {
            after.astimezone(zone).utcoffset(),
            (after - _MAX_SHIFT).astimezone(zone).utcoffset(),
            (after + _MAX_SHIFT).astimezone(zone).utcoffset(),
        }
        start = (local - _MAX_SHIFT if len(offsets) > 1 else local).replace(second=0, microsecond=0)
        for wall in self._wall_times(start):
            if best_wall is not None and wall > best_wall + 2 * _MAX_SHIFT:
                break
            for inst in self._instants(wall, zone):
                if inst > after and (best is None or inst < best):
                    best, best_wall = inst, best_wall or wall
        if best is None:
            raise CronError(f"{self.expr!r} has no occurrence within {_SEARCH_YEARS} years")
        return best

    def occurrences(self, after: dt.datetime, until: dt.datetime, tz: str | ZoneInfo) -> list[dt.datetime]:
        """Every occurrence in ``(after, until]`` (for tests and previews; keep the span small)."""
        out: list[dt.datetime] = []
        t = after
        while True:
            t = self.next_after(t, tz)
            if t > until:
                return out
            out.append(t)


def get_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or :class:`CronError`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown timezone {name!r}") from exc


def parse(expr: str) -> Cron:
    """Parse ``expr`` (raises :class:`CronError` with the field and the problem)."""
    return Cron.parse(expr)


def next_occurrence(expr: str, tz: str, after: dt.datetime) -> dt.datetime:
    """The first occurrence of ``expr`` in zone ``tz`` strictly after ``after``, in UTC."""
    return Cron.parse(expr).next_after(after, tz)
