"""GRPO improves perception, in miniature: from a short supervised warm start, a short GRPO run through the real
services (engine actor, reward pool, 2-rank ZeRO-3 learner, weight broadcast) with the paper's IoU^2 reward moves
the held-out greedy boxes onto the objects.

The scenes hold one shape each (`data.objects: [1, 1]`) so that a warm start of 200 supervised steps (under a
minute) already answers in format and roughly knows where things are, leaving room that GRPO can take within the
suite's budget; the full demo (two or three shapes, the question naming one) is `make train-demo`, README
"Perception on a CPU"."""
from pathlib import Path

import pytest

from orchestration.config import load_config
from orchestration.tracking import read_jsonl
from orchestration.train import train

pytestmark = pytest.mark.e2e
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu_grounding.yaml"


@pytest.mark.timeout(900)
def test_grpo_from_a_warm_start_moves_held_out_boxes_onto_the_objects(tmp_path):
    cfg = load_config(CONFIG, [
        "data.objects=[1, 1]", "data.train_size=4096", "data.eval_size=200", "sft.steps=200",
        f"sft.output_dir={tmp_path / 'sft'}", "learner.lr=1e-4", "train.steps=80", "train.eval_every=0",
        "train.checkpoint_every=0", "train.export_final=false", f"train.output_dir={tmp_path / 'run'}",
        "wandb.mode=offline"])
    result = train(cfg)
    before, after = result.history[0], result.history[-1]
    assert result.headline == "acc@0.5" and result.headline_after is not None
    first, last = _eval(result, 0), _eval(result, cfg.train.steps)
    print(f"held-out before -> after GRPO: reward {result.eval_before:.3f} -> {result.eval_after:.3f}, "
          f"mIoU {first['miou']:.3f} -> {last['miou']:.3f}, Acc@0.1 {first['acc@0.1']:.3f} -> {last['acc@0.1']:.3f}, "
          f"Acc@0.5 {result.headline_before:.3f} -> {result.headline_after:.3f}")
    assert first["format"] > 0.9, "the warm start must already answer in format"
    assert last["miou"] >= first["miou"] + 0.02, (first, last)
    assert last["acc@0.1"] >= first["acc@0.1"] + 0.05, (first, last)
    assert result.eval_after > result.eval_before
    assert last["acc@0.5"] >= first["acc@0.5"] - 0.02, "no blind, oversized box in exchange"
    assert after["policy/version"] == cfg.train.steps and before["sampling/logprob_diff"] < 1e-4


def _eval(result, step: int) -> dict[str, float]:
    """The held-out metrics logged at `step` (metrics.jsonl of the run)."""
    [row] = [r for r in read_jsonl(result.output_dir / "metrics.jsonl") if r.get("step") == step and "eval/miou" in r]
    return {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
