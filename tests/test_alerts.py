"""Discord alerts (operations/alerts.py): grouping, throttling, 429, error rates, and the names they carry."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import trigger
from trackly_exec.operations.alerts import Alerts
from trackly_exec.store import constants as c
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import utcnow

from .campaign_fixtures import register_echo, seed_campaign


class DiscordStub:
    """A local stand-in for a Discord webhook: records posts; can answer 429 first."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.rate_limited = 0
        self.failing = 0  # answers 500 this many times
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.server = TestServer(app, host="127.0.0.1")

    async def hook(self, request: web.Request) -> web.Response:
        if self.failing:
            self.failing -= 1
            return web.Response(status=500)
        if self.rate_limited:
            self.rate_limited -= 1
            return web.json_response({"message": "You are being rate limited.", "retry_after": 0.05}, status=429)
        self.posts.append(await request.json())
        return web.Response(status=204)


async def _alerts(trackly: Trackly, stub: DiscordStub, interval: float = 60.0) -> Alerts:
    await stub.server.start_server()
    trackly.settings.alerts.discord_webhook_url = SecretStr(str(stub.server.make_url("/hook")))
    trackly.settings.alerts.min_interval_seconds = interval
    return Alerts(trackly)


async def test_failed_messages_grouped_into_one_alert(trackly: Trackly) -> None:
    """A burst of dead-lettered messages becomes one Discord message counting them by reason."""
    stub = DiscordStub()
    alerts = await _alerts(trackly, stub)
    try:
        await trackly.bus.publish(
            *[
                Event(kind=EventKind.FAILED_MESSAGE, message="failed", data={"reason": r})
                for r in ["STALE"] * 3 + ["PROVIDER_ERROR"] * 2
            ]
        )
        assert await alerts.run_until_idle() == 1
        embed = stub.posts[0]["embeds"][0]
        assert embed["title"] == "5 messages dead-lettered"
        assert "STALE: 3" in embed["description"] and "PROVIDER_ERROR: 2" in embed["description"]
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_throttled_per_key_and_429_honoured(trackly: Trackly) -> None:
    """The same alert key is sent once per interval; Discord's 429 is waited out, not lost."""
    stub = DiscordStub()
    stub.rate_limited = 1
    alerts = await _alerts(trackly, stub, interval=3600)
    try:
        ev = Event(kind=EventKind.SPAM_COMPLAINT, message="carrier filtered", key="spam:1", severity="critical")
        await trackly.bus.publish(ev)
        await alerts.run_until_idle()
        await trackly.bus.publish(ev)
        assert await alerts.run_until_idle() == 0
        assert len(stub.posts) == 1
        assert stub.posts[0]["embeds"][0]["color"] == 0xC62828
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_what_the_interval_held_back_is_posted_once_it_has_passed(trackly: Trackly) -> None:
    """The tail of a burst: dead letters of a key already alerted within the interval are posted, counted, once the
    interval has passed, even when nothing more of that key comes (they were only mentioned by a later alert)."""
    stub = DiscordStub()
    alerts = await _alerts(trackly, stub, interval=3600)
    key = "failed_message:3:PROVIDER_ERROR"
    try:
        first = Event(kind=EventKind.FAILED_MESSAGE, message="failed", key=key, data={"reason": "PROVIDER_ERROR"})
        await trackly.bus.publish(first)
        assert await alerts.run_until_idle() == 1
        await trackly.bus.publish(
            *[Event(kind=EventKind.FAILED_MESSAGE, message="f", key=key, data={"reason": "PROVIDER_ERROR"})] * 12
        )
        assert await alerts.run_until_idle() == 0  # within the interval: held back
        alerts._last_sent[key] -= 3601  # the interval has passed
        assert await alerts.run_until_idle() == 1
        embed = stub.posts[-1]["embeds"][0]
        assert embed["title"] == "12 messages dead-lettered" and "PROVIDER_ERROR: 12" in embed["description"], embed
        assert await alerts.run_until_idle() == 0  # posted once
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_billing_alerts_count_every_held_message(trackly: Trackly) -> None:
    """The executor publishes one billing_blocked event per held chunk: the alert counts their messages (it said
    "12 messages held" when 100 were, the later chunks dropped), and what the interval held back follows, counted."""
    from trackly_exec.executor.outcomes import Outcomes

    stub = DiscordStub()
    alerts = await _alerts(trackly, stub, interval=3600)
    outcomes = Outcomes(trackly, Counter())
    try:
        chunks = [outcomes.billing_blocked(2, 5, n) for n in (12, 50, 38)]
        assert all(e is not None for e in chunks) and outcomes.billing_blocked(2, 5, 0) is None
        await trackly.bus.publish(*[e for e in chunks if e is not None])
        assert await alerts.run_until_idle() == 1
        assert "100 messages of sending list(s) 5 held" in stub.posts[-1]["embeds"][0]["description"]
        later = outcomes.billing_blocked(2, 6, 7)
        assert later is not None
        await trackly.bus.publish(later)
        assert await alerts.run_until_idle() == 0
        alerts._last_sent["billing_blocked:2"] -= 3601
        assert await alerts.run_until_idle() == 1
        assert "7 messages of sending list 6 held" in stub.posts[-1]["embeds"][0]["description"]
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_high_error_rate_detected(trackly: Trackly) -> None:
    """A list whose failures pass the threshold over the last minute raises high_error_rate."""
    now = utcnow()
    base = {
        "account_id": 1,
        "sending_list_id": 7,
        "from_number": "+1",
        "to_number": "+2",
        "body": "x",
        "length": 1,
        "sendtime": now,
    }
    await trackly.db[c.FAILED].insert_many(
        [{**base, "_id": f"f{i}", "reason": "PROVIDER_ERROR", "failed_at": now} for i in range(12)]
    )
    await trackly.db[c.SENT].insert_many([{**base, "_id": f"s{i}", "timestamp": now} for i in range(8)])
    alerts = Alerts(trackly)
    events = await alerts.check_error_rates()
    assert [e.data["sending_list_id"] for e in events] == [7]
    assert await trackly.db[c.EVENTS].count_documents({"kind": "high_error_rate"}) == 1


