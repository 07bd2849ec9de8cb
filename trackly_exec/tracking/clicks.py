"""Clicks on tracked short links: recording, bot detection, click rates per campaign and per variant.

A click is stored in ``link_clicks`` as ``{_id, code, message_id, account_id, campaign_id, execution_id,
creative_id, variant_key, at, user_agent, ip_hash, bot, bot_reason}`` (``ip_hash`` = sha256(salt + IP), the salt
being ``tracking.ip_hash_salt``; the IP itself is never stored) and counted on the MessageShortLink (``clicks``,
``human_clicks``). It is flagged ``bot`` when:

- the user agent is a link-preview fetcher, crawler or HTTP library (:data:`BOT_UA`), or is empty;
- the request is a HEAD (previews and link checkers);
- it arrives within ``tracking.bot_click_seconds`` of the message's delivery (of its send when no delivery
  time is known), before or after: no human reads and taps that fast.

:func:`click_stats` gives clicked messages / sent messages per campaign (or creative) and per variant,
bot-filtered or not; learned variant selection and the stats API read it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import UpdateMany, UpdateOne

from trackly_exec.app import Trackly
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import find_by_ids, update_ids
from trackly_exec.store.documents import ClickDoc, Filter, JsonObject, SentDoc, ShortLinkDoc

log = get_logger(__name__)

#: User-agent fragments of link previews, crawlers, scanners and HTTP libraries (case-insensitive). A word ending in
#: "bot" is a crawler's name (AhrefsBot, PetalBot), except a handset brand's (Cubot: its phones' browsers say
#: ``Android 10; CUBOT X30``); Pinterest's crawler, not its app's browser (``[Pinterest/Android]``).
BOT_UA = re.compile(
    r"(?<!cu)bot\b|bot/|crawl|spider|slurp|preview|facebookexternalhit|facebookcatalog|whatsapp|telegrambot|"
    r"discordbot|linkedinbot|slackbot|twitterbot|googlebot|bingbot|applebot|skypeuripreview|embedly|pinterestbot|"
    r"pinterest/0\.|vkshare|"
    r"redditbot|yandex|baiduspider|duckduckbot|ahrefs|semrush|headlesschrome|phantomjs|lighthouse|"
    r"curl/|wget/|python-requests|python-urllib|python-httpx|aiohttp|go-http-client|java/|okhttp|libwww-perl|"
    r"httpclient|axios/|node-fetch|postman|scrapy|monitor|uptime|validator|scanner|proofpoint|mimecast|barracuda|"
    r"safelinks|urldefense|google-inspectiontool|googleother",
    re.IGNORECASE,
)


def bot_user_agent(user_agent: str | None) -> str | None:
    """Why ``user_agent`` is a bot (``"user_agent:slackbot"``), or None for a browser."""
    ua = (user_agent or "").strip()
    if not ua:
        return "empty_user_agent"
    return _bot_reason(ua) if len(ua) <= UA_CACHED_MAX else _match_bot(ua)


#: User agents up to this long have their verdict cached (:data:`BOT_UA` costs ~0.1 ms on a long browser user
#: agent, and clicks come from a few hundred distinct ones); the cache holds at most 4096 of them.
UA_CACHED_MAX = 512


def _match_bot(ua: str) -> str | None:
    m = BOT_UA.search(ua)
    return f"user_agent:{m.group(0).lower().rstrip('/')}" if m else None


_bot_reason = functools.lru_cache(maxsize=4096)(_match_bot)


def ip_hash(salt: str, ip: str | None) -> str | None:
    """sha256(salt + IP), hex; None without an IP."""
    if not ip:
        return None
    return hashlib.sha256((salt + ip).encode()).hexdigest()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Visit:
    """What a click request tells: its user agent, client IP, method and arrival time."""

    user_agent: str | None
    ip: str | None
    method: str = "GET"
    at: dt.datetime | None = None


async def record_click(
    trackly: Trackly,
    link: ShortLinkDoc,
    *,
    user_agent: str | None,
    ip: str | None,
    method: str = "GET",
    at: dt.datetime | None = None,
) -> ClickDoc:
    """Store one click on ``link`` (a MessageShortLink document) and count it; returns the click document."""
    [click] = await record_clicks(trackly, [(link, Visit(user_agent, ip, method, at))])
    return click


async def record_clicks(trackly: Trackly, clicks: Sequence[tuple[ShortLinkDoc, Visit]]) -> list[ClickDoc]:
    """Store and count clicks (each a MessageShortLink document and its :class:`Visit`) in at most three round
    trips whatever their number: one read of the messages' times (for the clicks not already bots by their
    request), one ``insert_many``, one ``bulk_write`` of the links' counters. Returns the click documents."""
    if not clicks:
        return []
    cfg = trackly.settings.tracking
    now = trackly.now()
    reasons = [
        "head_request" if visit.method.upper() == "HEAD" else bot_user_agent(visit.user_agent) for _, visit in clicks
    ]
    times: dict[str, SentDoc] = {}
    if cfg.bot_click_seconds > 0:
        ids = list({link["message_id"] for (link, _), reason in zip(clicks, reasons, strict=True) if reason is None})
        if ids:
            # whole documents: nx-27017 applies projections in Python, which costs more than the fields saved
            times = {d["_id"]: d for d in await find_by_ids(trackly.db, c.SENT, ids)}
    salt = cfg.ip_hash_salt.get_secret_value()
    docs: list[ClickDoc] = []
    counts: dict[str, list[int]] = {}
    for (link, visit), reason in zip(clicks, reasons, strict=True):
        at = visit.at or now
        sent = times.get(link["message_id"]) if reason is None else None
        if sent is not None:
            ref, what = (_aware(sent.get("delivered_at")), "delivery")
            if ref is None:
                ref, what = (_aware(sent.get("timestamp")), "send")
            # |delta|: a click a moment *before* the recorded delivery is as implausible (clock skew, minute-
            # precision carrier times); one long before it just means the report arrived late.
            if ref is not None and abs((at - ref).total_seconds()) < cfg.bot_click_seconds:
                reason = f"too_soon_after_{what}"
        docs.append(
            {
                # an ObjectId's text: unique and in time order as the ObjectId is, and a document of plain values,
                # which the embedded store writes without converting or copying it (nx-27017 turns a BSON ObjectId
                # into its own, value by value); nothing reads a click by its id
                "_id": str(ObjectId()),
                "code": link["_id"],
                "message_id": link["message_id"],
                "account_id": link.get("account_id"),
                "campaign_id": link.get("campaign_id"),
                "execution_id": link.get("execution_id"),
                "creative_id": link.get("creative_id"),
                "variant_key": link.get("variant_key"),
                "contact_id": link.get("contact_id"),
                "at": at,
                # a click on an erased contact's link (erasure.py) keeps nothing that could identify the clicker
                "user_agent": "" if link.get("erased") else (visit.user_agent or "")[:512],
                "ip_hash": None if link.get("erased") else ip_hash(salt, visit.ip),
                "bot": reason is not None,
                "bot_reason": reason,
            }
        )
        count = counts.setdefault(link["_id"], [0, 0])
        count[0] += 1
        count[1] += reason is None
    await trackly.db[c.CLICKS].insert_many(docs, ordered=False)
    await trackly.db[c.SHORT_LINKS].bulk_write(counter_updates(counts), ordered=False)
    return docs


