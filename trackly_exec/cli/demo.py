"""``trackly demo``: a 10,000-contact campaign end to end on a fresh machine, in well under a minute.

It starts the daemon in-process on the embedded store (a temporary data directory, or ``--data-dir``) with
the Infobip fake in-process (it posts delivery reports to the daemon's status webhook; about 3% come back
undelivered and a few numbers are refused at send time), all on free loopback ports. Then, through the real
admin API, it creates an account, a sending list on the fake, 10,000 contacts in two overlapping audiences
(with unsubscribed, invalid-phone, in-workflow, recently-messaged and quiet-hours contacts among them: the
last ones live in time zones where it is night now), a creative with two variants and a tracked link, and a
campaign that excludes in-workflow contacts; triggers it; shows live progress read from the store; clicks a
few short links through ``/l/{code}`` (link previews first, flagged as bots, then people); and prints the
product document's "Execution Timeline" with the measured times, and the arithmetic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from trackly_exec.cli.demo_contacts import make_contacts
from trackly_exec.config import Settings
from trackly_exec.errors import ConfigError
from trackly_exec.logs import configure_logging, get_logger
from trackly_exec.store import constants as c
from trackly_exec.store import phones
from trackly_exec.store.client import count, newest
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.embedded import free_port
from trackly_exec.store.models import utcnow

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # "is set" for dates ($ne None is unreliable on nx-27017)
log = get_logger(__name__)

BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"
PREVIEW = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
URL = "https://shop.example.com/spring-sale?utm_source=sms"
#: How long the progress bars wait for every send and delivery report once triggered (a few seconds normally;
#: a loaded 2-core machine can need minutes): past it the demo reports what is still outstanding.
WAIT_SECONDS = 600.0


@dataclass
class DemoResult:
    """What the demo measured (the test checks the arithmetic on it)."""

    contacts: int
    campaign_id: int = 0
    execution_id: int = 0
    audiences: dict[str, int] = field(default_factory=dict)  # name -> id
    counts: JsonObject = field(default_factory=dict)  # the execution's counts
    stats: JsonObject = field(default_factory=dict)  # GET /campaigns/{id}/stats
    timeline: list[tuple[str, str]] = field(default_factory=list)
    sent_records: int = 0
    failed_records: int = 0
    left_in_queue: int = 0
    in_both: int = 0
    provider: dict[str, int] = field(default_factory=dict)  # the fake's ledger summary
    public_url: str = ""
    token: str = ""
    seconds: float = 0.0
    interrupted: bool = False


# --------------------------------------------------------------------------------------------- display


class Bars:
    """Live progress bars (redrawn in place on a TTY, one line per second otherwise)."""

    NAMES = ("evaluated", "queued", "sent", "delivered")

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty, self.drawn, self.last = out, out.isatty(), False, 0.0

    def draw(self, values: dict[str, tuple[int, int]], *, final: bool = False) -> None:
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{len(self.NAMES)}F")
            for name in self.NAMES:
                done, total = values[name]
                frac = min(done / total, 1.0) if total else 0.0
                self.out.write(f"  {name:<10} [{'#' * int(frac * 40):<40}] {done:>7,}/{total:<7,}\x1b[K\n")
            self.drawn = True
            self.out.flush()
        elif final or time.monotonic() - self.last >= 1.0:
            self.last = time.monotonic()
            print("  " + "  ".join(f"{k} {v[0]:,}/{v[1]:,}" for k, v in values.items()), file=self.out, flush=True)


def progress_values(
    counts: JsonObject, *, audience: int, evaluated: bool, processed: int, reported: int, sent: int
) -> dict[str, tuple[int, int]]:
    """The bars' ``(done, total)`` from an execution's ``counts`` and the records so far.

    The total of "evaluated" and "queued" is the audience size (the contacts the demo put in its two audiences,
    which the evaluation reads in full), fixed from the first frame, not the unique contacts streamed so far,
    which grows with the evaluation. "sent" counts its records against the audience until the evaluation ends,
    then against the messages it queued (the skipped contacts are never sent); "delivered" counts the reports
    of the messages a provider accepted.
    """
    total = max(audience, int(counts.get("unique", 0)))
    queued = int(counts.get("queued", 0))
    return {
        "evaluated": (int(counts.get("evaluated", 0)), total),
        "queued": (queued, total),
        "sent": (processed, queued if evaluated else total),
        "delivered": (reported, sent),
    }


def _clock(t: dt.datetime | None, t0: dt.datetime) -> str:
    if t is None:
        return "   -   "
    s = max((t - t0).total_seconds(), 0.0)
    return f"{int(s // 60)}:{s % 60:06.3f}"


# --------------------------------------------------------------------------------------------- the run


class Demo:
    """One demo run: its ports, token, fake provider, daemon and what it measured."""

    def __init__(self, contacts: int, out: TextIO, data_dir: Path | None, seed: int) -> None:
        self.n, self.out, self.rng = contacts, out, random.Random(seed)
        self.data_dir = data_dir
        self.port = free_port()
        self.token = secrets.token_urlsafe(16)
        self.public_url = f"http://127.0.0.1:{self.port}"
        self.result = DemoResult(contacts=contacts, public_url=self.public_url, token=self.token)
        self.http: aiohttp.ClientSession | None = None
        self.first_queued: dt.datetime | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def settings(self, data_dir: Path, fake_url: str, api_key: str, in_memory: bool) -> Settings:
        return Settings(
            daemon={"data_dir": data_dir, "log_level": "warning", "shutdown_grace_seconds": 5},
            mongo={"uri": "embedded", "database": "trackly", "embedded_in_memory": in_memory},
            http={"host": "127.0.0.1", "port": self.port, "public_url": self.public_url, "api_tokens": [self.token]},
            executor={"poll_interval_seconds": 0.05},
            scheduler={"poll_interval_seconds": 1.0},
            tracking={"bot_click_seconds": 1.0},
            drivers={"infobip": {"base_url": fake_url, "api_key": api_key}},
            _env_prefix="TRACKLY_DEMO_",  # hermetic: the user's TRACKLY_* variables are for their daemon
        )

    async def api(self, method: str, path: str, body: Any = None, *, timeout: float | None = 120.0) -> Any:
        assert self.http is not None
        async with self.http.request(
            method,
            f"{self.public_url}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            data = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {r.status} {data}")
            return data

    async def seed(self, trackly: Any) -> tuple[int, int, list[int], int]:
        """Account, list, contacts, audiences, creative; returns (account, list, audiences, creative)."""
        now = utcnow()
        acc = await self.api("POST", "/accounts", {"name": "Demo Shop", "balance": 10_000.0})
        lst = await self.api(
            "POST",
            "/sending-lists",
            {
                "account_id": acc["id"],
                "name": "Spring promo",
                "driver": "infobip",
                "from_number": "+15550100999",
                "rate_limit_per_minute": 500_000,
                "cooldown_minutes": 60,
                "price_per_segment": 0.0075,
            },
        )
        rows, groups = make_contacts(self.n, self.rng, now)
        bad = set(groups["invalid_phone"])
        valid = [r for r in rows if r["phone"] not in bad]
        sem = asyncio.Semaphore(4)

        async def upload(chunk: list[JsonObject]) -> None:
            async with sem:
                await self.api("POST", f"/sending-lists/{lst['id']}/contacts", {"contacts": chunk})

        await asyncio.gather(*(upload(valid[i : i + 1000]) for i in range(0, len(valid), 1000)))
        # Rows the API refuses (invalid numbers), as an older import would have left them in the store (with the
        # phone check our writers store: the evaluation counts them invalid without parsing them again).
        invalid = [r for r in rows if r["phone"] in bad]
        if invalid:
            ids = await trackly.store.next_ids(c.CONTACTS, len(invalid))
            await trackly.db[c.CONTACTS].insert_many(
                [
                    {
                        "_id": cid,
                        "sending_list_id": lst["id"],
                        "subscribed": True,
                        "blocked": False,
                        "in_workflow": False,
                        "first_name": r.get("first_name"),
                        "last_name": None,
                        "last_sent_at": None,
                        "created_at": now,
                        "updated_at": now,
                        **{k: v for k, v in r.items() if k != "first_name"},
                        "phone_check": phones.phone_check(str(r["phone"])),
                    }
                    for cid, r in zip(ids, invalid, strict=True)
                ]
            )
        if groups["frequency_cap"]:  # messaged 10 minutes ago, inside the list's 60-minute cooldown
            await trackly.db[c.CONTACTS].update_many(
                {"sending_list_id": lst["id"], "phone": {"$in": groups["frequency_cap"]}},
                {"$set": {"last_sent_at": now - dt.timedelta(minutes=10)}},
            )
        auds = []
        for key in ("a", "b"):
            aud = await self.api(
                "POST",
                "/audiences",
                {
                    "sending_list_id": lst["id"],
                    "name": f"Audience {key.upper()}",
                    "filter": {f"attributes.in_{key}": {"eq": True}},
                },
            )
            auds.append(aud["id"])
            self.result.audiences[aud["name"]] = aud["id"]
        cre = await self.api(
            "POST",
            "/creatives",
            {
                "account_id": acc["id"],
                "name": "Spring sale",
                "variants": [
                    {
                        "key": "a",
                        "body": f"Hi {{first_name|there}}! Spring sale: 20% off everything today. {URL}",
                        "weight": 50,
                    },
                    {"key": "b", "body": f"{{first_name|Hello}}, your spring discount is waiting: {URL}", "weight": 50},
                ],
            },
        )
        self.say(
            f"  seeded {self.n:,} contacts on sending list {lst['id']} "
            f"({', '.join(f'{k} {len(v):,}' for k, v in groups.items())})"
        )
        return acc["id"], lst["id"], auds, cre["id"]

    async def progress(self, trackly: Any, fake: Any, trigger: asyncio.Task[Any], deadline: float) -> None:
        """Draw the bars until every queued message has a record and every report is in (or the deadline).

        Evaluated and queued come from the execution document, sent from the store's message_sent and
        failed_messages collections (their size: counting with a filter every 200 ms would slow the very run
        it measures), delivered from the delivery reports the daemon's webhook acknowledged.

        Done means: the trigger answered *before* this frame read the execution (so its counts are final: read
        the other way round, a frame could pair the last batch's counts with a trigger that answered meanwhile),
        every queued message has a record, every report was acknowledged, and none waits parked (a report that
        overtook the executor's record is acknowledged, then applied by the parked-reports loop a moment later:
        the statistics read next would still count its message as awaiting a report).
        """
        bars, db, cid = Bars(self.out), trackly.db, self.result.campaign_id
        base_sent = await db[c.SENT].estimated_document_count()
        base_failed = await db[c.FAILED].estimated_document_count()
        base_reports = fake.reports_posted
        while True:
            triggered = trigger.done()  # before the reads below: see the docstring
            ex = await newest(db, c.EXECUTIONS, {"campaign_id": cid}) or {}
            counts = ex.get("counts") or {}
            sent = await db[c.SENT].estimated_document_count() - base_sent
            failed = await db[c.FAILED].estimated_document_count() - base_failed
            reported = fake.reports_posted - base_reports
            queued = counts.get("queued", 0)
            if queued and self.first_queued is None:
                self.first_queued = utcnow()  # seen by this 200 ms poll: the first batch is in the queue
            values = progress_values(
                counts,
                audience=self.n,
                evaluated=ex.get("evaluated_at") is not None,
                processed=sent + failed,
                reported=reported,
                sent=sent,
            )
            finished = triggered and sent + failed >= queued and reported >= sent
            if finished:  # every report acknowledged: are some still parked, not yet applied?
                finished = await db[c.DELIVERY_REPORTS].estimated_document_count() == 0
            if finished or time.monotonic() > deadline:
                bars.draw(values, final=True)
                if not finished:
                    self.say("  (stopped waiting: some messages or delivery reports are still outstanding)")
                return
            bars.draw(values)
            await asyncio.sleep(0.2)

    async def click(self, trackly: Any) -> None:
        """Open some short links: previews right away (bots), then people after the bot window."""
        assert self.http is not None
        http = self.http
        codes = [
            d["_id"]
            async for d in trackly.db[c.SHORT_LINKS]
            .find({"campaign_id": self.result.campaign_id}, {"_id": 1})
            .limit(min(max(self.n // 200, 4), 50))
        ]
        sem = asyncio.Semaphore(5)

        async def hit(code: str, ua: str) -> None:
            async with (
                sem,
                http.get(f"{self.public_url}/l/{code}", headers={"User-Agent": ua}, allow_redirects=False) as r,
            ):
                await r.read()

        await asyncio.gather(*(hit(code, PREVIEW) for code in codes[: len(codes) // 2]))
        await asyncio.sleep(trackly.settings.tracking.bot_click_seconds + 0.2)
        await asyncio.gather(*(hit(code, BROWSER) for code in codes))

    async def measure(self, trackly: Any, t0: dt.datetime) -> None:
        db, r = trackly.db, self.result
        ex = await db[c.EXECUTIONS].find_one({"_id": r.execution_id}) or {}
        r.counts = ex.get("counts") or {}
        q = {"execution_id": r.execution_id}
        first = await db[c.SENT].find_one(q, sort=[("timestamp", 1)])
        last = await db[c.SENT].find_one(q, sort=[("timestamp", -1)])
        d_first = await db[c.SENT].find_one({**q, "delivered_at": {"$gte": EPOCH}}, sort=[("delivered_at", 1)])
        d_last = await db[c.SENT].find_one({**q, "delivered_at": {"$gte": EPOCH}}, sort=[("delivered_at", -1)])
        r.sent_records = await count(db, c.SENT, q)
        r.failed_records = await count(db, c.FAILED, q)
        r.left_in_queue = await count(db, c.QUEUED, q)
        sent_ids = {d["_id"] async for d in db[c.SENT].find(q, {"_id": 1})}
        r.in_both = sum([1 async for d in db[c.FAILED].find(q, {"_id": 1}) if d["_id"] in sent_ids])
        span = (last["timestamp"] - first["timestamp"]).total_seconds() if first and last else 0.0
        rate = f"{r.sent_records / span:,.0f} msg/s" if span > 0 else "-"
        firstq = min((t for t in (self.first_queued, ex.get("evaluated_at")) if t is not None), default=None)
        r.timeline = [
            (_clock(t0, t0), "Campaign triggers"),
            (
                f"{_clock(firstq, t0)} - {_clock(ex.get('evaluated_at'), t0)}",
                f"Audience evaluated ({r.counts.get('unique', 0):,} contacts, streamed in batches)",
            ),
            (
                f"{_clock(firstq, t0)} - {_clock(ex.get('queued_at'), t0)}",
                f"Messages queued ({r.counts.get('queued', 0):,}, bulk-inserted batch by batch)",
            ),
            (
                f"{_clock(first and first['timestamp'], t0)} - {_clock(last and last['timestamp'], t0)}",
                f"Messages sent ({r.sent_records:,} accepted, {rate})",
            ),
            (
                f"{_clock(d_first and d_first['delivered_at'], t0)} - {_clock(d_last and d_last['delivered_at'], t0)}",
                "Delivery confirmations arrive",
            ),
        ]
        r.stats = await self.api("GET", f"/campaigns/{r.campaign_id}/stats")

    def report(self) -> None:
        r, k = self.result, self.result.counts
        per = k.get("per_audience") or {}
        self.say("\nExecution Timeline (measured)\n")
        self.say(
            f"  {'Time':<21}  Event   (m:ss.sss from the trigger; the first queued batch is seen by a 200 ms poll)"
        )
        for when, what in r.timeline:
            self.say(f"  {when:<21}  {what}")
        self.say("\nAudience evaluation\n")
        for name, aid in r.audiences.items():
            self.say(f"  {name}:{'':<4}{per.get(str(aid), per.get(aid, 0)):>7,} contacts")
        self.say(f"  Overlap:{'':<7}{k.get('overlap', 0):>7,} contacts\n  -----")
        self.say(f"  Total unique:{'':<2}{k.get('unique', 0):>7,} contacts")
        skipped = {s: n for s, n in (k.get("skipped") or {}).items() if n}
        for s, n in skipped.items():
            self.say(f"    skipped {s:<20}{n:>7,}")
        self.say(
            f"  Queued:{'':<8}{k.get('queued', 0):>7,}   (= {k.get('unique', 0):,} - {sum(skipped.values()):,} skipped)"
        )
        s = r.stats
        failed = s.get("failed") or {}
        self.say(f"  Sent:{'':<10}{s.get('sent', 0):>7,}   accepted by the provider")
        self.say(f"  Failed:{'':<8}{sum(failed.values()):>7,}   {', '.join(f'{a} {b:,}' for a, b in failed.items())}")
        self.say(
            f"  Delivered:{'':<5}{s.get('delivered', 0):>7,}   undelivered {s.get('undelivered', 0):,}, "
            f"awaiting report {s.get('delivery_pending', 0):,}"
        )
        clicks = s.get("clicks") or {}
        self.say(
            f"  Clicks:{'':<8}{clicks.get('all', 0):>7,}   human {clicks.get('human', 0):,}, "
            f"bots {clicks.get('all', 0) - clicks.get('human', 0):,}"
        )
        for key, v in (s.get("per_variant") or {}).items():
            self.say(
                f"    variant {key}: sent {v['sent']:,}, delivered {v['delivered']:,}, "
                f"human clicks {v['clicks']['human']:,}"
            )
        self.say(f"\n  Provider ledger: {r.provider}")
        self.say(
            f"  Every queued message has exactly one record: sent {r.sent_records:,} + failed "
            f"{r.failed_records:,} = {r.sent_records + r.failed_records:,} (queued {k.get('queued', 0):,}, "
            f"left in queue {r.left_in_queue}, in both {r.in_both})"
        )
        self.say(
            f"\nDashboard: {r.public_url}/dashboard?token={r.token}\nAPI:       {r.public_url}/api/v1/openapi.json "
            f"(token {r.token})\nDone in {r.seconds:.1f} s."
        )

    async def flow(self, trackly: Any, fake: Any, started: float, keep: asyncio.Event | None) -> None:
        """Seed, trigger, watch, click, measure and report (and wait for ``keep`` when given)."""
        account, list_id, auds, creative = await self.seed(trackly)
        fake.reject_numbers = {
            p["phone"]: "REJECTED_DESTINATION"
            async for p in trackly.db[c.CONTACTS]
            .find({"sending_list_id": list_id, "attributes.tier": "C", "timezone": {"$gt": ""}}, {"phone": 1})
            .limit(max(self.n // 500, 1))
        }
        camp = await self.api(
            "POST",
            "/campaigns",
            {
                "account_id": account,
                "sending_list_id": list_id,
                "audience_ids": auds,
                "creative_id": creative,
                "exclude_in_workflow": True,
                "track_links": True,
                "quiet_hours_policy": "exclude",
            },
        )
        self.result.campaign_id = camp["id"]
        self.say(f"  campaign {camp['id']}: audiences {auds}, creative {creative} (variants a/b, tracked link)\n")
        t0 = utcnow()
        # ?wait=true: the trigger answers once the audience is queued: seconds here, minutes on a loaded machine
        # (no client timeout for it); the bars then wait for the sends and reports up to WAIT_SECONDS.
        trig = asyncio.create_task(self.api("POST", f"/campaigns/{camp['id']}/trigger?wait=true", timeout=None))
        try:
            await self.progress(trackly, fake, trig, time.monotonic() + WAIT_SECONDS)
            self.result.execution_id = (await trig)["execution_id"]
        finally:
            if not trig.done():
                trig.cancel()
        await self.click(trackly)
        self.result.provider = fake.summary()
        self.result.seconds = time.monotonic() - started
        await self.measure(trackly, t0)
        self.report()
        if keep is not None:
            self.say("\nThe daemon keeps running (Ctrl-C to stop).")
            await keep.wait()
        else:
            self.say(
                "(The demo's daemon stops now; `trackly demo --keep-running` keeps it up for the dashboard and API.)"
            )

    async def run(self, keep_running: bool = False) -> DemoResult:
        from trackly_exec.daemon import serve
        from trackly_exec.testing.fakes.infobip import InfobipFake

        started = time.monotonic()
        tmp = None if self.data_dir else Path(tempfile.mkdtemp(prefix="trackly-demo-"))
        data_dir = self.data_dir or tmp
        assert data_dir is not None
        api_key = secrets.token_hex(8)
        fake = InfobipFake(api_key=api_key, auto_reports=True, report_delay=0.5)
        fake.dlr_outcome = lambda e: "undelivered" if int((e.message_id or "0")[:4], 16) % 100 < 3 else "delivered"
        await fake.start()
        stop, ready = asyncio.Event(), asyncio.Event()
        box: JsonObject = {}

        async def on_ready(trackly: Any, components: list[Any]) -> None:
            box["trackly"], box["components"] = trackly, components
            ready.set()

        settings = self.settings(data_dir, fake.url, api_key, in_memory=tmp is not None)
        self.say(f"trackly demo: daemon on {self.public_url}, Infobip fake on {fake.url}, data in {data_dir}")
        daemon = asyncio.create_task(serve(settings, stop=stop, on_ready=on_ready))
        own: list[Any] = []
        try:
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({daemon, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                waiter.cancel()
                await daemon  # raises the start-up error
                raise RuntimeError("the daemon stopped before it was ready")
            trackly = box["trackly"]
            if "executor" not in {getattr(comp, "name", "") for comp in box["components"]}:
                from trackly_exec.executor.coordinator import Coordinator

                own.append(Coordinator(trackly))
                await own[-1].start()
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
            flow = asyncio.create_task(self.flow(trackly, fake, started, stop if keep_running else None))
            await asyncio.wait({flow, daemon}, return_when=asyncio.FIRST_COMPLETED)
            if not flow.done():  # Ctrl-C or SIGTERM stopped the daemon mid-run
                flow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flow
                if daemon.exception() is not None:
                    raise RuntimeError(f"the daemon failed: {daemon.exception()}")
                self.result.interrupted = True
                self.say("\ninterrupted")
            else:
                flow.result()
        finally:
            for comp in own:
                await comp.stop(2.0)
            if self.http is not None:
                await self.http.close()
            stop.set()
            with contextlib.suppress(Exception):
                await daemon
            await fake.stop()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return self.result


async def run_demo(
    contacts: int = 10_000,
    *,
    out: TextIO | None = None,
    data_dir: Path | None = None,
    keep_running: bool = False,
    seed: int = 7,
) -> DemoResult:
    """Run the demo (see the module docstring) and return what it measured."""
    return await Demo(contacts, out or sys.stdout, data_dir, seed).run(keep_running)


def cmd_demo(args: argparse.Namespace) -> int:
    configure_logging("debug" if args.verbose else "error", "console")  # alerts would tear the progress bars
    from trackly_exec.cli.main import _run

    if args.contacts < 20:
        raise ConfigError("--contacts must be at least 20")

    async def main() -> int:
        result = await run_demo(
            args.contacts, data_dir=Path(args.data_dir) if args.data_dir else None, keep_running=args.keep_running
        )
        return 130 if result.interrupted else 0

    return _run(main())


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``trackly demo``."""
    what = "run a 10,000-contact campaign end to end on the embedded store and a fake Infobip (no account, no network)"
    p = sub.add_parser("demo", help=what, description=what[0].upper() + what[1:] + ".", parents=[common])
    p.add_argument("--contacts", type=int, default=10_000, help="contacts to seed (default 10,000)")
    p.add_argument("--data-dir", help="keep the store here (default: a temporary directory, deleted at the end)")
    p.add_argument("--keep-running", action="store_true", help="keep the daemon up afterwards (dashboard, API)")
    p.add_argument("--verbose", action="store_true", help="show the daemon's logs")
    p.set_defaults(func=cmd_demo)
