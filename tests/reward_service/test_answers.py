"""The answers the warm start teaches are the ones the rewards score highest, in both box conventions."""
import json

import pytest

from common.records import RewardContext
from orchestration.data.prompts import grounding_expression
from orchestration.data.synthetic import SYNTHETIC
from reward_service.answers import format_answer
from reward_service.config import RewardOptions
from reward_service.registry import reward_fn

BEST = {"grounding": 2.0, "counting": 2.0, "ocr": 1.0, "detection": 3.0, "colour": 1.0}
LABEL = {"grounding": lambda s: grounding_expression(s.question), "counting": lambda s: "dot"}


# Detection answers are Qwen2.5-VL JSON only (SPEC).
CASES = [(t, c) for t in sorted(BEST) for c in ("qwen25vl", "qwen2vl") if (t, c) != ("detection", "qwen2vl")]


@pytest.mark.parametrize("task,convention", CASES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_the_perfect_answer_scores_the_maximum(task, convention, scale):
    for sample in SYNTHETIC[task](8, 0, 112, "train"):
        w, h = sample.image_size
        ctx = RewardContext(sample.id, task, sample.solution, (scale, scale), (round(w * scale), round(h * scale)),
                            (w, h))
        label = LABEL[task](sample) if task in LABEL else None
        answer = format_answer(task, sample.solution, ctx, convention, label=label)
        out = reward_fn(task)(answer, ctx, RewardOptions(box_convention=convention))
        # Whole numbers: exact for pixels at scale 1; 0-1000 units or halved small boxes lose a little to rounding.
        exact = convention == "qwen25vl" and scale == 1.0
        assert out["total"] == pytest.approx(BEST[task], abs=1e-9 if exact else 0.15), (answer, out)
        if task in ("grounding", "detection"):
            assert out["format"] == 1.0


@pytest.mark.parametrize("task", ["counting", "detection"])
def test_reading_order_lists_the_same_boxes_top_to_bottom_and_still_scores_the_maximum(task):
    reordered = 0
    for sample in SYNTHETIC[task](16, 0, 112, "train"):
        w, h = sample.image_size
        ctx = RewardContext(sample.id, task, sample.solution, (1.0, 1.0), (w, h), (w, h))
        label = LABEL.get(task, lambda s: None)(sample)
        given = json.loads(format_answer(task, sample.solution, ctx, label=label))
        ordered = json.loads(format_answer(task, sample.solution, ctx, label=label, reading_order=True))
        key = lambda item: (item["bbox_2d"][1], item["bbox_2d"][0])
        assert ordered == sorted(given, key=key)  # the same items (labels stay with their boxes), top-left first
        reordered += ordered != given
        out = reward_fn(task)(json.dumps(ordered), ctx, RewardOptions())
        assert out["total"] == pytest.approx(BEST[task])
    assert reordered > 0  # the synthetic scenes are not already drawn in reading order


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_grounding_scene_description_names_every_object_in_reading_order_and_holds_the_named_box(scale):
    """The `thinking` warm start's trace: each object's name then its box (answer coordinates), top-left first, then
    the named one restated; the whole text is the layout the reward reads and scores the maximum plus the format."""
    from common.records import Rollout
    from reward_service.answers import scene_description, thinking_text
    from reward_service.worker import score_one

    for sample in SYNTHETIC["grounding"](16, 0, 112, "train"):
        w, h = sample.image_size
        ctx = RewardContext(sample.id, "grounding", sample.solution, (scale, scale),
                            (round(w * scale), round(h * scale)), (w, h))
        label = LABEL["grounding"](sample)
        answer = format_answer("grounding", sample.solution, ctx, label=label)
        trace, restated = scene_description(sample.solution, ctx, named=label).split(". ")
        assert trace == scene_description(sample.solution, ctx)
        assert restated.startswith(f"{label} [") and json.loads(restated[len(label):]) == json.loads(answer)["bbox_2d"]
        items = [part.split(" [") for part in trace.split("; ")]
        scene = sample.solution["scene"]
        assert sorted(name for name, _ in items) == sorted(obj["label"] for obj in scene) and label in trace
        tops = [[int(v) for v in coords.rstrip("]").split(", ")][1::-1] for _, coords in items]
        assert tops == sorted(tops)  # (top, left) ascending: reading order
        named = next(coords for name, coords in items if name == label)
        assert json.loads(f"[{named}")[:4] == json.loads(answer)["bbox_2d"]  # the answer's box is in the trace
        text = thinking_text(f"{trace}. {restated}", answer)
        out = score_one(Rollout(sample.id, [1], [2], text, [-0.1], 0, "stop"), ctx, RewardOptions(thinking=True))
        assert out.components["thinking_format"] == 1.0 and out.reward == pytest.approx(BEST["grounding"] + 1.0,
                                                                                        abs=0.15)
    assert scene_description({"box": [0, 0, 5, 5]}, ctx) == ""  # a sample without a scene: no description
