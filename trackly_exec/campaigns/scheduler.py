"""The campaign scheduler: due campaigns become executions, exactly once, then are evaluated and queued.

* ``Campaign.next_run_at`` drives it. A due campaign (``status = active``, ``next_run_at <= now``) gets an
  Execution whose ``occurrence_key`` is ``"<campaign id>:<scheduled_for ISO>"``, inserted under a unique
  index: whichever daemon inserts it runs it; the others get a DuplicateKeyError and leave it. Then
  ``next_run_at`` is advanced, conditional on its old value. Paused campaigns are never picked up.
* One-off campaigns (``schedule.at``) become ``done`` once their execution exists, and so does a one-off run by a
  manual trigger (its ``at``, if still to come, then never fires; it is kept should that run fail). Recurring ones
  (``schedule.cron`` in ``schedule.timezone``, see :mod:`trackly_exec.campaigns.cron` for the DST rule) get the next
  occurrence after now. A campaign created without ``next_run_at`` gets it filled in here. A recurring campaign
  with an ``end_at`` becomes ``done`` with its last occurrence at or before it (an occurrence after it never runs).
  An archived campaign never runs (:func:`trackly_exec.campaigns.evaluation.load_plan` fails it).
* After downtime, missed occurrences never fire in a burst: only the latest missed one is considered, and if
  it is more than ``scheduler.max_lateness_minutes`` late it gets a ``skipped`` execution with the reason and
  an ``OCCURRENCE_SKIPPED`` event instead of being sent late.
* Before evaluating, the campaign is validated (list exists, is the account's and active; audiences exist
  and belong to the list; creative is the account's with a usable variant; the list's driver can be built);
  a failure gives a ``failed`` execution with the reason and a ``CAMPAIGN_FAILED`` event.
* An evaluation holds a lease on its execution (``lease_owner``, and ``heartbeat_at`` renewed every batch);
  an execution left ``pending`` or ``evaluating`` whose heartbeat is older than
  ``scheduler.evaluation_lease_seconds`` (its process died) is resumed by any scheduler, without queuing
  anyone twice (see :mod:`trackly_exec.campaigns.evaluation`).
* Lifecycle: pending -> evaluating -> queued -> completed (when nothing of it is left in the queue).

:func:`trigger` runs a campaign now (occurrence ``"<id>:manual:<n>"``) and returns the execution id once
every message is queued. Triggers are idempotent: one campaign has at most one manual execution unfinished
at a time (a trigger lock, atomic across processes), a trigger is refused (:class:`TriggerConflict`, the API's
409) while any execution of the campaign is evaluating or sending, and a one-off campaign (no cron) that has
already run needs ``force``. An execution is *finished* when it is completed, failed or skipped, or queued
with nothing of it left in the queue (see :meth:`_Runner.unfinished`). :func:`start_trigger` (the API's trigger)
claims the same way but returns the execution id at once and evaluates in the background, under the
execution's lease, so a daemon that dies meanwhile leaves it to be resumed. :meth:`Scheduler.run_until_idle`
processes everything due and returns (burst mode).

Store notes (nx-27017 0.8.1): ``{"field": None}`` is unreliable there (``{"$eq": None}`` is used); a value
written by ``$currentDate`` is not comparable in queries (dates are set from the client's clock); and a stock
nx-27017 stores a datetime given to ``$set`` as text (the embedded store runs in a mode that does not, see
:mod:`trackly_exec.store.nxserver`; a ``next_run_at`` found as text is turned back into a date here anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import weakref
from typing import Any

from pymongo.errors import DuplicateKeyError

from trackly_exec.app import Loop, TaskSet
from trackly_exec.campaigns.audience import FilterError
from trackly_exec.campaigns.cron import Cron, CronError
from trackly_exec.campaigns.evaluation import LeaseLost, Tally, evaluate, load_plan
from trackly_exec.campaigns.queue import has_pending
from trackly_exec.errors import TracklyError
from trackly_exec.logs import get_logger
from trackly_exec.store import constants as c
from trackly_exec.store.client import count
from trackly_exec.store.documents import CampaignDoc, ExecutionDoc, Update
from trackly_exec.store.events import Event, EventKind
from trackly_exec.store.lease import Lease
from trackly_exec.store.models import CampaignStatus, Execution, ExecutionStatus
from trackly_exec.store.names import label, name_of

log = get_logger(__name__)

_LOOKBACKS = (dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(days=32), dt.timedelta(days=366))
_DUE_BATCH = 100


class CampaignNotFound(TracklyError):
    """No campaign with that id."""


class TriggerConflict(TracklyError):
    """A trigger refused because of another execution: one still evaluating or sending, or (without ``force``)
    a one-off campaign that has already run. ``execution_id`` names it (None when unknown)."""

    def __init__(self, message: str, execution_id: int | None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


#: A trigger lock whose execution was never created (its process died in between) is taken over after this.
TRIGGER_LOCK_STALE = dt.timedelta(seconds=60)
UNFINISHED = (ExecutionStatus.PENDING.value, ExecutionStatus.EVALUATING.value, ExecutionStatus.QUEUED.value)


# --------------------------------------------------------------------------------------------- occurrences


def _cron(campaign: CampaignDoc) -> Cron | None:
    expr = (campaign.get("schedule") or {}).get("cron")
    return Cron.parse(expr) if expr else None


def _one_off(campaign: CampaignDoc) -> bool:
    """No cron: a campaign that runs once (at its ``at``, or when triggered)."""
    return not (campaign.get("schedule") or {}).get("cron")


def _tz(campaign: CampaignDoc) -> str:
    return (campaign.get("schedule") or {}).get("timezone") or "UTC"


def first_run_at(campaign: CampaignDoc, now: dt.datetime) -> dt.datetime | None:
    """When a new campaign first runs: its ``at``, or its cron's next occurrence after ``now``; None for
    a manual-only campaign."""
    sched = campaign.get("schedule") or {}
    at = sched.get("at")
    if at is not None:
        return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    cron = _cron(campaign)
    return cron.next_after(now, _tz(campaign)) if cron else None


def latest_due(cron: Cron, tz: str, first: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The latest occurrence in ``[first, now]`` (``first`` is a due occurrence)."""
    latest = first
    for back in _LOOKBACKS:  # a dense cron after long downtime: start close to now, not at the first miss
        if now - back <= first:
            break
        probe = cron.next_after(now - back, tz)
        if probe <= now:
            latest = probe
            break
    while True:
        nxt = cron.next_after(latest, tz)
        if nxt > now:
            return latest
        latest = nxt


