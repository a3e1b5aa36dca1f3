"""Maps a task to its reward: (answer text, RewardContext, RewardOptions) -> components with a 'total'.

Ground truth in `RewardContext.solution`, per task (boxes in pixels of the original image):
grounding {"box": [x1, y1, x2, y2]}; counting {"points": [[x, y], ...] or None, "count": int}; ocr {"text": str};
detection {"boxes": [[x1, y1, x2, y2], ...], "labels": [...], "categories": [...]}; colour: the colour name.
"""
from __future__ import annotations

from collections.abc import Callable

from common.records import RewardContext
from reward_service.colour import colour_reward
from reward_service.config import RewardOptions
from reward_service.counting import counting_reward
from reward_service.detection import detection_reward
from reward_service.grounding import grounding_reward
from reward_service.ocr import ocr_reward

RewardFn = Callable[[str, RewardContext, RewardOptions], dict[str, float]]


def _geometry(ctx: RewardContext, opts: RewardOptions) -> dict:
    return {"convention": opts.box_convention, "scale": ctx.scale, "orig_size": ctx.orig_size}


REWARDS: dict[str, RewardFn] = {
    "colour": lambda answer, ctx, opts: colour_reward(answer, ctx.solution),
    "grounding": lambda answer, ctx, opts: grounding_reward(
        answer, ctx.solution["box"], iou_power=opts.iou_power, **_geometry(ctx, opts)),
    "counting": lambda answer, ctx, opts: counting_reward(
        answer, ctx.solution["points"], count=ctx.solution.get("count"), resized_size=ctx.resized_size,
        max_items=opts.max_items, **_geometry(ctx, opts)),
    "ocr": lambda answer, ctx, opts: ocr_reward(answer, ctx.solution["text"]),
    "detection": lambda answer, ctx, opts: detection_reward(
        answer, ctx.solution["boxes"], ctx.solution["labels"], opts.categories or ctx.solution["categories"],
        resized_size=ctx.resized_size, l1_normalized=opts.l1_normalized, size_weights=opts.size_weights,
        missing_penalty=opts.missing_penalty, max_items=opts.max_items, **_geometry(ctx, opts)),
}


def reward_fn(task: str) -> RewardFn:
    """The reward of `task`; KeyError naming the known tasks otherwise."""
    try:
        return REWARDS[task]
    except KeyError:
        raise KeyError(f"no reward for task {task!r}; known: {sorted(REWARDS)}") from None
