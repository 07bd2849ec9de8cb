"""Message composition: variant, placeholders, tracked links, opt-out footer, length and segments.

Placeholders in a variant body:

* ``{first_name}``, ``{last_name}``, ``{phone}``: the contact's fields;
* ``{city}`` or ``{attributes.city}``: the contact's ``attributes["city"]``;
* ``{first_name|there}``: with a default used when the value is missing or empty;
* ``{{`` and ``}}``: literal braces.

A placeholder with no value and no default skips the contact (reason ``missing_placeholder``): a message
never goes out with a brace left from a placeholder. Any other brace in a body is an error, reported when the
creative is created (:func:`check_body`). Values are inserted as they are and never re-read as placeholders,
except inside a URL (a placeholder in a word that starts with ``http://`` or ``https://``), where a value is
percent-encoded: ``https://shop.example.com/{city}?who={first_name}`` with ``New York`` and ``Mary Ann`` gives
``https://shop.example.com/New%20York?who=Mary%20Ann``, one URL (tracked whole), not a URL cut at the space.

Order of work on one message: placeholders, then tracked links (URLs become ``{short_base}/{code}``), then the
list's ``opt_out_footer`` on a new line; length, segments and encoding are computed on that final text.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from trackly_exec.campaigns import shortlinks
from trackly_exec.campaigns.variants import Chooser
from trackly_exec.errors import TracklyError
from trackly_exec.store.documents import (
    CampaignDoc,
    ContactDoc,
    CreativeDoc,
    ExecutionDoc,
    MessageBase,
    QueuedDoc,
    SendingListDoc,
    ShortLinkDoc,
)
from trackly_exec.store.models import entering_queue, new_message_id
from trackly_exec.store.segments import measure

_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME_RE = re.compile(r"^(?:attributes\.)?[A-Za-z_][A-Za-z0-9_-]{0,63}$")
CONTACT_PLACEHOLDERS = ("first_name", "last_name", "phone")


class TemplateError(TracklyError):
    """A variant body that is not a valid template."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str  # "first_name" or an attribute name
    is_field: bool  # a contact field, else an attribute
    default: str | None
    in_url: bool = False  # inside a URL of the body: its value is percent-encoded (``New York`` -> ``New%20York``)


#: The start of a URL at the head of a word (what the tracked-link pattern finds): ``http://`` or ``https://``.
_URL_HEAD = re.compile(r"https?://", re.IGNORECASE)