# --------------------------------------------------------------------------------------------- running


#: An execution whose evaluation has raised this many times (the first run and its resumptions) fails.
MAX_EVALUATION_ATTEMPTS = 5


class _Runner:
    """Creates, leases, evaluates and finishes executions on behalf of one process."""

    def __init__(self, trackly: Any) -> None:
        self.trackly = trackly
        self.db = trackly.db
        self.owner = f"{trackly.instance}:{trackly.run_id}"
        #: an evaluation's lease on its execution: the process's owner name, renewed every batch (``heartbeat_at``)
        self.lease = Lease(
            "lease_owner",
            stamp="heartbeat_at",
            ttl=dt.timedelta(seconds=trackly.settings.scheduler.evaluation_lease_seconds),
        )

    async def create(
        self,
        campaign: CampaignDoc,
        scheduled_for: dt.datetime,
        key: str,
        *,
        status: ExecutionStatus = ExecutionStatus.PENDING,
        reason: str | None = None,
        eid: int | None = None,
    ) -> ExecutionDoc | None:
        """Insert the execution of an occurrence; None when another process already has it."""
        if eid is None:
            eid = await self.trackly.store.next_id(c.EXECUTIONS)
        now = self.trackly.now()
        doc = Execution(
            id=eid,
            campaign_id=campaign["_id"],
            account_id=campaign["account_id"],
            sending_list_id=campaign["sending_list_id"],
            occurrence_key=key,
            scheduled_for=scheduled_for,
            status=status,
            reason=reason,
            triggered_at=now,
            attempts=1,
            **self.lease.taken(self.owner, now),
        ).to_doc()
        try:
            await self.db[c.EXECUTIONS].insert_one(doc)
        except DuplicateKeyError:
            return None
        return doc

    async def _set(self, eid: int, fields: Update, *now_fields: str) -> bool:
        """``$set`` ``fields``, stamp ``now_fields`` and renew the lease with now; only while we hold the lease."""
        now = self.trackly.now()
        update = {"$set": {**fields, **dict.fromkeys(now_fields, now)}}
        return bool(
            await self.lease.update(self.db[c.EXECUTIONS], self.owner, {"_id": eid}, update, renew_at=now, one=True)
        )

    async def crashed(self, execution: ExecutionDoc, exc: Exception) -> None:
        """An evaluation that raised: its lease expires and a scheduler resumes it (a store that went away), but one
        that has crashed :data:`MAX_EVALUATION_ATTEMPTS` times fails with the error (data it cannot read: resumed
        for ever, it left the execution evaluating and its campaign un-triggerable)."""
        log.error("evaluation_crashed", execution_id=execution["_id"], error=repr(exc))
        attempts = int(execution.get("attempts") or 0) + 1
        if attempts < MAX_EVALUATION_ATTEMPTS:
            return
        with contextlib.suppress(Exception):  # the store itself may be what failed: the lease then decides
            await self.fail(
                execution, f"evaluation failed {attempts} times; last error: {type(exc).__name__}: {str(exc)[:300]}"
            )

    async def fail(self, execution: ExecutionDoc, reason: str) -> None:
        await self._set(execution["_id"], {"status": ExecutionStatus.FAILED.value, "reason": reason}, "completed_at")
        if ":manual:" in str(execution.get("occurrence_key")):
            # a one-off whose manual run failed (nothing queued) keeps its scheduled time, when it has one to come
            # (:meth:`claim_trigger` marked it done; a done one-off's own time is in the past)
            camp = await self.db[c.CAMPAIGNS].find_one({"_id": execution["campaign_id"]})
            if camp is not None and _one_off(camp):
                await self.db[c.CAMPAIGNS].update_one(
                    {
                        "_id": camp["_id"],
                        "status": CampaignStatus.DONE.value,
                        "next_run_at": {"$gt": self.trackly.now()},
                    },
                    {"$set": {"status": CampaignStatus.ACTIVE.value}},
                )
        log.warning(
            "campaign_failed", campaign_id=execution["campaign_id"], execution_id=execution["_id"], reason=reason
        )
        camp = await self.db[c.CAMPAIGNS].find_one({"_id": execution["campaign_id"]}, {"name": 1})
        await self.trackly.bus.publish(
            Event(
                kind=EventKind.CAMPAIGN_FAILED,
                severity="critical",
                message=f"{label(camp, 'campaign', execution['campaign_id'])} failed: {reason}",
                data={
                    "campaign_id": execution["campaign_id"],
                    "campaign": name_of(camp, "campaign", execution["campaign_id"]),
                    "execution_id": execution["_id"],
                    "reason": reason,
                },
                key=f"campaign_failed:{execution['campaign_id']}",
            )
        )

    async def run(self, execution: ExecutionDoc, *, resumed: bool = False) -> None:
        """Validate, evaluate and queue one (leased) execution."""
        eid = int(execution["_id"])
        campaign = await self.db[c.CAMPAIGNS].find_one({"_id": execution["campaign_id"]})
        if campaign is None:
            await self.fail(execution, f"campaign {execution['campaign_id']} does not exist")
            return
        plan, reason = await load_plan(self.trackly, campaign, execution)
        if plan is None:
            await self.fail(execution, reason)
            return
        if not await self._set(eid, {"status": ExecutionStatus.EVALUATING.value}):
            log.info("execution_lease_lost", execution_id=eid)
            return

        try:
            # How many contacts the audiences hold (an upper bound of the union): what a progress bar counts to.
            expected = await audience_size(self.db, plan)
            await self._set(eid, {"counts": {**(execution.get("counts") or {}), "expected": expected}})

            async def progress(t: Tally) -> bool:
                return await self._set(eid, {"counts": {**t.as_counts(), "expected": expected}})

            tally = await evaluate(self.trackly, plan, resumed=resumed, progress=progress)
        except LeaseLost:
            log.warning("execution_lease_lost", execution_id=eid)
            return
        except FilterError as exc:  # an audience stored before its filter was checked: it fails alike every time
            await self.fail(execution, f"audience filter {exc} (edit the audience)")
            return
        done = tally.queued == 0
        status = ExecutionStatus.COMPLETED if done else ExecutionStatus.QUEUED
        stamps = ("evaluated_at", "queued_at", "completed_at") if done else ("evaluated_at", "queued_at")
        await self._set(eid, {"counts": {**tally.as_counts(), "expected": expected}, "status": status.value}, *stamps)

    async def resume_stale(self, limit: int = 20) -> list[ExecutionDoc]:
        """Take over executions whose evaluator stopped reporting (lease expired)."""
        out: list[ExecutionDoc] = []
        unfinished = {"status": {"$in": [ExecutionStatus.PENDING.value, ExecutionStatus.EVALUATING.value]}}
        for _ in range(limit):
            doc = await self.lease.claim_one(
                self.db[c.EXECUTIONS],
                unfinished,
                self.owner,
                self.trackly.now(),
                expired_only=True,
                inc={"attempts": 1},
            )
            if doc is None:
                break
            if doc.get("lease_owner") != self.owner or doc["_id"] in {d["_id"] for d in out}:
                # the store answered without taking it (a store that did not apply the update): never run an
                # evaluation this process does not hold, nor take the same one twice in a pass
                log.error("execution_resume_not_taken", execution_id=doc["_id"], owner=doc.get("lease_owner"))
                break
            log.info(
                "execution_resumed",
                execution_id=doc["_id"],
                campaign_id=doc["campaign_id"],
                attempts=doc.get("attempts"),
            )
            out.append(doc)
        return out

    async def unfinished(self, ex: ExecutionDoc) -> str | None:
        """Why ``ex`` is not finished ("evaluating", "sending: N messages still queued"), or None when it is.

        An execution is finished when its status is completed, failed or skipped, or when it is queued and
        nothing of it is left in the queue (every message is MessageSent or FailedMessage, NO_RESPONSE
        included); it is then marked completed here. Pending and evaluating executions are unfinished even
        with an expired lease: a scheduler resumes them. Messages held for quiet hours, billing or a pause are
        still queued, so their execution is still sending.
        """
        status = ex.get("status")
        if status in (ExecutionStatus.PENDING.value, ExecutionStatus.EVALUATING.value):
            return str(status)
        if status != ExecutionStatus.QUEUED.value:
            return None
        left = await count(self.db, c.QUEUED, {"execution_id": ex["_id"]})
        if left:
            return f"sending ({left} message{'s' if left != 1 else ''} still queued)"
        await self.db[c.EXECUTIONS].update_one(
            {"_id": ex["_id"], "status": ExecutionStatus.QUEUED.value},
            {"$set": {"status": ExecutionStatus.COMPLETED.value, "completed_at": self.trackly.now()}},
        )
        return None

    async def claim_trigger(self, campaign: CampaignDoc, *, force: bool) -> ExecutionDoc:
        """Create the execution of a manual trigger, or raise :class:`TriggerConflict`.

        Atomic across processes: the trigger first inserts the campaign's trigger lock (``locks`` document
        ``"trigger:<campaign id>"``, unique ``_id``) naming the execution id it is about to create; of two
        concurrent triggers exactly one inserts it. A lock whose execution is finished (or was never created,
        after :data:`TRIGGER_LOCK_STALE`) is replaced, conditionally on the execution it names. Holding the lock,
        the trigger refuses when another execution of the campaign (a scheduled occurrence) is unfinished, and
        when a one-off campaign (no cron) already has a completed execution, unless ``force``.
        """
        cid = int(campaign["_id"])
        locks = self.db[c.LOCKS]
        key = f"trigger:{cid}"
        eid = await self.trackly.store.next_id(c.EXECUTIONS)
        for _ in range(5):
            try:
                await locks.insert_one({"_id": key, "execution_id": eid, "campaign_id": cid, "at": self.trackly.now()})
                break
            except DuplicateKeyError:
                lock = await locks.find_one({"_id": key})
                if lock is None:
                    continue
                holder = int(lock["execution_id"])
                ex = await self.db[c.EXECUTIONS].find_one({"_id": holder})
                if ex is None:
                    if self.trackly.now() - lock["at"] < TRIGGER_LOCK_STALE:
                        raise TriggerConflict(
                            f"campaign {cid} is being triggered right now (execution {holder})", holder
                        ) from None
                elif (why := await self.unfinished(ex)) is not None:
                    raise TriggerConflict(
                        f"campaign {cid} already has execution {holder} {why}; "
                        "trigger it again once that one is finished",
                        holder,
                    ) from None
                await locks.delete_one({"_id": key, "execution_id": holder})
        else:
            raise TriggerConflict(f"campaign {cid} is being triggered right now; try again", None)
        try:
            async for ex in self.db[c.EXECUTIONS].find({"campaign_id": cid, "status": {"$in": list(UNFINISHED)}}):
                if (why := await self.unfinished(ex)) is not None:
                    raise TriggerConflict(
                        f"campaign {cid} already has execution {ex['_id']} {why}; "
                        "trigger it again once that one is finished",
                        int(ex["_id"]),
                    )
            if not force and _cron(campaign) is None:
                ran = await self.db[c.EXECUTIONS].find_one(
                    {"campaign_id": cid, "status": ExecutionStatus.COMPLETED.value}, {"_id": 1}
                )
                if ran is not None:
                    raise TriggerConflict(
                        f"one-off campaign {cid} already ran (execution {ran['_id']} completed); to run it again, "
                        'trigger it with force (API: {"force": true}; CLI: --again); the list\'s cooldown still '
                        "applies",
                        int(ran["_id"]),
                    )
            n = await self.trackly.store.next_id(f"manual:{cid}")
            execution = await self.create(campaign, self.trackly.now(), f"{cid}:manual:{n}", eid=eid)
            assert execution is not None  # the manual sequence never repeats
            if _one_off(campaign):
                # A one-off runs once: this run is it, so its scheduled time (if any) will not fire again (given
                # back by :meth:`fail` should this run fail before queuing anyone). Before the run, so the scheduler
                # cannot start the same one-off meanwhile.
                await self.db[c.CAMPAIGNS].update_one(
                    {"_id": cid, "status": CampaignStatus.ACTIVE.value}, {"$set": {"status": CampaignStatus.DONE.value}}
                )
        except BaseException:
            await locks.delete_one({"_id": key, "execution_id": eid})
            raise
        return execution

    async def complete_drained(self) -> int:
        """Mark queued executions with nothing left in the queue as completed."""
        n = 0
        async for ex in self.db[c.EXECUTIONS].find({"status": ExecutionStatus.QUEUED.value}, {"_id": 1}).limit(500):
            if not await has_pending(self.db, ex["_id"]):
                res = await self.db[c.EXECUTIONS].update_one(
                    {"_id": ex["_id"], "status": ExecutionStatus.QUEUED.value},
                    {"$set": {"status": ExecutionStatus.COMPLETED.value, "completed_at": self.trackly.now()}},
                )
                n += res.modified_count
        return n


