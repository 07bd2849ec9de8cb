"""Inbound messages and the STOP / START / HELP keywords.

A message that is exactly (trimmed of spaces and punctuation, case-insensitive: "Stop." is one) one of
:data:`STOP_WORDS` unsubscribes the sender (matched by normalised ``From``) on every sending list whose ``from_number``
is the inbound ``To``;
``STOPALL`` on every list of those lists' accounts. It takes effect at once:

- ``contacts.subscribed = False`` (the executor checks the contact at send time: CONTACT_BLOCKED, never sent);
- their queued, *unclaimed* messages on those lists are dead-lettered right away as CONTACT_BLOCKED: they are
  first claimed with an ``optout:`` token (fenced on ``claimed_by: None``), recorded in FailedMessage, then
  deleted by that token;
- their *claimed* messages are left to the claim owner (never a second claimer racing it): the executor re-reads
  the chunk's contacts right before each send intent (``checks.recheck``) and ends them CONTACT_BLOCKED, fenced
  and refunded. Only a message whose send request is already on the wire can still go out;
- the number is remembered per sending list (``opt_outs``), contact or not: a contact created for it later starts
  unsubscribed, and a test send to it is skipped (a START forgets it);
- an ``opt_out`` event is published.

A provider that classifies the message itself (Twilio's ``OptOutType`` with Advanced Opt-Out, whose keywords may be
custom or localized) is followed: its ``STOP`` unsubscribes whatever the text. ``START``, ``YES``, ``UNSTOP``
resubscribe, unless the number sent a STOP on that list *after* it (by the provider's receive times: a START
delivered late, out of order, or retried by the provider after a later STOP changes nothing), and only on its first
delivery (a START whose message id is already stored, a provider's retry or a replay, is not applied again; a STOP
always is: it only ever holds); ``HELP``, ``INFO`` answer with the list's ``help_text`` where the
provider supports a reply (Twilio TwiML). Every inbound message is stored in ``inbound_messages`` (a provider's
retry of the same message id is stored once).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import BulkWriteError

from trackly_exec.app import Trackly
from trackly_exec.drivers.contract import InboundMessage
from trackly_exec.executor import claims
from trackly_exec.executor.outcomes import dead_letter_claimed
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import remember_opt_outs
from trackly_exec.store.documents import ContactDoc, Filter, InboundDoc, QueuedDoc
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.models import ExecutionStatus, FailedMessage, FailureReason, epoch_ms
from trackly_exec.store.phones import normalize, opt_out_key

log = get_logger(__name__)

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


#: Punctuation around a keyword that still leaves it the whole message ("Stop.", "STOP!", "'stop'").
_AROUND = " \t\r\n.,;:!?'\"()[]¡¿\u3002\uff01"


def keyword(text: str | None) -> str | None:
    """The opt keyword the whole message is (``"STOP"``, ``"Stop."``, ...), or None ("STOP PLEASE" is not one)."""
    word = (text or "").strip(_AROUND).upper()
    return word if word in STOP_WORDS | START_WORDS | HELP_WORDS else None


#: The provider's opt keyword (:attr:`InboundMessage.opt_keyword`) and the words of ours it stands for.
_PROVIDER_KEYWORDS = {"STOP": STOP_WORDS, "START": START_WORDS, "HELP": HELP_WORDS}


def _keyword(m: InboundMessage) -> str | None:
    """Our keyword for ``m``: the whole text when it is one of ours, unless the provider read it otherwise (its own,
    possibly custom or localized, keyword list); then the provider's reading (``STOP``, ``START``, ``HELP``)."""
    word = keyword(m.text)
    theirs = (m.opt_keyword or "").strip().upper()
    if theirs in _PROVIDER_KEYWORDS and word not in _PROVIDER_KEYWORDS[theirs]:
        return theirs
    return word


