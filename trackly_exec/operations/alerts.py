"""Discord alerts: delivery failures, spam complaints, high error rates, campaign and limiter trouble.

The component subscribes to the :class:`~trackly_exec.store.events.EventBus`; the subscriber only puts events on a
bounded in-memory queue, so alerting never slows a sender. A background task groups what arrived by alert key,
sends at most one message per key per ``alerts.min_interval_seconds`` (the rest is summarised as "+N more"),
and honours Discord's 429 ``retry_after``. Every minute it also checks each sending list's failure share and
raises ``high_error_rate`` above ``alerts.error_rate_threshold``. Without ``alerts.discord_webhook_url`` the
alerts are only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr
from yarl import URL

from trackly_exec.app import Loop, backoff
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import count
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import OPERATOR_REASONS
from trackly_exec.store.phones import mask_text

log = get_logger(__name__)

COLOURS = {"info": 0x1E88E5, "warning": 0xF9A825, "critical": 0xC62828}
QUEUE_LIMIT = 10_000
MIN_FAILURES_FOR_RATE_ALERT = 10


def scrub_url(text: str, url: SecretStr) -> str:
    """``text`` without the secret URL in it (a Discord webhook URL's path is its token): the URL, its path, or
    any of its longer path segments, as an error message may quote them, become ``[webhook url]``."""
    secret = url.get_secret_value()
    parts = urlsplit(secret)
    pieces = [secret, str(yarl_url(secret)), parts.path, *(seg for seg in parts.path.split("/") if len(seg) >= 8)]
    for piece in sorted((p for p in pieces if p), key=len, reverse=True):
        text = text.replace(piece, "[webhook url]")
    return text


def yarl_url(text: str) -> str:
    """The URL as aiohttp writes it in its errors (normalised), or the text when it cannot parse it."""
    try:
        return str(URL(text))
    except (ValueError, TypeError):
        return text


#: The events of one key kept while its interval holds them back (more are counted as "+N more").
HELD_PER_KEY = 1000


class Alerts:
    """Discord alerting as a daemon component."""

    name = "alerts"

    def __init__(self, trackly: Any) -> None:
        self.trackly = trackly
        self.cfg = trackly.settings.alerts
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self.dropped = 0
        self.sent_messages: list[JsonObject] = []  # what was posted (or logged), newest last, capped
        self._last_sent: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._held: dict[str, list[Event]] = {}  # per key, what its interval held back (posted once it has passed)
        self._loops = (
            Loop("alerts", self._dispatch_next, 0.0, on_error=self._dispatch_failed),
            Loop("alerts-error-rates", self.check_error_rates, 60.0, first_wait=True, on_error=lambda exc: None),
        )
        self._session: aiohttp.ClientSession | None = None
        self._blocked_until = 0.0
        trackly.bus.subscribe(self.on_events)

    # -- producer side ----------------------------------------------------------------------

    async def on_events(self, events: Sequence[Event]) -> None:
        for event in events:
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for loop in self._loops:
            loop.start()

    async def stop(self, grace: float) -> None:
        for loop in self._loops:
            loop.stopping.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.run_until_idle(), timeout=min(grace, 5.0))
        for loop in self._loops:
            await loop.stop(0.0)
        if self._session is not None:
            await self._session.close()

    async def run_until_idle(self) -> int:
        """Send everything queued now, and what throttling held back whose interval has passed (burst mode for
        tests); returns the number of alert messages sent."""
        batch: list[Event] = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return await self._dispatch(batch) + await self.flush_held()

    async def _dispatch_next(self) -> None:
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout=self._next_flush())
        except TimeoutError:
            await self.flush_held()
            return
        await asyncio.sleep(1.0)  # gather a burst into one message
        batch = [first]
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        await self._dispatch(batch)
        await self.flush_held()

    def _next_flush(self) -> float | None:
        """Seconds until the first held-back key's interval has passed (None: nothing is held)."""
        if not self._held:
            return None
        now = time.monotonic()
        interval = float(self.cfg.min_interval_seconds)
        due = min(self._last_sent.get(key, now) + interval for key in self._held)
        return max(0.05, due - now)

    async def flush_held(self) -> int:
        """Post, per key whose interval has passed since its last alert, what throttling held back meanwhile (the tail
        of a burst: without it, only a later alert of the same key would have mentioned it). Returns the posts."""
        now = time.monotonic()
        sent = 0
        for key in list(self._held):
            if now - self._last_sent.get(key, 0.0) < self.cfg.min_interval_seconds:
                continue
            group = self._held.pop(key)
            extra = max(0, self._suppressed.pop(key, 0) - len(group))
            self._last_sent[key] = now
            await self._name(group[0])
            if await self._post(self._format(group, extra, held=True)):
                sent += 1
            else:
                self._hold_again(key, group, extra)
        return sent

    @staticmethod
    def _dispatch_failed(exc: Exception) -> None:
        log.warning("alert_dispatch_failed", error=str(exc))

    # -- grouping and throttling --------------------------------------------------------------

    async def _dispatch(self, events: list[Event]) -> int:
        groups: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            groups[e.key or str(e.kind)].append(e)
        sent = 0
        now = time.monotonic()
        for key, group in groups.items():
            last = self._last_sent.get(key)
            if last is not None and now - last < self.cfg.min_interval_seconds:
                self._suppressed[key] += len(group)
                held = self._held.setdefault(key, [])
                held.extend(group[: max(0, HELD_PER_KEY - len(held))])
                continue
            extra = self._suppressed.pop(key, 0) - len(self._held.get(key, ()))
            group = self._held.pop(key, []) + group
            self._last_sent[key] = now
            await self._name(group[0])
            if await self._post(self._format(group, extra)):
                sent += 1
            else:  # not delivered: held again, posted once the interval has passed (nothing lost to an outage)
                self._hold_again(key, group, extra)
        return sent

    def _hold_again(self, key: str, group: list[Event], extra: int) -> None:
        self._held[key] = group[:HELD_PER_KEY] + self._held.get(key, [])
        self._suppressed[key] += len(group) + extra

    async def _name(self, event: Event) -> None:
        """Put the campaign's and the sending list's names first in the event's fields (not just their ids)."""
        from trackly_exec.store.names import names

        named: JsonObject = {}
        with contextlib.suppress(Exception):
            for field, coll, title in (
                ("campaign_id", c.CAMPAIGNS, "campaign"),
                ("sending_list_id", c.SENDING_LISTS, "sending list"),
            ):
                value = event.data.get(field)
                if isinstance(value, int) and value > 0 and title not in event.data:
                    name = (await names(self.trackly.db, coll, [value]))[value]
                    named[title] = name if name == f"{title} {value}" else f"{name} ({value})"
        if named:
            event.data = {**named, **event.data}

    def _format(self, group: list[Event], suppressed: int, *, held: bool = False) -> JsonObject:
        """One Discord message for ``group`` (events of one key), ``suppressed`` more counted but not kept; ``held``:
        they were held back by the key's interval (the tail of a burst)."""
        head = group[0]
        severity = max(
            (e.severity for e in group),
            key=lambda s: ["info", "warning", "critical"].index(s) if s in ("info", "warning", "critical") else 1,
        )
        if head.kind == EventKind.FAILED_MESSAGE and len(group) > 1:
            reasons = Counter(str(e.data.get("reason")) for e in group)
            title = f"{len(group)} messages dead-lettered"
            description = ", ".join(f"{r}: {n}" for r, n in reasons.most_common())
        elif head.kind == EventKind.BILLING_BLOCKED and len(group) > 1:  # one event per held chunk: their sum
            messages = sum(int(e.data.get("messages") or 0) for e in group)
            lists = sorted({str(e.data.get("sending_list_id")) for e in group})
            title = "billing blocked"
            description = (
                f"account {head.data.get('account_id')}: balance too low, {messages} messages of sending list(s) "
                f"{', '.join(lists)} held (retried every {head.data.get('retry_minutes')} min; dead-lettered "
                f"BILLING_BLOCKED after {head.data.get('ttl_minutes')} min; top the account up)"
            )
        else:
            title = str(head.kind).replace("_", " ")
            description = head.message + (f"\n(+{len(group) - 1} more like this)" if len(group) > 1 else "")
        if suppressed:
            description += f"\n(+{suppressed} more since the last alert of this kind)"
        if held:
            description += "\n(held back by the alert interval since the last alert of this kind)"
        shown = [(k, v) for k, v in head.data.items() if v is not None and v != ""]  # (a test send has no campaign)
        fields = [{"name": k, "value": mask_text(str(v))[:1000], "inline": True} for k, v in shown[:8]]
        description = mask_text(description)
        return {
            "username": "trackly-exec",
            "embeds": [
                {
                    "title": title[:256],
                    "description": description[:4000],
                    "color": COLOURS.get(severity, 0xF9A825),
                    "fields": fields,
                    "timestamp": head.created_at.isoformat(),
                    "footer": {"text": self.trackly.instance},
                }
            ],
        }

    async def _post(self, payload: JsonObject) -> bool:
        """Post one alert (or log it without a URL); False when Discord could not be reached or kept failing."""
        self.sent_messages = [*self.sent_messages, payload][-100:]
        url = self.cfg.discord_webhook_url
        embed = payload["embeds"][0]
        if url is None:
            log.warning("alert", title=embed["title"], description=embed["description"])
            return True
        wait = self._blocked_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, 30))
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for attempt in range(1, 4):
            try:
                async with self._session.post(url.get_secret_value(), json=payload, allow_redirects=False) as resp:
                    if resp.status == 429:
                        body = await resp.json(content_type=None)
                        hint = float(body.get("retry_after", 1.0)) if isinstance(body, dict) else 1.0
                        retry = backoff(attempt, initial=1.0, cap=30.0, retry_after=hint)
                        self._blocked_until = time.monotonic() + retry
                        await asyncio.sleep(min(retry, 30))
                        continue
                    if resp.status >= 500:
                        await asyncio.sleep(backoff(attempt, initial=1.0, cap=30.0))
                        continue
                    if resp.status >= 400:  # refused as it is (a malformed alert): posting it again changes nothing
                        log.warning("discord_rejected_alert", status=resp.status)
                    return True
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # (ValueError: a URL aiohttp refuses)
                log.warning("discord_unreachable", error=scrub_url(f"{type(exc).__name__}: {exc}", url))
                await asyncio.sleep(backoff(attempt, initial=1.0, cap=30.0))
        log.warning("alert_not_delivered", title=embed["title"])
        return False

    # -- error-rate watch ---------------------------------------------------------------------

    async def check_error_rates(self, window_seconds: int = 60) -> list[Event]:
        """Publish ``high_error_rate`` for lists whose failure share over the window passes the threshold."""
        store = self.trackly.store
        since = self.trackly.now() - dt.timedelta(seconds=window_seconds)
        # find/count with a date range on indexed fields: nx-27017 ignores a date $match inside aggregate (it counted
        # three-day-old failures as "in the last minute"); distinct and the count command are evaluated alike on both
        # (not count_documents: an aggregation nx-27017 runs in Python over every document, see store.client.count).
        failed: Counter[int] = Counter()
        sent: Counter[int] = Counter()
        # an operator's cancel is no failure of the list (its dead letters are alerted as such, not as an error rate)
        chosen = {"$nin": [str(r) for r in OPERATOR_REASONS]}
        for value in await store.db[c.FAILED].distinct("sending_list_id", {"failed_at": {"$gte": since}}):
            with contextlib.suppress(TypeError, ValueError):
                list_id = int(value)
                failed[list_id] = await count(
                    store.db, c.FAILED, {"sending_list_id": list_id, "failed_at": {"$gte": since}, "reason": chosen}
                )
                sent[list_id] = await count(
                    store.db, c.SENT, {"sending_list_id": list_id, "timestamp": {"$gte": since}}
                )
        events = []
        for list_id, f in failed.items():
            total = f + sent[list_id]
            if not f:
                continue
            if f >= MIN_FAILURES_FOR_RATE_ALERT and f / total >= self.cfg.error_rate_threshold:
                events.append(
                    Event(
                        kind=EventKind.HIGH_ERROR_RATE,
                        severity="critical",
                        key=f"high_error_rate:{list_id}",
                        message=f"sending list {list_id}: {f} of {total} messages failed in the last minute",
                        data={"sending_list_id": list_id, "failed": f, "total": total},
                    )
                )
        if events:
            await self.trackly.bus.publish(*events)
        return events
