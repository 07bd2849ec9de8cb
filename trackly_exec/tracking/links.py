"""Tracked short links: ``GET /l/{code}`` answers 302 to the stored destination, and records the click.

The destination comes only from the MessageShortLink found by ``_id`` = code: nothing in the request (query
string, ``?url=``, extra path, ``//host``, percent-encoding, ``user@host`` forms) can influence the
``Location``. A code must match :data:`CODE_RE` before any lookup; unknown or malformed codes, and stored
destinations that are not absolute http(s) URLs, answer 404. Recording failures never block the redirect.
"""

from __future__ import annotations

import asyncio
import functools
import re
from urllib.parse import urlsplit

from aiohttp import web

from trackly_exec.app import TaskSet, Trackly
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import find_by_ids
from trackly_exec.store.documents import ShortLinkDoc
from trackly_exec.tracking.clicks import Visit, record_clicks

log = get_logger(__name__)

#: Short codes are random url-safe tokens (``secrets.token_urlsafe``): letters, digits, ``-`` and ``_``.
CODE_RE = re.compile(r"[A-Za-z0-9_-]{4,64}")
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


def safe_destination(url: object) -> str | None:
    """``url`` if it is an absolute http(s) URL without whitespace or control characters, else None."""
    if not isinstance(url, str):
        return None
    return _safe_url(url) if len(url) <= URL_CACHED_MAX else _check_url(url)


#: Destinations up to this long have their verdict cached (a campaign's links share a few destinations; the
#: check costs ~5 us and each click needs it twice); the cache holds at most 4096 of them.
URL_CACHED_MAX = 2048


def _check_url(url: str) -> str | None:
    if not url or any(ch <= " " or ch == "\x7f" for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


_safe_url = functools.lru_cache(maxsize=4096)(_check_url)


def _readable(value: str | None) -> str | None:
    """A header's text with what is not UTF-8 (kept by aiohttp as lone surrogates, which the store cannot encode:
    the whole group of clicks was lost) replaced by U+FFFD."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no byte stands for
        return value.encode("utf-8", "replace").decode("utf-8")


def _client_ip(request: web.Request, trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return _readable(first)
    return request.remote


#: Clicks followed in one group at most (one read of the links, one record of the clicks).
GROUP_MAX = 256


#: How long a group may wait to fill up: this share of the previous group's time in the store, at most
#: :data:`FILL_MAX_SECONDS`.
FILL_SHARE = 0.5
FILL_MAX_SECONDS = 0.010


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LinkHandler:
    """``GET /l/{code}``, group-committed: the requests that arrive while a group is being read and recorded
    form the next group, so N clicks in flight cost the store four round trips (links, message times, clicks,
    counters), not 4 x N. Each request still answers only once its own click is recorded (or failed to be).

    Before it goes to the store, a group may wait briefly for as many clicks as the previous group had in hand
    (its own and those that came in meanwhile): at most half the previous group's time in the store
    (:data:`FILL_SHARE`, never more than :data:`FILL_MAX_SECONDS`), and only right after that group (not after a
    quiet spell). Without it, clicks in flight under a steady load split into two alternating groups of half
    the size, each paying the four round trips. At saturation the clicks waiting already make the group: no
    wait; below it, the wait adds 10 ms at most to a click's answer."""

    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly
        self._waiting: list[tuple[str, Visit, asyncio.Future[ShortLinkDoc | None]]] = []
        self._tasks = TaskSet()
        self._draining = False
        self._target = 0  # the clicks the previous group had in hand
        self._store_seconds = 0.0  # its time in the store
        self._ended = 0.0  # when it ended (loop time)
        self._filled: asyncio.Future[None] | None = None  # set once _target clicks wait
        self.groups = 0  # groups sent to the store (tests, benchmarks)
        self._db = trackly.db

    async def follow(self, request: web.Request) -> web.StreamResponse:
        code = request.match_info.get("code", "")
        if not CODE_RE.fullmatch(code):
            return web.Response(status=404, text="not found", headers=_NO_STORE)
        visit = Visit(
            user_agent=_readable(request.headers.get("User-Agent")),
            ip=_client_ip(request, self.trackly.settings.tracking.trust_forwarded_for),
            method=request.method,
            at=self.trackly.now(),
        )
        link = await self._follow(code, visit)
        destination = safe_destination(link.get("destination")) if link else None
        if link is None or destination is None:
            if link is not None:
                log.error("short_link_bad_destination", code=code)
            return web.Response(status=404, text="not found", headers=_NO_STORE)
        return web.Response(status=302, headers={"Location": destination, **_NO_STORE})

    async def _follow(self, code: str, visit: Visit) -> ShortLinkDoc | None:
        """The link of ``code`` (None: unknown), its click recorded when its destination is safe."""
        future: asyncio.Future[ShortLinkDoc | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((code, visit, future))
        if self._filled is not None and len(self._waiting) >= self._target:
            _release(self._filled)
        if not self._draining:
            self._draining = True
            self._tasks.spawn(self._drain(), name="short-link-clicks")
        return await future

    async def _drain(self) -> None:
        group: list[tuple[str, Visit, asyncio.Future[ShortLinkDoc | None]]] = []
        try:
            loop = asyncio.get_running_loop()
            while self._waiting:
                await self._fill(loop)
                group, self._waiting = self._waiting[:GROUP_MAX], self._waiting[GROUP_MAX:]
                started = loop.time()
                self.groups += 1
                try:
                    links = await self._group([(code, visit) for code, visit, _ in group])
                except Exception as exc:  # the store is unreachable: every request of the group fails (500)
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                finally:
                    self._ended = loop.time()
                    self._store_seconds = self._ended - started
                    self._target = min(len(group) + len(self._waiting), GROUP_MAX)
                for (_, _, future), link in zip(group, links, strict=True):
                    if not future.done():  # a request whose client went away is cancelled
                        future.set_result(link)
        except BaseException:  # cancelled (shutdown): no request waits for ever
            for _, _, future in group + self._waiting:
                future.cancel()
            self._waiting = []
            raise
        finally:
            self._draining = False  # no await since the last look at _waiting: nothing is left behind

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (briefly: see the class) until as many clicks wait as the previous group had in hand."""
        wait = min(FILL_SHARE * self._store_seconds, FILL_MAX_SECONDS)
        if len(self._waiting) >= self._target or wait <= 0 or loop.time() - self._ended > self._store_seconds:
            return
        filled = self._filled = loop.create_future()
        timer = loop.call_later(wait, _release, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    async def _group(self, group: list[tuple[str, Visit]]) -> list[ShortLinkDoc | None]:
        codes = list({code for code, _ in group})
        found: dict[str, ShortLinkDoc] = {d["_id"]: d for d in await find_by_ids(self._db, c.SHORT_LINKS, codes)}
        links = [found.get(code) for code, _ in group]
        clicks = [
            (link, visit)
            for link, (_, visit) in zip(links, group, strict=True)
            if link is not None and safe_destination(link.get("destination")) is not None
        ]
        try:
            await record_clicks(self.trackly, clicks)
        except Exception as exc:  # the visitors still get where they were going
            log.warning("click_record_failed", codes=[link["_id"] for link, _ in clicks][:5], error=str(exc))
        return links


def setup(app: web.Application, trackly: Trackly) -> None:
    """Add ``GET /l/{code}`` (HEAD too: answered the same, counted as a bot click)."""
    app.router.add_get("/l/{code}", LinkHandler(trackly).follow)
