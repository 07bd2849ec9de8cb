"""Test sends: a creative's variant texted to one or a few numbers through the real executor path.

The messages are queued (``send_type`` ``"test"``) under a test execution (``kind: "test"``, ``campaign_id``
0, ``occurrence_key`` ``"test:<list>:<n>"``; ``test_of_campaign`` when sent from a campaign), so every guarantee
of the executor holds: claims, send intent, rate limit, billing, blocked words, exactly one record per message.
The execution completes when its queue is drained, like any other.

Compliance is not waived unless asked: a number that is an unsubscribed or blocked contact of the list, or that
sent STOP to the list without being a contact, is not queued (``skipped``: ``unsubscribed``), and the executor
re-checks at send time; a number outside the list's quiet-hours window is queued for the window's opening
(``held_until``). ``override_opt_out`` /
``override_quiet_hours`` lift those checks for these messages only, and are recorded on the execution and on
every message record (``overrides``). There is no frequency cap for test sends.

Placeholders are filled from the number's own contact on the list, else from ``contact_id`` (a sample
contact), else only defaults: a placeholder without a value and without a default is an error, never a
message with a brace left in it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from trackly_exec.campaigns import shortlinks
from trackly_exec.campaigns.compose import parse_body, render
from trackly_exec.campaigns.queue import insert_batch
from trackly_exec.errors import TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store import phones
from trackly_exec.store.client import opted_out
from trackly_exec.store.documents import ContactDoc, CreativeDoc, JsonObject, QueuedDoc, SendingListDoc, ShortLinkDoc
from trackly_exec.store.models import Execution, ExecutionStatus, QuietHours, entering_queue, new_message_id
from trackly_exec.store.quiethours import Window, contact_zones, in_window, next_opening
from trackly_exec.store.segments import measure

log = get_logger(__name__)

MAX_NUMBERS = 10


class SendTestError(TracklyError):
    """A test send that cannot be made; ``loc`` is the body field at fault."""

    def __init__(self, loc: str, message: str) -> None:
        super().__init__(message)
        self.loc = loc


async def send_test(
    trackly: Any,
    *,
    sending_list: SendingListDoc,
    creative: CreativeDoc,
    numbers: list[str],
    variant: str | None = None,
    contact_id: int | None = None,
    track_links: bool = False,
    override_opt_out: bool = False,
    override_quiet_hours: bool = False,
    default_region: str = "US",
    campaign_id: int | None = None,
) -> JsonObject:
    db = trackly.db
    list_id = int(sending_list["_id"])
    now = trackly.now()
    variants = {v["key"]: v for v in creative.get("variants") or []}
    if variant is None:
        variant = next((k for k, v in variants.items() if float(v.get("weight", 1)) > 0), next(iter(variants), None))
    if variant not in variants:
        raise SendTestError(
            "body.variant",
            f"creative {creative['_id']} has no variant {variant!r} (it has {', '.join(map(repr, variants))})",
        )
    parts = parse_body(variants[variant]["body"])
    tos: list[str] = []
    for i, raw in enumerate(numbers):
        to = phones.normalize(raw, default_region)
        if to is None:
            raise SendTestError(f"body.numbers.{i}", f"{raw!r} is not a valid phone number")
        if to not in tos:
            tos.append(to)
    sample: ContactDoc = {}
    if contact_id is not None:
        found = await db[c.CONTACTS].find_one({"_id": contact_id})
        if found is None or found.get("sending_list_id") != list_id:
            raise SendTestError("body.contact_id", f"contact {contact_id} is not on sending list {list_id}")
        sample = found
    own = {
        d["phone"]: d
        for d in await db[c.CONTACTS].find({"sending_list_id": list_id, "phone": {"$in": tos}}).to_list(None)
    }
    stopped = {phone for _, phone in await opted_out(db, [(list_id, to) for to in tos])}  # STOP here, contact or not
    quiet = QuietHours.model_validate(sending_list.get("quiet_hours") or {})
    window = Window.from_quiet_hours(quiet)
    overrides = [name for name, on in (("opt_out", override_opt_out), ("quiet_hours", override_quiet_hours)) if on]
    footer = (sending_list.get("opt_out_footer") or "").strip()
    eid = await trackly.store.next_id(c.EXECUTIONS)
    n = await trackly.store.next_id(f"test:{list_id}")
    messages: list[QueuedDoc] = []
    links: list[ShortLinkDoc] = []
    results: list[JsonObject] = []
    for to in tos:
        contact = own.get(to)
        row: JsonObject = {
            "to_number": to,
            "contact_id": int(contact["_id"]) if contact else None,
            "message_id": None,
            "held_until": None,
            "skipped": None,
        }
        unsubscribed = to in stopped or (
            contact is not None and (contact.get("subscribed") is False or contact.get("blocked") is True)
        )
        if unsubscribed and not override_opt_out:
            row["skipped"] = "unsubscribed"
            results.append(row)
            continue
        held: dt.datetime | None = None
        if not override_quiet_hours:
            zones = contact_zones(to, (contact or {}).get("timezone"), quiet.default_timezone)
            if not in_window(now, zones, window):
                held = next_opening(now, zones, window)
        body = render(parts, contact or sample, to)
        if body is None:
            raise SendTestError(
                "body.contact_id",
                f"variant {variant!r} has a placeholder without a default and "
                f"{to} has no value for it: give contact_id (a sample contact)",
            )
        found_links: list[tuple[str, str]] = []
        if track_links:
            body, found_links = shortlinks.track(body, trackly.settings.http.short_link_base)
        if footer:
            body += f"\n{footer}"
        m = measure(body)
        mid = new_message_id()
        doc: QueuedDoc = {
            "_id": mid,
            "account_id": int(sending_list["account_id"]),
            "sending_list_id": list_id,
            "campaign_id": None,
            "execution_id": eid,
            "contact_id": row["contact_id"],
            "creative_id": int(creative["_id"]),
            "variant_key": variant,
            "from_number": sending_list["from_number"],
            "to_number": to,
            "body": body,
            "length": m.length,
            "segments": m.segments,
            "encoding": m.encoding,
            "send_type": "test",
            "overrides": overrides or None,
            "sendtime": held or now,
            "created_at": now,
            **entering_queue(mid, held or now, not_before=held),  # type: ignore[typeddict-item]  # see ClaimFields
            "billing_blocked_since": None,
            "attempts": 0,
        }
        messages.append(doc)
        links += [shortlinks.link_doc(code, dest, doc) for code, dest in found_links]
        row.update(message_id=doc["_id"], held_until=held, body=body, segments=m.segments, encoding=m.encoding)
        results.append(row)
    skipped = sum(1 for r in results if r["skipped"])
    execution = Execution(
        id=eid,
        campaign_id=0,
        account_id=int(sending_list["account_id"]),
        sending_list_id=list_id,
        occurrence_key=f"test:{list_id}:{n}",
        scheduled_for=now,
        triggered_at=now,
        status=ExecutionStatus.QUEUED if messages else ExecutionStatus.COMPLETED,
        counts={"queued": len(messages), "skipped": {"unsubscribed": skipped}, "unique": len(tos)},
        evaluated_at=now,
        queued_at=now,
        completed_at=None if messages else now,
    ).to_doc()
    execution.update(
        {
            "kind": "test",
            "test_of_campaign": campaign_id,
            "creative_id": int(creative["_id"]),
            "variant_key": variant,
            "overrides": overrides,
        }
    )
    await db[c.EXECUTIONS].insert_one(execution)
    await insert_batch(db, messages, links)
    log.info(
        "test_send_queued",
        execution_id=eid,
        sending_list_id=list_id,
        numbers=len(tos),
        queued=len(messages),
        skipped=skipped,
        overrides=overrides,
        campaign_id=campaign_id,
    )
    return {"execution_id": eid, "variant": variant, "overrides": overrides, "messages": results}