async def running_execution(db: Any, campaign_ids: list[int]) -> ExecutionDoc | None:
    """An execution of one of the campaigns that is pending, evaluating or queued (None if there is none)."""
    if not campaign_ids:
        return None
    found: ExecutionDoc | None = await db[c.EXECUTIONS].find_one(
        {"campaign_id": {"$in": campaign_ids}, "status": {"$in": list(UNFINISHED)}}, {"status": 1, "campaign_id": 1}
    )
    return found


async def complete_drained(trackly: Any) -> int:
    """Mark queued executions with nothing left in the queue as completed (what every scheduler pass does)."""
    return await _Runner(trackly).complete_drained()


async def resumed_status(db: Any, campaign: CampaignDoc, now: dt.datetime) -> CampaignStatus:
    """The status a paused campaign resumes to: ``done`` when nothing of its schedule is left (a one-off that has
    run, by its time or by a trigger; a recurring one past its ``end_at``), else ``active``."""
    if _one_off(campaign):
        ran = await db[c.EXECUTIONS].find_one(
            {"campaign_id": campaign["_id"], "status": {"$in": [*UNFINISHED, ExecutionStatus.COMPLETED.value]}}
        )
        if ran is not None:
            return CampaignStatus.DONE
    end = campaign.get("end_at")
    if isinstance(end, dt.datetime) and (end if end.tzinfo else end.replace(tzinfo=dt.UTC)) <= now:
        return CampaignStatus.DONE
    return CampaignStatus.ACTIVE


