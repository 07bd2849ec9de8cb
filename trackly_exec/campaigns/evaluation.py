"""Evaluating one execution: validation (:func:`load_plan`), then audiences -> compliance filters -> composition
-> queue, streamed in batches.

Every contact of the union is counted exactly once: either queued or skipped for the first reason that
applies, checked in this order (:data:`SKIP_REASONS`):

1. ``unsubscribed``: ``subscribed`` is false or ``blocked`` is true;
2. ``invalid_phone``: not a valid number for phonenumbers (parsed once, when our code wrote the contact: its
   ``phone_check``; parsed here for a contact written by other tools or with another phonenumbers release);
3. ``in_workflow``: the contact is in a workflow and the campaign sets ``exclude_in_workflow``;
4. ``frequency_cap``: a MessageSent on this list within the list's ``cooldown_minutes`` (one query per
   evaluation on the (sending_list_id, timestamp) index), the contact's ``last_sent_at`` in that window, or
   the number's cooldown reservation held by another message (queued by another execution, campaign or
   daemon, or sent within the cooldown; see :mod:`campaigns.reservations`). On a list with a cooldown, every
   queued message holds its number's reservation, taken atomically per batch just before the queue insert;
   a reservation lost to a concurrent evaluation at that moment also counts as ``frequency_cap``;
5. ``quiet_hours``: outside the list's window (08:00-21:00 by default) in the contact's timezone(s), with
   the campaign's policy ``exclude``; with ``hold`` the message is queued for the window's opening and
   counted in ``held_quiet_hours`` (it is also part of ``queued``);
6. ``missing_placeholder``: a placeholder with no value and no default.

So ``unique == sum(skipped.values()) + queued`` and ``overlap == audience_total - unique - duplicate_handsets``.

One handset is texted once per execution, and always in E.164: the list's unique (sending_list_id, phone) index
holds one contact per number as our imports write it (E.164), but contacts written by other tools may store a
number in another spelling (``(212) 555-0101``, ``+1 212 555 0101``). Such a contact is counted in
``duplicate_handsets``, not in ``unique``,
when another contact of the list stores the same number in E.164, or when one of another spelling already has
its message in this execution (resumed runs included); it is ``unsubscribed`` when the number sent STOP on the
list (``opt_outs``: a STOP looks contacts up by the number, and cannot find this one), and its message carries
``number_stop`` so that the send-time re-check reads the number's STOP too.

A resumed evaluation (the process died while evaluating) runs again from the start and queues nobody twice,
whatever has happened to a contact's first message since (still queued, sent, dead-lettered):

* message ids are derived from (execution, contact): an HMAC of the contact id under the execution's random
  ``message_key`` (unguessable, 16 hex characters), so a contact's message has the same id in every run, and
  MessageSent / FailedMessage keep it as ``_id``;
* before composing a batch, a resumed run looks for the batch's contacts in the queue *first*, then in
  MessageSent / FailedMessage. A message leaves the queue only after its record is written, so a message that
  is sent and removed between the two reads is found by the second one: a contact is queued again only if it
  was in neither place, i.e. never queued (the queue's unique indexes refuse anything else);
* both count as queued (``already_queued`` / ``already_processed``), so a resumed execution ends with the same
  counts;
* an evaluation stops (:class:`LeaseLost`) as soon as a progress report finds that another process has taken
  its execution over, so at most one batch is written by a process that lost its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from trackly_exec import failpoints
from trackly_exec.campaigns import reservations
from trackly_exec.campaigns.audience import FilterError, UnionCounts, compile_filter, selected_ids, union
from trackly_exec.campaigns.compose import PHONE_IN_TRACKED_LINK, Composer, check_body, phone_in_link
from trackly_exec.campaigns.queue import QueueResult, insert_batch
from trackly_exec.campaigns.variants import chooser_for
from trackly_exec.errors import TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store import phones
from trackly_exec.store.client import opted_out
from trackly_exec.store.documents import (
    AudienceDoc,
    CampaignDoc,
    ContactDoc,
    CreativeDoc,
    ExecutionDoc,
    JsonObject,
    QueuedDoc,
    SendingListDoc,
    ShortLinkDoc,
)
from trackly_exec.store.models import QuietHours, aware_time
from trackly_exec.store.quiethours import Window, contact_zones, in_window, next_opening

log = get_logger(__name__)

SKIP_REASONS = ("unsubscribed", "invalid_phone", "in_workflow", "frequency_cap", "quiet_hours", "missing_placeholder")


def contact_skip(
    contact: ContactDoc,
    to: str | None,
    *,
    stopped: bool,
    exclude_wf: bool,
    cutoff: dt.datetime | None,
    capped: set[str],
) -> str | None:
    """Why a contact is skipped before its quiet hours are looked at (:data:`SKIP_REASONS`, in their order), or
    None: unsubscribed or blocked (``stopped``: its number's STOP or an opt-out on another spelling of it), invalid
    phone (``to`` None), in a workflow the campaign excludes, within the list's cooldown (``cutoff``: its number
    among ``capped``, or its own ``last_sent_at``). The evaluation and the preview decide with it."""
    if stopped or not contact.get("subscribed", True) or contact.get("blocked"):
        return "unsubscribed"
    if to is None:
        return "invalid_phone"
    if exclude_wf and contact.get("in_workflow"):
        return "in_workflow"
    if cutoff is not None and (to in capped or ((ls := last_sent(contact)) is not None and ls >= cutoff)):
        return "frequency_cap"
    return None


def last_sent(contact: ContactDoc) -> dt.datetime | None:
    """The contact's ``last_sent_at``: a date, or an ISO 8601 text another tool wrote (without an offset: UTC)."""
    value: object = contact.get("last_sent_at")  # (typed a date, but another tool may have written text)
    return aware_time(value.strip() if isinstance(value, str) else value)