def phone_forms(raw: str | None) -> list[str]:
    """The forms a number may be stored in: E.164 first (``0044...`` and bare international digits, as
    Infobip and CM send them, included), then the raw text."""
    text = (raw or "").strip()
    if not text:
        return []
    out: list[str] = []
    candidates = [text]
    digits = text.lstrip("+")
    if digits.isdigit():
        candidates = (["+" + digits[2:]] if digits.startswith("00") else []) + ["+" + digits, text]
    for cand in candidates:
        e164 = normalize(cand)
        if e164 and e164 not in out:
            out.append(e164)
    for cand in candidates:
        if cand.startswith("+") and cand not in out:
            out.append(cand)
    if text not in out:
        out.append(text)
    return out


@dataclass
class _Action:
    msg: InboundMessage
    word: str
    froms: list[str]
    list_ids: list[int] = field(default_factory=list)
    record_id: str | None = None  # the stored inbound message's id (when the provider gave one)

    @property
    def received_ms(self) -> int:
        """When the provider received the message (epoch ms; our own time when it does not say)."""
        return epoch_ms(self.msg.received_at) if self.msg.received_at is not None else 0


async def handle_inbound(trackly: Trackly, provider: str, messages: Sequence[InboundMessage]) -> str | None:
    """Store ``messages``, apply their keywords; return the reply text (HELP), if any."""
    if not messages:
        return None
    db = trackly.store
    now = trackly.now()
    tos = {m.to_number: phone_forms(m.to_number) for m in messages}
    lists = (
        await db[c.SENDING_LISTS]
        .find(
            {"from_number": {"$in": sorted({f for forms in tos.values() for f in forms})}},
            {"account_id": 1, "from_number": 1, "driver": 1, "help_text": 1},
        )
        .to_list(None)
    )

    actions: list[_Action] = []
    reply: str | None = None
    records = []
    for m in messages:
        word = _keyword(m)
        mine = [lst for lst in lists if lst["from_number"] in tos[m.to_number]]
        if any(lst.get("driver") == provider for lst in mine):
            mine = [lst for lst in mine if lst.get("driver") == provider]
        action = _Action(m, word or "", phone_forms(m.from_number), [lst["_id"] for lst in mine])
        if word in HELP_WORDS:
            reply = next((lst["help_text"] for lst in mine if lst.get("help_text")), reply)
        elif word:
            actions.append(action)
        record: InboundDoc = {
            "provider": provider,
            "from_number": action.froms[0] if action.froms else m.from_number,
            "to_number": m.to_number,
            "text": m.text,
            "keyword": word,
            "sending_list_ids": action.list_ids,
            "provider_message_id": m.provider_message_id,
            "received_at": m.received_at or now,
            "stored_at": now,
        }
        if m.provider_message_id:
            record["_id"] = action.record_id = f"{provider}:{m.provider_message_id}"
        if not action.msg.received_at:
            action.msg = action.msg.model_copy(update={"received_at": now})
        records.append(record)
    stored_before = await _store(trackly, records)

    stopall_accounts = {
        lst["account_id"] for a in actions if a.word == "STOPALL" for lst in lists if lst["_id"] in a.list_ids
    }
    if stopall_accounts:
        every = (
            await db[c.SENDING_LISTS]
            .find({"account_id": {"$in": sorted(stopall_accounts)}}, {"account_id": 1})
            .to_list(None)
        )
        by_account: dict[int, list[int]] = {}
        for lst in every:
            by_account.setdefault(lst["account_id"], []).append(lst["_id"])
        account_of = {lst["_id"]: lst["account_id"] for lst in lists}
        for a in actions:
            if a.word == "STOPALL":
                a.list_ids = sorted({lid for l0 in a.list_ids for lid in by_account.get(account_of[l0], [])})

    stops = [a for a in actions if a.word in STOP_WORDS]
    starts = [a for a in actions if a.word in START_WORDS]
    if stops:
        await _apply_stops(trackly, stops)
    replayed = [a for a in starts if a.record_id is not None and a.record_id in stored_before]
    if replayed:
        log.info("start_replay_ignored", messages=len(replayed))
    starts = await _after_last_stop(trackly, [a for a in starts if a not in replayed])
    if starts:
        await trackly.db[c.OPT_OUTS].delete_many({"_id": {"$in": sorted({k for a in starts for k in opt_out_keys(a)})}})
        contacts = await _contacts(trackly, starts)
        if contacts:
            await db[c.CONTACTS].update_many(
                {"_id": {"$in": [x["_id"] for x in contacts]}}, {"$set": {"subscribed": True, "updated_at": now}}
            )
        log.info("contacts_resubscribed", count=len(contacts))
    return reply