def counter_updates(counts: dict[str, list[int]]) -> list[UpdateOne | UpdateMany]:
    """The ``$inc`` of each link's ``[clicks, human_clicks]``: one statement per distinct pair of increments
    (:func:`~trackly_exec.store.client.update_ids` over the links that share it; nearly every link of a group takes
    ``(1, 1)``, or ``(1, 0)`` for a bot click), not one per link."""
    by_increment: dict[tuple[int, int], list[str]] = {}
    for code, (n, h) in counts.items():
        by_increment.setdefault((n, h), []).append(code)
    return [update_ids(codes, {"$inc": {"clicks": n, "human_clicks": h}}) for (n, h), codes in by_increment.items()]


def _rate(clicked: int, sent: int) -> float:
    return round(clicked / sent, 6) if sent else 0.0


async def click_stats(
    store: Any, *, campaign_id: int | None = None, creative_id: int | None = None, filter_bots: bool = True
) -> JsonObject:
    """Click rate (clicked messages / sent messages) for a campaign and/or creative, overall and per variant.

    ``{"campaign_id", "creative_id", "filter_bots", "sent", "clicked", "rate",
    "variants": {"<variant key>": {"sent", "clicked", "rate"}}}``; with ``filter_bots`` only human clicks count.
    """
    match: Filter = {}
    if campaign_id is not None:
        match["campaign_id"] = campaign_id
    if creative_id is not None:
        match["creative_id"] = creative_id
    sent_match = {**match, "submitted": {"$ne": False}}
    rows = await (
        await store.db[c.SENT].aggregate(
            [{"$match": sent_match}, {"$group": {"_id": "$variant_key", "n": {"$sum": 1}}}]
        )
    ).to_list(None)
    sent_by_variant: dict[str, int] = {}
    total_sent = 0
    for row in rows:
        total_sent += int(row["n"])
        if row["_id"] is not None:
            key = str(row["_id"])
            sent_by_variant[key] = sent_by_variant.get(key, 0) + int(row["n"])
    click_match = {**match, **({"bot": False} if filter_bots else {})}
    total_clicked = len(await store.db[c.CLICKS].distinct("message_id", click_match))
    variants: dict[str, JsonObject] = {}
    click_keys = {str(k) for k in await store.db[c.CLICKS].distinct("variant_key", click_match) if k is not None}
    for key in sorted(set(sent_by_variant) | click_keys):
        clicked = len(await store.db[c.CLICKS].distinct("message_id", {**click_match, "variant_key": key}))
        sent = sent_by_variant.get(key, 0)
        variants[key] = {"sent": sent, "clicked": clicked, "rate": _rate(clicked, sent)}
    return {
        "campaign_id": campaign_id,
        "creative_id": creative_id,
        "filter_bots": filter_bots,
        "sent": total_sent,
        "clicked": total_clicked,
        "rate": _rate(total_clicked, total_sent),
        "variants": variants,
    }
