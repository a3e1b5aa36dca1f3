"""The `thinking` option on all four tasks: the task reward reads the <answer> block, `thinking_format` rewards the
layout; off by default (the paper's finding), and the prompt asks for it only when on."""
import json

import pytest

from common.records import RewardContext, Rollout
from reward_service.config import RewardOptions
from reward_service.thinking import answer_part, thinking_answer
from reward_service.worker import score_one

GEO = dict(scale=(1.0, 1.0), resized_size=(200, 200), orig_size=(200, 200))
BOX = [20, 20, 80, 90]
CASES = {
    "grounding": (RewardContext("g", "grounding", {"box": BOX}, **GEO), json.dumps({"bbox_2d": BOX}), 2.0),
    "counting": (RewardContext("c", "counting", {"points": [[50, 55]]}, **GEO), json.dumps([{"bbox_2d": BOX}]), 2.0),
    "ocr": (RewardContext("o", "ocr", {"text": "hello page"}, **GEO), "hello page", 1.0),
    "detection": (RewardContext("d", "detection", {"boxes": [BOX], "labels": ["cat"], "categories": ["cat"]}, **GEO),
                  json.dumps([{"bbox_2d": BOX, "label": "cat"}]), 3.0),
}


def _score(text: str, ctx: RewardContext, thinking: bool):
    return score_one(Rollout(ctx.sample_id, [1], [2], text, [-0.1], 0, "stop"), ctx, RewardOptions(thinking=thinking))


@pytest.mark.parametrize("task", sorted(CASES))
def test_thinking_layout_is_rewarded_and_the_answer_block_scored(task):
    ctx, answer, best = CASES[task]
    good = _score(f"<think>I look at the image.</think>\n<answer>{answer}</answer><|im_end|>", ctx, thinking=True)
    assert good.components["thinking_format"] == 1.0 and good.reward == pytest.approx(best + 1.0)
    bare = _score(answer, ctx, thinking=True)  # right answer, wrong layout: neither part scores
    assert bare.components["thinking_format"] == 0.0 and bare.reward == 0.0
    assert _score(answer, ctx, thinking=False).reward == pytest.approx(best)  # off: as before, no extra component
    assert "thinking_format" not in _score(answer, ctx, thinking=False).components


@pytest.mark.parametrize("text", ["<think>a</think>", "<answer>x</answer>", "<think>a</think><answer>x</answer> more",
                                  "<think>a<think>b</think><answer>x</answer>", "<think></think><answer>x<answer>y</answer>",
                                  "", "<think>" * 10_000])
def test_malformed_layouts_are_rejected(text):
    assert thinking_answer(text) is None and answer_part(text, thinking=True) == ""


def test_the_prompt_asks_for_thinking_only_when_on(tmp_path):
    from transformers import AutoProcessor

    from orchestration.config import load_config
    from orchestration.data.datasets import build_datasets
    from orchestration.data.encode import encode_sample
    from orchestration.warmstart.tiny_model import write_tiny_qwen25vl

    processor = AutoProcessor.from_pretrained(write_tiny_qwen25vl(tmp_path / "m"))
    for thinking in (False, True):
        cfg = load_config(None, ["data.task=grounding", "data.image_size=56", f"reward.options.thinking={thinking}",
                                 "data.train_size=1", "data.eval_size=1", "model.max_pixels=3136",
                                 "model.max_prompt_tokens=256"])
        [sample], _ = build_datasets(cfg.data)
        prompt, _ = encode_sample(processor, cfg, sample)
        assert ("<think>" in prompt.prompt_text) == thinking