def window_opening(
    now: dt.datetime, zones: tuple[ZoneInfo, ...], window: Window, memo: dict[tuple[ZoneInfo, ...], dt.datetime | None]
) -> dt.datetime | None:
    """None when ``now`` is inside the quiet-hours window in every one of ``zones``, else when it opens in all of
    them (memoised per zones in ``memo``)."""
    if zones not in memo:
        memo[zones] = None if in_window(now, zones, window) else next_opening(now, zones, window)
    return memo[zones]


@dataclass
class Tally:
    """The running counts of an evaluation, in the execution ``counts`` contract."""

    union: UnionCounts = field(default_factory=UnionCounts)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    queued: int = 0
    held_quiet_hours: int = 0
    inserted: int = 0
    already_queued: int = 0
    already_processed: int = 0
    evaluated: int = 0
    links: int = 0
    segments: int = 0  # of the messages counted in ``queued`` (composed by this run)
    encodings: dict[str, int] = field(default_factory=dict)
    variants: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "compose": 0.0, "write_wait": 0.0})

    def as_counts(self) -> JsonObject:
        u = self.union
        return {
            "per_audience": dict(u.per_audience),
            "audience_total": u.audience_total,
            "overlap": u.overlap,
            "duplicate_handsets": u.duplicate_handsets,
            "unique": u.unique,
            "skipped": dict(self.skipped),
            "queued": self.queued,
            "held_quiet_hours": self.held_quiet_hours,
            "evaluated": self.evaluated,
            "inserted": self.inserted,
            "already_queued": self.already_queued,
            "already_processed": self.already_processed,
            "links": self.links,
            "variants": dict(self.variants),
            "segments": self.segments,
            "encodings": dict(self.encodings),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass
class Plan:
    """What an execution needs, loaded and validated by the scheduler."""

    execution: ExecutionDoc
    campaign: CampaignDoc
    sending_list: SendingListDoc
    audiences: list[AudienceDoc]
    creative: CreativeDoc


#: Called after every written batch; returning False means the lease is lost: the evaluation stops.
Progress = Callable[[Tally], Awaitable[bool | None]]


class LeaseLost(TracklyError):
    """Another process has taken the execution over (this one stalled past its lease): stop writing."""


#: Where an evaluation's composed messages go, one batch at a time: the queue (:func:`queue.insert_batch`) in a
#: real run, :func:`dry_run_sink` in an estimate. Everything before it is the same code for both.
Sink = Callable[[Any, list[QueuedDoc], list[ShortLinkDoc]], Awaitable[QueueResult]]


async def dry_run_sink(db: Any, messages: list[QueuedDoc], links: list[ShortLinkDoc]) -> QueueResult:
    """The sink of an estimate: nothing is written; every message counts as inserted."""
    return QueueResult(inserted=len(messages), links=len(links))


# --------------------------------------------------------------------------------------------- validation


async def load_plan(trackly: Any, campaign: CampaignDoc, execution: ExecutionDoc) -> tuple[Plan | None, str]:
    """Everything the execution needs, or None and the reason the campaign cannot run."""
    db = trackly.db
    account_id = campaign["account_id"]
    if campaign.get("archived"):
        return None, f"campaign {campaign['_id']} is archived"
    slist = await db[c.SENDING_LISTS].find_one({"_id": campaign["sending_list_id"]})
    if slist is None:
        return None, f"sending list {campaign['sending_list_id']} does not exist"
    if slist.get("account_id") != account_id:
        return None, f"sending list {slist['_id']} belongs to another account"
    if not slist.get("active", True):
        return None, f"sending list {slist['_id']} is not active"
    if slist.get("archived"):
        return None, f"sending list {slist['_id']} is archived"
    ids = list(dict.fromkeys(campaign.get("audience_ids") or []))  # an audience listed twice counts once
    if not ids:
        return None, "the campaign has no audiences"
    audiences = await db[c.AUDIENCES].find({"_id": {"$in": ids}}).to_list(None)
    found = {a["_id"]: a for a in audiences}
    for aid in ids:
        a = found.get(aid)
        if a is None:
            return None, f"audience {aid} does not exist"
        if a.get("sending_list_id") != slist["_id"]:
            return None, f"audience {aid} belongs to another sending list"
        if a.get("archived"):
            return None, f"audience {aid} is archived"
        if a.get("contact_ids") is None:
            try:
                compile_filter(a.get("filter"))
            except FilterError as exc:
                return None, f"audience {aid} has an invalid filter: {exc}"
    creative = await db[c.CREATIVES].find_one({"_id": campaign["creative_id"]})
    if creative is None:
        return None, f"creative {campaign['creative_id']} does not exist"
    if creative.get("account_id") != account_id:
        return None, f"creative {creative['_id']} belongs to another account"
    if creative.get("archived"):
        return None, f"creative {creative['_id']} is archived"
    variants = creative.get("variants") or []
    learned = creative.get("selection") == "learned"
    if not variants or not (learned or any(float(v.get("weight", 1)) > 0 for v in variants)):
        return None, f"creative {creative['_id']} has no variant with a weight above 0"
    for v in variants:
        problems = check_body(v.get("body", ""))
        if not problems and campaign.get("track_links") and phone_in_link(v.get("body", "")):
            problems = [PHONE_IN_TRACKED_LINK]
        if problems:
            return None, f"creative {creative['_id']} variant {v.get('key')!r}: {problems[0]}"
    try:
        trackly.drivers.build(slist["driver"], slist.get("driver_settings") or {})
    except Exception as exc:
        return None, f"driver {slist.get('driver')!r} of sending list {slist['_id']} is not available: {exc}"
    return Plan(execution, campaign, slist, [found[i] for i in ids], creative), ""


async def _frequency_capped(db: Any, sending_list_id: int, execution_id: int, cutoff: dt.datetime) -> set[str]:
    """Numbers sent to on the list since ``cutoff`` (by other executions): one indexed query.

    (``find`` rather than ``distinct``: nx-27017's ``distinct`` mishandles ``$ne``. ``$eq``: nx-27017 serves
    it from the (sending_list_id, timestamp) index, a bare value from a scan of every MessageSent.)"""
    q = {"sending_list_id": {"$eq": sending_list_id}, "timestamp": {"$gte": cutoff}}
    out: set[str] = set()
    async for d in db[c.SENT].find(q, {"_id": 0, "to_number": 1, "execution_id": 1}).batch_size(10_000):
        if d.get("execution_id") != execution_id and d.get("to_number"):
            out.add(str(d["to_number"]))
    return out


async def _already_ours(db: Any, execution_id: int, contact_ids: list[int]) -> dict[int, str]:
    """Contacts of the batch this execution already has a message for: ``"queued"`` or ``"processed"`` (sent or
    dead-lettered). The queue is read first, the records second (see the module docstring). ``$eq`` so that
    nx-27017 uses the (execution_id, contact_id) indexes (a bare value scans the whole collection there)."""
    if not contact_ids:
        return {}
    q = {"execution_id": {"$eq": execution_id}, "contact_id": {"$in": contact_ids}}
    out = {
        int(d["contact_id"]): "queued" for d in await db[c.QUEUED].find(q, {"_id": 0, "contact_id": 1}).to_list(None)
    }
    rest = [i for i in contact_ids if i not in out]
    if rest:
        q = {"execution_id": {"$eq": execution_id}, "contact_id": {"$in": rest}}
        for coll in (c.SENT, c.FAILED):
            for d in await db[coll].find(q, {"_id": 0, "contact_id": 1}).to_list(None):
                out.setdefault(int(d["contact_id"]), "processed")
    return out


async def _odd_numbers(
    db: Any, list_id: int, numbers: set[str], audiences: Sequence[AudienceDoc]
) -> tuple[set[str], set[str]]:
    """For numbers of contacts stored in another spelling: those held back (a STOP on the list, ``opt_outs``, or a
    contact of the list storing the number in E.164 that is unsubscribed or blocked), and those such an E.164 contact
    stands for in this campaign (it is in the campaign's audiences: the handset gets its message, or is skipped,
    through that contact; the list's unique (sending_list_id, phone) index keeps one such contact per number). A
    twin outside the audiences stands for nothing: the contact in another spelling is the one the campaign selected."""
    stops = {to for _, to in await opted_out(db, [(list_id, to) for to in numbers])}
    query = {"sending_list_id": {"$eq": list_id}, "phone": {"$in": sorted(numbers)}}
    found = await db[c.CONTACTS].find(query, {"phone": 1, "subscribed": 1, "blocked": 1}).to_list(None)
    selected = await selected_ids(db, list_id, audiences, [int(d["_id"]) for d in found]) if found else set()
    twins: set[str] = set()
    for d in found:
        if int(d["_id"]) in selected:
            twins.add(str(d["phone"]))
        elif d.get("subscribed") is False or d.get("blocked") is True:
            stops.add(str(d["phone"]))
    return stops, twins


async def _held_numbers(db: Any, list_id: int) -> set[str]:
    """Numbers that a contact of the list stored in another spelling holds back: unsubscribed or blocked there (an
    opt-out migrated from another system). The handset is one, whichever of its contacts the audience reaches: the
    contact that stands for the number (its E.164 twin) is skipped too. Two indexed equality reads of the list's
    unsubscribed and blocked contacts, once per evaluation; only the ones in another spelling count (ours are E.164,
    and hold themselves)."""
    held: set[str] = set()
    for state in ({"subscribed": {"$eq": False}}, {"blocked": {"$eq": True}}):
        query = {"sending_list_id": {"$eq": list_id}, **state}
        async for d in db[c.CONTACTS].find(query, {"phone": 1, "phone_check": 1}).batch_size(10_000):
            to, _ = _number(d)
            if to is not None and to != d.get("phone"):
                held.add(to)
    return held


def _number(contact: ContactDoc) -> tuple[str | None, tuple[str, ...] | None]:
    """The contact's number in E.164 (None when it is not a valid number) and, when the contact was written by
    our code (a ``phone_check`` for this phone and phonenumbers release), the number's zones: no parse then
    (:func:`phones.contact_number`; the answer is the same either way)."""
    return phones.contact_number(contact)


async def message_key(db: Any, execution: ExecutionDoc) -> str:
    """The execution's ``message_key`` (set here, once, for an execution created without one)."""
    key = execution.get("message_key")
    if not key:
        await db[c.EXECUTIONS].update_one(
            {"_id": execution["_id"], "message_key": {"$exists": False}},
            {"$set": {"message_key": secrets.token_hex(16)}},
        )
        doc = await db[c.EXECUTIONS].find_one({"_id": execution["_id"]}, {"message_key": 1})
        key = (doc or {}).get("message_key")
        if not key:
            raise TracklyError(f"execution {execution['_id']} has no message key")
        execution["message_key"] = key
    return str(key)


async def evaluate(
    trackly: Any, plan: Plan, *, resumed: bool = False, progress: Progress | None = None, sink: Sink = insert_batch
) -> Tally:
    """Evaluate ``plan.execution`` and hand its messages to ``sink`` (the queue); returns the final tally (the
    caller records it). With :func:`dry_run_sink` nothing is written: an estimate."""
    db = trackly.store.db
    cfg = trackly.settings.scheduler
    ex, camp, slist = plan.execution, plan.campaign, plan.sending_list
    execution_id, list_id = int(ex["_id"]), int(slist["_id"])
    now = trackly.now()
    # Messages are due now (not at a scheduled time up to max_lateness in the past): the executor's STALE
    # rule then measures time spent in the queue, not the scheduler's lateness.
    sendtime = max(ex["scheduled_for"], now)
    await message_key(db, ex)
    chooser = await chooser_for(db, plan.creative, execution_id, cfg.learned_min_sends)
    composer = Composer(
        execution=ex,
        campaign=camp,
        sending_list=slist,
        creative=plan.creative,
        chooser=chooser,
        short_base=trackly.settings.http.short_link_base,
    )
    cooldown = float(slist.get("cooldown_minutes") or 0)
    cutoff = now - dt.timedelta(minutes=cooldown) if cooldown > 0 else None
    capped = await _frequency_capped(db, list_id, execution_id, cutoff) if cutoff else set()
    held_numbers = await _held_numbers(db, list_id)
    quiet = QuietHours.model_validate(slist.get("quiet_hours") or {})
    window, default_tz = Window.from_quiet_hours(quiet), quiet.default_timezone
    hold = camp.get("quiet_hours_policy", "exclude") == "hold"
    exclude_wf = bool(camp.get("exclude_in_workflow"))
    opening: dict[tuple[ZoneInfo, ...], dt.datetime | None] = {}  # zones -> None (inside) or the opening
    tally = Tally()
    skipped = tally.skipped
    odd_seen: set[str] = set()  # numbers of contacts stored in another spelling, already given their message
    writing: asyncio.Task[None] | None = None

    async def _reserve(messages: list[QueuedDoc], view: reservations.View) -> set[str]:
        """Take the batch's cooldown reservations; a message whose phone another evaluation reserved
        meanwhile (a race lost since the lookup) is dropped and counted as ``frequency_cap``."""
        won = await reservations.take(db, messages, view, trackly.now())
        for m in messages:
            if m["_id"] not in won:
                tally.queued -= 1
                skipped["frequency_cap"] += 1
                tally.held_quiet_hours -= m.get("not_before") is not None
                key = m["variant_key"]
                assert key is not None  # every composed message has its variant
                composer.variant_counts[key] -= 1
                tally.segments -= m["segments"]
                tally.encodings[m["encoding"]] -= 1
        return won

    async def _write(messages: list[QueuedDoc], links: list[ShortLinkDoc], view: reservations.View | None) -> None:
        real = sink is insert_batch  # a dry run (estimate) takes no reservation and writes nothing
        if real and view is not None and messages:
            won = await _reserve(messages, view)
            if len(won) < len(messages):
                messages = [m for m in messages if m["_id"] in won]
                links = [link for link in links if link["message_id"] in won]
        res = await sink(db, messages, links)
        if real:
            failpoints.hit("after_queue_batch")
        tally.inserted += res.inserted
        tally.already_queued += res.duplicates
        tally.links += res.links
        if progress is not None and await progress(tally) is False:
            raise LeaseLost(f"execution {execution_id} was taken over by another process")

    secs = tally.seconds
    mark = time.perf_counter()
    try:
        async for batch in union(db, list_id, plan.audiences, cfg.evaluation_batch_size, tally.union):
            t = time.perf_counter()
            secs["read"] += t - mark
            ours = await _already_ours(db, execution_id, [int(d["_id"]) for d in batch]) if resumed else {}
            messages: list[QueuedDoc] = []
            links: list[ShortLinkDoc] = []
            batch_now = trackly.now()
            numbers: dict[int, tuple[str | None, tuple[str, ...] | None]] = {}
            # contacts whose stored phone is another spelling of the number texted (written by another tool: our
            # imports store E.164, which campaign_number texts as it is) -> that number
            odd: dict[int, str] = {}
            for contact in batch:
                cid = int(contact["_id"])
                number = _number(contact)
                to = number[0]
                spelt_otherwise = to is not None and to != contact.get("phone")
                if cid in ours:
                    if spelt_otherwise:
                        odd_seen.add(str(to))  # (a resumed run: this number already has its message)
                    continue
                numbers[cid] = number
                if spelt_otherwise:
                    odd[cid] = str(to)
            odd_stops, twins = (
                await _odd_numbers(db, list_id, set(odd.values()), plan.audiences) if odd else (set(), set())
            )
            view: reservations.View | None = None
            if cutoff is not None:  # the cooldown reservations in the way of this batch (read only)
                mine = [composer.message_id(cid) for cid, (to, _) in numbers.items() if to]
                view = await reservations.lookup(
                    db, list_id, [to for to, _ in numbers.values() if to], mine, cutoff, batch_now
                )
            for contact in batch:
                if ours and (state := ours.get(int(contact["_id"]))) is not None:
                    if state == "queued":
                        tally.already_queued += 1
                    else:
                        tally.already_processed += 1
                    tally.queued += 1
                    continue
                cid = int(contact["_id"])
                odd_to = odd.get(cid)
                if odd_to is not None:
                    if odd_to in twins or odd_to in odd_seen:  # one handset on two contacts: texted once
                        tally.union.unique -= 1
                        tally.union.duplicate_handsets += 1
                        continue
                    odd_seen.add(odd_to)
                to, number_zones = numbers[cid]
                stopped = odd_to in odd_stops or bool(held_numbers and to in held_numbers)
                reason = contact_skip(contact, to, stopped=stopped, exclude_wf=exclude_wf, cutoff=cutoff, capped=capped)
                if reason is None and view is not None and to in view.blocked:
                    reason = "frequency_cap"  # reserved by another message within the cooldown
                if reason is not None:
                    skipped[reason] += 1
                    continue
                assert to is not None  # (contact_skip: invalid_phone)
                zones = contact_zones(to, contact.get("timezone"), default_tz, number_zones)
                held_until = window_opening(now, zones, window, opening)
                if held_until is not None and not hold:
                    skipped["quiet_hours"] += 1
                    continue
                made = composer.compose(contact, to, held_until or sendtime, held_until, batch_now)
                if made is None:
                    skipped["missing_placeholder"] += 1
                    continue
                if held_until is not None:
                    tally.held_quiet_hours += 1
                if odd_to is not None:  # a STOP from the number cannot find this contact: checked by number
                    made[0]["number_stop"] = True
                tally.segments += made[0]["segments"]
                tally.encodings[made[0]["encoding"]] = tally.encodings.get(made[0]["encoding"], 0) + 1
                messages.append(made[0])
                links.extend(made[1])
            # The batch is written while the next one is read and composed (the store is another process):
            # at most one write in flight, awaited before the next starts, so batches land in order.
            t2 = time.perf_counter()
            secs["compose"] += t2 - t
            if writing is not None:
                await writing
            mark = time.perf_counter()
            secs["write_wait"] += mark - t2
            tally.queued += len(messages)
            tally.evaluated += len(batch)
            tally.variants = dict(composer.variant_counts)
            writing = asyncio.create_task(_write(messages, links, view))
        if writing is not None:
            t = time.perf_counter()
            await writing
            secs["write_wait"] += time.perf_counter() - t
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writing
    tally.variants = dict(composer.variant_counts)
    log.info(
        "execution_evaluated",
        execution_id=execution_id,
        unique=tally.union.unique,
        queued=tally.queued,
        skipped={k: v for k, v in skipped.items() if v},
        resumed=resumed,
    )
    return tally
