"""Each message leaves with a validity period at its provider: what is left of the recipient's quiet-hours window
and of its freshness (``stale_after_minutes``), so a message a provider queues is dropped rather than delivered at
night or outdated. And the fakes keep what their providers document around it (Twilio's opt-out, length limits)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from trackly_exec.config import Settings
from trackly_exec.drivers.contract import OutboundMessage, Rejected
from trackly_exec.executor import checks
from trackly_exec.store import quiethours
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow
from trackly_exec.testing.fakes.infobip import InfobipFake
from trackly_exec.testing.fakes.twilio import TwilioFake

from .executor_support import assert_one_record_each, executor, midday_zone, seed

WINDOW = quiethours.Window.parse("08:00", "21:00")


def test_the_window_closes_at_its_end_in_the_earliest_zone_inside_it() -> None:
    """``closing``: the window's end in each zone inside it now, the earliest; zones outside it do not count; a window
    across midnight entered before midnight ends the next day."""
    now = dt.datetime(2026, 12, 3, 19, 0, tzinfo=dt.UTC)
    ny, la, tokyo = ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles"), ZoneInfo("Asia/Tokyo")
    assert quiethours.closing(now, (ny,), WINDOW) == dt.datetime(2026, 12, 4, 2, 0, tzinfo=dt.UTC)  # 21:00 EST
    assert quiethours.closing(now, (ny, la), WINDOW) == dt.datetime(2026, 12, 4, 2, 0, tzinfo=dt.UTC)
    assert quiethours.closing(now, (la, tokyo), WINDOW) == dt.datetime(2026, 12, 4, 5, 0, tzinfo=dt.UTC)  # 04:00 Tokyo
    assert quiethours.closing(now, (tokyo,), WINDOW) is None
    night = quiethours.Window.parse("22:00", "06:00")
    assert quiethours.closing(now.replace(hour=23), (ZoneInfo("UTC"),), night) == dt.datetime(
        2026, 12, 4, 6, 0, tzinfo=dt.UTC
    )


def test_a_messages_validity_is_the_sooner_of_its_window_closing_and_its_staleness() -> None:
    """Fresh, at midday: the stale bound (30 min); due 25 min ago: 5 min; ten minutes before the window closes: ten
    minutes; a test send lifting quiet hours: the stale bound only. A number without a stored zone is bounded by the
    earliest closing its prefix and country could stand for, never later than its own."""
    stale = dt.timedelta(minutes=30)
    now = dt.datetime(2026, 12, 3, 17, 0, tzinfo=dt.UTC)  # 12:00 in New York

    def doc(due: dt.datetime, **kw: Any) -> dict[str, Any]:
        return {"_id": "m", "to_number": "+12125550100", "sendtime": due, **kw}

    ny = "America/New_York"
    assert checks.valid_for(doc(now), ny, "UTC", now, WINDOW, stale, {}) == 1800
    assert checks.valid_for(doc(now - dt.timedelta(minutes=25)), ny, "UTC", now, WINDOW, stale, {}) == 300
    late = dt.datetime(2026, 12, 4, 1, 50, tzinfo=dt.UTC)  # 20:50 in New York
    assert checks.valid_for(doc(late), ny, "UTC", late, WINDOW, stale, {}) == 600
    assert checks.valid_for(doc(late, overrides=["quiet_hours"]), ny, "UTC", late, WINDOW, stale, {}) == 1800
    assert checks.valid_for(doc(late - dt.timedelta(hours=1)), ny, "UTC", late, WINDOW, stale, {}) == 1
    # no stored zone: +1 212 is New York's, but the prefix table's candidates include the Atlantic zones, which
    # close an hour earlier: bounded by the earliest (shorter, never longer)
    early = dt.datetime(2026, 12, 4, 0, 50, tzinfo=dt.UTC)  # 19:50 New York, 20:50 Halifax
    assert 1 <= checks.valid_for(doc(early), None, "UTC", early, WINDOW, stale, {}) <= 3600


async def test_each_message_leaves_with_the_validity_it_has_left(
    settings: Settings, store: Store, fakes: dict[str, Any]
) -> None:
    """Through the executor and the three drivers, into each provider's own field (Infobip's
    ``options.validityPeriod`` in seconds, Twilio's ``ValidityPeriod``, CM's absolute ``validity``), as each fake reads
    it back: ten minutes before the window closes, about ten minutes; due 25 minutes ago, about five; fresh at
    midday, about thirty (the stale bound)."""
    now = utcnow()
    tz = midday_zone(now)
    closes = (now.astimezone(ZoneInfo(tz)) + dt.timedelta(minutes=10)).strftime("%H:%M")
    window = {"start": "08:00", "end": closes, "default_timezone": "UTC"}
    ids = await seed(store, 3, list_id=1, driver="infobip", quiet=window, contact_tz=tz)
    ids += await seed(store, 3, list_id=2, driver="twilio", sendtime=now - dt.timedelta(minutes=25), first_contact=100)
    ids += await seed(store, 3, list_id=3, driver="cm", first_contact=200)
    coord = await executor(settings, store, fakes)
    await coord.run_until_idle()
    await assert_one_record_each(store, ids)
    for name, low, high in (("infobip", 480, 600), ("twilio", 240, 300), ("cm", 1680, 1801)):
        got = [e.valid_for for e in fakes[name].ledger]
        assert len(got) == 3 and all(v is not None and low <= v <= high for v in got), (name, got)
    await coord.trackly.close(close_store=False)


async def test_twilio_fake_blocks_a_number_that_texted_stop_until_start() -> None:
    """As Twilio does (providers.md §2.6): after a STOP from a number to ours, a send to it is refused with 21610
    (opted out, which the driver reports as such); after its START it goes again."""
    from trackly_drivers.twilio import TwilioDriver

    fake = await TwilioFake().start()
    driver = TwilioDriver(TwilioDriver.settings_model.model_validate(fake.driver_settings()))
    await driver.startup()
    try:
        msg = OutboundMessage(id="m1", to="+12125550100", sender="+15550000000", body="hi")
        assert (await driver.send([msg]))[0].kind == "accepted"
        fake.inbound_sent("+12125550100", "+15550000000", " stop ")
        [refused] = await driver.send([msg.model_copy(update={"id": "m2"})])
        assert isinstance(refused, Rejected) and refused.code == "21610" and refused.opted_out
        fake.inbound_sent("+12125550100", "+15550000000", "START")
        assert (await driver.send([msg.model_copy(update={"id": "m3"})]))[0].kind == "accepted"
    finally:
        await driver.shutdown()
        await fake.stop()


@pytest.mark.parametrize("provider", ["twilio", "infobip"])
async def test_fakes_refuse_bodies_beyond_their_providers_limits(provider: str) -> None:
    """Twilio refuses a Body over 1600 characters (21617); Infobip a text over 25 parts or 4000 bytes
    (REJECTED_MESSAGE_TOO_LONG): an over-long creative fails locally as it would at the provider."""
    from trackly_drivers.infobip import InfobipDriver
    from trackly_drivers.twilio import TwilioDriver

    fake: Any = await (TwilioFake() if provider == "twilio" else InfobipFake()).start()
    cls: Any = TwilioDriver if provider == "twilio" else InfobipDriver
    driver = cls(cls.settings_model.model_validate(fake.driver_settings()))
    await driver.startup()
    try:
        fits = "x" * (1600 if provider == "twilio" else 153 * 25)
        for body, ok in ((fits, True), (fits + "x", False)):
            [result] = await driver.send(
                [OutboundMessage(id="m" + str(len(body)), to="+12125550100", sender="+15550000000", body=body)]
            )
            assert (result.kind == "accepted") is ok, (len(body), result)
            if not ok:
                assert isinstance(result, Rejected)
                assert result.code in ("21617", "REJECTED_MESSAGE_TOO_LONG"), result
    finally:
        await driver.shutdown()
        await fake.stop()
