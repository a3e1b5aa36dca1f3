"""Grounding reward on crafted answers in both conventions, with the ground truth rescaled into answer space."""
import pytest

from reward_service.grounding import grounding_metrics, grounding_reward

# Original image 200 x 100, resized to 112 x 56 for the model: scale (0.56, 0.56).
GEO = dict(scale=(0.56, 0.56), orig_size=(200, 100))
GT = [20, 10, 120, 60]  # original pixels; in the resized image [11.2, 5.6, 67.2, 33.6]


def r(answer, convention="qwen25vl", p=2.0):
    return grounding_reward(answer, GT, convention=convention, iou_power=p, **GEO)


def test_perfect_answer_in_resized_pixels():
    out = r('{"bbox_2d": [11.2, 5.6, 67.2, 33.6], "label": "dog"}')
    assert out == pytest.approx({"format": 1.0, "iou": 1.0, "answer": 1.0, "total": 2.0})


def test_answer_in_original_pixels_is_penalised():
    # The classic 'IoU stuck at 0' mistake: answering in original pixels scores much less than in resized ones.
    assert r('[20, 10, 120, 60]')["iou"] < 0.3


def test_shifted_box_iou_squared_and_paper_power():
    # Shift right by half the width (28 px): intersection 28x28, union 2*56*28 - 28*28 -> IoU 1/3.
    ans = '```json\n[{"bbox_2d": [39.2, 5.6, 95.2, 33.6]}]\n```'
    assert r(ans)["iou"] == pytest.approx(1 / 3)
    assert r(ans)["answer"] == pytest.approx(1 / 9)
    assert r(ans, p=1.0)["answer"] == pytest.approx(1 / 3)


def test_qwen2vl_convention_uses_0_1000_of_the_original():
    # GT normalised: x 20/200*1000=100, 120/200*1000=600; y 10/100*1000=100, 60/100*1000=600.
    perfect = "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(100,100),(600,600)<|box_end|><|im_end|>"
    assert r(perfect, "qwen2vl")["total"] == pytest.approx(2.0)
    assert r("<|box_start|>(100,100),(600,600)<|box_end|>", "qwen2vl")["total"] == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [
    "the box is [1, 2, 3, 4]", "", "[1, 2, 3]", '{"bbox_2d": [1, 2, "x", 4]}', "[[1,2,3,4],[1,2,3,4]]",
    '[{"bbox_2d": [50, 50, 10, 10]}]', "<|box_start|>(1,2),(3,4)<|box_end|>", "[1e999, 0, 1, 1]", "[0, 0, 0, 100E153]",
])
def test_malformed_answers_score_zero(bad):
    assert r(bad)["total"] == 0.0


def test_released_regex_bug_not_present():
    # The released format regex had unescaped '|' and matched almost anything; ours needs the exact form.
    assert r("box_start hello box_end", "qwen2vl")["format"] == 0.0
    assert r("<|box_start|>(100,100),(600,600)<|box_end|> and more text", "qwen2vl")["format"] == 0.0


def test_metrics():
    m = grounding_metrics([1.0, 0.6, 0.4, 0.0])
    assert m["acc@0.5"] == 0.5 and m["acc@0.3"] == 0.75 and m["acc@0.95"] == 0.25
    assert m["miou"] == pytest.approx(0.5)