async def audience_size(db: Any, plan: Any) -> int:
    """The contacts of the plan's audiences, counted per audience (an upper bound of their union)."""
    from trackly_exec.campaigns.audience import count_query

    total = 0
    for a in plan.audiences:
        q = count_query(int(plan.sending_list["_id"]), a)
        total += len(set(a.get("contact_ids") or [])) if q is None else await count(db, c.CONTACTS, q)
    return total


async def _claim_manual(trackly: Any, campaign_id: int, force: bool) -> tuple[_Runner, ExecutionDoc]:
    campaign = await trackly.db[c.CAMPAIGNS].find_one({"_id": campaign_id})
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    runner = _Runner(trackly)
    execution = await runner.claim_trigger(campaign, force=force)
    log.info("campaign_triggered", campaign_id=campaign_id, execution_id=execution["_id"], force=force)
    return runner, execution


async def trigger(trackly: Any, campaign_id: int, *, force: bool = False) -> int:
    """Run campaign ``campaign_id`` now; returns the execution id once its messages are queued (or it failed).

    Raises :class:`TriggerConflict` while another execution of the campaign is unfinished, and for a one-off
    campaign that already ran unless ``force`` (see :meth:`_Runner.claim_trigger`)."""
    runner, execution = await _claim_manual(trackly, campaign_id, force)
    await runner.run(execution)
    return int(execution["_id"])


