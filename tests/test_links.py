"""Tracked short links over the daemon's HTTP server: stored-destination-only redirects, click records, bots, stats."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import cast

import pytest
from bson import ObjectId
from yarl import URL

from trackly_exec.app import Trackly
from trackly_exec.store import constants as c
from trackly_exec.store.documents import ShortLinkDoc
from trackly_exec.store.models import MessageShortLink, utcnow
from trackly_exec.tracking import links
from trackly_exec.tracking.clicks import UA_CACHED_MAX, Visit, bot_user_agent, click_stats, counter_updates

from .tracking_support import Daemon, seed_sent

BROWSER = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1"
)
DEST = "https://shop.example.com/sale?utm_source=sms&x=1"
CODE = "Ab3_-xYz9QrS"


async def _link(
    d: Daemon, code: str = CODE, message_id: str = f"{0:016x}", destination: str = DEST, variant_key: str = "A"
) -> MessageShortLink:
    link = MessageShortLink(
        id=code,
        message_id=message_id,
        destination=destination,
        account_id=1,
        campaign_id=7,
        execution_id=3,
        creative_id=789,
        variant_key=variant_key,
        contact_id=1000,
    )
    await d.store[c.SHORT_LINKS].insert_one(link.to_doc())
    return link


async def _get(d: Daemon, raw_path: str, ua: str = BROWSER, method: str = "GET") -> tuple[int, str | None]:
    url = URL(d.url + raw_path, encoded=True)
    async with d.http.request(method, url, allow_redirects=False, headers={"User-Agent": ua}) as resp:
        return resp.status, resp.headers.get("Location")


async def test_redirects_to_stored_destination_and_records_click(daemon: Daemon) -> None:
    """A known code answers 302 to its stored destination and records one human click with a hashed IP."""
    [m] = await seed_sent(daemon.store, 1, timestamp=utcnow() - dt.timedelta(hours=1))
    await _link(daemon, message_id=m.id)
    assert await _get(daemon, f"/l/{CODE}") == (302, DEST)
    [click] = await daemon.store[c.CLICKS].find({}).to_list(None)
    assert click["code"] == CODE and click["message_id"] == m.id and click["campaign_id"] == 7
    assert click["variant_key"] == "A" and click["creative_id"] == 789 and click["user_agent"] == BROWSER
    assert click["bot"] is False and click["bot_reason"] is None
    assert click["ip_hash"] == hashlib.sha256(b"trackly127.0.0.1").hexdigest()
    # its id: an ObjectId's text (a document of plain values for the store), in time order as ObjectIds are
    assert ObjectId.is_valid(click["_id"]) and str(ObjectId(click["_id"])) == click["_id"]
    assert abs(ObjectId(click["_id"]).generation_time - utcnow()) < dt.timedelta(minutes=1)
    link = await daemon.store[c.SHORT_LINKS].find_one({"_id": CODE})
    assert link["clicks"] == 1 and link["human_clicks"] == 1


@pytest.mark.parametrize(
    "path",
    [
        f"/l/{CODE}?url=https://evil.example.com",
        f"/l/{CODE}?next=//evil.example.com&redirect=https%3A%2F%2Fevil.example.com",
        f"/l/{CODE}#https://evil.example.com",
    ],
)
async def test_query_never_changes_the_location(daemon: Daemon, path: str) -> None:
    """Query strings such as ?url= are ignored: the Location is the stored destination."""
    await _link(daemon)
    assert await _get(daemon, path) == (302, DEST)


@pytest.mark.parametrize(
    "path",
    [
        "/l//evil.example.com",
        "/l/%2F%2Fevil.example.com",
        "/l/https:%2F%2Fevil.example.com",
        "/l/https://evil.example.com",
        f"/l/{CODE}/https://evil.example.com",
        f"/l/{CODE}//evil.example.com",
        f"/l/{CODE}%2F%2Fevil.example.com",
        f"/l/{CODE}@evil.example.com",
        f"/l/{CODE}%40evil.example.com",
        "/l/@evil.example.com",
        "/l/user:pass@evil.example.com",
        f"/l/{CODE}%3Furl%3Dhttps%3A%2F%2Fevil.example.com",
        "/l/..%2F..%2Fevil",
        "/l/%5Cevil.example.com",
        "/l/ab",
        "/l/" + "a" * 65,
        "/l/NoSuchCode123",
        "/l/",
    ],
)
async def test_redirect_tricks_are_404(daemon: Daemon, path: str) -> None:
    """Path tricks (//host, encoded, @ forms, extra segments) and unknown codes answer 404, never a redirect."""
    await _link(daemon)
    status, location = await _get(daemon, path)
    assert status == 404 and location is None


async def test_unsafe_stored_destination_is_404(daemon: Daemon) -> None:
    """A stored destination that is not an absolute http(s) URL is never redirected to."""
    await _link(daemon, code="badDest0001", destination="javascript:alert(1)")
    await _link(daemon, code="badDest0002", message_id="1" * 16, destination="//evil.example.com")
    assert (await _get(daemon, "/l/badDest0001"))[0] == 404
    assert (await _get(daemon, "/l/badDest0002"))[0] == 404
    assert await daemon.store[c.CLICKS].count_documents({}) == 0


@pytest.mark.parametrize(
    "ua",
    [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "facebookexternalhit/1.1",
        "Twitterbot/1.0",
        "WhatsApp/2.23.20.0 A",
        "TelegramBot (like TwitterBot)",
        "Mozilla/5.0 (compatible; Discordbot/2.0)",
        "LinkedInBot/1.0",
        "Mozilla/5.0 (compatible; Googlebot/2.1)",
        "Mozilla/5.0 (compatible; bingbot/2.0)",
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Applebot/0.1",
        "curl/8.4.0",
        "Wget/1.21",
        "python-requests/2.31.0",
        "SomeCrawler/1.0",
        "Spider-X",
        "LinkPreview/2",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "Mozilla/5.0 (compatible;PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
        "Pinterest/0.2 (+https://www.pinterest.com/bot.html)",
        "",
    ],
)
def test_bot_user_agents(ua: str) -> None:
    """Link previews, crawlers and HTTP libraries (and an empty user agent) are bots."""
    assert bot_user_agent(ua) is not None


def test_browsers_are_not_bots() -> None:
    """Ordinary mobile and desktop browsers are not bots."""
    for ua in (
        BROWSER,
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
        # a Cubot handset's browser, and Pinterest's in-app browser: people
        "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 11; CUBOT_NOTE_20) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0 Mobile "
        "Safari/537.36",
        "Mozilla/5.0 (Linux; Android 13; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile "
        "Safari/537.36 [Pinterest/Android]",
    ):
        assert bot_user_agent(ua) is None


async def test_bot_clicks_are_flagged_and_counted_apart(daemon: Daemon) -> None:
    """Preview fetchers, HEAD requests and clicks within bot_click_seconds of delivery are bot clicks."""
    old = utcnow() - dt.timedelta(hours=1)
    [a, b] = await seed_sent(daemon.store, 2, timestamp=old)
    await daemon.store[c.SENT].update_one({"_id": b.id}, {"$set": {"delivered": True, "delivered_at": utcnow()}})
    await _link(daemon, code="linkAAAA0001", message_id=a.id)
    await _link(daemon, code="linkBBBB0001", message_id=b.id)
    assert (await _get(daemon, "/l/linkAAAA0001", ua="Slackbot-LinkExpanding 1.0"))[0] == 302
    assert (await _get(daemon, "/l/linkAAAA0001", method="HEAD"))[0] == 302
    assert (await _get(daemon, "/l/linkAAAA0001"))[0] == 302
    assert (await _get(daemon, "/l/linkBBBB0001"))[0] == 302  # a second after delivery: too fast for a human
    reasons = sorted(x["bot_reason"] or "human" for x in await daemon.store[c.CLICKS].find({}).to_list(None))
    assert reasons == ["head_request", "human", "too_soon_after_delivery", "user_agent:slackbot"]
    la = await daemon.store[c.SHORT_LINKS].find_one({"_id": "linkAAAA0001"})
    lb = await daemon.store[c.SHORT_LINKS].find_one({"_id": "linkBBBB0001"})
    assert (la["clicks"], la["human_clicks"], lb["clicks"], lb["human_clicks"]) == (3, 1, 1, 0)


async def test_click_too_soon_after_send_without_delivery(daemon: Daemon) -> None:
    """Without a delivery time, a click within bot_click_seconds of the send is a bot click."""
    [m] = await seed_sent(daemon.store, 1, timestamp=utcnow())
    await _link(daemon, message_id=m.id)
    assert (await _get(daemon, f"/l/{CODE}"))[0] == 302
    assert (await daemon.store[c.CLICKS].find_one({}))["bot_reason"] == "too_soon_after_send"


async def test_click_stats_per_campaign_and_variant(daemon: Daemon) -> None:
    """Click rates are clicked messages / sent messages, per variant, with and without bot clicks."""
    old = utcnow() - dt.timedelta(hours=1)
    sent_a = await seed_sent(daemon.store, 4, timestamp=old, variant_key="A")
    sent_b = await seed_sent(daemon.store, 2, start=10, timestamp=old, variant_key="B")
    await seed_sent(daemon.store, 3, start=20, timestamp=old, campaign_id=8)  # another campaign
    for i, m in enumerate(sent_a[:2] + sent_b[:1]):
        await _link(daemon, code=f"stats{i:07d}", message_id=m.id, variant_key=m.variant_key or "")
    await _get(daemon, "/l/stats0000000")
    await _get(daemon, "/l/stats0000000")  # a second click on the same message counts once
    await _get(daemon, "/l/stats0000001", ua="facebookexternalhit/1.1")
    await _get(daemon, "/l/stats0000002")
    human = await click_stats(daemon.store, campaign_id=7)
    assert (human["sent"], human["clicked"], human["rate"]) == (6, 2, round(2 / 6, 6))
    assert human["variants"]["A"] == {"sent": 4, "clicked": 1, "rate": 0.25}
    assert human["variants"]["B"] == {"sent": 2, "clicked": 1, "rate": 0.5}
    everything = await click_stats(daemon.store, campaign_id=7, filter_bots=False)
    assert everything["clicked"] == 3 and everything["variants"]["A"]["clicked"] == 2
    by_creative = await click_stats(daemon.store, creative_id=789)
    assert by_creative["sent"] == 9 and by_creative["clicked"] == 2
    assert (await click_stats(daemon.store, campaign_id=99))["rate"] == 0.0


async def test_concurrent_clicks_are_grouped_and_each_recorded(daemon: Daemon) -> None:
    """Clicks in flight together are read and recorded as a group: every one answers and is counted once."""

    old = utcnow() - dt.timedelta(hours=1)
    sent = await seed_sent(daemon.store, 5, timestamp=old)
    for i, m in enumerate(sent):
        await _link(daemon, code=f"group{i:07d}", message_id=m.id)
    paths = [f"/l/group{i % 5:07d}" for i in range(20)] + ["/l/NoSuchCode123"]
    answers = await asyncio.gather(
        *(_get(daemon, p, ua="Slackbot 1.0" if i == 0 else BROWSER) for i, p in enumerate(paths))
    )
    assert answers == [(302, DEST)] * 20 + [(404, None)]
    assert await daemon.store[c.CLICKS].count_documents({}) == 20
    links = await daemon.store[c.SHORT_LINKS].find({"_id": {"$regex": "^group"}}).sort("_id", 1).to_list(None)
    assert [(x["clicks"], x["human_clicks"]) for x in links] == [(4, 3)] + [(4, 4)] * 4


def test_bot_verdicts_are_the_same_cached_or_not() -> None:
    """The verdict cached per user agent is the regex's: asked twice, and for a user agent too long to cache."""
    slack, long_browser = "Slackbot-LinkExpanding 1.0", BROWSER + " x" * 300
    assert len(long_browser) > UA_CACHED_MAX
    for _ in range(2):
        assert bot_user_agent(slack) == "user_agent:slackbot" and bot_user_agent(BROWSER) is None
        assert bot_user_agent(long_browser) is None and bot_user_agent(long_browser + " Googlebot/2.1") is not None


class _Store:
    """LinkHandler's store round trips replaced: each group waits for its gate, and answers a link per code."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Condition()

    async def group(self, group: list[tuple[str, Visit]]) -> list[ShortLinkDoc | None]:
        self.sizes.append(len(group))
        gate = asyncio.Event()
        async with self.arrived:
            self.gates.append(gate)
            self.arrived.notify_all()
        await gate.wait()
        return [cast(ShortLinkDoc, {"_id": code, "destination": DEST}) for code, _ in group]

    async def groups(self, n: int) -> None:
        """Until ``n`` groups have reached the store."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.gates) >= n)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _gated_handler(trackly: Trackly) -> tuple[links.LinkHandler, _Store, Visit]:
    """A link handler whose groups of clicks go to a gated stand-in store, and a visitor."""
    handler, store = links.LinkHandler(trackly), _Store()
    handler._group = store.group  # type: ignore[method-assign]
    return handler, store, Visit("ua", "127.0.0.1")


@pytest.fixture
def slow_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group may wait for a minute to fill up: a test ending on time shows it did not wait for the bound."""
    monkeypatch.setattr(links, "FILL_SHARE", 1000.0)
    monkeypatch.setattr(links, "FILL_MAX_SECONDS", 60.0)


async def test_a_group_fills_up_to_what_the_previous_one_had(trackly: Trackly, slow_fill: None) -> None:
    """Clicks in flight under load go to the store together, not as two alternating halves: after a group of
    1 during which 7 more came, the next group waits for an 8th; every click is answered with its own link."""
    handler, store, visit = _gated_handler(trackly)
    first = asyncio.ensure_future(handler._follow("code0000", visit))
    await _settle()
    rest = [asyncio.ensure_future(handler._follow(f"code{i:04d}", visit)) for i in range(1, 8)]
    await asyncio.sleep(0.01)  # the first group's time in the store
    store.gates[0].set()
    await _settle()
    assert store.sizes == [1] and first.done()  # 7 wait for an 8th
    last = asyncio.ensure_future(handler._follow("code0008", visit))
    await _settle()
    assert store.sizes == [1, 8]
    store.gates[1].set()
    answered = await asyncio.wait_for(asyncio.gather(first, *rest, last), 10)
    assert [link["_id"] for link in answered if link] == [f"code{i:04d}" for i in range(9)]


async def test_a_group_waits_no_longer_than_its_bound(trackly: Trackly, monkeypatch: pytest.MonkeyPatch) -> None:
    """When fewer clicks come than the previous group had, the group goes to the store at the bound."""
    monkeypatch.setattr(links, "FILL_MAX_SECONDS", 0.01)
    handler, store, visit = _gated_handler(trackly)
    first = asyncio.ensure_future(handler._follow("code0000", visit))
    await _settle()
    rest = [asyncio.ensure_future(handler._follow(f"code{i:04d}", visit)) for i in range(1, 4)]
    await asyncio.sleep(0.1)
    store.gates[0].set()
    await store.groups(2)  # 3 of the 4 expected: the group goes at the bound
    store.gates[1].set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert store.sizes == [1, 3]


async def test_a_click_after_a_quiet_spell_does_not_wait(trackly: Trackly, slow_fill: None) -> None:
    """A click arriving later than the previous group's time in the store goes at once, alone."""
    handler, store, visit = _gated_handler(trackly)
    first = [asyncio.ensure_future(handler._follow(f"code{i:04d}", visit)) for i in range(4)]
    await _settle()
    store.gates[0].set()
    await asyncio.wait_for(asyncio.gather(*first), 10)
    await asyncio.sleep(handler._store_seconds + 0.05)  # longer than that group's time in the store
    lone = asyncio.ensure_future(handler._follow("code0009", visit))
    await store.groups(2)
    store.gates[1].set()
    assert (await asyncio.wait_for(lone, 10) or {}).get("_id") == "code0009"
    assert store.sizes == [4, 1]


async def test_clicks_waiting_for_a_group_to_fill_are_cancelled_at_shutdown(trackly: Trackly, slow_fill: None) -> None:
    """Stopping the handler while a group waits to fill up leaves no request waiting for ever."""
    handler, store, visit = _gated_handler(trackly)
    first = asyncio.ensure_future(handler._follow("code0000", visit))
    await _settle()
    rest = [asyncio.ensure_future(handler._follow(f"code{i:04d}", visit)) for i in range(1, 3)]
    await asyncio.sleep(0.01)
    store.gates[0].set()
    await _settle()
    assert store.sizes == [1] and first.done()  # 2 wait for a third
    await handler._tasks.stop(0)
    for request in rest:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, 10)


