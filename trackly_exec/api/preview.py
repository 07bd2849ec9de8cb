"""Preview: a creative rendered for a few contacts, and what would go wrong, before anything is sent.

For sample contacts of an audience (or of the list, or given contact ids) and every variant: the exact body
as it would be queued (placeholders, tracked links, the list's opt-out footer), its encoding (GSM-7 / UCS-2),
length, segments and cost (the list's ``price_per_segment``), and the tracked links. The same functions as the
evaluation compose it (:func:`compose.render`, :func:`shortlinks.track`, :func:`segments.measure`); short codes
in a preview are examples (each queued message gets its own).

Checks over the whole audience (up to ``scan_limit`` contacts; ``scan_complete`` says whether that was all):

* a placeholder naming an attribute no contact of the list has (a typo: the attribute keys of up to
  :data:`KEY_SAMPLE` contacts of the list are sampled), with the closest known name;
* a placeholder without a default: how many contacts have no value for it, so would be skipped
  (``missing_placeholder``), per variant;
* blocked words (the list's plus ``executor.blocked_words``) in a variant's text, or in a sample contact's
  rendered body (a personalised value): such a message would be dead-lettered ``BLOCKED_CONTENT``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from trackly_exec.campaigns import shortlinks
from trackly_exec.campaigns.audience import UnionCounts, union
from trackly_exec.campaigns.compose import CONTACT_PLACEHOLDERS, Placeholder, _text, parse_body, render
from trackly_exec.campaigns.evaluation import contact_skip, window_opening
from trackly_exec.errors import TracklyError
from trackly_exec.executor.checks import blocked_words_pattern
from trackly_exec.store import constants as c
from trackly_exec.store import phones
from trackly_exec.store.client import opted_out
from trackly_exec.store.documents import (
    AudienceDoc,
    CampaignDoc,
    ContactDoc,
    CreativeDoc,
    JsonObject,
    SendingListDoc,
)
from trackly_exec.store.models import QuietHours
from trackly_exec.store.names import name_of
from trackly_exec.store.quiethours import Window, contact_zones
from trackly_exec.store.segments import measure

KEY_SAMPLE = 1000
DEFAULT_SCAN_LIMIT = 100_000
EXAMPLE_CODE = "AbC123x"


class PreviewError(TracklyError):
    """Contacts that cannot be previewed (unknown, or on another list)."""


def _gen(it: AsyncIterator[list[ContactDoc]]) -> AsyncGenerator[list[ContactDoc], None]:
    """``audience.union`` is an async generator (closed early here so its cursors close)."""
    return cast("AsyncGenerator[list[ContactDoc], None]", it)


def _value(contact: ContactDoc, p: Placeholder) -> str | None:
    raw = contact.get(p.name) if p.is_field else (contact.get("attributes") or {}).get(p.name)
    return _text(raw)


def _blocked(pattern: Any, list_words: set[str], text: str) -> list[dict[str, str]]:
    if pattern is None:
        return []
    out: list[dict[str, str]] = []
    for m in pattern.finditer(text):
        word = m.group(0)
        source = "list" if " ".join(word.lower().split()) in list_words else "global"
        if not any(x["word"].lower() == word.lower() for x in out):
            out.append({"word": word, "source": source})
    return out


async def _sample_keys(db: Any, list_id: int) -> set[str]:
    keys: set[str] = set()
    async for d in db[c.CONTACTS].find({"sending_list_id": list_id}, {"attributes": 1}).limit(KEY_SAMPLE):
        keys.update((d.get("attributes") or {}).keys())
    return keys


async def _would_skip(
    trackly: Any, sending_list: SendingListDoc, campaign: CampaignDoc | None, samples: list[ContactDoc]
) -> dict[int, tuple[str | None, dt.datetime | None]]:
    """Per sample contact, what the evaluation would do with it now, by its own rules (:func:`contact_skip`,
    :func:`window_opening`): skip it (``unsubscribed``, ``in_workflow``, ``frequency_cap``, ``quiet_hours``) or hold
    it until its quiet-hours window opens (the campaign's ``quiet_hours_policy = "hold"``), else nothing;
    ``(reason, held_until)`` by contact id."""
    db = trackly.db
    list_id = int(sending_list["_id"])
    now = trackly.now()
    cooldown = float(sending_list.get("cooldown_minutes") or 0)
    cutoff = now - dt.timedelta(minutes=cooldown) if cooldown > 0 else None
    quiet = QuietHours.model_validate(sending_list.get("quiet_hours") or {})
    window = Window.from_quiet_hours(quiet)
    hold = (campaign or {}).get("quiet_hours_policy", "exclude") == "hold"
    exclude_wf = bool((campaign or {}).get("exclude_in_workflow"))
    numbers = {int(d["_id"]): phones.contact_number(d) for d in samples}
    valid = sorted({to for to, _ in numbers.values() if to})
    stops = {to for _, to in await opted_out(db, [(list_id, to) for to in valid])}
    capped: set[str] = set()
    if cutoff is not None:  # the samples' numbers sent to on the list within the cooldown (indexed equalities)
        for number in valid:
            query = {"sending_list_id": {"$eq": list_id}, "to_number": {"$eq": number}, "timestamp": {"$gte": cutoff}}
            if await db[c.SENT].find_one(query, {"_id": 1}) is not None:
                capped.add(number)
    memo: dict[Any, dt.datetime | None] = {}
    out: dict[int, tuple[str | None, dt.datetime | None]] = {}
    for d in samples:
        to, number_zones = numbers[int(d["_id"])]
        if to is None:
            continue  # invalid_phone: said by the caller
        reason = contact_skip(d, to, stopped=to in stops, exclude_wf=exclude_wf, cutoff=cutoff, capped=capped)
        held: dt.datetime | None = None
        if reason is None:
            zones = contact_zones(to, d.get("timezone"), quiet.default_timezone, number_zones)
            held = window_opening(now, zones, window, memo)
            if held is not None and not hold:
                reason, held = "quiet_hours", None
        out[int(d["_id"])] = (reason, held)
    return out


async def preview(
    trackly: Any,
    creative: CreativeDoc,
    sending_list: SendingListDoc,
    *,
    audience: AudienceDoc | None = None,
    contact_ids: list[int] | None = None,
    sample: int = 3,
    track_links: bool = False,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
    campaign: CampaignDoc | None = None,
) -> JsonObject:
    db = trackly.db
    list_id = int(sending_list["_id"])
    price = float(sending_list.get("price_per_segment") or 0.0)
    footer = (sending_list.get("opt_out_footer") or "").strip()
    base = trackly.settings.http.short_link_base
    list_words = {" ".join(w.lower().split()) for w in sending_list.get("blocked_words") or [] if w.strip()}
    pattern = blocked_words_pattern(
        [*(sending_list.get("blocked_words") or []), *trackly.settings.executor.blocked_words]
    )
    templates = {v["key"]: parse_body(v["body"]) for v in creative.get("variants") or []}

    # Sample contacts: the given ids, else the first of the audience (or of the list).
    source = audience or {"_id": 0, "filter": {}, "contact_ids": None}
    if contact_ids:
        wanted = list(dict.fromkeys(contact_ids))
        found = {int(d["_id"]): d for d in await db[c.CONTACTS].find({"_id": {"$in": wanted}}).to_list(None)}
        missing = [i for i in wanted if i not in found]
        foreign = [i for i in wanted if i in found and found[i].get("sending_list_id") != list_id]
        if missing or foreign:
            raise PreviewError(
                "; ".join(
                    ([f"contacts {', '.join(map(str, missing))} do not exist"] if missing else [])
                    + (
                        [f"contacts {', '.join(map(str, foreign))} are not on sending list {list_id}"]
                        if foreign
                        else []
                    )
                )
            )
        samples = [found[i] for i in wanted]
    else:
        samples = []
        async with contextlib.aclosing(_gen(union(db, list_id, [source], max(sample, 1), UnionCounts()))) as first:
            async for batch in first:
                samples = batch[:sample]
                break

    verdicts = await _would_skip(trackly, sending_list, campaign, samples)

    # Scan the audience: missing values per placeholder, skips per variant.
    known = set(CONTACT_PLACEHOLDERS) | await _sample_keys(db, list_id)
    missing_by_name: dict[str, int] = {}
    skips = dict.fromkeys(templates, 0)
    names = {p.name: p for parts in templates.values() for p in parts if isinstance(p, Placeholder)}
    scanned, complete = 0, True
    async with contextlib.aclosing(_gen(union(db, list_id, [source], 1000, UnionCounts()))) as everyone:
        async for batch in everyone:
            for contact in batch:
                if scanned >= scan_limit:
                    complete = False
                    break
                scanned += 1
                absent = {n for n, p in names.items() if _value(contact, p) is None}
                for n in absent:
                    missing_by_name[n] = missing_by_name.get(n, 0) + 1
                if absent:
                    for key, parts in templates.items():
                        if any(isinstance(p, Placeholder) and p.default is None and p.name in absent for p in parts):
                            skips[key] += 1
            if not complete:
                break

    warnings: list[str] = []
    variants_out: list[JsonObject] = []
    for v in creative.get("variants") or []:
        key, parts = v["key"], templates[v["key"]]
        placeholders = []
        seen: set[tuple[str, str | None]] = set()
        for p in parts:
            if not isinstance(p, Placeholder) or (p.name, p.default) in seen:
                continue
            seen.add((p.name, p.default))
            is_known = p.is_field or p.name in known
            suggestion = None
            if not is_known:
                close = difflib.get_close_matches(p.name, sorted(known), n=1, cutoff=0.6)
                suggestion = close[0] if close else None
                warnings.append(
                    f"variant {key!r}: {{{p.name}}} is not a field of any sampled contact of the list"
                    + (f" (did you mean {{{suggestion}}}?)" if suggestion else "")
                )
            n_missing = missing_by_name.get(p.name, 0)
            placeholders.append(
                {
                    "name": p.name,
                    "default": p.default,
                    "known": is_known,
                    "suggestion": suggestion,
                    "missing": n_missing,
                    "would_skip": n_missing if p.default is None else 0,
                }
            )
        template_text = "".join(x if isinstance(x, str) else (x.default or "") for x in parts)
        blocked = _blocked(pattern, list_words, template_text)
        warnings.extend(
            f"variant {key!r} contains the blocked word {b['word']!r} ({b['source']} list): every "
            "message of it would be dead-lettered BLOCKED_CONTENT"
            for b in blocked
        )
        if skips[key]:
            warnings.append(
                f"variant {key!r}: {skips[key]:,} of {scanned:,} contacts have no value for a placeholder "
                "without a default and would be skipped"
            )
        rendered = []
        for contact in samples:
            phone = str(contact.get("phone") or "")
            number = phones.contact_number(contact)[0]  # the number the evaluation texts (E.164), as it reads it
            row: JsonObject = {"contact_id": int(contact["_id"]), "phone": number or phone}
            if number is None:
                row.update(skipped="invalid_phone")
                rendered.append(row)
                continue
            to = number
            body = render(parts, contact, to)
            if body is None:
                row.update(
                    skipped="missing_placeholder",
                    missing=sorted(
                        p.name
                        for p in parts
                        if isinstance(p, Placeholder) and p.default is None and _value(contact, p) is None
                    ),
                )
                rendered.append(row)
                continue
            links: list[tuple[str, str]] = []
            if track_links:
                body, links = shortlinks.track(body, base)
            if footer:
                body += f"\n{footer}"
            m = measure(body)
            row.update(
                body=body,
                length=m.length,
                encoding=m.encoding,
                segments=m.segments,
                cost=round(m.segments * price, 6),
                links=[{"destination": dest, "short_url": f"{base}/{code}"} for code, dest in links],
                blocked_words=_blocked(pattern, list_words, body),
                skipped=None,
                missing=[],
            )
            reason, held = verdicts.get(int(contact["_id"]), (None, None))
            if reason is not None:  # rendered all the same, to read; never queued
                row.update(skipped=reason)
            if held is not None:
                row.update(held_until=held)
            rendered.append(row)
        variants_out.append(
            {
                "key": key,
                "weight": v.get("weight", 1.0),
                "template": v["body"],
                "placeholders": placeholders,
                "blocked_words": blocked,
                "would_skip": skips[key],
                "samples": rendered,
            }
        )
    warnings.extend(
        f"variant {v['key']!r} for contact {row['contact_id']}: the personalised body "
        f"contains the blocked word {b['word']!r}; that message would be dead-lettered"
        for v in variants_out
        for row in v["samples"]
        for b in row.get("blocked_words") or []
        if not any(x["word"].lower() == b["word"].lower() for x in v["blocked_words"])
    )
    return {
        "creative_id": int(creative["_id"]),
        "name": name_of(creative, "creative"),
        "sending_list_id": list_id,
        "audience_id": int(audience["_id"]) if audience else None,
        "price_per_segment": price,
        "track_links": track_links,
        "known_fields": sorted(known),
        "scanned": scanned,
        "scan_complete": complete,
        "variants": variants_out,
        "warnings": warnings,
    }