#: Evaluations started by :func:`start_trigger`, per Trackly (awaited or cancelled by :func:`stop_background`).
_BACKGROUND: weakref.WeakKeyDictionary[Any, TaskSet] = weakref.WeakKeyDictionary()


async def start_trigger(trackly: Any, campaign_id: int, *, force: bool = False) -> tuple[int, asyncio.Task[None]]:
    """Claim a manual run like :func:`trigger` (same :class:`TriggerConflict` rules) and evaluate it in the
    background; returns at once.

    The execution is leased to this process from its creation (``heartbeat_at`` renewed every batch): if the
    process dies before it is queued, any scheduler resumes it once the lease expires, without queuing anyone
    twice.
    """
    runner, execution = await _claim_manual(trackly, campaign_id, force)

    async def go() -> None:
        try:
            await runner.run(execution)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lease expires and a scheduler resumes it (a few times: see crashed)
            await runner.crashed(execution, exc)

    task = _BACKGROUND.setdefault(trackly, TaskSet()).spawn(go(), name=f"evaluate-{execution['_id']}")
    return int(execution["_id"]), task


async def stop_background(trackly: Any, grace: float) -> None:
    """Wait up to ``grace`` for background evaluations, then cancel them (they resume from their lease)."""
    tasks = _BACKGROUND.get(trackly)
    if tasks is not None:
        await tasks.stop(grace)


