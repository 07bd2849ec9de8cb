"""Seeding helpers for the campaign-engine tests: an account, a list, contacts, audiences, a creative, a campaign."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from trackly_exec.drivers import registry
from trackly_exec.drivers.contract import Accepted, Driver, OutboundMessage, SendResult
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import Campaign, Creative, SendingList, Variant


class EchoDriver(Driver):  # type: ignore[type-arg]
    """Accepts everything (the campaign engine only needs a driver that can be built)."""

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return [Accepted(message_id=m.id, provider_message_id=f"echo-{m.id}") for m in messages]


def register_echo() -> None:
    registry.register("echo", EchoDriver)


def zone_where(inside: bool) -> str:
    """An Etc/GMT zone whose local time now is well inside (or well outside) 08:00-21:00."""
    from zoneinfo import ZoneInfo

    now = dt.datetime.now(dt.UTC)
    for off in range(-12, 13):
        name = f"Etc/GMT{'+' if off >= 0 else '-'}{abs(off)}"
        h = now.astimezone(ZoneInfo(name)).hour
        if (inside and 9 <= h < 20) or (not inside and (0 <= h < 7 or h >= 22)):
            return name
    raise AssertionError("no zone")


INSIDE = zone_where(True)


def phone_for(i: int) -> str:
    """A distinct valid New York number per i < 8,000,000 (exchanges 200-999)."""
    return f"+1212{2000000 + i:07d}"


def contact(i: int, list_id: int = 1, **kw: Any) -> dict[str, Any]:
    """A valid US contact (a real-looking +1 212 number) with an id and attributes."""
    doc = {
        "_id": i,
        "sending_list_id": list_id,
        "phone": phone_for(i),
        "first_name": f"Ann{i}",
        "last_name": None,
        "attributes": {"city": "Paris", "n": i},
        "timezone": INSIDE,
        "subscribed": True,
        "blocked": False,
        "in_workflow": False,
        "last_sent_at": None,
    }
    doc.update(kw)
    return doc


async def seed_campaign(
    store: Store,
    *,
    contacts: Sequence[dict[str, Any]] = (),
    audiences: Sequence[dict[str, Any]] | None = None,
    variants: Sequence[dict[str, Any]] = ({"key": "A", "body": "Hi {first_name|there}!", "weight": 1},),
    selection: str = "split",
    list_kw: dict[str, Any] | None = None,
    campaign_kw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Insert a whole campaign; returns the campaign document."""
    db = store.db
    await db[c.ACCOUNTS].insert_one({"_id": 1, "name": "acme", "balance": 100.0})
    sl = SendingList(
        **{"id": 1, "account_id": 1, "name": "main", "driver": "echo", "from_number": "+15550001111", **(list_kw or {})}
    ).to_doc()
    await db[c.SENDING_LISTS].insert_one(sl)
    if contacts:
        await db[c.CONTACTS].insert_many(list(contacts))
    auds = list(audiences) if audiences is not None else [{"_id": 1, "sending_list_id": 1, "name": "all", "filter": {}}]
    if auds:
        await db[c.AUDIENCES].insert_many(
            [{"name": f"a{a['_id']}", "filter": None, "contact_ids": None, **a} for a in auds]
        )
    cr = Creative(id=1, account_id=1, name="cr", variants=[Variant(**v) for v in variants], selection=selection)  # type: ignore[arg-type]
    await db[c.CREATIVES].insert_one(cr.to_doc())
    camp = Campaign(
        id=1,
        account_id=1,
        sending_list_id=1,
        audience_ids=[a["_id"] for a in auds],
        creative_id=1,
        **(campaign_kw or {}),
    ).to_doc()
    await db[c.CAMPAIGNS].insert_one(camp)
    return camp
