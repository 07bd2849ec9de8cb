"""Helpers of the admin API tests (test_api, test_cli_admin): a driver with a settings model of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trackly_exec import Accepted, Driver, DriverSettings, OutboundMessage, SendResult
from trackly_exec.app import Trackly
from trackly_exec.store import constants as c

from .campaign_fixtures import INSIDE, phone_for


class EchoSettings(DriverSettings):
    api_key: str = "k"


class EchoDriver(Driver[EchoSettings]):
    """Accepts everything; its settings model checks ``driver_settings`` like a real driver's."""

    settings_model = EchoSettings

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return [Accepted(message_id=m.id, provider_message_id=m.id) for m in messages]


# ---- shared by the admin API and CLI tests of issue 11 ("before sending") -------------------------------------

H = {"Authorization": "Bearer test-token"}


async def post(cl: Any, path: str, body: Any, status: int = 201) -> Any:
    """POST ``body`` to ``/api/v1{path}`` and check the status."""
    r = await cl.post(f"/api/v1{path}", json=body, headers=H)
    data = await r.json()
    assert r.status == status, data
    return data


async def add_contacts(cl: Any, list_id: int, n: int, first: int = 100) -> None:
    """``n`` contacts on the list through the API, ``+1212555<first>`` onwards, in a zone where it is early
    afternoon now (inside every quiet-hours window whatever time the tests run: in UTC they were outside it after
    21:00 UTC)."""
    from .executor_support import midday_zone

    rows = [{"phone": f"+1212555{k:04d}", "timezone": midday_zone()} for k in range(first, first + n)]
    await post(cl, f"/sending-lists/{list_id}/contacts", {"contacts": rows}, 200)


async def seed(cl: Any) -> dict[str, int]:
    """An account, a sending list (echo driver), an all-contacts audience and a one-variant creative."""
    acc = await post(cl, "/accounts", {"name": "Acme", "balance": 100, "webhook_secret": "s3cret-value"})
    lst = await post(
        cl,
        "/sending-lists",
        {
            "account_id": acc["id"],
            "name": "L",
            "driver": "echo",
            "driver_settings": {"batch_size": 5},
            "from_number": "+15550001111",
        },
    )
    aud = await post(
        cl, "/audiences", {"sending_list_id": lst["id"], "name": "all", "filter": {"subscribed": {"eq": True}}}
    )
    cre = await post(
        cl,
        "/creatives",
        {
            "account_id": acc["id"],
            "name": "c",
            "variants": [{"key": "a", "body": "Hi {first_name|there}", "weight": 1}],
        },
    )
    return {"account": acc["id"], "list": lst["id"], "audience": aud["id"], "creative": cre["id"]}


def campaign_body(ids: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    """A campaign body on ``seed``'s account, list, audience and creative; ``kw`` adds or replaces fields."""
    return {
        "account_id": ids["account"],
        "sending_list_id": ids["list"],
        "audience_ids": [ids["audience"]],
        "creative_id": ids["creative"],
        **kw,
    }


async def create_campaign(cl: Any, ids: Mapping[str, Any], **kw: Any) -> Any:
    """POST ``campaign_body(ids, **kw)`` to /campaigns (201)."""
    return await post(cl, "/campaigns", campaign_body(ids, **kw))


async def run_cli(url: str, *argv: str) -> int:
    """``trackly ARGV`` against the admin API at ``url`` (the blocking CLI in a thread beside the server)."""
    import asyncio

    from trackly_exec.cli import main as cli

    return await asyncio.to_thread(cli.main, [*argv, "--api", url, "--token", "test-token"])


async def cli_create_campaign(url: str, spec: Mapping[str, Any], **fields: Any) -> None:
    """``trackly campaign create --json`` with ``spec`` plus ``fields``; the command must succeed."""
    import json

    assert await run_cli(url, "campaign", "create", "--json", json.dumps({**spec, **fields})) == 0


async def setup_list(trackly: Trackly) -> None:
    await trackly.db[c.ACCOUNTS].insert_one({"_id": 1, "name": "A", "balance": 10.0})
    await trackly.db[c.SENDING_LISTS].insert_one(
        {"_id": 1, "account_id": 1, "name": "L", "driver": "echo", "driver_settings": {}, "from_number": "+15550001111"}
    )


async def seed_direct(trackly: Trackly, n: int = 20, body: str = "Hi {first_name|there}!") -> dict[str, Any]:
    """Written straight to the store: an account, list 1 (price 0.01), ``n`` contacts (contact 1 unsubscribed),
    audience 1 (everyone) and creative 1 with one variant; returns a campaign body."""
    await setup_list(trackly)
    await trackly.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"price_per_segment": 0.01}})
    await trackly.db[c.CONTACTS].insert_many(
        [
            {
                "_id": i,
                "sending_list_id": 1,
                "phone": phone_for(i),
                "first_name": f"Ann{i}",
                "attributes": {"city": "Oslo"},
                "timezone": INSIDE,
                "subscribed": i != 1,
            }
            for i in range(1, n + 1)
        ]
    )
    await trackly.db[c.AUDIENCES].insert_one({"_id": 1, "sending_list_id": 1, "name": "everyone", "filter": {}})
    await trackly.db[c.CREATIVES].insert_one(
        {
            "_id": 1,
            "account_id": 1,
            "name": "hello",
            "selection": "split",
            "variants": [{"key": "a", "body": body, "weight": 1}],
        }
    )
    return {"account_id": 1, "sending_list_id": 1, "audience_ids": [1], "creative_id": 1}
