"""Scheduled jobs (APScheduler 3, AsyncIOScheduler): the nudge sweep, the weekly digest, and
the hourly pruning of handled event ids.

The store is the truth: each run records what it sent, in the same transaction as the queued
messages, so a restart never sends a nudge twice. A run missed while the bot was down runs
once at start (coalesced), not once per missed tick.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.clock import ServerClock
from bot.metrics import Metrics
from bot.nudges import (
    escalation_message,
    nudge_message,
    nudge_send,
    select,
    should_escalate,
)
from bot.ops import Mark, RecordNudge, Send
from bot.progress import current_step
from bot.reports import render_digest
from bot.store import Store, ts
from bot.team import Team

log = logging.getLogger(__name__)

NUDGES, DIGEST, PRUNE = "nudges", "digest", "prune"
# Hourly, off the full hour when the other jobs tend to run.
PRUNE_TRIGGER = CronTrigger.from_crontab("17 * * * *", timezone=UTC)


def job_txn_id(key: str) -> str:
    return "job-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class Jobs:
    """What the scheduled jobs do; the scheduler only decides when."""

    def __init__(
        self,
        *,
        store: Store,
        team: Team,
        prefix: str,
        keep_handled: timedelta = timedelta(days=2),
        clock: ServerClock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.team = team
        self.prefix = prefix
        self.keep_handled = keep_handled
        self.clock = clock or ServerClock()

    async def plan_nudges(self, now: datetime) -> tuple[list[RecordNudge], list[tuple[str, Send]]]:
        """One indexed query for the short list, then the pure rules; nothing is written."""
        team = self.team.state
        policy, roadmap = team.policy, team.roadmap
        candidates = await self.store.nudge_candidates(now, now - policy.idle_after)
        ops: list[RecordNudge] = []
        messages: list[tuple[str, Send]] = []
        for c, idle in select(policy, candidates, now):
            step = roadmap.get(c.current_step)
            if step is None:  # the pointed step was removed by a reload; rare, so read it all
                step = current_step(roadmap, await self.store.load_progress(c.user_id))
            streak = c.nudges_in_row + 1
            # One nudge per (idle spell, count): the same plan run twice queues nothing new.
            key = f"nudge/{c.user_id}/{ts(c.last_activity_at)}/{streak}"
            ops.append(RecordNudge(c.user_id, "nudge", step.id if step else None, "scheduler"))
            content = nudge_message(roadmap, c.user_id, step, idle, self.prefix)
            send = nudge_send(policy, c.user_id, content)
            if step is not None:  # reactions on the nudge act on the step it names
                send = replace(send, mark=Mark("step", c.user_id, step.id))
            messages.append((job_txn_id(key), send))
            if should_escalate(policy, c):
                ops.append(RecordNudge(c.user_id, "escalation", None, "scheduler"))
                for mentor in team.told_about(c.mentor):
                    note = escalation_message(c.user_id, step, idle, streak, mentor)
                    messages.append(
                        (
                            job_txn_id(f"{key}/escalate/{mentor}"),
                            Send("escalation", note, to_user=mentor),
                        )
                    )
        return ops, messages

    async def nudge_sweep(self) -> int:
        if self.clock.skewed:
            log.warning("nudge sweep held: this machine's clock is off the homeserver's")
            return 0
        now = self.clock.now()
        ops, messages = await self.plan_nudges(now)
        if messages:
            await self.store.commit_job(ops=ops, messages=messages, at=now)
            if self.metrics is not None:
                for op in ops:
                    self.metrics.nudges.labels(op.kind).inc()
        log.info("nudge sweep: %d nudged", sum(1 for o in ops if o.kind == "nudge"))
        return len(messages)

    async def digest(self) -> int:
        now = self.clock.now()
        since = now - timedelta(days=7)
        team = self.team.state
        infos = await self.store.newcomers([s.id for s in team.roadmap])
        done = await self.store.progress_since(since)
        missed = await self.store.steps_missed_twice(since)
        states = await self.store.states_of(i.user_id for i in infos)
        content = render_digest(
            team.roadmap,
            infos,
            done,
            team.policy,
            now,
            since,
            prefix=self.prefix,
            missed_twice=missed,
            states=states,
        ).content()
        key = f"digest/{now.date().isoformat()}"
        if team.team_room:
            messages = [(job_txn_id(key), Send("digest", content, room_id=team.team_room))]
        else:
            messages = [
                (job_txn_id(f"{key}/{m}"), Send("digest", content, to_user=m))
                for m in sorted(team.mentors)
            ]
        await self.store.commit_job(ops=(), messages=messages, at=now)
        return len(messages)

    async def prune(self) -> int:
        """Forgets handled event ids older than a restart can re-deliver: such an event is
        dropped for its age (bot.max_event_age) before its id is looked up."""
        now = self.clock.now()
        pruned = await self.store.prune_handled(now - self.keep_handled)
        forgotten = await self.store.prune_marked(now - KEEP_MARKED)
        log.info("pruned %d handled event ids, %d marked messages", pruned, forgotten)
        return pruned


# A step message or a check's poll older than this is no longer acted on when reacted to.
KEEP_MARKED = timedelta(days=90)


class Scheduler:
    """APScheduler wiring plus catch-up of runs missed while the bot was down."""

    def __init__(self, jobs: Jobs, store: Store) -> None:
        self.jobs = jobs
        self.store = store
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )
        self._triggers: dict[str, CronTrigger] = {}

    def add(self, job_id: str, trigger: CronTrigger) -> None:
        self._triggers[job_id] = trigger
        self.scheduler.add_job(self._run, trigger, args=[job_id], id=job_id, name=job_id)

    async def _run(self, job_id: str) -> None:
        funcs: dict[str, Callable[[], Awaitable[Any]]] = {
            NUDGES: self.jobs.nudge_sweep,
            DIGEST: self.jobs.digest,
            PRUNE: self.jobs.prune,
        }
        func = funcs[job_id]
        try:
            await func()
        except Exception:
            log.exception("scheduled job %s failed; it runs again at its next time", job_id)
            return
        await self.store.set_value(f"job:{job_id}:last_run", ts(self.jobs.clock.now()))

    async def start(self) -> None:
        """Starts the timers; a run that fell due while the bot was down runs once, now."""
        now = self.jobs.clock.now()
        self.scheduler.start()
        for job_id, trigger in self._triggers.items():
            last = await self.store.get_value(f"job:{job_id}:last_run")
            if last is None:
                await self.store.set_value(f"job:{job_id}:last_run", ts(now))
                continue
            due = trigger.get_next_fire_time(None, datetime.fromisoformat(last))
            if due is not None and due <= now:
                log.info(
                    "job %s missed its run at %s while the bot was down: running it now",
                    job_id,
                    due.isoformat(),
                )
                self.run_now(job_id)

    def run_now(self, job_id: str) -> None:
        """Fires a job through the scheduler now (SIGUSR1 does this for the nudge sweep)."""
        job = self.scheduler.get_job(job_id)
        if job is None:
            log.warning("no scheduled job %s to run", job_id)
            return
        job.modify(next_run_time=datetime.now(UTC))

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
