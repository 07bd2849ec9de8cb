"""Helpers of the executor tests: seed a list + contacts + queue, build a Trackly with executor overrides,
write a config file for executor subprocesses, and check the one-record-per-message invariant."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from trackly_exec.app import Trackly
from trackly_exec.config import Settings
from trackly_exec.executor.coordinator import Coordinator
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store
from trackly_exec.store.models import utcnow
from trackly_exec.testing.fakes.cm import CMFake
from trackly_exec.testing.fakes.infobip import InfobipFake
from trackly_exec.testing.fakes.twilio import TwilioFake
from trackly_exec.testing.seeding import config_toml, queued_message

ROOT = Path(__file__).resolve().parent.parent
#: the provider fakes the ``fakes`` fixture (conftest) starts
FAKES = {"infobip": InfobipFake, "cm": CMFake, "twilio": TwilioFake}


def midday_zone(now: dt.datetime | None = None) -> str:
    """A fixed-offset zone where it is early afternoon now (so quiet hours never interfere by accident)."""
    now = now or utcnow()
    for offset in range(-12, 15):
        if 12 <= (now + dt.timedelta(hours=offset)).hour <= 14:
            return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}" if offset else "UTC"
    raise AssertionError("no zone found")


def zone_at_hour(hour: int) -> str:
    """A fixed-offset zone where the local hour is ``hour`` now."""
    now = utcnow()
    for offset in range(-12, 15):
        if (now + dt.timedelta(hours=offset)).hour == hour:
            return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}" if offset else "UTC"
    raise AssertionError(hour)


def with_executor(settings: Settings, drivers: dict[str, dict[str, Any]] | None = None, **executor: Any) -> Settings:
    """``settings`` with executor keys and driver instances replaced."""
    update: dict[str, Any] = {"executor": settings.executor.model_copy(update=executor)}
    if drivers is not None:
        update["drivers"] = drivers
    return settings.model_copy(update=update)


async def open_trackly(settings: Settings, store: Store, *, redis: bool = True) -> Trackly:
    if not redis:
        settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": None})})
    return await Trackly.open(settings, store=store)


async def seed(
    store: Store,
    n: int,
    *,
    list_id: int = 1,
    account_id: int = 1,
    driver: str = "infobip",
    rate: int = 0,
    price: float = 0.0,
    balance: float = 1000.0,
    body: str = "Hello {i}",
    sendtime: dt.datetime | None = None,
    blocked_words: list[str] | None = None,
    quiet: dict[str, str] | None = None,
    contact_tz: str | None = "midday",
    execution_id: int = 1,
    first_contact: int = 1,
    hashed_ids: bool = False,
) -> list[str]:
    """An account, a sending list, ``n`` contacts and ``n`` queued messages. Returns the message ids (FIFO).

    ``hashed_ids``: ids spread over the whole hexadecimal range like real ones (HMAC), instead of ordered ids
    (several executor processes each take a range of ids)."""
    now = utcnow()
    sendtime = sendtime or now - dt.timedelta(seconds=1)
    tz = midday_zone(now) if contact_tz == "midday" else contact_tz
    db = store.db
    await db[c.ACCOUNTS].update_one(
        {"_id": account_id},
        {"$setOnInsert": {"name": f"acc{account_id}", "balance": balance, "created_at": now}},
        upsert=True,
    )
    await db[c.SENDING_LISTS].update_one(
        {"_id": list_id},
        {
            "$set": {
                "account_id": account_id,
                "name": f"list{list_id}",
                "driver": driver,
                "driver_settings": {},
                "from_number": "+15550000000",
                "rate_limit_per_minute": rate,
                "price_per_segment": price,
                "blocked_words": blocked_words or [],
                "active": True,
                "cooldown_minutes": 0,
                "quiet_hours": quiet or {"start": "08:00", "end": "21:00", "default_timezone": "UTC"},
                "created_at": now,
            }
        },
        upsert=True,
    )
    contacts, queued, ids = [], [], []
    for k in range(n):
        cid = first_contact + k
        phone = f"+1202{list_id:03d}{cid:04d}"[:12]
        contacts.append(
            {
                "_id": cid,
                "sending_list_id": list_id,
                "phone": phone,
                "timezone": tz,
                "subscribed": True,
                "blocked": False,
                "attributes": {},
                "created_at": now,
                "updated_at": now,
            }
        )
        mid = f"{list_id:04x}{execution_id:04x}{cid:08x}"
        if hashed_ids:
            mid = hashlib.sha256(mid.encode()).hexdigest()[:16]
        ids.append(mid)
        queued.append(
            queued_message(
                mid,
                sending_list_id=list_id,
                account_id=account_id,
                execution_id=execution_id,
                contact_id=cid,
                to_number=phone,
                body=body.format(i=k),
                sendtime=sendtime,
                created_at=now,
            )
        )
    if contacts:
        await db[c.CONTACTS].insert_many(contacts)
        await db[c.QUEUED].insert_many(queued)
    return ids


async def ids_in(store: Store, collection: str, flt: dict[str, Any] | None = None) -> list[str]:
    return [d["_id"] async for d in store.db[collection].find(flt or {}, {"_id": 1})]


async def assert_one_record_each(store: Store, ids: list[str]) -> dict[str, int]:
    """Every message is in exactly one of queue / MessageSent / FailedMessage; returns the split."""
    where: dict[str, list[str]] = {}
    for name in (c.QUEUED, c.SENT, c.FAILED):
        for mid in await ids_in(store, name):
            where.setdefault(mid, []).append(name)
    missing = [m for m in ids if m not in where]
    double = {m: w for m, w in where.items() if len(w) > 1}
    assert not missing, f"{len(missing)} messages have no record, e.g. {missing[:3]}"
    assert not double, f"{len(double)} messages have two records, e.g. {list(double.items())[:3]}"
    split = dict.fromkeys((c.QUEUED, c.SENT, c.FAILED), 0)
    for w in where.values():
        split[w[0]] += 1
    return split


def write_config(path: Path, settings: Settings, drivers: dict[str, dict[str, Any]], **executor: Any) -> Path:
    """A TOML config for an executor subprocess talking to the test's store, Redis and fakes."""
    sections: dict[str, dict[str, Any]] = {
        "daemon": {"data_dir": str(settings.daemon.data_dir)},
        "mongo": {"uri": settings.mongo.uri.get_secret_value(), "database": settings.mongo.database},
    }
    if settings.redis.url is not None:
        sections["redis"] = {"url": settings.redis.url.get_secret_value()}
    sections |= {"http": {"enabled": False}, "scheduler": {"enabled": False}, "executor": executor}
    sections |= {f"drivers.{name}": values for name, values in drivers.items()}
    path.write_text(config_toml(sections))
    return path


