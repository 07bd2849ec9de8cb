"""Alert events: the interface between the parts that notice trouble and the parts that report it.

Producers (executor, scheduler, tracking) call :meth:`EventBus.publish`; every event is stored in the
``events`` collection (the dashboard reads it) and handed to each subscriber (Discord alerts, metrics).
A subscriber that fails is logged and never disturbs the producer. Phone numbers in an event's ``message`` are
masked on publishing (``+1212•••4567``); ``data`` keeps them for the code, and is masked where it is shown.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.documents import EventDoc, JsonObject
from trackly_exec.store.models import utcnow
from trackly_exec.store.phones import mask_text

if TYPE_CHECKING:
    from trackly_exec.store.client import Store

log = get_logger(__name__)


class EventKind(enum.StrEnum):
    FAILED_MESSAGE = "failed_message"  # data: message_id, reason, detail, sending_list_id, campaign_id
    PROVIDER_ERROR_BURST = "provider_error_burst"  # data: sending_list_id, provider, errors, window_seconds
    CAMPAIGN_FAILED = "campaign_failed"  # data: campaign_id, execution_id, reason
    OCCURRENCE_SKIPPED = "occurrence_skipped"  # data: campaign_id, scheduled_for, reason
    SPAM_COMPLAINT = "spam_complaint"  # data: message_id, provider, code
    DELIVERY_FAILURE = "delivery_failure"  # data: message_id, provider, code
    RATE_LIMITER_DOWN = "rate_limiter_down"  # data: sending_list_id, error
    HIGH_ERROR_RATE = "high_error_rate"  # data: sending_list_id, failed, total
    OPT_OUT = "opt_out"  # data: phone (masked, as every number in an event), sending_list_id, keyword
    WEBHOOK_DEAD = "webhook_dead"  # data: event_id, account_id, attempts, error
    CLOCK_SKEW = "clock_skew"  # data: instance, offset_seconds, warn_seconds
    BILLING_BLOCKED = "billing_blocked"  # data: account_id, sending_list_id, messages, retry_minutes, ttl_minutes
    PROVIDER_HOLD = "provider_hold"  # data: sending_list_id, provider, messages, until, last_error
    #: the end of an incident: data: condition (rate_limiter_down, provider_hold, billing_blocked), and its ids
    RECOVERED = "recovered"


@dataclass
class Event:
    kind: EventKind | str
    message: str
    severity: str = "warning"  # info | warning | critical
    data: JsonObject = field(default_factory=dict)
    key: str = ""  # alerts with the same key are throttled together
    created_at: dt.datetime = field(default_factory=utcnow)

    def to_doc(self) -> EventDoc:
        doc = cast("EventDoc", asdict(self))
        doc["kind"] = str(self.kind)
        doc["key"] = self.key or str(self.kind)
        return doc


Subscriber = Callable[[Sequence[Event]], Awaitable[None]]


def recovered(condition: str, message: str, **ids: Any) -> Event:
    """The end of an incident (``condition``: the kind of its alert, ``ids`` what it was about), keyed apart from the
    alert so that its interval never swallows it."""
    key = ":".join([f"recovered:{condition}", *(str(v) for v in ids.values())])
    return Event(
        kind=EventKind.RECOVERED, severity="info", key=key, message=message, data={"condition": condition, **ids}
    )


#: Event data fields that hold a phone number (kept masked, as the message is).
_NUMBER_KEYS = frozenset({"phone", "to_number", "from_number", "number"})


class EventBus:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    async def publish(self, *events: Event) -> None:
        if not events:
            return
        for e in events:  # what is kept and shown (events, dashboard, alerts) never carries a whole phone number
            e.message = mask_text(e.message)
            e.data = {k: mask_text(v) if k in _NUMBER_KEYS and isinstance(v, str) else v for k, v in e.data.items()}
        if self.store is not None:
            try:
                await self.store.db[c.EVENTS].insert_many([e.to_doc() for e in events], ordered=False)
            except Exception as exc:  # alerts must never break the sender
                log.warning("event_store_failed", error=str(exc), events=len(events))
        for fn in self._subscribers:
            try:
                await fn(events)
            except Exception as exc:
                log.warning("event_subscriber_failed", subscriber=getattr(fn, "__qualname__", repr(fn)), error=str(exc))
