"""Tracked short links: ``GET /l/{code}`` answers 302 to the stored destination, and records the click.

The destination comes only from the MessageShortLink found by ``_id`` = code: nothing in the request (query
string, ``?url=``, extra path, ``//host``, percent-encoding, ``user@host`` forms) can influence the
``Location``. A code must match :data:`CODE_RE` before any lookup; unknown or malformed codes, and stored
destinations that are not absolute http(s) URLs, answer 404. Recording failures never block the redirect.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from aiohttp import web

from trackly_exec.app import Trackly
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.tracking.clicks import record_click

log = get_logger(__name__)

#: Short codes are random url-safe tokens (``secrets.token_urlsafe``): letters, digits, ``-`` and ``_``.
CODE_RE = re.compile(r"[A-Za-z0-9_-]{4,64}")
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


def safe_destination(url: object) -> str | None:
    """``url`` if it is an absolute http(s) URL without whitespace or control characters, else None."""
    if not isinstance(url, str) or not url or any(ch <= " " or ch == "\x7f" for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _client_ip(request: web.Request, trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    return request.remote


class LinkHandler:
    def __init__(self, trackly: Trackly) -> None:
        self.trackly = trackly

    async def follow(self, request: web.Request) -> web.StreamResponse:
        code = request.match_info.get("code", "")
        if not CODE_RE.fullmatch(code):
            return web.Response(status=404, text="not found", headers=_NO_STORE)
        link = await self.trackly.store[c.SHORT_LINKS].find_one({"_id": code})
        destination = safe_destination(link.get("destination")) if link else None
        if link is None or destination is None:
            if link is not None:
                log.error("short_link_bad_destination", code=code)
            return web.Response(status=404, text="not found", headers=_NO_STORE)
        try:
            await record_click(
                self.trackly,
                link,
                user_agent=request.headers.get("User-Agent"),
                method=request.method,
                ip=_client_ip(request, self.trackly.settings.tracking.trust_forwarded_for),
            )
        except Exception as exc:  # the visitor still gets where they were going
            log.warning("click_record_failed", code=code, error=str(exc))
        return web.Response(status=302, headers={"Location": destination, **_NO_STORE})


def setup(app: web.Application, trackly: Trackly) -> None:
    """Add ``GET /l/{code}`` (HEAD too: answered the same, counted as a bot click)."""
    app.router.add_get("/l/{code}", LinkHandler(trackly).follow)