def test_counter_updates_one_statement_per_distinct_increment() -> None:
    """The links' counters go out as one statement per distinct (clicks, human_clicks) increment: the links
    sharing one in a single UpdateMany over their ids, a link alone in an UpdateOne."""
    ops = counter_updates({"a": [1, 1], "b": [1, 1], "c": [1, 0], "d": [2, 1], "e": [1, 1]})
    shapes = sorted((type(op).__name__, str(op._filter), str(op._doc)) for op in ops)
    assert shapes == [
        ("UpdateMany", str({"_id": {"$in": ["a", "b", "e"]}}), str({"$inc": {"clicks": 1, "human_clicks": 1}})),
        ("UpdateOne", str({"_id": "c"}), str({"$inc": {"clicks": 1, "human_clicks": 0}})),
        ("UpdateOne", str({"_id": "d"}), str({"$inc": {"clicks": 2, "human_clicks": 1}})),
    ]


def test_destination_verdicts_are_the_same_cached_or_not() -> None:
    """The verdict cached per destination is the check's: asked twice, and for a destination too long to cache."""
    long_ok, long_bad = DEST + "&p=" + "x" * links.URL_CACHED_MAX, "javascript:alert(1)//" + "x" * links.URL_CACHED_MAX
    for _ in range(2):
        assert links.safe_destination(DEST) == DEST and links.safe_destination(long_ok) == long_ok
        assert links.safe_destination("ftp://x.example/f") is None and links.safe_destination(long_bad) is None
        assert links.safe_destination("https://x.example/a b") is None and links.safe_destination(None) is None


