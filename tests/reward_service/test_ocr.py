import pytest

from reward_service.ocr import ocr_metrics, ocr_reward, words


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


PAGE = "今天天气很好，我们一起去公园散步，然后在湖边的咖啡馆喝一杯咖啡，看看书，聊聊天。"


def test_an_exact_chinese_page_scores_bleu_and_f1_one():
    """A space-free Chinese page: sacrebleu's default tokenizer saw one 'word' per line and gave an exact
    transcription BLEU 0.0; with its Chinese tokenizer and jieba's words it is 1.0."""
    m = ocr_metrics([PAGE], [PAGE])
    assert m["bleu"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0) and m["edit_distance"] == 0.0


def test_one_wrong_chinese_word_costs_one_word_of_f1_not_the_whole_line():
    wrong = PAGE.replace("咖啡馆", "图书馆")
    segmented = words(PAGE)
    assert "咖啡馆" in segmented and len(segmented) > 20  # segmented into words, not split on (absent) spaces
    m = ocr_metrics([wrong], [PAGE])
    assert 0.94 < m["f1"] < 1.0, m  # splitting on spaces made it 0.0 (one 'word' per line)
    assert 0.5 < m["bleu"] < 1.0


def test_english_metrics_are_unchanged_by_the_chinese_handling():
    import sacrebleu

    preds, gts = ["The quick brown fox, jumped!"], ["The quick brown fox jumped!"]
    assert ocr_metrics(preds, gts)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [gts]).score / 100)
