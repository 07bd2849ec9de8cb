"""Shared set-up of the tracking tests: a daemon HTTP server with infobip, twilio and cm instances, and seed data."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.operations.web import HttpServer
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import Account, Contact, FailedMessage, FailureReason, MessageSent, SendingList, utcnow

IB_TOKEN = "ib-path-token-0123456789abcdef"
CM_TOKEN = "cm-path-token-0123456789abcdef"
TW_SID = "AC" + "0" * 32
TW_TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "http://127.0.0.1:8080"  # tests/test.toml http.public_url: what Twilio signs

DRIVERS = {
    "infobip": {"api_key": "k", "webhook_token": IB_TOKEN},
    "twilio": {"account_sid": TW_SID, "auth_token": TW_TOKEN},
    "cm": {"product_token": "00000000-0000-0000-0000-000000000000", "webhook_token": CM_TOKEN},
}


@dataclass
class Daemon:
    """The daemon's real HTTP server on a free port, with a client session."""

    trackly: Trackly
    server: HttpServer
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> Store:
        return self.trackly.store

    async def post(
        self,
        path: str,
        body: bytes | str,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        data = body.encode() if isinstance(body, str) else body
        async with self.http.post(
            self.url + path, data=data, headers={"Content-Type": content_type, **(headers or {})}
        ) as resp:
            return resp.status, await resp.read()

    async def twilio(
        self, path: str, params: dict[str, str], *, token: str = TW_TOKEN, signed_params: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """POST a form-encoded Twilio callback, signed independently with the twilio package."""
        signature = RequestValidator(token).compute_signature(PUBLIC + path, signed_params or params)
        return await self.post(
            path, urlencode(params), "application/x-www-form-urlencoded", {"X-Twilio-Signature": signature}
        )


async def start_daemon(
    settings: Settings, store: Store, *, drivers: dict[str, dict[str, Any]] | None = None, **tracking: Any
) -> AsyncIterator[Daemon]:
    """Configure the three driver instances (plus ``drivers`` overrides), start the HTTP server, yield, stop."""
    settings.drivers.update({k: {**v, **(drivers or {}).get(k, {})} for k, v in DRIVERS.items()})
    for key, value in tracking.items():
        setattr(settings.tracking, key, value)
    trackly = await Trackly.open(settings, store=store)
    server = HttpServer(trackly)
    await server.start()
    http = aiohttp.ClientSession()
    try:
        yield Daemon(trackly, server, http)
    finally:
        await http.close()
        await server.stop(1)
        await trackly.close(close_store=False)


# ------------------------------------------------------------------------------------------------ seed data


async def seed_account(
    store: Store,
    *,
    webhook_url: str | None = None,
    secret: str | None = None,
    filter_bots: bool = False,
    account_id: int = 1,
) -> Account:
    acc = Account(
        id=account_id, name=f"acct{account_id}", webhook_url=webhook_url, webhook_secret=secret, filter_bots=filter_bots
    )
    await store[c.ACCOUNTS].insert_one(acc.to_doc())
    return acc


async def seed_list(
    store: Store,
    *,
    list_id: int = 1,
    account_id: int = 1,
    driver: str = "infobip",
    from_number: str = "+14155550100",
    help_text: str | None = None,
) -> SendingList:
    lst = SendingList(
        id=list_id,
        account_id=account_id,
        name=f"list{list_id}",
        driver=driver,
        from_number=from_number,
        help_text=help_text,
    )
    await store[c.SENDING_LISTS].insert_one(lst.to_doc())
    return lst


async def seed_contact(store: Store, *, contact_id: int, list_id: int = 1, phone: str) -> Contact:
    contact = Contact(id=contact_id, sending_list_id=list_id, phone=phone)
    await store[c.CONTACTS].insert_one(contact.to_doc())
    return contact


def message_fields(
    i: int, *, account_id: int = 1, list_id: int = 1, campaign_id: int | None = 7, variant_key: str | None = "A"
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "sending_list_id": list_id,
        "campaign_id": campaign_id,
        "execution_id": 3,
        "contact_id": 1000 + i,
        "creative_id": 789,
        "variant_key": variant_key,
        "from_number": "+14155550100",
        "to_number": f"+1415555{i % 10000:04d}",
        "body": "hello",
        "length": 5,
        "segments": 1,
        "sendtime": utcnow(),
    }


def figures_base(now: dt.datetime) -> dict[str, Any]:
    """The fields shared by the sent, failed and queued records the dashboard and /metrics tests count (account 1,
    list 7, campaign 3, sent at ``now``)."""
    return {
        "account_id": 1,
        "sending_list_id": 7,
        "campaign_id": 3,
        "from_number": "+1",
        "to_number": "+2",
        "body": "x",
        "length": 1,
        "sendtime": now,
    }


async def seed_sent(
    store: Store,
    n: int,
    *,
    provider: str = "infobip",
    start: int = 0,
    timestamp: dt.datetime | None = None,
    **fields: Any,
) -> list[MessageSent]:
    """``n`` MessageSent records (``delivered`` None), ids ``"%016x" % i``, provider ids ``"P<i>"``."""
    docs = [
        MessageSent(
            id=f"{i:016x}",
            provider=provider,
            timestamp=timestamp or utcnow() - dt.timedelta(minutes=5),
            **{"provider_message_id": f"P{i}", **message_fields(i), **fields},
        )
        for i in range(start, start + n)
    ]
    if docs:
        await store[c.SENT].insert_many([d.to_doc() for d in docs])
    return docs


async def seed_no_response(store: Store, i: int, *, provider: str = "infobip") -> FailedMessage:
    f = FailedMessage(
        id=f"{i:016x}",
        reason=FailureReason.NO_RESPONSE,
        provider=provider,
        ambiguous=True,
        detail="read timeout",
        **message_fields(i),
    )
    await store[c.FAILED].insert_one(f.to_doc())
    return f


def tri(value: Any) -> bool | None:
    """A stored tristate as None/True/False (nx-27017 returns booleans written by ``$set`` as 1/0)."""
    return None if value is None else bool(value)


async def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every document of the collections tracking writes, for nothing-changed assertions."""
    out = {}
    for name in (c.SENT, c.FAILED, c.OUTBOX, c.CONTACTS, c.EVENTS, c.INBOUND, c.QUEUED):
        out[name] = await store[name].find({}).sort("_id", 1).to_list(None)
    return out


# ------------------------------------------------------------------------------------------------ report bodies


def infobip_report(
    message_id: str,
    status: str = "DELIVERED_TO_HANDSET",
    group: str = "DELIVERED",
    error: str | None = None,
    done_at: str = "2026-11-29T10:00:00.000+0000",
) -> dict[str, Any]:
    """One v3 Infobip delivery report (providers.md 1.8)."""
    err = (
        {"groupId": 1, "groupName": "HANDSET_ERRORS", "id": 1, "name": error, "description": error, "permanent": True}
        if error
        else {
            "groupId": 0,
            "groupName": "OK",
            "id": 0,
            "name": "NO_ERROR",
            "description": "No Error",
            "permanent": False,
        }
    )
    gid = {"PENDING": 1, "UNDELIVERABLE": 2, "DELIVERED": 3, "EXPIRED": 4, "REJECTED": 5}[group]
    return {
        "bulkId": "B1",
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {"groupId": gid, "groupName": group, "id": 5, "name": status, "description": status},
        "error": err,
        "messageId": message_id,
        "to": "14155550123",
        "sender": "14155550100",
        "sentAt": "2026-11-29T09:59:00.000+0000",
        "doneAt": done_at,
        "messageCount": 1,
    }


def infobip_body(*reports: dict[str, Any]) -> str:
    return json.dumps({"results": list(reports)})


def cm_report(reference: str, code: str = "2", error: str = "0", description: str = "") -> str:
    """One CM status report (providers.md 3.4)."""
    return json.dumps(
        {
            "messages": {
                "msg": {
                    "received": "2026-11-29T10:00:00",
                    "to": "0014155550123",
                    "reference": reference,
                    "status": {"code": code, "errorCode": error, "errorDescription": description},
                    "operator": "20416",
                }
            }
        }
    )


def twilio_status(message_sid: str, status: str, error: str | None = None) -> dict[str, str]:
    params = {
        "AccountSid": TW_SID,
        "ApiVersion": "2010-04-01",
        "From": "+14155550100",
        "MessageSid": message_sid,
        "MessageStatus": status,
        "SmsSid": message_sid,
        "SmsStatus": status,
        "To": "+14155550123",
    }
    if error:
        params["ErrorCode"] = error
    return params


IB_STATUS = f"/webhooks/infobip/status/{IB_TOKEN}"
CM_STATUS = f"/webhooks/cm/status/{CM_TOKEN}"