async def _raw_get(d: Daemon, path: str, extra: bytes) -> bytes:
    """A GET written byte for byte (a header of raw, non-UTF-8 bytes: no HTTP client sends one)."""
    url = URL(d.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_user_agent_that_is_not_utf8_loses_no_click(daemon: Daemon) -> None:
    """A click whose User-Agent (or forwarded address) is raw bytes is redirected and recorded, the unreadable bytes
    replaced; the clicks grouped with it are recorded too (the group's write failed: every click of it was lost)."""
    old = utcnow() - dt.timedelta(hours=1)
    [sent] = await seed_sent(daemon.store, 1, timestamp=old)
    await _link(daemon, code="rawbytes0001", message_id=sent.id)
    answers = await asyncio.gather(
        _raw_get(daemon, "/l/rawbytes0001", b"User-Agent: Mozilla/5.0 \xff\xfe"),
        *(_get(daemon, "/l/rawbytes0001") for _ in range(10)),
    )
    assert answers[0].split(b" ", 2)[1] == b"302" and answers[1:] == [(302, DEST)] * 10
    clicks = await daemon.store[c.CLICKS].find({"code": "rawbytes0001"}).to_list(None)
    assert len(clicks) == 11 and sum("\ufffd" in x["user_agent"] for x in clicks) == 1


async def test_credentials_that_are_not_utf8_are_a_4xx_at_every_door(daemon: Daemon) -> None:
    """An Authorization header, an operator cookie or a Twilio signature of raw bytes is a 400 (it was a 500 at the
    admin API, the dashboard, the metrics and the Twilio webhook, each comparing it as text)."""
    for path, header in (
        ("/api/v1/accounts", b"Authorization: Bearer \xc3\xa9\xff\xfe"),
        ("/metrics", b"Authorization: Bearer \xff\xfe"),
        ("/dashboard", b"Cookie: trackly_operator=\xff\xfe\xc3\xa9"),
        ("/dashboard/summary.json", b"Cookie: trackly_operator=\xff\xfe"),
        ("/webhooks/twilio/status", b"X-Twilio-Signature: \xff\xfe\xc3"),
    ):
        answer = await _raw_get(daemon, path, header)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, (path, answer[:200])
