"""A contact's phone is validated once, when our code writes it (``phone_check``); the evaluation uses that and
parses only contacts without a current check, with the same results either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trackly_exec.api.contacts import upsert
from trackly_exec.app import Trackly
from trackly_exec.campaigns.scheduler import trigger
from trackly_exec.store import constants as c
from trackly_exec.store import phones, quiethours
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow

from .campaign_fixtures import contact, register_echo, seed_campaign, zone_where

#: Numbers of every kind the evaluation meets: valid E.164 (one zone, several zones, an unknown zone), national
#: and international forms that need normalising, and invalid ones.
PHONES = [
    "+12127361234",  # New York
    "+40721234567",  # Bucharest
    "+81312345678",  # Tokyo
    "+61293744000",  # Sydney
    "+442079460000",  # London
    "+18005551234",  # toll-free: several zones
    "+976136234567",  # Mongolia: two zones
    "(212) 736-1235",  # national: normalised (US)
    "2127361236",
    "0040721234568",  # international with 00
    "+40 721 234 569",  # spaces
    "+1555",  # invalid
    "+15551234567",  # invalid (555 exchange)
    "hello",
    "",
    "+999123456789",  # no such country
]


def stale(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as checked by another phonenumbers release."""
    return {**doc, "phone_check": doc["phone_check"].replace(phones.METADATA_VERSION, "0.0.0", 1)}


def test_contact_number_matches_a_parse() -> None:
    """From a current check: the parse's answer and zones, without parsing; stale, for another phone, or broken:
    a parse, as for a contact without a check."""
    for p in PHONES:
        want = phones.campaign_number(p)
        doc = {"phone": p, "phone_check": phones.phone_check(p)}
        assert doc["phone_check"].split("|")[1] == ("1" if want is not None else "0")
        got, zones = phones.contact_number(doc)
        assert got == want
        assert zones == (phones.timezones_for(want) if want is not None else None)
        assert phones.contact_number({"phone": p}) == (want, None)
        assert phones.contact_number(stale(doc)) == (want, None)
        other = {"phone": p, "phone_check": phones.phone_check("+12127369999")}
        assert phones.contact_number(other) == (want, None)
        for broken in (doc["phone_check"].rsplit("|", 1)[0], {"e164": want}, doc["phone_check"].replace("|1|", "|0|")):
            assert phones.contact_number({"phone": p, "phone_check": broken}) == (want, None)
    v = phones.METADATA_VERSION
    assert phones.phone_check("+1555") == f"{v}|0|||+1555"
    assert phones.phone_check("(212) 736-1234") == f"{v}|1|+12127361234|America/New_York|(212) 736-1234"
    assert phones.phone_check("+976136234567") == f"{v}|1|+976136234567|Asia/Choibalsan,Asia/Ulaanbaatar|+976136234567"
    odd = "+40 721|234 567"  # whatever the phone holds
    assert phones.contact_number({"phone": odd, "phone_check": phones.phone_check(odd)}) == (None, None)


def people() -> list[dict[str, Any]]:
    """Every skip reason, both quiet-hours sources (the contact's zone, the number's zones), every kind of phone."""
    inside, outside = zone_where(True), zone_where(False)
    out = []
    for i in range(1, 121):
        d = contact(i, timezone=inside if i % 4 else None)  # a quarter: zones from the number
        if i <= len(PHONES):
            d["phone"] = PHONES[i - 1]
            d["timezone"] = None if i % 2 else inside
        if i % 11 == 0:
            d["subscribed"] = False
        if i % 13 == 0:
            d["in_workflow"] = True
        if i % 17 == 0:
            d["timezone"] = outside
        if i % 19 == 0:
            d["first_name"] = None
        if i % 23 == 0:
            d["last_sent_at"] = utcnow()
        out.append(d)
    return out


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "parsed": lambda d: d,
    "checked": lambda d: {**d, "phone_check": phones.phone_check(d["phone"])},
    "stale": lambda d: stale({**d, "phone_check": phones.phone_check(d["phone"])}),
    "mixed": lambda d: {**d, "phone_check": phones.phone_check(d["phone"])} if d["_id"] % 2 else d,
}


