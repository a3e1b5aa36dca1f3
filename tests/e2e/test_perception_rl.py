"""GRPO improves perception, in miniature: `make train-demo`'s grounding run cut to 200 GRPO steps. The demo's
warm start stops once 1,000 held-out probe scenes reach Acc@0.5 0.5 to 0.52 (its learning rate shrinking as it gets
there; a probe that jumps past 0.52 sends it back to the last probe short of 0.5 at half the rate), so it starts from
the same level on every CPU; then GRPO through the real services (engine actor, reward pool, 2-rank ZeRO-3 learner,
weight broadcast) with the paper's IoU^2 reward raises the sampled IoU it optimises and the held-out greedy Acc@0.5
on 2,000 scenes. 200 steps, not 100: the greedy curve wobbles by +-3 points from one 50-step eval to the next, and
at the earlier T 0.7 a 100-step run rose only +3.4 and +1.4 under the two kernel settings; at the demo's T 0.5 the
runs rose +10.65 and +6.3 by step 100, +19.05 and +14.65 by step 200 (docs/experiments.md). `make test-kernels` runs
this test again under a second kernel setting."""
import json
import os
from pathlib import Path

import pytest
import torch

from orchestration.config import load_config
from orchestration.driver.tracking import read_jsonl
from orchestration.train import train

pytestmark = [pytest.mark.e2e, pytest.mark.learning]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu_grounding.yaml"


@pytest.mark.timeout(3600)  # ~12 min alone on a 2-core machine; twice that with another run beside it
def test_grpo_from_a_warm_start_raises_held_out_grounding_accuracy(tmp_path):
    cfg = load_config(CONFIG, [
        f"sft.output_dir={tmp_path / 'sft'}", "train.steps=200", "train.eval_every=0",
        "train.checkpoint_every=0", "train.export_final=false", f"train.output_dir={tmp_path / 'run'}",
        "wandb.mode=offline"])
    assert cfg.data.eval_size == 2000 and (cfg.sft.target, cfg.sft.tolerance) == (0.5, 0.02)
    result = train(cfg)
    before, after = result.history[0], result.history[-1]
    assert result.headline == "acc@0.5" and result.headline_after is not None
    [warm] = (tmp_path / "sft").glob("grounding-*/sft.json")
    sft = json.loads(warm.read_text())
    first, last = _eval(result, 0), _eval(result, cfg.train.steps)
    print(f"kernels: ATen {torch.backends.cpu.get_cpu_capability()} "
          f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '-')}, "
          f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}); warm start stopped at step "
          f"{sft['steps']} ({sft['returns']} returns) with probe Acc@0.5 {sft['probes'][-1]['acc@0.5']:.3f}; "
          f"held-out before -> after {cfg.train.steps} GRPO steps: "
          f"reward {result.eval_before:.3f} -> {result.eval_after:.3f}, mIoU {first['miou']:.3f} -> "
          f"{last['miou']:.3f}, Acc@0.5 {result.headline_before:.3f} -> {result.headline_after:.3f}")
    assert sft["reached"] and 0.5 <= sft["probes"][-1]["acc@0.5"] <= 0.52 + 1e-9, sft
    assert first["format"] > 0.9, "the warm start must already answer in format"
    assert abs(result.headline_before - cfg.sft.target) <= 0.05 + 1e-9, "the warm start must start near its target"
    # Issue 19's +5 points (100 of 2,000 scenes). Measured on an AVX-512 EPYC: +19.05 under its default kernels,
    # +14.65 under the AVX2 setting; mIoU +0.086 and +0.063 (docs/experiments.md)
    assert result.headline_after >= result.headline_before + 0.05 - 1e-9, (first, last)
    assert last["miou"] >= first["miou"] + 0.02, (first, last)
    assert result.eval_after > result.eval_before
    sampled = [r["reward/iou"] for r in read_jsonl(result.output_dir / "metrics.jsonl") if "reward/iou" in r]
    assert sum(sampled[-25:]) / 25 >= sum(sampled[:25]) / 25 + 0.02, "GRPO's own objective, the sampled IoU, rises"
    assert after["policy/version"] == cfg.train.steps and before["sampling/logprob_diff"] < 1e-4


def _eval(result, step: int) -> dict[str, float]:
    """The held-out metrics logged at `step` (metrics.jsonl of the run)."""
    [row] = [r for r in read_jsonl(result.output_dir / "metrics.jsonl") if r.get("step") == step and "eval/miou" in r]
    return {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