async def test_a_cancel_is_no_error_rate(trackly: Trackly) -> None:
    """An operator's cancel dead-letters a campaign's queue as CANCELLED: not a failure of the list, so neither a
    high_error_rate alert nor part of the overview's recent failure rate (a cancel raised a critical alert)."""
    from trackly_exec.tracking.stats import overview

    now = utcnow()
    base = {"account_id": 1, "sending_list_id": 7, "from_number": "+1", "to_number": "+2", "body": "x", "sendtime": now}
    await trackly.db[c.FAILED].insert_many(
        [{**base, "_id": f"f{i}", "reason": "CANCELLED", "failed_at": now} for i in range(110)]
    )
    await trackly.db[c.SENT].insert_many([{**base, "_id": f"s{i}", "timestamp": now} for i in range(9)])
    assert await Alerts(trackly).check_error_rates() == []
    stats = await overview(trackly.store, now)
    assert stats["failure_rate_recent"] == 0 and stats["failed_by_reason"] == {"CANCELLED": 110}, stats


async def test_high_error_rate_ignores_old_failures(trackly: Trackly) -> None:
    """Failures three days old are not "in the last minute" on the embedded store (an aggregate $match on a date is
    not honoured by nx-27017): no alert for old failures, and only the minute's records are counted."""
    import datetime as dt

    now = utcnow()
    old = now - dt.timedelta(days=3)
    base = {"account_id": 1, "from_number": "+1", "to_number": "+2", "body": "x", "length": 1, "sendtime": old}
    await trackly.db[c.FAILED].insert_many(
        [
            {**base, "_id": f"old{i}", "sending_list_id": 8, "reason": "PROVIDER_ERROR", "failed_at": old}
            for i in range(50)
        ]
        + [
            {**base, "_id": f"o9{i}", "sending_list_id": 9, "reason": "PROVIDER_ERROR", "failed_at": old}
            for i in range(50)
        ]
        + [
            {**base, "_id": f"n9{i}", "sending_list_id": 9, "reason": "PROVIDER_ERROR", "failed_at": now}
            for i in range(12)
        ]
    )
    await trackly.db[c.SENT].insert_many(
        [{**base, "_id": f"s9{i}", "sending_list_id": 9, "timestamp": now} for i in range(28)]
        + [{**base, "_id": f"os9{i}", "sending_list_id": 9, "timestamp": old} for i in range(100)]
    )
    alerts = Alerts(trackly)
    events = await alerts.check_error_rates()
    assert [(e.data["sending_list_id"], e.data["failed"], e.data["total"]) for e in events] == [(9, 12, 40)]
    assert "12 of 40" in events[0].message


async def test_alerts_carry_names(trackly: Trackly) -> None:
    """A failed campaign's alert says "'Spring sale' (campaign 1) failed: ..."; a dead-letter alert's fields name
    the campaign and the list first; a record without a name shows "campaign <id>"."""
    register_echo()
    await seed_campaign(trackly.store, campaign_kw={"name": "Spring sale"})
    await trackly.db[c.CREATIVES].update_one({"_id": 1}, {"$set": {"archived": True}})
    stub = DiscordStub()
    alerts = await _alerts(trackly, stub, interval=0)
    try:
        await trigger(trackly, 1)
        await trackly.bus.publish(
            Event(
                kind=EventKind.FAILED_MESSAGE,
                message="STALE: message m1",
                key="f",
                data={"reason": "STALE", "campaign_id": 1, "sending_list_id": 1},
            )
        )
        await trackly.db[c.CAMPAIGNS].insert_one({"_id": 2, "account_id": 1})
        await trackly.bus.publish(
            Event(
                kind=EventKind.FAILED_MESSAGE,
                message="STALE: message m2",
                key="g",
                data={"reason": "STALE", "campaign_id": 2},
            )
        )
        assert await alerts.run_until_idle() == 3
        failed, dead, unnamed = (p["embeds"][0] for p in stub.posts)
        assert failed["description"] == "'Spring sale' (campaign 1) failed: creative 1 is archived"
        assert [f["name"] for f in dead["fields"][:2]] == ["campaign", "sending list"]
        assert dead["fields"][0]["value"] == "Spring sale (1)" and dead["fields"][1]["value"] == "main (1)"
        assert unnamed["fields"][0]["value"] == "campaign 2"
    finally:
        await alerts.stop(1)
        await stub.server.close()


