"""Recording outcomes: MessageSent / FailedMessage documents, queue removal, refunds and alert events.

A send is billed for the provider's segment count when the driver reports one, else for the queued message's
own count (:func:`billed_segments`); the difference to what was debited is settled in the refund.

Records are inserted with unordered ``insert_many``; a duplicate ``_id`` means the message is already
recorded (fine). The queue entries are then deleted fenced on the claim token. When that delete finds fewer
entries than it recorded, the claim was lost (recovery may have dead-lettered some of them as NO_RESPONSE
meanwhile): the MessageSent wins and any NO_RESPONSE FailedMessage of those ids is deleted, so a message
keeps exactly one record.

Events (the interface alerting consumes): every FailedMessage is published as one
``EventKind.FAILED_MESSAGE`` event per message, all the events of a batch in one ``publish`` call, with
``data = {message_id, reason, detail, sending_list_id, account_id, campaign_id, execution_id, provider,
provider_code, ambiguous}`` and ``key = "failed_message:<list>:<reason>"`` (alerts throttle per key). More than
``executor.error_burst_threshold`` provider errors on one list within 60 s publish one
``PROVIDER_ERROR_BURST`` (``data = {sending_list_id, provider, errors, window_seconds, last_error}``) per list per
minute (each transient answer counts too, as the worker meets it: a refused key or an empty provider account holds
the list rather than dead-lettering it). A rejection flagged ``spam`` publishes ``SPAM_COMPLAINT``.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from pymongo.errors import BulkWriteError, PyMongoError

from trackly_exec import failpoints
from trackly_exec.campaigns import reservations
from trackly_exec.drivers.contract import Accepted, SendResult
from trackly_exec.executor import billing, checks, claims
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import remember_opt_outs
from trackly_exec.store.documents import ClaimedDoc, FailedDoc, MessageFieldsDoc, SentDoc, Update
from trackly_exec.store.events import Event, EventKind, recovered
from trackly_exec.store.models import FailureReason, MessageFields, epoch_ms, from_epoch_ms

if TYPE_CHECKING:
    from trackly_exec.app import Trackly

log = get_logger(__name__)

_FIELDS = {name: f.get_default(call_default_factory=True) for name, f in MessageFields.model_fields.items()}
BURST_WINDOW = 60.0


def _fields(doc: Mapping[str, Any]) -> MessageFieldsDoc:
    return cast("MessageFieldsDoc", {k: doc.get(k, default) for k, default in _FIELDS.items()})  # every field


def sent_doc(
    doc: Mapping[str, Any], *, provider: str, provider_message_id: str, segments: int, cost: float, now: dt.datetime
) -> SentDoc:
    """A MessageSent document (every field of ``models.MessageSent``)."""
    return {
        "_id": doc["_id"],
        # mypy's strict extra checks want delivery_batch in some ** item: the first report writes it
        **_fields(doc),  # type: ignore[typeddict-item]
        "segments": segments,
        "submitted": True,
        "delivered": None,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "cost": cost,
        "timestamp": now,
        "delivery_status": None,
        "delivery_error_code": None,
        "delivered_at": None,
        "spam": False,
        "resolved_from_no_response": False,
    }


def failed_doc(
    doc: ClaimedDoc,
    reason: FailureReason,
    detail: str,
    now: dt.datetime,
    *,
    provider: str | None = None,
    code: str | None = None,
    ambiguous: bool = False,
    spam: bool = False,
    opted_out: bool = False,
) -> FailedDoc:
    """A FailedMessage document (every field of ``models.FailedMessage``). An ambiguous one (NO_RESPONSE) is due
    for reconciliation at once (:mod:`reconcile`), with the time of its send intent as the attempt."""
    out: FailedDoc = {
        "_id": doc["_id"],
        # mypy's strict extra checks want redrive_token / redrive_count in some ** item: a new record has neither
        **_fields(doc),  # type: ignore[typeddict-item]
        "reason": str(reason),
        "detail": detail[:500],
        "provider": provider,
        "provider_code": code,
        "ambiguous": ambiguous,
        "spam": spam,
        "opted_out": opted_out,
        "failed_at": now,
        "attempted_at": (from_epoch_ms(doc.get("sending_at")) or now) if ambiguous else None,
        "reconcile_at": now if ambiguous else None,
        "reconcile_by": None,
        "lookups": 0,
        "reconcile_state": "pending" if ambiguous else None,
    }
    if n := doc.get("redrive_count"):  # a re-driven message that fails again keeps its count for the next re-drive
        out["redrive_count"] = int(n)
    return out


async def insert_records(db: Any, collection: str, docs: Sequence[Mapping[str, Any]], *, settle: bool = True) -> int:
    """Unordered insert; already-recorded ids (duplicate key) are fine. Returns how many were new.

    Then the messages' cooldown reservations are settled (:func:`reservations.settle`: sent and NO_RESPONSE
    ones count from now, the ones never sent are released); a failure there is only logged, since a reservation
    left ``held`` is checked against these records whenever it is in the way. ``settle=False`` (the executor, for
    a list without a cooldown now: its messages took no reservation, unless the cooldown was turned off since they
    were queued, and such a reservation is then settled against these records when it is in the way) skips that
    round trip."""
    if not docs:
        return 0
    try:
        res = await db[collection].insert_many(list(docs), ordered=False)
        inserted = len(res.inserted_ids)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != 11000 for e in errors):
            raise
        inserted = int(exc.details.get("nInserted", len(docs) - len(errors)))
    if not settle:
        return inserted
    try:
        await reservations.settle(db, collection, docs)
    except PyMongoError as exc:
        log.warning("reservations_settle_failed", collection=collection, messages=len(docs), error=str(exc))
    return inserted


async def dead_letter_claimed(db: Any, token: str, failed: Sequence[Mapping[str, Any]], bus: Any = None) -> None:
    """Record ``failed`` (the FailedMessage documents of queued messages that claim ``token`` holds, never sent:
    a STOP, an erasure, a cancelled campaign), then drop them from the queue, fenced on the claim; their alert events
    (:func:`failure_event`, as every dead letter's) go to ``bus``."""
    if failed:
        await insert_records(db, c.FAILED, failed, settle=False)
        await claims.drop(db, token, [d["_id"] for d in failed])
        if bus is not None:
            await bus.publish(*(failure_event(cast("FailedDoc", rec)) for rec in failed))


def billed_segments(doc: ClaimedDoc, result: Accepted) -> int:
    """The segments a send is billed for: the provider's count when the driver reports one, else the queued
    message's own (a driver that leaves ``Accepted.segments`` unset, like the README's plugin example, does not
    make a 3-part message cost 1 part)."""
    own = int(doc.get("segments") or 1)
    if "segments" in result.model_fields_set and result.segments >= 1:
        return int(result.segments)
    return own


def throttle_groups(docs: Sequence[ClaimedDoc], until: dt.datetime) -> list[tuple[list[str], Update]]:
    """``claims.release`` / ``hold_unsent`` groups for a provider-storm hold until ``until``: each message keeps
    the time it was due (``throttled_due``), so the hold never postpones its staleness."""
    by_due: dict[dt.datetime, list[str]] = {}
    for d in docs:
        by_due.setdefault(checks.due_at(d), []).append(d["_id"])
    return [(ids, {"not_before": until, "throttled_until": until, "throttled_due": due}) for due, ids in by_due.items()]


def failure_event(rec: FailedDoc) -> Event:
    """The alert event of one FailedMessage record."""
    return Event(
        kind=EventKind.FAILED_MESSAGE,
        severity="warning",
        message=f"{rec['reason']}: message {rec['_id']} to {rec['to_number']}"
        + (f" ({rec['detail']})" if rec.get("detail") else ""),
        key=f"failed_message:{rec['sending_list_id']}:{rec['reason']}",
        data={
            k: rec.get(k)
            for k in (
                "reason",
                "detail",
                "sending_list_id",
                "account_id",
                "campaign_id",
                "execution_id",
                "provider",
                "provider_code",
                "ambiguous",
            )
        }
        | {"message_id": rec["_id"]},
    )


class Outcomes:
    """Writes the outcome of claimed messages for one executor process."""

    def __init__(self, trackly: Trackly, counts: collections.Counter[str]) -> None:
        self.trackly = trackly
        self.db = trackly.db
        self.counts = counts
        self.cfg = trackly.settings.executor
        self.threshold = self.cfg.error_burst_threshold
        self._errors: dict[int, collections.deque[tuple[float, int]]] = {}
        self._burst_alerted: dict[int, float] = {}
        self._billing_alerted: dict[int, float] = {}
        self._held_lists: set[int] = set()  # lists held by their provider's refusals, until one sends again
        self._blocked_accounts: set[int] = set()  # accounts whose balance held messages, until one is charged again

    async def publish(self, events: Iterable[Event]) -> None:
        events = list(events)
        if events:
            await self.trackly.bus.publish(*events)

    async def fail_unsent(
        self,
        token: str,
        items: Sequence[tuple[ClaimedDoc, FailureReason, str]],
        now: dt.datetime,
        *,
        provider: str | None = None,
    ) -> None:
        """Dead-letter messages that were never sent (checks, rate limit, billing), fenced on the claim."""
        if not items:
            return
        held = await claims.mark(self.db, [d["_id"] for d, _, _ in items], token, {"settled_at": now})
        recs = [
            failed_doc(d, reason, detail, now, provider=provider) for d, reason, detail in items if d["_id"] in held
        ]
        if not recs:
            return
        await insert_records(self.db, c.FAILED, recs)
        await claims.complete(self.db, [r["_id"] for r in recs], token)
        for r in recs:
            self.counts[f"failed.{r['reason']}"] += 1
        await self.publish(failure_event(r) for r in recs)

    async def record_sends(
        self,
        info: Any,
        token: str,
        docs: Sequence[ClaimedDoc],
        results: dict[str, SendResult],
        costs: dict[str, float],
        now: dt.datetime,
        requeue: set[str],
    ) -> dt.datetime | None:
        """Record the provider's answers for a sent chunk; refund what was not accepted.

        Transient failures that outlasted the retries (429 storms, 5xx before acceptance) are not dead-lettered:
        they are held (released fenced with ``not_before``, see :meth:`throttle_until`) and the hold's end is
        returned, so the worker holds the rest of its batch too; staleness (``checks.due_at``) ends them.
        """
        lst = info.doc
        provider = info.driver.name
        sent: list[SentDoc] = []
        failed: list[FailedDoc] = []
        back: list[str] = []
        refund = 0.0
        opted_out: list[int] = []
        opted_numbers: list[tuple[int, str]] = []  # (list, number) the provider says opted out
        throttled: list[ClaimedDoc] = []
        retry_after = 0.0
        events: list[Event] = []
        provider_errors = 0
        last_error = ""  # what the provider last answered for a message that was not sent (the burst alert says it)
        for d in docs:
            mid = d["_id"]
            r = results.get(mid)
            paid = costs.get(mid, 0.0)
            if r is None or r.kind == "unknown":
                detail = r.detail if r is not None else "no result"
                failed.append(
                    failed_doc(
                        d,
                        FailureReason.NO_RESPONSE,
                        detail or "outcome unknown",
                        now,
                        provider=provider,
                        ambiguous=True,
                    )
                )
                provider_errors += 1
                last_error = detail or "outcome unknown"
            elif r.kind == "accepted":
                parts = billed_segments(d, r)
                cost = billing.message_cost({"segments": parts}, lst.price_per_segment)
                refund += paid - cost
                sent.append(
                    sent_doc(
                        d,
                        provider=provider,
                        provider_message_id=r.provider_message_id,
                        segments=parts,
                        cost=cost,
                        now=now,
                    )
                )
            elif r.kind == "transient" and mid in requeue:
                back.append(mid)
                refund += paid
            elif r.kind == "transient":  # outlasted the retries: the provider is throttled or down, hold it
                throttled.append(d)
                refund += paid
                retry_after = max(retry_after, float(getattr(r, "retry_after", None) or 0.0))
            else:  # rejected
                refund += paid
                provider_errors += 1
                last_error = str(r.detail or r.code or r.kind)
                spam = bool(getattr(r, "spam", False))
                out = bool(getattr(r, "opted_out", False))
                failed.append(
                    failed_doc(
                        d,
                        FailureReason.PROVIDER_ERROR,
                        r.detail or r.kind,
                        now,
                        provider=provider,
                        code=r.code,
                        spam=spam,
                        opted_out=out,
                    )
                )
                if out:
                    opted_numbers.append((int(d["sending_list_id"]), d["to_number"]))
                    if (cid := d.get("contact_id")) is not None:
                        opted_out.append(cid)
                if spam:
                    events.append(
                        Event(
                            kind=EventKind.SPAM_COMPLAINT,
                            severity="critical",
                            message=f"{provider} flagged message {mid} as spam ({r.code})",
                            key=f"spam:{lst.id}",
                            data={"message_id": mid, "provider": provider, "code": r.code, "sending_list_id": lst.id},
                        )
                    )
        failpoints.hit("before_record")
        cooldown = lst.cooldown_minutes > 0  # a list without one took no reservations: nothing to settle
        await insert_records(self.db, c.SENT, sent, settle=cooldown)
        await insert_records(self.db, c.FAILED, failed, settle=cooldown)
        if back:  # nothing was accepted for these: give them back to the queue (shutdown during retries)
            await claims.give_back(self.db, back, token)
        held_until = None
        if throttled:  # nothing was accepted for these either: held until the provider has had time to recover
            held_until = self.throttle_until(throttled, now, retry_after)
            self.counts["held.provider"] += await claims.hold_unsent(
                self.db, token, throttle_groups(throttled, held_until)
            )
            log.warning(
                "provider_storm_hold",
                sending_list_id=lst.id,
                provider=provider,
                held=len(throttled),
                until=held_until.isoformat(),
                error=last_error[:300],
            )
            # alerted whatever the number of errors: a slow list in an outage never reaches the burst threshold
            self._held_lists.add(lst.id)
            events.append(
                Event(
                    kind=EventKind.PROVIDER_HOLD,
                    severity="critical",
                    key=f"provider_hold:{lst.id}",
                    message=f"sending list {lst.id} ({provider}): the provider keeps refusing for now; "
                    f"{len(throttled)} messages held until {held_until.isoformat(timespec='seconds')}, the list "
                    f"rests" + (f"; last: {last_error[:300]}" if last_error else ""),
                    data={
                        "sending_list_id": lst.id,
                        "provider": provider,
                        "messages": len(throttled),
                        "until": held_until.isoformat(),
                        "last_error": last_error[:300],
                    },
                )
            )
        await billing.adjust(self.db, lst.account_id, refund)
        if opted_numbers:  # kept like a STOP: an import saying subscribed does not undo it
            await remember_opt_outs(self.db, [(lid, to, "PROVIDER", epoch_ms(now)) for lid, to in opted_numbers], now)
        if opted_out:
            await self.db[c.CONTACTS].update_many(
                {"_id": {"$in": opted_out}}, {"$set": {"subscribed": False, "updated_at": now}}
            )
        recorded = [r["_id"] for r in sent] + [r["_id"] for r in failed]
        removed = await claims.complete(self.db, recorded, token)
        if removed < len(recorded):
            self.counts["claim_lost_after_send"] += len(recorded) - removed
            if sent:  # recovery may have dead-lettered some as NO_RESPONSE meanwhile: the MessageSent wins
                await self.db[c.FAILED].delete_many(
                    {"_id": {"$in": [r["_id"] for r in sent]}, "reason": str(FailureReason.NO_RESPONSE)}
                )
            log.warning("claim_lost_before_record", sending_list_id=lst.id, recorded=len(recorded), held=removed)
        self.counts["sent"] += len(sent)
        self.counts["requeued"] += len(back)
        for rec in failed:
            self.counts[f"failed.{rec['reason']}"] += 1
        events.extend(failure_event(r) for r in failed)
        if sent and not throttled and lst.id in self._held_lists:
            self._held_lists.discard(lst.id)
            events.append(
                recovered(
                    "provider_hold",
                    f"sending list {lst.id} ({provider}): the provider accepts again",
                    sending_list_id=lst.id,
                    provider=provider,
                )
            )
        burst = self.note_errors(lst.id, provider, provider_errors, last_error)
        if burst is not None:
            events.append(burst)
        await self.publish(events)
        return held_until

    def billing_blocked(self, account_id: int, list_id: int, messages: int) -> Event | None:
        """The Event of ``messages`` an account's balance holds (one per held chunk, None for none): the operator
        learns it now, not when they are dead-lettered ``billing_ttl_minutes`` later. The alerts group the events of
        an account (key ``billing_blocked:<account>``) and count their messages; the log says it once a minute per
        account."""
        if messages <= 0:
            return None
        self._blocked_accounts.add(account_id)
        now = time.monotonic()
        retry, ttl = self.cfg.billing_backoff_minutes, self.cfg.billing_ttl_minutes
        if now - self._billing_alerted.get(account_id, -1e9) >= BURST_WINDOW:
            self._billing_alerted[account_id] = now
            log.warning("billing_blocked", account_id=account_id, sending_list_id=list_id, messages=messages)
        return Event(
            kind=EventKind.BILLING_BLOCKED,
            severity="critical",
            key=f"billing_blocked:{account_id}",
            message=f"account {account_id}: balance too low, {messages} messages of sending list {list_id} held "
            f"(retried every {retry:g} min; dead-lettered BILLING_BLOCKED after {ttl:g} min; top the account up)",
            data={
                "account_id": account_id,
                "sending_list_id": list_id,
                "messages": messages,
                "retry_minutes": retry,
                "ttl_minutes": ttl,
            },
        )

    def billing_covered(self, account_id: int) -> Event | None:
        """The RECOVERED event when an account whose balance held messages has a send charged again (topped up)."""
        if account_id not in self._blocked_accounts:
            return None
        self._blocked_accounts.discard(account_id)
        return recovered(
            "billing_blocked", f"account {account_id}: balance covers its messages again", account_id=account_id
        )

    def throttle_until(self, docs: Sequence[ClaimedDoc], now: dt.datetime, retry_after: float) -> dt.datetime:
        """The end of a provider-storm hold: ``provider_hold_seconds`` at first, then as long as the oldest message
        is already late (a doubling backoff without a counter), at most ``provider_hold_max_seconds``, and never
        shorter than the provider's Retry-After."""
        late = max((now - checks.due_at(d)).total_seconds() for d in docs)
        hold = max(retry_after, min(self.cfg.provider_hold_max_seconds, max(self.cfg.provider_hold_seconds, late)))
        until = now + dt.timedelta(seconds=hold)
        return until.replace(microsecond=until.microsecond // 1000 * 1000)

    def note_errors(self, list_id: int, provider: str, n: int, last: str = "") -> Event | None:
        """Count provider errors (rejections and unknown outcomes here, each transient answer in the worker: a
        refused key holds the list); an Event when a list crosses the burst threshold (once a minute), with the
        ``last`` error the provider gave."""
        if n <= 0:
            return None
        now = time.monotonic()
        window = self._errors.setdefault(list_id, collections.deque())
        window.append((now, n))
        while window and now - window[0][0] > BURST_WINDOW:
            window.popleft()
        total = sum(k for _, k in window)
        if total <= self.threshold or now - self._burst_alerted.get(list_id, -1e9) < BURST_WINDOW:
            return None
        self._burst_alerted[list_id] = now
        log.warning("provider_error_burst", sending_list_id=list_id, provider=provider, errors=total, last=last[:300])
        return Event(
            kind=EventKind.PROVIDER_ERROR_BURST,
            severity="critical",
            key=f"provider_error_burst:{list_id}",
            message=f"{total} provider errors on sending list {list_id} ({provider}) within a minute"
            + (f"; last: {last[:300]}" if last else ""),
            data={
                "sending_list_id": list_id,
                "provider": provider,
                "errors": total,
                "window_seconds": BURST_WINDOW,
                "last_error": last[:300],
            },
        )
