"""Erasing a contact (a privacy request): its phone number and personal data redacted wherever they are kept.

* The contact document is anonymised, not deleted (audiences and statistics keep their ids): the phone becomes
  ``erased:<id>``, names, attributes and timezone are removed, and it is unsubscribed and blocked, so a send
  already claimed by the executor is refused at its send-time check (``CONTACT_BLOCKED``).
* Its unclaimed queued messages are dead-lettered ``CONTACT_BLOCKED`` (detail "contact erased"), already
  redacted: every queued message still ends in exactly one record. Its link clicks lose their user agent and
  IP hash; its tracked links keep only their destination's origin (``https://shop.example.com``: a destination
  may hold the contact's own data, a ``{phone}`` or ``{first_name}`` filled in) and are marked ``erased``, so a
  later click still redirects there and is counted without user agent or IP hash.
* ``to_number`` and ``body`` of its MessageSent and FailedMessage records (by contact id, and by number on the
  contact's list for records without one) are redacted, as are inbound messages from the number, customer
  webhook outbox payloads and alert events naming it.
* Its cooldown reservations (keyed by the number) are deleted: the contact is blocked from now on anyway.
* Messages in flight (claimed by the executor when the erasure ran) are counted in ``in_flight``: erase again
  once they are done to redact their records too.

Someone who asked to be erased and is imported again later is a new contact.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from trackly_exec.executor import claims
from trackly_exec.executor.outcomes import dead_letter_claimed
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import count
from trackly_exec.store.documents import ContactDoc
from trackly_exec.store.models import FailureReason

log = get_logger(__name__)

REDACTED = "[erased]"


async def erase_contact(trackly: Any, contact: ContactDoc) -> dict[str, int]:
    db = trackly.db
    cid = int(contact["_id"])
    list_id = int(contact["sending_list_id"])
    phone = str(contact.get("phone") or "")
    now = trackly.now()
    out = {
        "queued_dead_lettered": 0,
        "in_flight": 0,
        "sent_redacted": 0,
        "failed_redacted": 0,
        "inbound_redacted": 0,
        "outbox_redacted": 0,
        "events_redacted": 0,
        "links_redacted": 0,
    }
    await db[c.CONTACTS].update_one(
        {"_id": cid},
        {
            "$set": {
                "phone": f"erased:{cid}",
                "phone_check": None,  # it holds the number too
                "first_name": None,
                "last_name": None,
                "attributes": {},
                "timezone": None,
                "subscribed": False,
                "blocked": True,
                "erased_at": now,
                "updated_at": now,
            }
        },
    )

    # Unclaimed queued messages: claim (fenced), dead-letter redacted, delete.
    token = f"erase:{uuid.uuid4().hex}"
    docs = await claims.claim_matching(db, {"contact_id": cid}, token, now)
    if docs:
        failed = []
        for d in docs:
            rec = {
                k: v
                for k, v in d.items()
                if k
                not in (
                    "claimed_by",
                    "claimed_at",
                    "sending_at",
                    "not_before",
                    "billing_blocked_since",
                    "paused",
                    "attempts",
                    "created_at",
                )
            }
            rec.update(
                to_number=REDACTED,
                body=REDACTED,
                reason=FailureReason.CONTACT_BLOCKED.value,
                detail="contact erased (privacy request)",
                failed_at=now,
                ambiguous=False,
                spam=False,
                opted_out=False,
                provider=None,
                provider_code=None,
                erased=True,
            )
            failed.append(rec)
        await dead_letter_claimed(db, token, failed, trackly.bus)
        out["queued_dead_lettered"] = len(docs)
    out["in_flight"] = await count(db, c.QUEUED, {"contact_id": cid})

    await db[c.CLICKS].update_many({"contact_id": cid}, {"$set": {"user_agent": "", "ip_hash": None}})
    out["links_redacted"] = await _redact_links(db, cid)
    redact = {"$set": {"to_number": REDACTED, "body": REDACTED, "erased": True}}
    for coll, key in ((c.SENT, "sent_redacted"), (c.FAILED, "failed_redacted")):
        res = await db[coll].update_many({"contact_id": cid}, redact)
        n = int(res.modified_count)
        if phone:
            res = await db[coll].update_many({"sending_list_id": list_id, "to_number": phone}, redact)
            n += int(res.modified_count)
        out[key] = n
    await db[c.RESERVATIONS].delete_many({"contact_id": cid})
    if not phone:
        return out
    await db[c.RESERVATIONS].delete_many({"sending_list_id": list_id, "to_number": phone})
    res = await db[c.INBOUND].update_many(
        {"from_number": phone}, {"$set": {"from_number": REDACTED, "text": REDACTED, "erased": True}}
    )
    out["inbound_redacted"] = int(res.modified_count)
    res = await db[c.OUTBOX].update_many({"payload.toNumber": phone}, {"$set": {"payload.toNumber": REDACTED}})
    out["outbox_redacted"] = int(res.modified_count)
    async for doc in db[c.OUTBOX].find({"events.payload.toNumber": phone}, {"events": 1}):
        events = [
            {**e, "payload": {**e.get("payload", {}), "toNumber": REDACTED}}
            if (e.get("payload") or {}).get("toNumber") == phone
            else e
            for e in doc.get("events") or []
        ]
        await db[c.OUTBOX].update_one({"_id": doc["_id"]}, {"$set": {"events": events}})
        out["outbox_redacted"] += 1
    # (events keep numbers masked; older ones may hold the whole number in their message or data)
    query = {"$or": [{"message": {"$regex": re.escape(phone)}}, {"data.phone": {"$eq": phone}}]}
    async for ev in db[c.EVENTS].find(query, {"message": 1, "data": 1}):
        data = {k: (REDACTED if v == phone else v) for k, v in (ev.get("data") or {}).items()}
        await db[c.EVENTS].update_one(
            {"_id": ev["_id"]},
            {"$set": {"message": str(ev.get("message") or "").replace(phone, REDACTED), "data": data}},
        )
        out["events_redacted"] += 1
    log.info("contact_erased", contact_id=cid, sending_list_id=list_id, **out)
    return out


async def _redact_links(db: Any, cid: int) -> int:
    """The contact's tracked links: destination cut to its origin, ``erased`` set. Returns how many changed."""
    by_origin: dict[str, list[str]] = {}
    async for link in db[c.SHORT_LINKS].find({"contact_id": cid, "erased": {"$ne": True}}, {"destination": 1}):
        by_origin.setdefault(_origin(str(link.get("destination") or "")), []).append(link["_id"])
    n = 0
    for origin, codes in by_origin.items():
        res = await db[c.SHORT_LINKS].update_many(
            {"_id": {"$in": codes}}, {"$set": {"destination": origin, "erased": True}}
        )
        n += int(res.modified_count)
    return n


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (what remains of an erased contact's link destination)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.scheme and parts.netloc else ""
