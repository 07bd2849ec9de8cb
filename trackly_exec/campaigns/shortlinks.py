"""Tracked links: every http(s) URL of a message body becomes ``{short_base}/{code}``.

The code is random per message and link (``secrets.token_urlsafe(9)``: 12 characters, 72 bits), so codes are
unguessable and a click names exactly one message. The MessageShortLink documents are built here and
bulk-inserted by :mod:`trackly_exec.campaigns.queue` in the same batch as the queue documents.
"""

from __future__ import annotations

import base64
import os
import re
import threading

from trackly_exec.store.documents import QueuedDoc, ShortLinkDoc

URL_RE = re.compile(r"https?://[^\s<>\"'{}|\\^`]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]'\""


_RANDOM = bytearray()  # os.urandom bytes not used yet: one system call per 512 codes, not one per code
_RANDOM_LOCK = threading.Lock()  # no two callers ever take the same bytes, whatever thread they run in


def new_code() -> str:
    """A random, URL-safe, 12-character short code (what ``secrets.token_urlsafe(9)`` gives)."""
    with _RANDOM_LOCK:
        if len(_RANDOM) < 9:
            _RANDOM.extend(os.urandom(9 * 512))
        raw = bytes(_RANDOM[-9:])
        del _RANDOM[-9:]
    return base64.urlsafe_b64encode(raw).decode()


def _forget_random() -> None:  # a forked child must never reuse its parent's unused bytes
    global _RANDOM_LOCK
    _RANDOM_LOCK = threading.Lock()
    _RANDOM.clear()


os.register_at_fork(after_in_child=_forget_random)


def _url_part(raw: str) -> str:
    """``raw`` (a match of :data:`URL_RE`) without the punctuation that ends the sentence around it: a trailing
    ``.``, ``,``, ``!``, quote..., and a closing bracket that closes nothing of the URL (``(see https://x/a)``); one
    that closes a bracket of the URL stays (``https://en.wikipedia.org/wiki/Mercury_(planet)``)."""
    url = raw
    while url and url[-1] in _TRAILING:
        last = url[-1]
        if (last == ")" and url.count("(") >= url.count(")")) or (last == "]" and url.count("[") >= url.count("]")):
            break
        url = url[:-1]
    return url


def find_urls(body: str) -> list[str]:
    """The http(s) URLs of ``body``, without trailing punctuation (see :func:`_url_part`)."""
    return [_url_part(m.group(0)) for m in URL_RE.finditer(body)]


def track(body: str, base: str) -> tuple[str, list[tuple[str, str]]]:
    """``body`` with each URL replaced by ``{base}/{code}``, and the ``(code, destination)`` pairs.

    URLs already under ``base`` are left alone.
    """
    links: list[tuple[str, str]] = []

    def repl(m: re.Match[str]) -> str:
        raw = m.group(0)
        url = _url_part(raw)
        tail = raw[len(url) :]
        if not url or url.startswith(base + "/"):
            return raw
        code = new_code()
        links.append((code, url))
        return f"{base}/{code}{tail}"

    if "://" not in body:  # no URL (any case: "Https://", as phones capitalise the start of a sentence)
        return body, links
    return URL_RE.sub(repl, body), links


def link_doc(code: str, destination: str, message: QueuedDoc) -> ShortLinkDoc:
    """A MessageShortLink document for a queued message document."""
    return {
        "_id": code,
        "message_id": message["_id"],
        "destination": destination,
        "account_id": message["account_id"],
        "campaign_id": message.get("campaign_id"),
        "execution_id": message.get("execution_id"),
        "creative_id": message.get("creative_id"),
        "variant_key": message.get("variant_key"),
        "contact_id": message.get("contact_id"),
        "clicks": 0,
        "human_clicks": 0,
        "created_at": message["created_at"],  # composed together
    }
