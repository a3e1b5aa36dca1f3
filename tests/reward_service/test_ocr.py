import pytest

from reward_service.ocr import ocr_metrics, ocr_reward


@pytest.mark.parametrize("pred, gt, expect", [
    ("hello world", "hello world", 1.0),
    ("", "", 1.0),
    ("hello", "", 0.0),
    ("hallo world", "hello world", 1 - 1 / 11),
    ("hello world<|im_end|>", "hello world", 1.0),
    ("kitten", "sitting", 1 - 3 / 7),
])
def test_edit_distance_reward(pred, gt, expect):
    assert ocr_reward(pred, gt)["total"] == pytest.approx(expect)


def test_metrics():
    m = ocr_metrics(["the cat sat", "a dog"], ["the cat sat", "a big dog"])
    assert m["edit_distance"] == pytest.approx((0 + 4 / 9) / 2)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx((1 + 2 / 3) / 2)
    long = ocr_metrics(["the quick brown fox jumps over the dog"], ["the quick brown fox jumps over the lazy dog"])
    assert 0.3 < long["bleu"] < 1.0
    assert ocr_metrics(["same text here now"], ["same text here now"])["bleu"] == pytest.approx(1.0)