async def test_a_test_sends_alert_has_no_empty_fields(trackly: Trackly) -> None:
    """A test send's dead letter has no campaign: its alert shows the fields it has, not "campaign_id: None"."""
    stub = DiscordStub()
    alerts = await _alerts(trackly, stub, interval=0)
    try:
        await trackly.bus.publish(
            Event(
                kind=EventKind.FAILED_MESSAGE,
                message="CONTACT_BLOCKED: message t1",
                key="t",
                data={"reason": "CONTACT_BLOCKED", "campaign_id": None, "execution_id": None, "send_type": "test"},
            )
        )
        assert await alerts.run_until_idle() == 1
        fields = {f["name"]: f["value"] for f in stub.posts[0]["embeds"][0]["fields"]}
        assert fields == {"reason": "CONTACT_BLOCKED", "send_type": "test"}
    finally:
        await alerts.stop(1)
        await stub.server.close()


def test_a_discord_error_never_carries_the_webhook_url() -> None:
    """The Discord webhook URL is a secret (its path is the token): an error quoting it, whole, normalised or by its
    path, is logged without it."""
    from pydantic import SecretStr

    from trackly_exec.operations.alerts import scrub_url

    url = SecretStr("https://discord.com/api/webhooks/123456789/SeCrEtToKeN-abcdefgh")
    for text in (
        "InvalidURL: https://discord.com/api/webhooks/123456789/SeCrEtToKeN-abcdefgh",
        "ClientConnectorError: cannot reach discord.com:443 for /api/webhooks/123456789/SeCrEtToKeN-abcdefgh",
        "something about SeCrEtToKeN-abcdefgh",
    ):
        scrubbed = scrub_url(text, url)
        assert "SeCrEtToKeN" not in scrubbed and "[webhook url]" in scrubbed, scrubbed


@pytest.mark.parametrize(
    "url",
    [
        "http://discord.com:notaport/api/webhooks/1/SECRETDISCORD",
        "http://user:pw@discord.com/api/webhooks/1/SECRETDISCORD",
        "https://disc ord.com/api/webhooks/1/SECRETDISCORD",
        "http://[discord.com/api/webhooks/1/SECRETDISCORD",
    ],
)
def test_a_discord_url_that_cannot_be_used_is_a_config_error_that_does_not_echo_it(tmp_path: Any, url: str) -> None:
    """check-config refused none of these (aiohttp then failed at every alert, logging the URL)."""
    from trackly_exec.config import load_config
    from trackly_exec.errors import ConfigError

    f = tmp_path / "d.toml"
    f.write_text(f'[alerts]\ndiscord_webhook_url = "{url}"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "alerts.discord_webhook_url" in str(e.value) and "SECRETDISCORD" not in str(e.value)


async def test_events_keep_phone_numbers_masked_in_their_data_too(trackly: Trackly) -> None:
    """An opt-out event's number (``data.phone``) is kept masked like its message: the events collection behind the
    dashboard and the alert history held it whole, where an erasure could not find it."""
    await trackly.bus.publish(
        Event(kind=EventKind.OPT_OUT, message="+12025555095 sent STOP", data={"phone": "+12025555095", "list": 3})
    )
    [doc] = await trackly.db[c.EVENTS].find({"kind": "opt_out"}).to_list(None)
    assert "+12025555095" not in str(doc) and doc["data"]["list"] == 3


async def test_an_alert_discord_did_not_take_is_posted_later(trackly: Trackly, monkeypatch: pytest.MonkeyPatch) -> None:
    """An alert whose posts all failed (Discord down) is held and posted once the key's interval has passed: it was
    lost, and its interval still held back the next one."""
    from trackly_exec.operations import alerts as alerts_module

    monkeypatch.setattr(alerts_module, "backoff", lambda *a, **k: 0.0)
    stub = DiscordStub()
    stub.failing = 3  # every attempt of the first post
    alerts = await _alerts(trackly, stub, interval=3600)
    key = "spam:9"
    try:
        await trackly.bus.publish(Event(kind=EventKind.SPAM_COMPLAINT, message="carrier filtered", key=key))
        assert await alerts.run_until_idle() == 0 and stub.posts == []
        alerts._last_sent[key] -= 3601
        assert await alerts.run_until_idle() == 1
        assert "carrier filtered" in stub.posts[-1]["embeds"][0]["description"]
    finally:
        await alerts.stop(1)
        await stub.server.close()