@pytest.mark.parametrize("policy", ["exclude", "hold"])
async def test_same_results_with_and_without_checks(
    trackly: Trackly, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """The same audience evaluated from parsed numbers, current checks, stale checks (another phonenumbers
    release) and a mix: identical queued messages and identical counts for every reason."""
    register_echo()
    parses = {"n": 0}
    real_number, real_zones = phones.campaign_number, quiethours.timezones_for

    def counting_number(phone: str) -> str | None:
        parses["n"] += 1
        return real_number(phone)

    def counting_zones(e164: str) -> tuple[str, ...]:
        parses["n"] += 1
        return real_zones(e164)

    results = {}
    for mode, shape in MODES.items():
        for name in await trackly.db.list_collection_names():
            await trackly.db[name].delete_many({})
        contacts = [shape(d) for d in people()]
        await seed_campaign(
            trackly.store,
            contacts=contacts,
            audiences=[
                {"_id": 1, "sending_list_id": 1, "filter": {"id": {"lte": 80}}},
                {"_id": 2, "sending_list_id": 1, "filter": {"id": {"gt": 60}}},
            ],
            variants=[{"key": "A", "body": "Hi {first_name}, {phone}", "weight": 1}],
            list_kw={"cooldown_minutes": 60},
            campaign_kw={"exclude_in_workflow": True, "quiet_hours_policy": policy},
        )
        # Sent within the cooldown: to a number stored in national form (capped by its normalisation).
        await trackly.db[c.SENT].insert_one(
            {"_id": "m1", "sending_list_id": 1, "account_id": 1, "to_number": "+12127361236", "timestamp": utcnow()}
        )
        parses["n"] = 0
        monkeypatch.setattr(phones, "campaign_number", counting_number)
        monkeypatch.setattr(quiethours, "timezones_for", counting_zones)
        eid = await trigger(trackly, 1)
        monkeypatch.setattr(phones, "campaign_number", real_number)
        monkeypatch.setattr(quiethours, "timezones_for", real_zones)
        ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
        counts = {k: v for k, v in ex["counts"].items() if k != "seconds"}
        queued = sorted(
            [
                (d["contact_id"], d["to_number"], d["body"], d["segments"], d.get("not_before") is None)
                async for d in trackly.db[c.QUEUED].find({})
            ]
        )
        results[mode] = (counts, queued)
        if mode == "checked":
            assert parses["n"] == 0  # nothing parsed
        elif mode in ("parsed", "stale"):
            assert parses["n"] > 0
    base_counts, base_queued = results["parsed"]
    assert base_counts["skipped"]["invalid_phone"] > 0 and base_counts["skipped"]["frequency_cap"] > 0
    assert base_counts["queued"] == len(base_queued) > 0
    assert any(to not in PHONES for _, to, *_ in base_queued)  # some numbers were normalised
    for mode, got in results.items():
        assert got == results["parsed"], mode


async def test_upsert_stores_the_check(store: Store) -> None:
    """Inserted contacts get their check; an update refreshes a missing or stale one."""
    r = await upsert(store, 1, [{"phone": "(212) 736-1234"}, {"phone": "+40 721 234 567"}, {"phone": "+1555"}])
    assert (r.inserted, len(r.rejected)) == (2, 1)
    docs = {d["phone"]: d async for d in store[c.CONTACTS].find({})}
    assert set(docs) == {"+12127361234", "+40721234567"}
    for p, d in docs.items():
        assert d["phone_check"] == phones.phone_check(p)
        assert phones.contact_number(d)[0] == p
    assert phones.contact_number(docs["+40721234567"]) == ("+40721234567", ("Europe/Bucharest",))
    old = stale(docs["+12127361234"])["phone_check"]
    await store[c.CONTACTS].update_one({"phone": "+12127361234"}, {"$set": {"phone_check": old}})
    await store[c.CONTACTS].update_one({"phone": "+40721234567"}, {"$unset": {"phone_check": ""}})
    r = await upsert(store, 1, [{"phone": "+12127361234"}, {"phone": "+40721234567", "first_name": "Ana"}])
    assert r.updated == 2
    async for d in store[c.CONTACTS].find({}):
        assert d["phone_check"] == phones.phone_check(d["phone"])
