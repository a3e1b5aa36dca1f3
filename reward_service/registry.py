"""Maps a task to its reward function: (answer text, RewardContext) -> components with a 'total'."""
from __future__ import annotations

from collections.abc import Callable

from common.records import RewardContext
from reward_service.colour import colour_reward

RewardFn = Callable[[str, RewardContext], dict[str, float]]

REWARDS: dict[str, RewardFn] = {
    "colour": lambda answer, ctx: colour_reward(answer, ctx.solution),
}


def reward_fn(task: str) -> RewardFn:
    try:
        return REWARDS[task]
    except KeyError:
        raise KeyError(f"no reward for task {task!r}; known: {sorted(REWARDS)}") from None
