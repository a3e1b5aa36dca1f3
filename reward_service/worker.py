"""Scores groups of rollouts. A failure on one answer scores it 0 with the error recorded; it never fails the step."""
from __future__ import annotations

import time

import ray

from common.records import RewardContext, Rollout, ScoredRollout
from reward_service.config import RewardOptions
from reward_service.registry import reward_fn
from reward_service.thinking import answer_part, thinking_answer


class RewardWorker:
    """Plain scorer; `RewardActor` is its Ray shell."""

    def __init__(self, options: RewardOptions | None = None):
        self.options = options or RewardOptions()
        self.busy_s = 0.0

    def score(self, groups: list[list[Rollout]], contexts: list[RewardContext]) -> list[list[ScoredRollout]]:
        """Scored groups for `groups` [prompts][G] with one `RewardContext` per prompt; never raises for an answer."""
        t0 = time.perf_counter()
        out = [[score_one(r, ctx, self.options) for r in group] for group, ctx in zip(groups, contexts, strict=True)]
        self.busy_s += time.perf_counter() - t0
        return out


def score_one(rollout: Rollout, ctx: RewardContext, options: RewardOptions) -> ScoredRollout:
    """Reward of one answer; any exception (a bad answer or bad ground truth) gives 0 and names the error.
    With `options.thinking` the task reward reads the <answer> block and `thinking_format` (0/1) is added."""
    try:
        text = answer_part(rollout.response_text, options.thinking)
        components = dict(reward_fn(ctx.task)(text, ctx, options))
        total = float(components.pop("total"))
        if options.thinking:
            components["thinking_format"] = float(thinking_answer(rollout.response_text) is not None)
            total += components["thinking_format"]
        return ScoredRollout(rollout, total, components)
    except Exception as exc:  # noqa: BLE001 - the recovery is reward 0 and a counted reward/errors metric
        return ScoredRollout(rollout, 0.0, {}, error=f"{type(exc).__name__}: {exc}"[:500])


@ray.remote
class RewardActor:
    """Ray shell over `RewardWorker` (one process of the reward pool)."""
    def __init__(self, options: RewardOptions | None = None):
        self.worker = RewardWorker(options)

    def score(self, groups, contexts):
        """Scored groups for `groups` [prompts][G] with one `RewardContext` per prompt; never raises for an answer."""
        return self.worker.score(groups, contexts)

    def busy_seconds(self) -> float:
        """Seconds spent scoring so far."""
        return self.worker.busy_s

    def block(self, seconds: float) -> None:
        """Keep this actor busy for `seconds`: a fault drill, what a hung reward looks like to the pool."""
        time.sleep(seconds)
