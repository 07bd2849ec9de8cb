"""Send-time checks of a claimed batch, in the product's order: stale -> blocked content -> contact block
list -> quiet hours. Everything is decided per message, but the store is asked once per batch.

- **Stale**: more than ``stale_after_minutes`` past the time it was due. A message that was held back
  (``not_before``: billing backoff, quiet-hours hold, pause) is due at ``max(sendtime, not_before)``, so a hold
  does not turn into a STALE drop when it ends; a provider-storm hold keeps the earlier due time (:func:`due_at`),
  so a provider that stays throttled for ``stale_after_minutes`` ends the message STALE.
- **Blocked content**: the list's ``blocked_words`` plus the global ``executor.blocked_words``, whole words
  (or phrases), any case.
- **Contact block list**: the contact is unsubscribed or blocked *now* (indexed ``_id $in`` queries returning
  only the contacts that matter: blocked, unsubscribed, or with a stored timezone). A contact that no longer
  exists is not blocked.
- A test send's ``overrides`` (``opt_out``, ``quiet_hours``; given explicitly and recorded) lift those two checks
  for that message only.
- **Quiet hours**: the contact's local time (``quiethours.contact_zones``) must be inside the list's window;
  outside it the message is held until ``next_opening`` and never sent.

:func:`recheck` repeats what can change while a claimed message waits for its turn (pacing, billing), right
before the send intent of each chunk: the contact blocked or unsubscribed (a STOP that arrived after the
claim), its campaign paused, the clock past the quiet-hours window's edge (a test send's overrides lift the same
two checks there too). One store round trip per chunk: two indexed reads sent together that return only the
exceptions (contacts ``_id $in`` + ``$or`` of ``subscribed: False``, ``blocked: True`` and a stored timezone,
campaigns ``_id $in`` + ``status: paused``): a zone stored or changed since the claim decides.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from trackly_exec.store import constants as c
from trackly_exec.store import quiethours
from trackly_exec.store.client import opted_out
from trackly_exec.store.documents import ClaimedDoc, ContactDoc
from trackly_exec.store.models import FailureReason

_COUNTRY_CODES = frozenset(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@dataclass
class Verdict:
    """What the checks decided for a batch."""

    send: list[ClaimedDoc] = field(default_factory=list)
    fail: list[tuple[ClaimedDoc, FailureReason, str]] = field(default_factory=list)
    hold: list[tuple[ClaimedDoc, dt.datetime]] = field(default_factory=list)
    #: claimed before their sendtime or hold had come (a ``due_ms`` that disagrees with them, e.g. written by
    #: hand): given back until then, neither sent nor failed
    early: list[tuple[ClaimedDoc, dt.datetime]] = field(default_factory=list)
    timezones: dict[int, str] = field(default_factory=dict)  # contact id -> stored timezone (for the re-check)


def blocked_words_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """A case-insensitive whole-word pattern for ``words`` (None when there are none)."""
    cleaned = sorted({w.strip() for w in words if w and w.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in cleaned)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def due_at(doc: ClaimedDoc) -> dt.datetime:
    """When the message was due: ``max(sendtime, not_before)``, except after a hold that keeps the due time
    (``not_before == throttled_until``: a provider storm, a pause until its resume): a throttled provider or a pause
    delays a message, it does not make it due later, so the time it was due before (``throttled_due``) still
    counts."""
    due: dt.datetime = doc["sendtime"]
    nb = doc.get("not_before")
    if nb is not None and nb == doc.get("throttled_until") and (throttled := doc.get("throttled_due")) is not None:
        return throttled
    if nb is not None and nb > due:
        due = nb
    return due


def is_stale(doc: ClaimedDoc, now: dt.datetime, stale_after: dt.timedelta) -> bool:
    """More than ``stale_after`` past the time the message was due (:func:`due_at`)."""
    return bool(now - due_at(doc) > stale_after)


@lru_cache(maxsize=4096)
def _zone_infos(names: tuple[str, ...]) -> tuple[ZoneInfo, ...]:
    return tuple(z for n in names if (z := quiethours.zone(n)) is not None)


def _prefix_zones(digits: str, longest: int) -> tuple[str, ...]:
    for n in range(min(longest, len(digits)), 0, -1):
        names = TIMEZONE_DATA.get(digits[:n])
        if names is not None:
            return names
    return ()


def _country_code(digits: str) -> str:
    return next((digits[:n] for n in (1, 2, 3) if digits[:n] in _COUNTRY_CODES), "")


#: digits[:TIMEZONE_LONGEST_PREFIX] -> (prefix zones, country code): both depend on those digits only, and numbers
#: of one area share them (the re-check looks each number up a second time). Cleared when full.
_PREFIXES: dict[str, tuple[tuple[str, ...], str]] = {}
_PREFIXES_MAX = 65536


def _prefix_and_country(digits: str) -> tuple[tuple[str, ...], str]:
    key = digits[:TIMEZONE_LONGEST_PREFIX]
    got = _PREFIXES.get(key)
    if got is None:
        got = (_prefix_zones(key, TIMEZONE_LONGEST_PREFIX), _country_code(key))
        if len(_PREFIXES) >= _PREFIXES_MAX:
            _PREFIXES.clear()
        _PREFIXES[key] = got
    return got


def in_window_now(
    phone: str,
    contact_tz: str | None,
    default_tz: str,
    now: dt.datetime,
    window: quiethours.Window,
    memo: dict[Any, Any] | None = None,
) -> tuple[bool, tuple[ZoneInfo, ...] | None]:
    """Is the contact inside the window now? Exactly ``quiethours.in_window(contact_zones(...))``.

    Hot path: every zone the exact lookup could answer — the number's prefix zones (geographic number), its
    country's zones (non-geographic number), the list default (unknown number) — is read from libphonenumber's
    prefix table without parsing; when the window holds in all of them the answer is yes without classifying
    the number (about 150 microseconds per +1 number). ``memo`` (one per batch, same ``now``) keeps that
    answer per (prefix entry, country), and per stored zone. Otherwise the exact zones decide (returned for
    ``next_opening``).
    """
    if not contact_tz and phone.startswith("+"):
        prefix, cc = _prefix_and_country(phone[1:])
        key = (id(prefix), cc, default_tz)
        ok = memo.get(key) if memo is not None else None
        if ok is None:
            names = tuple(sorted({*prefix, *_prefix_zones(cc, len(cc)), default_tz}))
            ok = quiethours.in_window(now, _zone_infos(names), window)
            if memo is not None:
                memo[key] = ok
        if ok:
            return True, None
    if contact_tz and memo is not None and quiethours.zone(contact_tz) is not None:
        # a stored zone decides alone (the number is not read): one answer per zone in the batch
        tz_key = ("tz", contact_tz, default_tz)
        hit: tuple[bool, tuple[ZoneInfo, ...]] | None = memo.get(tz_key)
        if hit is None:
            zones = quiethours.contact_zones(phone, contact_tz, default_tz)
            hit = memo[tz_key] = (quiethours.in_window(now, zones, window), zones)
        return hit
    zones = quiethours.contact_zones(phone, contact_tz, default_tz)
    return quiethours.in_window(now, zones, window), zones


def window_closing(
    phone: str,
    contact_tz: str | None,
    default_tz: str,
    now: dt.datetime,
    window: quiethours.Window,
    memo: dict[Any, Any],
) -> dt.datetime | None:
    """When the recipient's quiet-hours window closes next (None: it is not open now in any zone considered).

    A stored zone decides alone, as in :func:`in_window_now`. Otherwise, the zones the number's prefix, its country and
    the list default could stand for (a superset of the number's own, read from libphonenumber's prefix table without
    classifying the number) that are inside the window now: the earliest of their closings, never later than the
    number's own. ``memo`` (one per chunk, same ``now``) keeps the answer per prefix entry and per stored zone."""
    if contact_tz and quiethours.zone(contact_tz) is not None:
        key: Any = ("tz", contact_tz, default_tz)
        if key not in memo:
            memo[key] = quiethours.closing(now, quiethours.contact_zones(phone, contact_tz, default_tz), window)
        return memo[key]  # type: ignore[no-any-return]
    if not phone.startswith("+"):
        return quiethours.closing(now, quiethours.contact_zones(phone, contact_tz, default_tz), window)
    prefix, cc = _prefix_and_country(phone[1:])
    key = (id(prefix), cc, default_tz)
    if key not in memo:
        names = tuple(sorted({*prefix, *_prefix_zones(cc, len(cc)), default_tz}))
        memo[key] = quiethours.closing(now, _zone_infos(names), window)
    return memo[key]  # type: ignore[no-any-return]