def runner_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trackly_exec.executor.coordinator", "-c", str(config), *extra]


def drivers_for(fakes: dict[str, Any], **extra: Any) -> dict[str, dict[str, Any]]:
    """``[drivers.NAME]`` settings pointing at the started fakes (the ``fakes`` fixture)."""
    return {name: {**fake.driver_settings(), "timeout_seconds": 2.0, **extra} for name, fake in fakes.items()}


async def executor(
    settings: Settings, store: Store, fakes: dict[str, Any], *, redis: bool = True, **cfg: Any
) -> Coordinator:
    """A Coordinator on its own Trackly whose drivers talk to ``fakes``; ``cfg`` overrides executor keys."""
    cfg.setdefault("retry_initial_backoff_seconds", 0.01)
    trackly = await open_trackly(with_executor(settings, drivers_for(fakes), **cfg), store, redis=redis)
    return Coordinator(trackly)


async def run_process(config: Path, failpoint: str | None = None, timeout: float = 50.0) -> tuple[int, str]:
    """Run ``trackly-executor --burst`` as a process (optionally with a failpoint); its exit code and output."""
    env = dict(os.environ)
    env.pop("TRACKLY_FAILPOINT", None)
    if failpoint:
        env["TRACKLY_FAILPOINT"] = failpoint
    proc = await asyncio.create_subprocess_exec(
        *runner_cmd(config, "--burst"), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()
