"""Counting reward: Hungarian matching of box centres to true points (scipy), both conventions."""
import math

import pytest

from reward_service.counting import count_boxes, counting_metrics, counting_reward

GEO = dict(scale=(0.5, 0.5), orig_size=(200, 200), resized_size=(100, 100))
POINTS = [[20, 20], [100, 100], [180, 40]]  # original pixels -> resized (10,10), (50,50), (90,20)


def box(cx, cy, label="dot"):
    return f'{{"bbox_2d": [{cx - 2}, {cy - 2}, {cx + 2}, {cy + 2}], "label": "{label}"}}'


def test_perfect_count_and_positions():
    ans = "[" + ",".join([box(50, 50), box(10, 10), box(90, 20)]) + "]"
    out = counting_reward(ans, POINTS, convention="qwen25vl", **GEO)
    assert out["format"] == 1.0 and out["answer"] == pytest.approx(1.0) and out["count_error"] == 0


def test_missing_object_and_offset():
    # Two boxes, each 3 px off its point: 2/3 * (1 - 3 / diag(100, 100)).
    ans = "[" + box(13, 10) + "," + box(50, 53) + "]"
    out = counting_reward(ans, POINTS, convention="qwen25vl", **GEO)
    assert out["answer"] == pytest.approx(2 / 3 * (1 - 3 / math.hypot(100, 100)))
    assert out["count_error"] == 1.0


def test_extra_objects():
    ans = "[" + ",".join([box(10, 10), box(50, 50), box(90, 20), box(70, 70)]) + "]"
    out = counting_reward(ans, POINTS, convention="qwen25vl", **GEO)
    assert out["answer"] == pytest.approx(3 / 4)


def test_qwen2vl_diagonal_is_1000_sqrt2():
    # (20,20) of a 200x200 image is (100,100) in 0-1000; the answer's centre is (110,100): 10 / (1000*sqrt2).
    ans = "<|box_start|>(105,95),(115,105)<|box_end|>"
    out = counting_reward(ans, [[20, 20]], convention="qwen2vl", **GEO)
    assert out["answer"] == pytest.approx(1 - 10 / (1000 * math.sqrt(2)))


def test_overflowing_coordinates_are_malformed_not_a_crash():
    # Found by hypothesis: 1e155 is finite, but its square is not, and the Hungarian solver raised.
    out = counting_reward('[{"bbox_2d":[0,0,0,100E153],"label":"dot"}]', POINTS, convention="qwen25vl", **GEO)
    assert out["total"] == 0.0


def test_gate_and_metric():
    assert counting_reward("three dots", POINTS, convention="qwen25vl", **GEO)["total"] == 0.0
    assert count_boxes("[" + box(1, 1) + "," + box(5, 5) + "]", "qwen25vl") == 2
    assert count_boxes("nonsense", "qwen25vl") is None
    assert counting_metrics([3, None, 2], [3, 1, 1]) == {"count_acc": pytest.approx(1 / 3)}
