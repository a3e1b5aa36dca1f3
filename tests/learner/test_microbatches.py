"""Micro-batches by token budget: the plan covers every answer in order within the budget, ranks agree on a count,
and a ZeRO-3 step over one packed forward moves the weights as the same step over eight micro-batches does."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.records import EncodedPrompt, TrainItem
from learner.sequences import packed_tokens, plan_microbatches

REPO = Path(__file__).resolve().parents[2]


def _prompt(sid: str, n: int) -> EncodedPrompt:
    return EncodedPrompt(sid, "", list(range(n)), None, None, None, (1.0, 1.0))


PROMPTS = {"a": _prompt("a", 50), "b": _prompt("b", 70), "c": _prompt("c", 30)}
ITEMS = [TrainItem(s, PROMPTS[s].prompt_token_ids, list(range(n)), [0.0] * n, 0.0)
         for s, n in [("a", 10), ("a", 20), ("a", 5), ("b", 8), ("b", 30), ("c", 12), ("c", 12), ("c", 40)]]


def test_packed_tokens_count_the_padded_forward():
    assert packed_tokens(ITEMS[:3], PROMPTS, shared_prefix=True) == 50 + 10 + 20 + 5  # one row: prompt, answers
    assert packed_tokens(ITEMS[:5], PROMPTS, shared_prefix=True) == 2 * (70 + 8 + 30)  # b's row is the longest
    assert packed_tokens(ITEMS[:3], PROMPTS, shared_prefix=False) == 3 * 70


@pytest.mark.parametrize("budget", [120, 300, 1000, 10**6])
def test_a_token_budget_packs_consecutive_answers_within_it(budget):
    plan = plan_microbatches(ITEMS, PROMPTS, shared_prefix=True, max_tokens=budget, max_items=2)
    assert [it for batch in plan for it in batch] == ITEMS  # every answer once, in order
    assert all(len(b) == 1 or packed_tokens(b, PROMPTS, True) <= budget for b in plan)
    # greedy: the next answer would not have fitted in the batch before it
    assert all(packed_tokens(a + b[:1], PROMPTS, True) > budget for a, b in zip(plan, plan[1:]))
    assert (len(plan) == 1) == (packed_tokens(ITEMS, PROMPTS, True) <= budget)


def test_a_fixed_answer_count_and_an_agreed_count_of_micro_batches():
    assert [len(b) for b in plan_microbatches(ITEMS, PROMPTS, shared_prefix=True, max_tokens=None,
                                              max_items=3)] == [3, 3, 2]
    plan = plan_microbatches(ITEMS, PROMPTS, shared_prefix=True, max_tokens=10**6, max_items=1, count=4)
    assert len(plan) == 4 and [it for batch in plan for it in batch] == ITEMS
    with pytest.raises(ValueError, match="cannot run 8 answers as 9 micro-batches"):
        plan_microbatches(ITEMS, PROMPTS, shared_prefix=True, max_tokens=10**6, max_items=1, count=9)


CHILD = """
import json, os, sys
os.environ["DS_ACCELERATOR"] = "cpu"
import torch
from common.sync_group import free_port
from learner.config import GRPOConfig, LearnerConfig
from learner.rank import LearnerRank
sys.path.insert(0, {repo!r})
from tests.learner.test_microbatches import grounding_shard
path, shard = grounding_shard({tmp!r})
opts = json.loads(sys.argv[1])
rank = LearnerRank(path, LearnerConfig(num_ranks=1, **{{"lr": 1e-3, **opts}}), GRPOConfig(group_size=4, beta=0.04), 0, 1,
                   *free_port(), sampling=dict(temperature=1.0, top_k=0, top_p=1.0))
metrics = rank.train_step(shard)
print("RESULT", json.dumps({{"sums": rank.state_checksums(), "metrics": metrics}}))
"""


def grounding_shard(tmp: str):
    """A tiny checkpoint and 4 prompts x G 4 answers of random lengths (deterministic)."""
    import random

    from transformers import AutoProcessor

    from common.records import TrainShard
    from common.vision import encode_prompt
    from orchestration.data.synthetic import SYNTHETIC
    from orchestration.warmstart.tiny_model import write_tiny_qwen25vl

    path = Path(tmp) / "tiny"
    if not (path / "config.json").is_file():
        write_tiny_qwen25vl(path)
    processor = AutoProcessor.from_pretrained(path)
    rng, items, prompts = random.Random(0), [], {}
    for s in SYNTHETIC["grounding"](4, 0, 112, "train"):
        p = encode_prompt(processor, s.id, s.load_image(), s.question, min_pixels=3136, max_pixels=12544,
                          max_prompt_tokens=512)
        prompts[s.id] = p
        for _ in range(4):
            n = rng.randint(3, 12)
            items.append(TrainItem(s.id, p.prompt_token_ids, [rng.randint(5, 90) for _ in range(n)],
                                   [-2.0] * n, rng.gauss(0, 1)))
    return str(path), TrainShard(items, prompts, len(items), sum(len(i.response_token_ids) for i in items))


def _step(tmp_path, opts: dict) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), tmp=str(tmp_path)), json.dumps(opts)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, run.stderr[-3000:]
    return json.loads(lines[0][len("RESULT"):])


def test_one_packed_forward_updates_the_weights_as_eight_micro_batches_do(tmp_path):
    eight = _step(tmp_path, {"micro_batch_size": 2})
    packed = _step(tmp_path, {"max_tokens_per_microbatch": 100_000})
    assert eight["metrics"]["train/micro_batches"] == 8 and packed["metrics"]["train/micro_batches"] == 1
    for key in ("train/loss", "train/grad_norm", "train/kl"):
        assert packed["metrics"][key] == pytest.approx(eight["metrics"][key], rel=1e-4, abs=1e-7), key
    start = _step(tmp_path, {"micro_batch_size": 2, "lr": 1e-30})["sums"]  # the weights before (an update of ~0)
    moved = [n for n in start if abs(eight["sums"][n] - start[n]) > 1e-4]
    assert len(moved) > len(start) // 2, "the step must move most weights"
    for name in eight["sums"]:  # same step: float sums of the updated weights agree to rounding
        assert packed["sums"][name] == pytest.approx(eight["sums"][name], rel=1e-5, abs=1e-5), name
