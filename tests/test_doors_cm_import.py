"""Issue 8 part 7: CM's gateway inbound format is accepted (a STOP in it counts), and the bulk contacts route's
body limit agrees with its 10,000-row schema (413 naming the limit beyond it)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest

from trackly_exec.api.models import MAX_BULK_CONTACTS
from trackly_exec.store import constants as c

from .tracking_support import CM_TOKEN, Daemon, seed_account, seed_contact, seed_list, tri

H = {"Authorization": "Bearer test-token"}
PHONE = "+14155550123"
CM_INBOUND = f"/webhooks/cm/inbound/{CM_TOKEN}"


async def _subscribed(d: Daemon) -> bool | None:
    return tri((await d.store[c.CONTACTS].find_one({"_id": 1}))["subscribed"])


GATEWAY = {"reference": "ABC123", "from": "0014155550123", "to": "0014155550100", "body": "STOP"}


@pytest.mark.parametrize(
    "body,content_type",
    [
        (json.dumps(GATEWAY), "application/json"),
        (json.dumps({"messages": {"msg": GATEWAY}}), "application/json"),
        (json.dumps([GATEWAY]), "application/json"),
        (json.dumps({k.upper(): v for k, v in GATEWAY.items()}), "application/json"),
        (urlencode(GATEWAY), "application/x-www-form-urlencoded"),
    ],
)
async def test_cm_gateway_inbound_stop(daemon: Daemon, body: str, content_type: str) -> None:
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="cm")
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    status, text = await daemon.post(CM_INBOUND, body, content_type)
    assert status == 200, text
    assert await _subscribed(daemon) is False
    doc = await daemon.store[c.INBOUND].find_one({})
    assert doc is not None and doc.get("text") == "STOP"


async def test_cm_inbound_without_text_is_400(daemon: Daemon) -> None:
    await seed_account(daemon.store)
    await seed_list(daemon.store, driver="cm")
    await seed_contact(daemon.store, contact_id=1, phone=PHONE)
    for bad in (
        {"reference": "x", "from": "0014155550123", "to": "0014155550100"},
        {"from": "0014155550123", "body": {"nested": 1}},
    ):
        assert (await daemon.post(CM_INBOUND, json.dumps(bad)))[0] == 400
    assert await _subscribed(daemon) is True


async def _list(d: Daemon) -> int:
    async with d.http.post(d.url + "/api/v1/accounts", json={"name": "a"}, headers=H) as r:
        acc = await r.json()
    async with d.http.post(
        d.url + "/api/v1/sending-lists",
        headers=H,
        json={"account_id": acc["id"], "name": "l", "driver": "infobip", "from_number": "+15550001111"},
    ) as r:
        return int((await r.json())["id"])


async def test_ten_thousand_rows_fit_the_body_limit(daemon: Daemon) -> None:
    """10,000 ordinary rows (~1.3 MB, over the default 1 MiB http.max_body_bytes) are accepted on the import route."""
    lid = await _list(daemon)
    rows = [
        {
            "phone": f"+1212{5550000 + i:07d}",
            "first_name": f"Name{i}",
            "timezone": "America/New_York",
            "attributes": {"tier": "gold", "zip": "10001", "segment": "spring-2026"},
        }
        for i in range(MAX_BULK_CONTACTS)
    ]
    raw = json.dumps({"contacts": rows}).encode()
    assert len(raw) > daemon.trackly.settings.http.max_body_bytes
    async with daemon.http.post(
        f"{daemon.url}/api/v1/sending-lists/{lid}/contacts",
        data=io.BytesIO(raw),
        headers={**H, "Content-Type": "application/json"},
    ) as r:
        data: Any = await r.json()
        assert r.status == 200, data
    assert data["inserted"] == MAX_BULK_CONTACTS and data["rejected"] == []


async def test_over_the_limit_is_413_naming_it(daemon: Daemon) -> None:
    lid = await _list(daemon)
    big = json.dumps({"contacts": [{"phone": "+12125550100", "first_name": "x" * 200}] * 60_000}).encode()
    async with daemon.http.post(
        f"{daemon.url}/api/v1/sending-lists/{lid}/contacts",
        data=io.BytesIO(big),
        headers={**H, "Content-Type": "application/json"},
    ) as r:
        data = await r.json()
        assert r.status == 413 and data["error"] == "too_large"
    assert "10240000 bytes" in data["message"] and "10000 contacts" in data["message"]
    # other routes keep http.max_body_bytes, and say so
    body = json.dumps({"name": "x" * (daemon.trackly.settings.http.max_body_bytes + 10)}).encode()
    async with daemon.http.post(
        f"{daemon.url}/api/v1/accounts", data=io.BytesIO(body), headers={**H, "Content-Type": "application/json"}
    ) as r:
        data = await r.json()
        assert r.status == 413 and "1048576 bytes" in data["message"] and "http.max_body_bytes" in data["message"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: checked after reading
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    async with daemon.http.post(
        f"{daemon.url}/api/v1/accounts", data=chunked(), headers={**H, "Content-Type": "application/json"}
    ) as r:
        assert r.status == 413 and "http.max_body_bytes" in (await r.json())["message"]
