"""The synthetic colour task's reward on crafted answers, and on arbitrary strings."""
import pytest
from hypothesis import given, settings, strategies as st

from reward_service.colour import colour_reward


@pytest.mark.parametrize("answer, fmt, acc, total", [
    ("red", 1.0, 1.0, 1.0),
    ("  Red\n", 1.0, 1.0, 1.0),
    ("blue", 1.0, 0.0, 0.2),
    ("red circle", 0.5, 1.0, 0.9),
    ("green square", 0.5, 0.0, 0.1),
    ("circle", 0.0, 0.0, 0.0),
    ("", 0.0, 0.0, 0.0),
    ("9red", 0.0, 0.0, 0.0),
])
def test_crafted_answers(answer, fmt, acc, total):
    r = colour_reward(answer, "red")
    assert r == pytest.approx({"format": fmt, "accuracy": acc, "total": total})


def test_bad_truth_is_an_error_not_a_score():
    with pytest.raises(ValueError, match="purple"):
        colour_reward("red", "purple")


def test_huge_answer_is_bounded():
    r = colour_reward("red " + "x" * 1_000_000, "red")
    assert r == {"format": 0.5, "accuracy": 1.0, "total": pytest.approx(0.9)}


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.text())
def test_any_string_scores_within_bounds(answer):
    r = colour_reward(answer, "green")
    assert 0.0 <= r["total"] <= 1.0
