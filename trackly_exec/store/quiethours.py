"""Quiet hours (TCPA): may a contact be texted now, and if not, when does their window open?

The window (08:00-21:00 by default) is in the contact's local time. The contact's zone is their stored
timezone when they have one (numbers are portable, a stored zone is better information); otherwise the zones
libphonenumber gives for the number; a number whose zone is unknown uses the list's default timezone. When a
number may be in several zones (a +1 toll-free number may be anywhere in North America), the local time must
be inside the window in *all* of them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from trackly_exec.store.phones import UNKNOWN_ZONE, timezones_for

_SEARCH_DAYS = 8


@dataclass(frozen=True)
class Window:
    """A daily local-time window ``[start, end)``; ``start > end`` wraps midnight (e.g. 22:00-06:00)."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, start: str, end: str) -> Window:
        return cls(dt.time.fromisoformat(start), dt.time.fromisoformat(end))

    @classmethod
    def from_quiet_hours(cls, q: object) -> Window:
        """From a ``models.QuietHours`` (anything with ``start``/``end`` "HH:MM" strings)."""
        return cls.parse(q.start, q.end)  # type: ignore[attr-defined]

    def contains(self, local: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


DEFAULT_WINDOW = Window(dt.time(8, 0), dt.time(21, 0))


def zone(name: object) -> ZoneInfo | None:
    """The ZoneInfo called ``name``, or None when there is no such zone (or ``name`` is no text: a contact another
    tool wrote with ``timezone: 5``)."""
    return _zone(name) if isinstance(name, str) else None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def check_timezone(name: str | None) -> str | None:
    """``name`` if it is a known IANA zone (or None); ValueError otherwise (for pydantic validators)."""
    if name is not None and zone(name) is None:
        raise ValueError(f"unknown timezone {name!r}")
    return name


@lru_cache(maxsize=4096)
def _named_zones(names: tuple[str, ...], contact_tz: str | None, default_tz: str) -> tuple[ZoneInfo, ...]:
    if contact_tz:
        z = zone(contact_tz)
        if z is not None:
            return (z,)
    found = tuple(z for name in names if name != UNKNOWN_ZONE and (z := zone(name)) is not None)
    if found:
        return found
    z = zone(default_tz) or ZoneInfo("UTC")
    return (z,)


@lru_cache(maxsize=65536)
def _zones(phone: str, contact_tz: str | None, default_tz: str) -> tuple[ZoneInfo, ...]:
    if contact_tz and zone(contact_tz) is not None:
        return _named_zones((), contact_tz, default_tz)  # the number is not parsed
    return _named_zones(timezones_for(phone), None, default_tz)


def contact_zones(
    phone: str, contact_tz: str | None, default_tz: str, number_zones: tuple[str, ...] | None = None
) -> tuple[ZoneInfo, ...]:
    """The zones the contact may be in: stored zone, else the number's zones, else the list's default.

    ``number_zones``: the number's zones as :func:`~trackly_exec.store.phones.timezones_for` gives them, when
    the caller has them already (a contact's stored ``phone_check``): ``phone`` is then not parsed."""
    if not isinstance(contact_tz, str):  # (a stored zone of another type, written by another tool: none)
        contact_tz = None
    if number_zones is not None:
        return _named_zones(number_zones, contact_tz or None, default_tz)
    return _zones(phone, contact_tz or None, default_tz)


def in_window(now: dt.datetime, zones: tuple[ZoneInfo, ...], window: Window = DEFAULT_WINDOW) -> bool:
    """True when the local time at ``now`` (aware) is inside ``window`` in every zone."""
    return all(window.contains(now.astimezone(z).time()) for z in zones)


def closing(now: dt.datetime, zones: tuple[ZoneInfo, ...], window: Window = DEFAULT_WINDOW) -> dt.datetime | None:
    """The earliest instant after ``now`` at which one of the ``zones`` that are inside the window now leaves it (the
    window's end there); None when none is inside."""
    ends: list[dt.datetime] = []
    for z in zones:
        local = now.astimezone(z)
        if not window.contains(local.time()):
            continue
        end = dt.datetime.combine(local.date(), window.end, tzinfo=z)
        if end.astimezone(dt.UTC) <= now:  # a window across midnight, inside after its start: it ends tomorrow
            end = dt.datetime.combine(local.date() + dt.timedelta(days=1), window.end, tzinfo=z)
        ends.append(end.astimezone(dt.UTC))
    return min(ends) if ends else None


def next_opening(now: dt.datetime, zones: tuple[ZoneInfo, ...], window: Window = DEFAULT_WINDOW) -> dt.datetime:
    """The earliest instant >= ``now`` at which every zone is inside the window (``now`` if already inside).

    If the zones never share the window within a week (zones far apart and a short window), the first
    zone's opening is used: the contact's best-known zone decides.
    """
    if in_window(now, zones, window):
        return now
    candidates: list[dt.datetime] = []
    for z in zones:
        local_day = now.astimezone(z).date()
        for d in range(_SEARCH_DAYS):
            opening = dt.datetime.combine(local_day + dt.timedelta(days=d), window.start, tzinfo=z)
            opening_utc = opening.astimezone(dt.UTC)
            if opening_utc > now:
                candidates.append(opening_utc)
    for cand in sorted(candidates):
        if in_window(cand, zones, window):
            return cand
    return next_opening(now, zones[:1], window) if len(zones) > 1 else min(candidates)