def valid_for(
    doc: ClaimedDoc,
    tz: str | None,
    default_tz: str,
    now: dt.datetime,
    window: quiethours.Window,
    stale_after: dt.timedelta,
    memo: dict[Any, Any],
) -> int:
    """Seconds the provider may keep ``doc`` before delivering it: until it turns stale (``stale_after`` past its
    due time) or the recipient's quiet-hours window closes, whichever comes first (a test send whose overrides lift
    quiet hours: staleness only); at least one second."""
    deadline = due_at(doc) + stale_after
    if "quiet_hours" not in (doc.get("overrides") or ()):
        closes = window_closing(doc["to_number"], tz, default_tz, now, window, memo)
        if closes is not None and closes < deadline:
            deadline = closes
    return max(1, int((deadline - now).total_seconds()))


#: The send-time re-check holds a message whose quiet hours begin within this margin: a round's last chunk goes up to
#: ``rate_limit_round_seconds`` after the re-check, and its request takes a moment to reach the provider.
QUIET_HOURS_MARGIN = dt.timedelta(seconds=2)

#: A contact with a stored timezone (its quiet hours are decided in it).
_HAS_TIMEZONE = {"timezone": {"$gt": ""}}


async def contact_states(db: Any, contact_ids: Sequence[int]) -> dict[int, ContactDoc]:
    """The contacts among ``contact_ids`` that are blocked, unsubscribed or have a stored timezone.

    One indexed lookup: ``_id $in`` and an ``$or`` of the three conditions, which the embedded store answers in
    SQL from the ``_id`` index (``store.nxserver.patch_or_in_sql``; plain nx-27017 would read every contact).
    """
    if not contact_ids:
        return {}
    found = (
        await db[c.CONTACTS]
        .find(
            {"_id": {"$in": list(set(contact_ids))}, "$or": [{"subscribed": False}, {"blocked": True}, _HAS_TIMEZONE]},
            {"subscribed": 1, "blocked": 1, "timezone": 1},
        )
        .to_list(None)
    )
    return {d["_id"]: d for d in found}


