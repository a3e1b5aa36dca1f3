"""A pool of reward actors fed group by group as generation finishes (never after the whole batch)."""
from __future__ import annotations

import itertools

import ray

from common.records import RewardContext, ScoredRollout
from reward_service.config import RewardConfig
from reward_service.worker import RewardActor


class RewardPool:
    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.actors = [RewardActor.options(num_cpus=cfg.cpus_per_worker).remote(cfg.options) for _ in range(cfg.num_workers)]
        self._next = itertools.cycle(self.actors)

    def submit(self, groups_ref, contexts: list[RewardContext]) -> ray.ObjectRef:
        """Score the groups behind `groups_ref` (an engine's result, passed by reference) on the next actor."""
        return next(self._next).score.remote(groups_ref, contexts)

    def collect(self, refs: list[ray.ObjectRef]) -> list[list[list[ScoredRollout]] | None]:
        """Results in submission order; a call still running after the timeout is cancelled and returns None."""
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.timeout_s)
        done = set(done)
        out = []
        for ref in refs:
            if ref in done:
                out.append(ray.get(ref))
            else:
                ray.cancel(ref)  # actor tasks cannot be force-cancelled; a queued one is dropped
                out.append(None)
        return out

    def busy_seconds(self) -> float:
        return sum(ray.get([a.busy_seconds.remote() for a in self.actors]))