def parse_body(body: str) -> list[str | Placeholder]:
    """The body as literal strings and placeholders; :class:`TemplateError` for a stray brace."""
    parts: list[str | Placeholder] = []
    pos = 0
    literal: list[str] = []
    word = ""  # the text since the last whitespace, placeholders as "{}": is a placeholder inside a URL?
    for m in _TOKEN_RE.finditer(body):
        word = _last_word(word + body[pos : m.start()])
        literal.append(body[pos : m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            literal.append(tok[0])
            continue
        inner = m.group(1)
        if inner is None:
            raise TemplateError(f"stray {tok!r} at position {m.start()}; write {tok * 2!r} for a literal brace")
        name, bar, default = inner.partition("|")
        name = name.strip()
        if not _NAME_RE.match(name):
            raise TemplateError(
                f"bad placeholder {{{inner}}} at position {m.start()}: "
                "use {first_name}, {last_name}, {phone}, {attribute} or {attribute|default}"
            )
        if name.startswith("attributes."):
            name, is_field = name[len("attributes.") :], False
        else:
            is_field = name in CONTACT_PLACEHOLDERS
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(Placeholder(name, is_field, default if bar else None, _URL_HEAD.match(word) is not None))
        word += "{}"
    literal.append(body[pos:])
    if any(literal):
        parts.append("".join(literal))
    return parts


def _last_word(text: str) -> str:
    """``text`` after its last whitespace."""
    for i in range(len(text) - 1, -1, -1):
        if text[i].isspace():
            return text[i + 1 :]
    return text


def check_body(body: str) -> list[str]:
    """Problems with a variant body (empty when it is a valid template); for creative validation."""
    try:
        parse_body(body)
    except TemplateError as exc:
        return [str(exc)]
    return []


#: Why a body with ``{phone}`` inside a link cannot go with tracked links (:func:`phone_in_link`).
PHONE_IN_TRACKED_LINK = (
    "{phone} inside a link: a tracked link's destination is served by a public redirect (GET /l/<code>, to anyone "
    "the message is forwarded to), so it may not carry the recipient's number; drop {phone} from the link, or "
    "send without link tracking"
)


def phone_in_link(body: str) -> bool:
    """Whether the body puts the contact's phone number inside a URL (refused with tracked links: no phone number
    on an open page)."""
    try:
        parts = parse_body(body)
    except TemplateError:
        return False
    return any(isinstance(p, Placeholder) and p.is_field and p.name == "phone" and p.in_url for p in parts)


def tracked_phone_problems(variants: Any, only: str | None = None) -> list[str]:
    """``variant 'KEY': ...`` for each of a creative's ``variants`` (or the one keyed ``only``) that puts ``{phone}``
    inside a link (:func:`phone_in_link`): what refuses it with tracked links."""
    return [
        f"variant {v.get('key')!r}: {PHONE_IN_TRACKED_LINK}"
        for v in variants or []
        if (only is None or v.get("key") == only) and phone_in_link(v.get("body", ""))
    ]


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def render(parts: list[str | Placeholder], contact: ContactDoc, phone: str | None = None) -> str | None:
    """The personalised text, or None when a placeholder has neither a value nor a default.

    ``phone`` (the normalised number being texted) overrides the contact's stored ``phone``."""
    out: list[str] = []
    attrs = contact.get("attributes") or {}
    for p in parts:
        if isinstance(p, str):
            out.append(p)
            continue
        if p.is_field:
            raw = phone if (p.name == "phone" and phone is not None) else contact.get(p.name)
        else:
            raw = attrs.get(p.name)
        value = _text(raw)
        if value is None:
            if p.default is None:
                return None
            value = p.default
        out.append(quote(value, safe="") if p.in_url else value)
    return "".join(out)


class Composer:
    """Builds the queue documents (and short-link documents) of one execution."""

    def __init__(
        self,
        *,
        execution: ExecutionDoc,
        campaign: CampaignDoc,
        sending_list: SendingListDoc,
        creative: CreativeDoc,
        chooser: Chooser,
        short_base: str,
    ) -> None:
        self.execution_id = int(execution["_id"])
        key = execution.get("message_key")
        self.key: bytes | None = str(key).encode() if key else None
        self.chooser = chooser
        self.track = bool(campaign.get("track_links"))
        self.short_base = short_base
        footer = (sending_list.get("opt_out_footer") or "").strip()
        self.footer = f"\n{footer}" if footer else ""
        self.templates = {v["key"]: parse_body(v["body"]) for v in creative["variants"]}
        self.base: MessageBase = {
            "account_id": int(campaign["account_id"]),
            "sending_list_id": int(sending_list["_id"]),
            "campaign_id": int(campaign["_id"]),
            "execution_id": self.execution_id,
            "creative_id": int(creative["_id"]),
            "from_number": sending_list["from_number"],
            "send_type": "campaign",
        }
        self.variant_counts: dict[str, int] = {}

    def message_id(self, contact_id: int) -> str:
        """The id of the execution's message to ``contact_id``: the same in every run of the evaluation
        (an HMAC under the execution's ``message_key``), random for an execution without a key."""
        if self.key is None:
            return new_message_id()
        return hmac.digest(self.key, str(contact_id).encode(), "sha256")[:8].hex()  # = hexdigest()[:16]

    def compose(
        self,
        contact: ContactDoc,
        to_number: str,
        sendtime: dt.datetime,
        not_before: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[QueuedDoc, list[ShortLinkDoc]] | None:
        """The queue document and its link documents, or None when a placeholder cannot be filled."""
        key = self.chooser.choose(self.execution_id, int(contact["_id"]))
        body = render(self.templates[key], contact, to_number)
        if body is None:
            return None
        links: list[tuple[str, str]] = []
        if self.track:
            body, links = shortlinks.track(body, self.short_base)
        body += self.footer
        m = measure(body)
        now = now or sendtime  # (the evaluation passes its clock's time)
        mid = self.message_id(int(contact["_id"]))
        doc: QueuedDoc = {
            "_id": mid,
            **self.base,
            "contact_id": int(contact["_id"]),
            "variant_key": key,
            "to_number": to_number,
            "body": body,
            "length": m.length,
            "segments": m.segments,
            "encoding": m.encoding,
            "sendtime": sendtime,
            "created_at": now,
            **entering_queue(mid, sendtime, not_before=not_before),  # type: ignore[typeddict-item]  # see ClaimFields
            "billing_blocked_since": None,
            "attempts": 0,
        }
        self.variant_counts[key] = self.variant_counts.get(key, 0) + 1
        return doc, [shortlinks.link_doc(code, dest, doc) for code, dest in links]