async def _store(trackly: Trackly, records: list[InboundDoc]) -> set[str]:
    """Insert the inbound messages; returns the ids of those already stored (a provider's retry, a replay)."""
    try:
        await trackly.db[c.INBOUND].insert_many(records, ordered=False)
    except BulkWriteError as exc:  # a provider retry of a message already stored
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != 11000 for e in errors):
            raise
        return {str(records[e["index"]].get("_id")) for e in errors if 0 <= e.get("index", -1) < len(records)}
    return set()


async def _after_last_stop(trackly: Trackly, starts: list[_Action]) -> list[_Action]:
    """The START actions, each on the lists where its number sent no STOP after it (received later by the
    provider's clock): a START delivered after a later STOP (late, out of order, retried) does not undo it."""
    keys = {k for a in starts for k in opt_out_keys(a)}
    if not keys:
        return starts
    last = {
        d["_id"]: int(d.get("received_ms") or 0)
        async for d in trackly.db[c.OPT_OUTS].find({"_id": {"$in": sorted(keys)}}, {"received_ms": 1})
    }
    out = []
    for a in starts:
        later = {lid for lid in a.list_ids for p in a.froms if last.get(opt_out_key(lid, p), 0) > a.received_ms}
        if later:
            log.info("start_older_than_stop", lists=sorted(later))
            a.list_ids = [lid for lid in a.list_ids if lid not in later]
        if a.list_ids:
            out.append(a)
    return out


async def _contacts(trackly: Trackly, actions: Iterable[_Action]) -> list[ContactDoc]:
    """The contacts the actions address: one query for all of them, then matched pairwise."""
    actions = list(actions)
    list_ids = sorted({lid for a in actions for lid in a.list_ids})
    phones = sorted({p for a in actions for p in a.froms})
    if not list_ids or not phones:
        return []
    wanted = {(lid, p) for a in actions for lid in a.list_ids for p in a.froms}
    fields = {"sending_list_id": 1, "phone": 1}
    contacts = trackly.db[c.CONTACTS]
    if len(wanted) <= EXACT_LOOKUPS:  # one indexed equality per (list, number): what nx-27017 serves by its index
        found = await asyncio.gather(
            *(
                contacts.find({"sending_list_id": {"$eq": lid}, "phone": {"$eq": p}}, fields).to_list(None)
                for lid, p in sorted(wanted)
            )
        )
        return [r for rows in found for r in rows]
    rows = await contacts.find({"sending_list_id": {"$in": list_ids}, "phone": {"$in": phones}}, fields).to_list(None)
    return [r for r in rows if (r["sending_list_id"], r["phone"]) in wanted]


