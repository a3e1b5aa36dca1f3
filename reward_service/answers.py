"""The perfect answer to a sample, in the model's box convention: what the supervised warm start teaches, and what
scores the task's maximum reward (tested).

qwen25vl: JSON in integer pixels of the resized image the model sees; qwen2vl: special tokens with 0-1000 integers.
"""
from __future__ import annotations

import json

from common.records import RewardContext
from reward_service.boxes import to_answer_space

COUNT_BOX_HALF = 3  # counting truth is points: the answer's box around each is this many pixels each way


def _answer_box(box, convention: str, ctx: RewardContext) -> list[int]:
    """A ground-truth box (original-image pixels) as the whole numbers an answer writes in `convention`."""
    return [round(v) for v in to_answer_space(box, convention, ctx.scale, ctx.orig_size)]


def _box_text(box, label: str | None, convention: str, ctx: RewardContext) -> str | dict:
    x1, y1, x2, y2 = _answer_box(box, convention, ctx)
    if convention == "qwen2vl":
        ref = f"<|object_ref_start|>{label}<|object_ref_end|>" if label else ""
        return f"{ref}<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    return {"bbox_2d": [x1, y1, x2, y2], "label": label} if label else {"bbox_2d": [x1, y1, x2, y2]}


def _top_left(box) -> tuple[float, float]:
    """Reading-order sort key: top to bottom, then left to right, by the box's top-left corner."""
    return box[1], box[0]


def scene_description(solution, ctx: RewardContext, convention: str = "qwen25vl", named: str | None = None) -> str:
    """A grounding scene described object by object, name first, then its box in the answer's coordinates, in
    reading order: `red circle [12, 8, 40, 36]; blue square [...]`, from `solution["scene"]` (the synthetic scenes
    annotate every object; "" where a sample does not). The warm start's <think> trace with `thinking`. With `named`
    (the question's expression) the named object is restated last, `. blue square [...]`: written after its name,
    its box is a copy of the text that followed the same name in the description (an induction-style lookup), and
    the answer copies it from there."""

    def entry(label: str, box) -> str:
        """One described object: its name and box."""
        return f"{label} [{', '.join(map(str, _answer_box(box, convention, ctx)))}]"

    scene = sorted(solution.get("scene") or (), key=lambda o: _top_left(o["box"]))
    text = "; ".join(entry(obj["label"], obj["box"]) for obj in scene)
    return f"{text}. {entry(named, solution['box'])}" if scene and named else text


def thinking_text(thought: str, answer: str) -> str:
    """The `thinking` layout the reward reads (reward_service/thinking.py)."""
    return f"<think>{thought}</think><answer>{answer}</answer>"


def format_answer(task: str, solution, ctx: RewardContext, convention: str = "qwen25vl",
                  label: str | None = None, reading_order: bool = False) -> str:
    """The answer that scores the task's maximum for ground truth `solution` (original-image pixels).
    `label`: the object's name where the answer carries one (grounding's expression, counting's object).
    `reading_order`: list several boxes top to bottom, left to right, instead of as annotated."""
    if task == "colour":
        return str(solution)
    if task == "ocr":
        return solution["text"]
    if task == "grounding":
        item = _box_text(solution["box"], label, convention, ctx)
        return item if isinstance(item, str) else json.dumps(item)
    if task == "counting":
        r = COUNT_BOX_HALF / min(ctx.scale)  # the same size in the resized image whatever the scale
        boxes = [[x - r, y - r, x + r, y + r] for x, y in solution["points"]]
        if reading_order:
            boxes.sort(key=_top_left)
        if convention == "qwen2vl":  # the released format: the object named once, then its boxes
            ref = f"<|object_ref_start|>{label}<|object_ref_end|>" if label else ""
            return ref + "".join(_box_text(b, None, convention, ctx) for b in boxes)
        items = [_box_text(b, label, convention, ctx) for b in boxes]
    elif task == "detection":
        pairs = list(zip(solution["boxes"], solution["labels"]))
        if reading_order:
            pairs.sort(key=lambda pair: _top_left(pair[0]))
        items = [_box_text(b, lab, convention, ctx) for b, lab in pairs]
    else:
        raise ValueError(f"no answer format for task {task!r}")
    return "".join(items) if convention == "qwen2vl" else json.dumps(items)
