"""Estimate (dry run): the same evaluation code as a real run, with the queue insert replaced."""

from __future__ import annotations

import pytest

from trackly_exec.app import Trackly
from trackly_exec.campaigns.estimate import CannotRun, estimate
from trackly_exec.campaigns.scheduler import trigger
from trackly_exec.store import constants as c
from trackly_exec.store.models import utcnow

from .campaign_fixtures import contact, register_echo, seed_campaign, zone_where

COMPARED = (
    "per_audience",
    "audience_total",
    "overlap",
    "unique",
    "skipped",
    "queued",
    "held_quiet_hours",
    "evaluated",
    "segments",
    "encodings",
    "links",
)


async def _seed(trackly: Trackly, policy: str = "exclude") -> dict[str, object]:
    inside, outside = zone_where(True), zone_where(False)
    people = [contact(i, timezone=inside) for i in range(1, 201)]
    people[0]["subscribed"] = False
    people[1]["blocked"] = True
    people[2]["phone"] = "+1555"  # not a valid number
    people[3]["in_workflow"] = True
    people[4]["timezone"] = outside  # quiet hours
    people[5]["timezone"] = outside
    people[6]["attributes"] = {}  # {city} has no default: skipped
    people[7]["last_sent_at"] = utcnow()  # frequency cap via the contact
    for p in people[10:40]:
        p["first_name"] = "Zoë 🙂"  # UCS-2
    for p in people[40:60]:
        p["attributes"] = {"city": "Paris" + " and a much longer town name" * 5}  # 2 segments
    camp = await seed_campaign(
        trackly.store,
        contacts=people,
        audiences=[
            {"_id": 1, "sending_list_id": 1, "filter": {"id": {"lte": 120}}},
            {"_id": 2, "sending_list_id": 1, "filter": {"id": {"gt": 100}}},
            {"_id": 3, "sending_list_id": 1, "contact_ids": [1, 2, 3, 150, 151]},
        ],
        variants=[
            {"key": "A", "body": "Hi {first_name|there}, see {city}: https://shop.example.com/x", "weight": 1},
            {"key": "B", "body": "Yo {first_name|you}, see {city}: https://shop.example.com/y", "weight": 1},
        ],
        list_kw={"cooldown_minutes": 60, "price_per_segment": 0.0075},
        campaign_kw={"exclude_in_workflow": True, "track_links": True, "quiet_hours_policy": policy},
    )
    await trackly.db[c.SENT].insert_one(
        {"_id": "m1", "sending_list_id": 1, "account_id": 1, "to_number": people[8]["phone"], "timestamp": utcnow()}
    )
    return camp


@pytest.mark.parametrize("policy", ["exclude", "hold"])
async def test_dry_run_and_real_run_agree(trackly: Trackly, policy: str) -> None:
    """An estimate queues nothing and creates no execution; a real run of the same campaign then records
    exactly the same counts (per audience, overlap, unique, skipped by reason, queued, segments, encodings)."""
    register_echo()
    camp = await _seed(trackly, policy)
    est = await estimate(trackly, camp)
    assert await trackly.db[c.QUEUED].count_documents({}) == 0
    assert await trackly.db[c.SHORT_LINKS].count_documents({}) == 0
    assert await trackly.db[c.EXECUTIONS].count_documents({}) == 0
    assert await trackly.db[c.RESERVATIONS].count_documents({}) == 0  # no cooldown reservation taken either
    k = est["counts"]
    assert k["per_audience"] == {"1": 120, "2": 100, "3": 5} and k["overlap"] == 25 and k["unique"] == 200
    assert k["skipped"]["quiet_hours"] == (2 if policy == "exclude" else 0)
    assert k["held_quiet_hours"] == (0 if policy == "exclude" else 2)
    assert set(k["encodings"]) == {"GSM-7", "UCS-2"} and k["segments"] > k["queued"]
    assert est["cost"] == pytest.approx(k["segments"] * 0.0075) and est["queued"] == k["queued"]

    eid = await trigger(trackly, camp["_id"])
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    real = ex["counts"]
    assert {key: k[key] for key in COMPARED} == {key: real[key] for key in COMPARED}
    assert sum(k["variants"].values()) == sum(real["variants"].values()) == real["queued"]
    queued = await trackly.db[c.QUEUED].find({"execution_id": eid}).to_list(None)
    assert len(queued) == k["queued"] and sum(d["segments"] for d in queued) == k["segments"]


async def test_estimate_reports_why_a_campaign_cannot_run(trackly: Trackly) -> None:
    """A campaign that would fail validation (archived creative) raises with the execution's reason."""
    register_echo()
    camp = await _seed(trackly)
    await trackly.db[c.CREATIVES].update_one({"_id": 1}, {"$set": {"archived": True}})
    with pytest.raises(CannotRun, match="creative 1 is archived"):
        await estimate(trackly, camp)
