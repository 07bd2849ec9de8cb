"""Five-field cron expressions, evaluated in a timezone, DST-correct.

Parsing and matching are `cronsim <https://pypi.org/project/cronsim/>`_'s (Debian/Vixie cron syntax):
``minute hour day-of-month month day-of-week`` with ``*``, lists (``1,15``), ranges (``1-5``), steps
(``*/15``, ``8-18/2``), month and day names (``jan``, ``mon-fri``), day-of-week 0-7 (0 and 7 are Sunday),
``L`` (last day of the month / ``5L`` last Friday), ``1#2`` (second Monday), and the aliases
``@hourly @daily @midnight @weekly @monthly @yearly @annually``. As in Vixie cron, when both day fields are
restricted (neither starts with ``*``) a day matches either of them.

cronsim yields the matching wall-clock times; this module maps them to instants with its own daylight-saving
rule (a campaign's wall-clock times, in its own timezone):

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

from cronsim import CronSim, CronSimError

from trackly_exec.errors import TracklyError

_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MAX_SHIFT = dt.timedelta(hours=3)  # the largest DST jump (Lord Howe's is 30 min; 3 h is generous)
_SECOND = dt.timedelta(seconds=1)


class CronError(TracklyError):
    """An invalid cron expression or timezone."""


def _every_hour(field: str) -> bool:
    """The hour field matches every hour of the day, however written (``*``, ``*/1``, ``0-23``, ``0-11,12-23``):
    such an expression keeps its interval through a fall-back, like ``*``."""
    day = dt.datetime(2000, 1, 1)
    hours = set()
    for when in CronSim(f"0 {field} * * *", day - _SECOND):
        if when.date() != day.date():
            break
        hours.add(when.hour)
    return len(hours) == 24


@dataclass(frozen=True)
class Cron:
    """A parsed expression; :meth:`next_after` gives occurrences as UTC instants."""

    expr: str
    text: str  # the five fields (aliases expanded)
    hour_star: bool  # the hour field is unrestricted: the expression keeps its interval through a fall-back

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = _ALIASES.get(expr.strip().lower(), expr.strip())
        fields = text.split()
        if len(fields) != 5:
            raise CronError(f"expected 5 fields (minute hour day month weekday), got {len(fields)} in {expr!r}")
        try:
            CronSim(text, dt.datetime(2000, 1, 1))  # validates every field
        except CronSimError as exc:
            raise CronError(f"{exc} in {expr!r}") from exc
        return cls(expr, text, hour_star=_every_hour(fields[1]))

    def _wall_times(self, start: dt.datetime) -> Iterator[dt.datetime]:
        """Matching naive wall times >= ``start`` (naive), in increasing order (cronsim, no timezone)."""
        try:
            yield from CronSim(self.text, start - _SECOND)
        except CronSimError as exc:  # pragma: no cover - parse() validated the expression
            raise CronError(f"{exc} in {self.expr!r}") from exc

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
            raise CronError(f"{self.expr!r} has no occurrence within 50 years")
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
    """Parse ``expr`` (raises :class:`CronError` naming the bad field)."""
    return Cron.parse(expr)


def next_occurrence(expr: str, tz: str, after: dt.datetime) -> dt.datetime:
    """The first occurrence of ``expr`` in zone ``tz`` strictly after ``after``, in UTC."""
    return Cron.parse(expr).next_after(after, tz)
