"""Quiet hours (store/quiethours.py): the zones a contact may be in, windows, the next opening, DST (phone numbers
themselves: test_phones.py)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from trackly_exec.store import quiethours
from trackly_exec.store.quiethours import Window, contact_zones, in_window, next_opening

NY = ZoneInfo("America/New_York")
LA = ZoneInfo("America/Los_Angeles")


def test_stored_zone_wins_and_default_fallback() -> None:
    """A stored timezone beats the number; an unknown number uses the list default."""
    assert contact_zones("+40721234567", "Asia/Tokyo", "UTC") == (ZoneInfo("Asia/Tokyo"),)
    assert contact_zones("+40721234567", None, "UTC") == (ZoneInfo("Europe/Bucharest"),)
    assert contact_zones("+99999", None, "America/Chicago") == (ZoneInfo("America/Chicago"),)


def test_window_all_zones() -> None:
    """With several zones, every one must be inside the window."""
    now = dt.datetime(2026, 6, 1, 12, 30, tzinfo=dt.UTC)  # 08:30 New York, 05:30 Los Angeles
    assert in_window(now, (NY,))
    assert not in_window(now, (NY, LA))
    opening = next_opening(now, (NY, LA))
    assert opening == dt.datetime(2026, 6, 1, 15, 0, tzinfo=dt.UTC)  # 08:00 in Los Angeles
    assert in_window(opening, (NY, LA))


def test_next_opening_evening_and_wrap() -> None:
    """After 21:00 the window opens at 08:00 the next local day; wrapping windows work."""
    now = dt.datetime(2026, 1, 15, 3, 0, tzinfo=dt.UTC)  # 22:00 New York
    assert next_opening(now, (NY,)) == dt.datetime(2026, 1, 15, 13, 0, tzinfo=dt.UTC)
    night = Window.parse("22:00", "06:00")
    assert in_window(now, (NY,), night)


def test_dst_day() -> None:
    """On the spring-forward day the opening is 08:00 local in the new offset."""
    now = dt.datetime(2026, 3, 8, 5, 0, tzinfo=dt.UTC)  # 00:00 EST, DST starts 02:00
    assert next_opening(now, (NY,)) == dt.datetime(2026, 3, 8, 12, 0, tzinfo=dt.UTC)  # 08:00 EDT


def test_default_window_is_tcpa() -> None:
    """The default window is 08:00-21:00."""
    assert Window.parse("08:00", "21:00") == quiethours.DEFAULT_WINDOW


def test_check_timezone() -> None:
    """Known zones pass, unknown ones are a ValueError naming them."""
    import pytest

    assert quiethours.check_timezone("Europe/Paris") == "Europe/Paris"
    assert quiethours.check_timezone(None) is None
    with pytest.raises(ValueError, match="Mars/Olympus"):
        quiethours.check_timezone("Mars/Olympus")