async def _apply_stops(trackly: Trackly, stops: list[_Action]) -> None:
    db = trackly.store
    now = trackly.now()
    await _remember(trackly, stops, now)  # first: an import racing this STOP then sees it (api.contacts)
    contacts = await _contacts(trackly, stops)
    contact_ids = [x["_id"] for x in contacts]
    if contact_ids:
        await db[c.CONTACTS].update_many(
            {"_id": {"$in": contact_ids}}, {"$set": {"subscribed": False, "updated_at": now}}
        )
    dead = await _dead_letter_queued(trackly, contacts, now) if contacts else 0
    events = []
    for a in stops:
        matched = [x for x in contacts if x["phone"] in a.froms and x["sending_list_id"] in a.list_ids]
        events.append(
            Event(
                kind=EventKind.OPT_OUT,
                severity="info",
                key="opt_out",
                message=f"{a.froms[0] if a.froms else a.msg.from_number} sent {a.word}: "
                f"unsubscribed on {len(matched)} list(s)",
                data={
                    "phone": a.froms[0] if a.froms else a.msg.from_number,
                    "keyword": a.word,
                    "sending_list_id": a.list_ids[0] if a.list_ids else None,
                    "sending_list_ids": a.list_ids,
                    "contact_ids": [x["_id"] for x in matched],
                },
            )
        )
    await trackly.bus.publish(*events)
    log.info("contacts_opted_out", contacts=len(contact_ids), dead_lettered=dead, messages=len(stops))


def opt_out_keys(a: _Action) -> list[str]:
    return [opt_out_key(lid, phone) for lid in a.list_ids for phone in a.froms if phone.startswith("+")]


async def _remember(trackly: Trackly, stops: list[_Action], now: Any) -> None:
    """Keep each STOP by (sending list, number), whether or not the number is a contact yet
    (:func:`~trackly_exec.store.client.remember_opt_outs`, with the provider's receive time: an older START cannot
    undo it)."""
    await remember_opt_outs(
        trackly.db,
        [(lid, phone, a.word, a.received_ms) for a in stops for lid in a.list_ids for phone in a.froms],
        now,
    )


#: Up to this many (list, number) or (execution, contact) pairs, a STOP looks each up by an indexed equality.
EXACT_LOOKUPS = 32


async def _dead_letter_queued(trackly: Trackly, contacts: list[ContactDoc], now: Any) -> int:
    """Claim the contacts' unclaimed queued messages, record them CONTACT_BLOCKED, delete them (fenced)."""
    db = trackly.store
    token = f"optout:{uuid.uuid4().hex}"
    by_list: dict[int, list[int]] = {}
    for x in contacts:
        by_list.setdefault(x["sending_list_id"], []).append(x["_id"])
    docs: list[QueuedDoc] = []
    # Queued messages belong to executions still open (pending, evaluating or queued; a re-drive reopens a completed
    # one): their (execution, contact) pairs are the queue's unique index, so a STOP reads the messages it ends, not
    # the list's whole queue (a scan took 70-160 ms per STOP on 20,000 queued messages, seconds under load). What
    # this misses the send-time checks still end CONTACT_BLOCKED.
    open_executions: dict[int, list[int]] = {}
    for status in (ExecutionStatus.PENDING, ExecutionStatus.EVALUATING, ExecutionStatus.QUEUED):
        async for ex in db[c.EXECUTIONS].find({"status": {"$eq": status.value}}, {"sending_list_id": 1}):
            open_executions.setdefault(int(ex.get("sending_list_id") or 0), []).append(ex["_id"])
    for list_id, contact_ids in sorted(by_list.items()):
        pairs = [(e, cid) for e in open_executions.get(list_id, []) for cid in contact_ids]
        queries: list[Filter] = (
            [{"execution_id": {"$eq": e}, "contact_id": {"$eq": cid}} for e, cid in pairs]
            if 0 < len(pairs) <= EXACT_LOOKUPS
            # one list at a time: the due index serves each (also when no open execution is known: queued messages
            # written some other way)
            else [{"sending_list_id": {"$eq": list_id}, "contact_id": {"$in": contact_ids}}]
        )
        for query in queries:
            docs += await claims.claim_matching(db, query, token, now)
    if not docs:
        return 0
    failed = [
        FailedMessage.model_validate(
            {
                **d,
                "id": d["_id"],
                "reason": FailureReason.CONTACT_BLOCKED,
                "detail": "recipient opted out (inbound keyword)",
                "failed_at": now,
            }
        ).to_doc()
        for d in docs
    ]
    await dead_letter_claimed(db, token, failed, trackly.bus)
    return len(docs)