@dataclass
class Recheck:
    """What the send-time re-check decided for a chunk."""

    send: list[ClaimedDoc] = field(default_factory=list)
    blocked: list[tuple[ClaimedDoc, str]] = field(default_factory=list)  # (doc, why): CONTACT_BLOCKED
    hold: list[tuple[ClaimedDoc, dt.datetime]] = field(default_factory=list)  # quiet hours: (doc, opening)
    paused: list[ClaimedDoc] = field(default_factory=list)  # campaign paused since the claim


async def blocked_contacts(db: Any, contact_ids: Sequence[int]) -> dict[int, str]:
    """The contacts among ``contact_ids`` that are blocked or unsubscribed now (id -> ``"contact blocked"`` /
    ``"contact unsubscribed"``): one indexed lookup returning only those contacts (see :func:`contact_states`;
    reading every contact of the chunk costs nx-27017 ten to a hundred times more)."""
    if not contact_ids:
        return {}
    found = (
        await db[c.CONTACTS]
        .find(
            {"_id": {"$in": list(set(contact_ids))}, "$or": [{"subscribed": False}, {"blocked": True}]},
            {"blocked": 1},
        )
        .to_list(None)
    )
    return {d["_id"]: "contact blocked" if d.get("blocked") is True else "contact unsubscribed" for d in found}


async def number_stops(db: Any, docs: Sequence[ClaimedDoc]) -> set[tuple[int, str]]:
    """The (list, number) pairs of ``docs`` held to their number's own STOP that sent one (``opt_outs``): a message
    without a contact (a test send to a number that is none), or whose contact stores its number in another
    spelling (``number_stop``: a STOP, looked up by number, cannot find that contact). Reads nothing when there is
    none (campaign messages of contacts our imports wrote: nearly every chunk)."""
    pairs = {
        (int(d["sending_list_id"]), d["to_number"]) for d in docs if d.get("contact_id") is None or d.get("number_stop")
    }
    return await opted_out(db, pairs) if pairs else set()


async def paused_campaigns(db: Any, ids: Sequence[int]) -> set[int]:
    """Which of the campaigns ``ids`` are paused now."""
    if not ids:
        return set()
    return {d["_id"] async for d in db[c.CAMPAIGNS].find({"_id": {"$in": list(ids)}, "status": "paused"}, {"_id": 1})}


