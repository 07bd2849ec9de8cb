"""Shared plumbing of the executor benchmarks: services on free loopback ports, seeding, fakes as processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trackly_exec.store import constants as c  # noqa: E402
from trackly_exec.store.client import Store  # noqa: E402
from trackly_exec.store.embedded import EmbeddedMongo, free_port  # noqa: E402
from trackly_exec.store.models import utcnow  # noqa: E402
from trackly_exec.testing.seeding import queued_message  # noqa: E402

TRACKLY = str(Path(sys.executable).with_name("trackly"))


def wait_http(url: str, timeout: float = 60.0) -> None:  # a loaded machine starts a fake slowly
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def ledger(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_fake/ledger", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (0 when unknown): the store's work, which a loaded
    machine disturbs far less than throughput."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def services(
    *, fakes: tuple[str, ...] = ("infobip", "cm", "twilio"), in_memory: bool = True
) -> Iterator[dict[str, Any]]:
    """An nx-27017 store, a redis-server and the provider fakes, each its own process on a free port."""
    tmp = Path(tempfile.mkdtemp(prefix="trackly-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    mongo = EmbeddedMongo(tmp / "mongo", in_memory=in_memory)
    try:
        mongo.start()
        mongo.wait_ready()
        redis_port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        urls: dict[str, str] = {}
        fake_pids: dict[str, int] = {}
        for name in fakes:
            port = free_port()
            # reports far in the future: nothing listens for them here and they would only burn CPU
            procs.append(
                subprocess.Popen(
                    [TRACKLY, "fake-provider", name, "--port", str(port), "--dlr-delay", "1e6"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
            fake_pids[name] = procs[-1].pid
        for url in urls.values():
            wait_http(f"{url}/_fake/ledger")
        yield {
            "mongo_uri": mongo.uri,
            "mongo_pid": mongo.proc.pid if mongo.proc is not None else None,
            "redis_url": f"redis://127.0.0.1:{redis_port}/0",
            "fakes": urls,
            "fake_pids": fake_pids,
            "tmp": tmp,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        mongo.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def fake_credentials(name: str) -> dict[str, Any]:
    """The default credentials of a fake (what ``trackly fake-provider NAME`` accepts)."""
    from trackly_exec.cli.fake_provider import load_fake_class

    fake = load_fake_class(name)()
    fake.port = 1  # driver_settings() includes the URL; only the credentials are wanted
    return {k: v for k, v in fake.driver_settings().items() if k != "base_url"}


async def seed_lists(
    store: Store,
    n: int,
    lists: dict[int, str],
    *,
    rate: int = 0,
    price: float = 0.0,
    body: str = "Your code is {i}. Reply STOP to opt out",
    contacts: bool = True,
    hashed_ids: bool = False,
) -> list[str]:
    """``n`` queued messages spread over ``lists`` ({list id: driver}), with their contacts. Returns ids.

    ``hashed_ids``: ids spread over the hexadecimal range like real ones (HMAC of the contact), instead of ordered
    ones (several executor processes take ranges of ids)."""
    db = store.db
    now = utcnow()
    await db[c.ACCOUNTS].update_one({"_id": 1}, {"$set": {"name": "bench", "balance": 1e12}}, upsert=True)
    for lid, driver in lists.items():
        await db[c.SENDING_LISTS].update_one(
            {"_id": lid},
            {
                "$set": {
                    "account_id": 1,
                    "name": f"bench-{driver}",
                    "driver": driver,
                    "driver_settings": {},
                    "from_number": "+15550000000",
                    "rate_limit_per_minute": rate,
                    "price_per_segment": price,
                    "blocked_words": ["casino"],
                    "active": True,
                    # the whole day (bar one minute): the quiet-hours check still runs per message
                    "quiet_hours": {"start": "00:00", "end": "23:59", "default_timezone": "UTC"},
                    "created_at": now,
                }
            },
            upsert=True,
        )
    ids: list[str] = []
    list_ids = list(lists)
    batch_q: list[dict[str, Any]] = []
    batch_c: list[dict[str, Any]] = []
    sendtime = now - dt.timedelta(seconds=5)
    base = int(time.time() * 1000) % 10_000_000 * 1_000_000
    for k in range(n):
        lid = list_ids[k % len(list_ids)]
        cid = base + k
        phone = f"+1202{(k % 10_000_000):07d}"
        mid = hashlib.sha256(str(cid).encode()).hexdigest()[:16] if hashed_ids else f"{cid:016x}"
        ids.append(mid)
        batch_q.append(
            queued_message(
                mid,
                sending_list_id=lid,
                contact_id=cid,
                to_number=phone,
                body=body.format(i=k),
                sendtime=sendtime,
                created_at=now,
            )
        )
        if contacts:
            batch_c.append(
                {
                    "_id": cid,
                    "sending_list_id": lid,
                    "phone": phone,
                    "subscribed": True,
                    "blocked": False,
                    "timezone": None,
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                }
            )
        if len(batch_q) >= 5000:
            await db[c.QUEUED].insert_many(batch_q, ordered=False)
            if batch_c:
                await db[c.CONTACTS].insert_many(batch_c, ordered=False)
            batch_q, batch_c = [], []
    if batch_q:
        await db[c.QUEUED].insert_many(batch_q, ordered=False)
    if batch_c:
        await db[c.CONTACTS].insert_many(batch_c, ordered=False)
    return ids


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def cpu_count() -> int:
    return os.cpu_count() or 1


def record(
    figure: str,
    value: float,
    unit: str,
    *,
    floor: float | None = None,
    ratio: float | None = None,
    us_per_message: float | None = None,
    rss_mb: float | bool | None = True,
    note: str = "",
) -> None:
    """Append one figure to the JSON-lines file named by ``TRACKLY_BENCH_JSON`` (``make bench`` sets it;
    ``bench/report.py`` prints the table). ``rss_mb``: True (default) records this process's peak RSS, None none.
    Without the variable nothing is written."""
    path = os.environ.get("TRACKLY_BENCH_JSON")
    if not path:
        return
    row = {
        "bench": Path(sys.argv[0]).stem,
        "figure": figure,
        "value": value,
        "unit": unit,
        "floor": floor,
        "ratio": ratio,
        "us_per_message": us_per_message,
        "rss_mb": peak_rss_mb() if rss_mb is True else rss_mb,
        "note": note,
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
