"""A pool of reward actors fed group by group as generation finishes (never after the whole batch), that heals.

A scoring call whose actor dies, or that runs past `reward.timeout_s` (a hung actor: it is killed), is resubmitted
to another actor, with a fresh actor taking the failed one's place; only after `reward.max_retries` resubmissions
does its group score 0, counted. Every call therefore ends exactly once, with a real score or a counted failure.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, RayTaskError

from common.records import RewardContext, ScoredRollout
from reward_service.config import RewardConfig
from reward_service.worker import RewardActor

log = logging.getLogger(__name__)


@dataclass
class ScoreJob:
    """One scoring call: the engine's result (by reference), what scoring it needs, and its fate so far."""

    groups_ref: ray.ObjectRef
    contexts: list[RewardContext]
    actor: int = -1  # index in the pool of the actor running it
    handle: object = None  # that actor's handle (the pool's slot may since hold a replacement)
    attempts: int = 0
    deadline: float = 0.0
    ref: ray.ObjectRef | None = None
    result: list[list[ScoredRollout]] | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class PoolStats:
    """What one `collect` saw: calls resubmitted after a dead or hung actor, timeouts, groups scored 0."""
    retries: int = 0  # resubmissions after a dead or hung actor
    timeouts: int = 0  # calls that ran past reward.timeout_s
    failed_groups: int = 0  # groups scored 0 after max_retries


class RewardPool:
    """The reward actors (`reward.num_workers`): scoring calls go to the least busy, each with a timeout; a dead or
    hung actor is replaced and its call resubmitted up to `reward.max_retries` times, then its groups score 0."""
    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.actors = [self._new_actor() for _ in range(cfg.num_workers)]
        self._next = 0

    def _new_actor(self):
        return RewardActor.options(num_cpus=self.cfg.cpus_per_worker).remote(self.cfg.options)

    def _start(self, job: ScoreJob, avoid: int = -1) -> ScoreJob:
        i = self._next % len(self.actors)
        if i == avoid and len(self.actors) > 1:
            i = (i + 1) % len(self.actors)
        self._next = i + 1
        job.actor, job.handle, job.attempts = i, self.actors[i], job.attempts + 1
        job.deadline = time.monotonic() + self.cfg.timeout_s
        job.ref = self.actors[i].score.remote(job.groups_ref, job.contexts)
        return job

    def submit(self, groups_ref, contexts: list[RewardContext]) -> ScoreJob:
        """Score the groups behind `groups_ref` (an engine's result, passed by reference) on the next actor."""
        return self._start(ScoreJob(groups_ref, contexts))

    def _replace(self, i: int, reason: str) -> None:
        log.warning("reward actor %d %s: replacing it", i, reason)
        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._new_actor()

    def collect(self, jobs: list[ScoreJob]) -> PoolStats:
        """Wait until every job has its scores (`job.result`), retrying dead or hung actors' calls elsewhere; a job
        that fails `max_retries` times gets its answers scored 0 (with the reason)."""
        stats = PoolStats()
        running = {job.ref: job for job in jobs if job.result is None}
        while running:
            wait_s = max(0.0, min(job.deadline for job in running.values()) - time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            if ready:
                job = running.pop(ready[0])
                try:
                    job.result = ray.get(ready[0], timeout=self.cfg.timeout_s)
                except RayActorError:  # the actor died under the call (crash, OOM kill, node loss)
                    if self.actors[job.actor] is job.handle:
                        self._replace(job.actor, "died")
                    self._retry(job, "actor died", running, stats)
                except RayTaskError as exc:  # the call itself failed (e.g. its input was lost): try elsewhere
                    self._retry(job, f"task failed ({exc.cause!r})"[:200], running, stats)
                continue
            now = time.monotonic()
            for ref, job in list(running.items()):
                if job.deadline <= now:  # hung: its actor is killed, its other calls fail and are retried too
                    stats.timeouts += 1
                    running.pop(ref)
                    if self.actors[job.actor] is job.handle:
                        self._replace(job.actor, f"ran past reward.timeout_s={self.cfg.timeout_s}")
                    self._retry(job, "timeout", running, stats)
        return stats

    def _retry(self, job: ScoreJob, reason: str, running: dict, stats: PoolStats) -> None:
        job.failures.append(reason)
        if job.attempts > self.cfg.max_retries:
            stats.failed_groups += 1
            groups = ray.get(job.groups_ref)
            msg = f"reward failed {job.attempts} times: {', '.join(job.failures)}"
            job.result = [[ScoredRollout(r, 0.0, {}, error=msg) for r in g] for g in groups]
            log.error("a group of %s scored 0: %s", job.contexts[0].sample_id, msg)
            return
        stats.retries += 1
        failed_actor = job.actor
        self._start(job, avoid=failed_actor)
        running[job.ref] = job

    def busy_seconds(self) -> float:
        """Seconds each actor spent scoring (for the overlap metrics and the benchmark)."""
        return sum(ray.get([a.busy_seconds.remote() for a in self.actors], timeout=60))