class Scheduler:
    """The scheduler component: a poll loop in the daemon, or :meth:`run_until_idle` in burst mode."""

    name = "scheduler"

    def __init__(self, trackly: Any) -> None:
        self.trackly = trackly
        self.cfg = trackly.settings.scheduler
        self.runner = _Runner(trackly)
        self.db = trackly.db
        self._tasks = TaskSet()  # evaluations
        self._sem = asyncio.Semaphore(self.cfg.max_concurrent_evaluations)
        self._loop = Loop("scheduler", self.tick, self.cfg.poll_interval_seconds, on_error=self._tick_failed)

    # ---- one pass

    async def _replace_campaign(self, camp: CampaignDoc, changes: Update) -> bool:
        """Apply ``changes`` if the campaign still has the ``next_run_at`` and status we read."""
        res = await self.db[c.CAMPAIGNS].update_one(
            {"_id": camp["_id"], "next_run_at": {"$eq": camp.get("next_run_at")}, "status": camp.get("status")},
            {"$set": changes},
        )
        return bool(res.matched_count)

    async def _init_new(self, now: dt.datetime) -> None:
        """Fill in ``next_run_at`` of new campaigns; turn one written as text (a ``$set`` on nx-27017) back
        into a date."""
        async for camp in self.db[c.CAMPAIGNS].find(
            {"status": CampaignStatus.ACTIVE.value, "next_run_at": {"$type": "string"}}
        ):
            try:
                fixed = dt.datetime.fromisoformat(camp["next_run_at"])
            except ValueError:
                fixed = None
            if fixed is not None:
                await self._replace_campaign(
                    camp, {"next_run_at": fixed if fixed.tzinfo else fixed.replace(tzinfo=dt.UTC)}
                )
        async for camp in self.db[c.CAMPAIGNS].find(
            {"status": CampaignStatus.ACTIVE.value, "next_run_at": {"$eq": None}}
        ):
            try:
                first = first_run_at(camp, now)
            except CronError as exc:
                # Reported once (failed execution + event) and paused, rather than logged on every pass.
                log.warning("campaign_bad_cron", campaign_id=camp["_id"], error=str(exc))
                if await self._replace_campaign(camp, {"status": CampaignStatus.PAUSED.value}):
                    ex = await self.runner.create(camp, now, f"{camp['_id']}:invalid-schedule:{now.isoformat()}")
                    if ex is not None:
                        await self.runner.fail(ex, f"invalid schedule: {exc}")
                continue
            if first is not None:
                await self._replace_campaign(camp, {"next_run_at": first})

    async def _occurrence(self, camp: CampaignDoc, now: dt.datetime) -> ExecutionDoc | None:
        """Create the execution of a due campaign's latest occurrence and advance it. Returns an execution
        to evaluate, or None (skipped, failed, or another process has it)."""
        old = camp["next_run_at"]
        assert old is not None  # due: next_run_at <= now
        try:
            cron = _cron(camp)
            occurrence = latest_due(cron, _tz(camp), old, now) if cron else old
            advance: Update = (
                {"next_run_at": cron.next_after(now, _tz(camp))} if cron else {"status": CampaignStatus.DONE.value}
            )
        except CronError as exc:
            occurrence, advance, cron = old, {"status": CampaignStatus.PAUSED.value}, None
            ex = await self.runner.create(camp, occurrence, f"{camp['_id']}:{occurrence.isoformat()}")
            if ex is not None:
                await self.runner.fail(ex, f"invalid schedule: {exc}")
            await self._replace_campaign(camp, advance)
            return None
        end = camp.get("end_at")
        if isinstance(end, dt.datetime):
            if occurrence > end:  # past its end date: done, no execution
                await self._replace_campaign(camp, {"status": CampaignStatus.DONE.value})
                log.info("campaign_ended", campaign_id=camp["_id"], end_at=end)
                return None
            if cron and advance.get("next_run_at") is not None and advance["next_run_at"] > end:
                advance = {"status": CampaignStatus.DONE.value}  # this is its last occurrence
        key = f"{camp['_id']}:{occurrence.isoformat()}"
        late = now - occurrence
        limit = dt.timedelta(minutes=self.cfg.max_lateness_minutes)
        execution: ExecutionDoc | None
        if late > limit:
            reason = (
                f"occurrence {occurrence.isoformat()} is {late.total_seconds() / 60:.0f} minutes late "
                f"(more than max_lateness_minutes={self.cfg.max_lateness_minutes:g}); not sent late"
            )
            execution = await self.runner.create(camp, occurrence, key, status=ExecutionStatus.SKIPPED, reason=reason)
            if execution is not None:
                await self.runner._set(execution["_id"], {}, "completed_at")
                log.warning("occurrence_skipped", campaign_id=camp["_id"], scheduled_for=occurrence, reason=reason)
                await self.trackly.bus.publish(
                    Event(
                        kind=EventKind.OCCURRENCE_SKIPPED,
                        severity="warning",
                        message=f"{label(camp, 'campaign')}: {reason}",
                        data={
                            "campaign_id": camp["_id"],
                            "campaign": name_of(camp, "campaign"),
                            "scheduled_for": occurrence.isoformat(),
                            "reason": reason,
                            "execution_id": execution["_id"],
                        },
                        key=f"occurrence_skipped:{camp['_id']}",
                    )
                )
            execution = None
        else:
            execution = await self.runner.create(camp, occurrence, key)
        await self._replace_campaign(camp, advance)
        return execution

    async def tick(self) -> dict[str, int]:
        """One pass: fill in new campaigns, start due occurrences, resume stale executions, complete drained
        ones. Evaluations are started as tasks (bounded by ``max_concurrent_evaluations``)."""
        now = self.trackly.now()
        stats = {"started": 0, "resumed": 0, "completed": 0}
        await self._init_new(now)
        due = (
            await self.db[c.CAMPAIGNS]
            .find({"status": CampaignStatus.ACTIVE.value, "next_run_at": {"$lte": now}})
            .sort("next_run_at", 1)
            .limit(_DUE_BATCH)
            .to_list(None)
        )
        for camp in due:
            ex = await self._occurrence(camp, now)
            if ex is not None:
                self._spawn(ex, resumed=False)
                stats["started"] += 1
        for ex in await self.runner.resume_stale():
            self._spawn(ex, resumed=True)
            stats["resumed"] += 1
        stats["completed"] = await self.runner.complete_drained()
        return stats

    def _spawn(self, execution: ExecutionDoc, *, resumed: bool) -> None:
        async def go() -> None:
            async with self._sem:
                try:
                    await self.runner.run(execution, resumed=resumed)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the lease expires and another pass resumes it (a few times)
                    await self.runner.crashed(execution, exc)

        self._tasks.spawn(go(), name=f"evaluate-{execution['_id']}")

    async def run_until_idle(self) -> dict[str, int]:
        """Process everything due now (including evaluations) and return the totals."""
        totals = {"started": 0, "resumed": 0, "completed": 0}
        while True:
            stats = await self.tick()
            for k, v in stats.items():
                totals[k] += v
            await self._tasks.wait()
            totals["completed"] += await self.runner.complete_drained()
            if not stats["started"] and not stats["resumed"]:
                return totals

    # ---- component

    async def start(self) -> None:
        self._loop.start()
        log.info("scheduler_started", poll_interval_seconds=self.cfg.poll_interval_seconds)

    @staticmethod
    def _tick_failed(exc: Exception) -> None:
        log.error("scheduler_tick_failed", error=repr(exc))

    async def stop(self, grace: float) -> None:
        await self._loop.stop(grace)
        await stop_background(self.trackly, grace)
        await self._tasks.stop(grace)  # unfinished evaluations are resumed from their lease by the next scheduler
