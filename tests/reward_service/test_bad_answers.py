"""Answers that once crashed or stalled scoring: huge integers, asymmetric cleaning, unclosed fences, box floods."""
import json

import pytest

from reward_service import counting, detection
from reward_service.counting import count_boxes, counting_reward
from reward_service.detection import DEFAULT_MAX_ITEMS, answer_to_coco, detection_reward
from reward_service.grounding import grounding_reward
from reward_service.ocr import ocr_metrics, ocr_reward

HUGE = "2" + "0" * 308  # float() of this JSON integer raises OverflowError
GEO = dict(scale=(1.0, 1.0), orig_size=(200, 200))


def test_a_309_digit_integer_is_a_malformed_box_not_a_crash():
    answer = f'[{{"bbox_2d": [{HUGE}, 0, 1, 1], "label": "a"}}]'
    assert grounding_reward(answer, [0, 0, 1, 1], convention="qwen25vl", **GEO)["total"] == 0.0
    assert counting_reward(answer, [[1, 1]], convention="qwen25vl", resized_size=(200, 200), **GEO)["total"] == 0.0
    assert count_boxes(answer, "qwen25vl") is None
    assert detection_reward(answer, [[0, 0, 1, 1]], ["a"], ["a"], convention="qwen25vl", resized_size=(200, 200),
                            **GEO)["total"] == 0.0
    assert answer_to_coco(answer, ["a"], {"a": 1}, convention="qwen25vl", image_id=1, **GEO) == []


@pytest.mark.parametrize("truth", ["of \n", "\n", "  text<|im_end|>", "line one\nline two  "])
def test_ocr_cleans_answer_and_truth_alike(truth):
    """An exact transcription scores 1 whatever white space or end-of-turn token the ground truth carries."""
    assert ocr_reward(truth, truth)["total"] == 1.0
    assert ocr_metrics([truth], [truth])["edit_distance"] == 0.0


def test_an_unclosed_json_fence_is_stripped_as_the_released_code_does():
    box = [10, 10, 50, 50]
    for answer in (f'```json\n[{json.dumps(box)}]', f'```json\n{json.dumps({"bbox_2d": box})}\n```'):
        assert grounding_reward(answer, box, convention="qwen25vl", **GEO)["total"] == pytest.approx(2.0)


def test_box_flood_is_bounded_and_still_costs_reward(monkeypatch):
    """19,000 boxes against 2,000 points once took 142 s (past the reward timeout); 5,000 detections against 1,000
    objects 17 s. Only the first max_items boxes are matched; the rest still count as predictions. The bound is
    asserted on the cost matrix the Hungarian matcher receives (its work grows with rows x columns), not on wall
    time, which a busy machine stretches (a 1 s limit failed at 2.4 s under CI's parallel load)."""
    shapes = []
    for module in (counting, detection):
        real = module.linear_sum_assignment
        monkeypatch.setattr(module, "linear_sum_assignment",
                            lambda cost, real=real: shapes.append(cost.shape) or real(cost))
    points = [[i % 200, (i * 7) % 200] for i in range(2000)]
    boxes = [[i % 9, i // 9 % 9, i % 9 + 1, i // 9 % 9 + 1] for i in range(19000)]
    flood = json.dumps(boxes, separators=(",", ":"))
    assert len(flood) < 200_000  # under the parse limit: every box is read
    out = counting_reward(flood, points, convention="qwen25vl", resized_size=(200, 200), **GEO)
    assert shapes == [(DEFAULT_MAX_ITEMS, 2000)]
    assert out["format"] == 1.0 and out["count_error"] == 17000 and out["answer"] <= 2000 / 19000

    gt = [[x, y, x + 20, y + 20] for x, y in ((i % 40 * 5, i // 40 * 5) for i in range(1000))]
    det = json.dumps([{"bbox_2d": b, "label": "a"} for b in gt] * 5, separators=(",", ":"))
    assert len(det) < 200_000
    out = detection_reward(det, gt, ["a"] * 1000, ["a"], convention="qwen25vl", resized_size=(400, 400),
                           scale=(1.0, 1.0), orig_size=(400, 400))
    assert shapes[1] == (DEFAULT_MAX_ITEMS, 1000)
    # 256 matched of 5,000 predictions and 1,000 objects: precision and recall are low, the penalty high.
    assert out["number"] < 0.1 and out["penalty"] > 0.8


def test_items_beyond_the_cap_count_as_false_positives():
    gt = [[10, 10, 50, 50]]
    exact = json.dumps([{"bbox_2d": gt[0], "label": "a"}])
    padded = json.dumps([{"bbox_2d": gt[0], "label": "a"}] + [{"bbox_2d": [0, 0, 1, 1], "label": "a"}] * 3)
    kw = dict(convention="qwen25vl", resized_size=(200, 200), **GEO)
    assert detection_reward(exact, gt, ["a"], ["a"], max_items=1, **kw)["total"] == pytest.approx(3.0)
    capped = detection_reward(padded, gt, ["a"], ["a"], max_items=1, **kw)
    full = detection_reward(padded, gt, ["a"], ["a"], **kw)
    assert capped == full  # the matched box is first; the three extra ones are unmatched either way
