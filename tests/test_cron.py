"""cron.py: cronsim's syntax, our DST rule (a skipped wall time runs once, shifted by the jump; a repeated one
runs once unless the hour is ``*``), and what is refused."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from trackly_exec.campaigns.cron import CronError, parse

NY = ZoneInfo("America/New_York")
UTC = dt.UTC


def _local(xs: list[dt.datetime], tz: ZoneInfo = NY) -> list[str]:
    return [x.astimezone(tz).strftime("%m-%d %H:%M%z") for x in xs]


def test_cron_daily_spring_forward_runs_once() -> None:
    """A 02:30 daily cron runs once on the spring-forward day (at 03:30 local) and at 02:30 on the days around it."""
    start = dt.datetime(2026, 3, 7, 0, tzinfo=UTC)
    got = parse("30 2 * * *").occurrences(start, start + dt.timedelta(days=3), "America/New_York")
    assert _local(got) == ["03-07 02:30-0500", "03-08 03:30-0400", "03-09 02:30-0400"]


def test_cron_daily_fall_back_runs_once() -> None:
    """A 01:30 daily cron runs once on the fall-back day, at the first 01:30."""
    start = dt.datetime(2026, 10, 31, 12, tzinfo=UTC)
    got = parse("30 1 * * *").occurrences(start, start + dt.timedelta(days=2), "America/New_York")
    assert _local(got) == ["11-01 01:30-0400", "11-02 01:30-0500"]


def test_cron_interval_keeps_its_interval_across_dst() -> None:
    """An hour-wildcard cron keeps firing every interval through both transitions, never twice at one instant."""
    fall = dt.datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    got = parse("*/30 * * * *").occurrences(fall, fall + dt.timedelta(hours=4), "America/New_York")
    assert [b - a for a, b in itertools.pairwise(got)] == [dt.timedelta(minutes=30)] * (len(got) - 1) and len(got) == 8
    spring = dt.datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    got = parse("0 * * * *").occurrences(spring, spring + dt.timedelta(hours=4), "America/New_York")
    assert _local(got) == ["03-08 01:00-0500", "03-08 03:00-0400", "03-08 04:00-0400", "03-08 05:00-0400"]


@pytest.mark.parametrize("hours", ["*", "*/1", "0-23", "0-11,12-23"])
def test_every_hour_however_written_keeps_its_interval_through_a_fall_back(hours: str) -> None:
    """``*/1`` or ``0-23`` in the hour field is every hour, as ``*`` is: hourly through the fall-back, the repeated
    01:00 included (it ran at 01:00 EDT then 02:00 EST, skipping 01:00 EST, unless the field was written ``*``)."""
    fall = dt.datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    got = parse(f"0 {hours} * * *").occurrences(fall, fall + dt.timedelta(hours=4), "America/New_York")
    assert [b - a for a, b in itertools.pairwise(got)] == [dt.timedelta(hours=1)] * 3, _local(got)
    assert parse(f"0 {hours} * * *").hour_star and not parse("0 1-23 * * *").hour_star


def test_cron_fields() -> None:
    """Lists, ranges, steps, names, Sunday as 0 or 7, and day-of-month OR day-of-week."""
    t = dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # a Thursday
    assert parse("0 9 * * mon-fri").next_after(t, "UTC") == dt.datetime(2026, 1, 1, 9, tzinfo=UTC)
    assert parse("0 9 * * 7").next_after(t, "UTC") == dt.datetime(2026, 1, 4, 9, tzinfo=UTC)
    assert parse("0 9 * * 0").next_after(t, "UTC") == dt.datetime(2026, 1, 4, 9, tzinfo=UTC)
    assert parse("15,45 8-18/5 * * *").next_after(t, "UTC") == dt.datetime(2026, 1, 1, 8, 15, tzinfo=UTC)
    assert parse("0 0 13 * fri").next_after(t, "UTC") == dt.datetime(2026, 1, 2, tzinfo=UTC)  # Friday 2nd
    assert parse("0 12 29 feb *").next_after(t, "UTC") == dt.datetime(2028, 2, 29, 12, tzinfo=UTC)
    assert parse("@monthly").next_after(t, "Europe/Paris") == dt.datetime(2026, 1, 31, 23, tzinfo=UTC)
    assert parse("0 0 * * *").next_after(dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC), "UTC") == dt.datetime(
        2026, 1, 2, tzinfo=UTC
    )  # strictly after


def test_cron_cronsim_extensions_and_aliases() -> None:
    """cronsim's L (last day / last weekday of the month) and # (nth weekday), and the @ aliases."""
    t = dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert parse("0 0 L * *").next_after(t, "UTC") == dt.datetime(2026, 1, 31, tzinfo=UTC)
    assert parse("0 0 * * 5L").next_after(t, "UTC") == dt.datetime(2026, 1, 30, tzinfo=UTC)
    assert parse("0 9 * * 1#2").next_after(t, "UTC") == dt.datetime(2026, 1, 12, 9, tzinfo=UTC)
    assert parse("@daily").next_after(t, "UTC") == dt.datetime(2026, 1, 2, tzinfo=UTC)
    assert parse("@HOURLY").next_after(t, "UTC") == dt.datetime(2026, 1, 1, 1, tzinfo=UTC)


def test_cron_dst_southern_hemisphere() -> None:
    """Sydney: 02:30 is skipped on 2026-10-04 (runs at 03:30) and happens twice on 2026-04-05 (runs once)."""
    syd = ZoneInfo("Australia/Sydney")
    start = dt.datetime(2026, 10, 2, 12, tzinfo=UTC)
    got = parse("30 2 * * *").occurrences(start, start + dt.timedelta(days=3), "Australia/Sydney")
    assert _local(got, syd) == ["10-03 02:30+1000", "10-04 03:30+1100", "10-05 02:30+1100"]
    start = dt.datetime(2026, 4, 3, 12, tzinfo=UTC)
    got = parse("30 2 * * *").occurrences(start, start + dt.timedelta(days=3), "Australia/Sydney")
    assert _local(got, syd) == ["04-04 02:30+1100", "04-05 02:30+1100", "04-06 02:30+1000"]


@pytest.mark.parametrize(
    "expr",
    [
        "* * * *",
        "60 * * * *",
        "* 24 * * *",
        "*/0 * * * *",
        "5-1 * * * *",
        "x * * * *",
        "0 0 31 feb *",
        "0 0 * * 8",
        "1,,2 * * * *",
        "0 0 1 * * *",  # cronsim reads six fields as seconds-first: we accept only five
        "@often",
    ],
)
def test_cron_rejects(expr: str) -> None:
    """Malformed expressions are refused with a CronError."""
    with pytest.raises(CronError):
        parse(expr)