async def recheck(
    db: Any,
    docs: Sequence[ClaimedDoc],
    now: dt.datetime,
    *,
    window: quiethours.Window,
    default_tz: str,
    timezones: dict[int, str] | None = None,
) -> Recheck:
    """The send-time re-check of a chunk (see the module docstring); the store is read once per chunk (the reads
    run concurrently). ``timezones``: the contacts' stored timezones (:attr:`Verdict.timezones`, read at claim time),
    brought up to date here: a zone stored or changed since the claim decides the quiet hours of this send.
    """
    out = Recheck()
    if not docs:
        return out
    if timezones is None:
        timezones = {}
    contact_ids = sorted({cid for d in docs if (cid := d.get("contact_id")) is not None})
    campaign_ids = sorted({cid for d in docs if (cid := d.get("campaign_id")) is not None})
    states, paused, stopped_numbers = await asyncio.gather(
        contact_states(db, contact_ids), paused_campaigns(db, campaign_ids), number_stops(db, docs)
    )
    stopped = {
        cid: "contact blocked" if st.get("blocked") is True else "contact unsubscribed"
        for cid, st in states.items()
        if st.get("blocked") is True or st.get("subscribed") is False
    }
    for cid in contact_ids:  # the contacts' zones as they are now (one stored or changed since the claim counts)
        tz = (states.get(cid) or {}).get("timezone")
        if isinstance(tz, str) and tz:
            timezones[cid] = tz
        else:
            timezones.pop(cid, None)
    memo: dict[Any, Any] = {}
    soon = now + QUIET_HOURS_MARGIN
    memo_soon: dict[Any, Any] = {}
    for d in docs:
        cid = d.get("contact_id")
        lifted = d.get("overrides") or ()  # a test send's explicit overrides (testsend.py)
        why = stopped.get(cid) if cid is not None else None
        if why is None and stopped_numbers and (d["sending_list_id"], d["to_number"]) in stopped_numbers:
            why = "number opted out (STOP)"
        if why is not None and "opt_out" not in lifted:
            out.blocked.append((d, why))
            continue
        if d.get("campaign_id") in paused:
            out.paused.append(d)
            continue
        if "quiet_hours" in lifted:
            out.send.append(d)
            continue
        tz = timezones.get(cid) if cid is not None else None
        # inside now, and still inside when the request reaches the provider (a window closing within the margin)
        opening = window_hold(d, tz, default_tz, now, window, memo) or window_hold(
            d, tz, default_tz, soon, window, memo_soon
        )
        if opening is not None:
            out.hold.append((d, opening))
            continue
        out.send.append(d)
    return out


def window_hold(
    doc: ClaimedDoc, tz: str | None, default_tz: str, at: dt.datetime, window: quiethours.Window, memo: dict[Any, Any]
) -> dt.datetime | None:
    """When ``doc``'s recipient is outside the quiet-hours window at ``at``: the window's next opening (None: inside).
    ``tz``: the contact's stored zone; ``memo``: one per batch and ``at`` (:func:`in_window_now`)."""
    inside, zones = in_window_now(doc["to_number"], tz, default_tz, at, window, memo)
    if inside or zones is None:
        return None
    return quiethours.next_opening(at, zones, window)


async def evaluate(
    db: Any,
    docs: Sequence[ClaimedDoc],
    now: dt.datetime,
    *,
    stale_after: dt.timedelta,
    blocked: re.Pattern[str] | None,
    window: quiethours.Window,
    default_tz: str,
) -> Verdict:
    """Run every check over a claimed batch."""
    out = Verdict()
    survivors: list[ClaimedDoc] = []
    for d in docs:
        nb = d.get("not_before")
        due = nb if nb is not None and nb > d["sendtime"] else d["sendtime"]
        if due > now:
            out.early.append((d, due))
            continue
        if is_stale(d, now, stale_after):
            out.fail.append(
                (
                    d,
                    FailureReason.STALE,
                    f"due {d['sendtime'].isoformat()}, more than {stale_after.total_seconds() / 60:g} min ago",
                )
            )
            continue
        if blocked is not None:
            m = blocked.search(d.get("body") or "")
            if m:
                out.fail.append((d, FailureReason.BLOCKED_CONTENT, f"blocked word {m.group(0)!r}"))
                continue
        survivors.append(d)
    states = await contact_states(db, [cid for d in survivors if (cid := d.get("contact_id")) is not None])
    memo: dict[Any, Any] = {}
    for d in survivors:
        cid = d.get("contact_id")
        st = states.get(cid) if cid is not None else None
        lifted = d.get("overrides") or ()  # a test send's explicit overrides (testsend.py)
        if st is not None and (st.get("subscribed") is False or st.get("blocked") is True) and "opt_out" not in lifted:
            why = "blocked" if st.get("blocked") is True else "unsubscribed"
            out.fail.append((d, FailureReason.CONTACT_BLOCKED, f"contact {why}"))
            continue
        if "quiet_hours" in lifted:
            out.send.append(d)
            continue
        tz = st.get("timezone") if st else None
        inside, zones = in_window_now(d["to_number"], tz, default_tz, now, window, memo)
        if not inside and zones is not None:
            out.hold.append((d, quiethours.next_opening(now, zones, window)))
            continue
        if tz and cid is not None:  # (a timezone comes from the contact's state: cid is set)
            out.timezones[cid] = tz
        out.send.append(d)
    return out
