"""The learner's DeepSpeed settings: no optimizer built at run time on the GPU path (torch's fused AdamW, not
DeepSpeed's JIT-compiled FusedAdam), gradients accumulated in fp32 under bf16 weights, sync buckets by backend, the
linear learning-rate schedule."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.config import LearnerConfig
from learner.rank import deepspeed_config, linear_schedule
from orchestration.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GPU_CONFIGS = ["coco_det.yaml", "refcoco.yaml", "pixmo_count.yaml", "pageocr.yaml"]


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_need_no_compiler_and_accumulate_in_fp32(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.learner.device == "cuda" and cfg.learner.dtype == "bfloat16"
    ds = deepspeed_config(cfg.learner, with_optimizer=True)
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["fused"] is True
    assert ds["bf16"] == {"enabled": True} and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert cfg.learner.bucket_mb == 512.0  # NCCL: hundreds of MB per bucket


def test_cpu_learner_uses_plain_torch_adamw_and_small_gloo_buckets():
    cfg = LearnerConfig()
    ds = deepspeed_config(cfg, with_optimizer=True)
    assert ds["optimizer"]["params"]["torch_adam"] is True and "fused" not in ds["optimizer"]["params"]
    assert cfg.bucket_mb == 8.0 and LearnerConfig(sync_bucket_mb=2).bucket_mb == 2


CHILD = """
import os, torch
os.environ["DS_ACCELERATOR"] = "cpu"
from common.sync_group import free_port
from learner.config import GRPOConfig, LearnerConfig
from learner.rank import LearnerRank
from orchestration.warmstart.tiny_model import write_tiny_qwen25vl
path = write_tiny_qwen25vl(r"{tmp}/tiny")
cfg = LearnerConfig(num_ranks=1, dtype="bfloat16", micro_batch_size=2, lr=1e-3, lr_schedule="linear")
rank = LearnerRank(str(path), cfg, GRPOConfig(group_size=2, beta=0.0), 0, 1, *free_port(),
                   sampling=dict(temperature=1.0, top_k=0, top_p=1.0), total_updates=4)
opt = rank.engine.optimizer
print("RESULT", opt.gradient_accumulation_dtype, type(opt.optimizer).__module__ + "." + type(opt.optimizer).__name__,
      rank.engine.module.dtype)
lrs = []
for _ in range(5):
    lrs.append(rank.engine.get_lr()[0])
    rank.engine.lr_scheduler.step()
print("LRS", [round(x, 6) for x in lrs])
"""


def test_a_bf16_zero3_learner_accumulates_gradients_in_fp32(tmp_path):
    """A real one-rank ZeRO-3 engine in bf16 (on the CPU, in its own process): DeepSpeed's stage-3 optimizer
    accumulates the micro-batches' gradient partitions in fp32 around torch's AdamW; its learning rate follows the
    linear schedule handed to DeepSpeed, 0 at the run's last update (here 4)."""
    run = subprocess.run([sys.executable, "-c", CHILD.format(tmp=tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[2])
    [line] = [l for l in run.stdout.splitlines() if l.startswith("RESULT")] or [run.stderr[-3000:]]
    assert line == "RESULT torch.float32 torch.optim.adamw.AdamW torch.bfloat16", line
    [lrs] = [l for l in run.stdout.splitlines() if l.startswith("LRS")]
    assert lrs == "LRS [0.001, 0.00075, 0.0005, 0.00025, 0.0]", lrs


def test_a_linear_schedule_warms_up_then_reaches_zero_at_the_last_update():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = linear_schedule(LearnerConfig(lr=1.0, lr_schedule="linear", warmup_steps=2), total_updates=6)(opt)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: the parameter stays, the scheduler sees an update
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert linear_schedule(LearnerConfig(), total_updates=None) is None  # constant: DeepSpeed's config alone
    assert "scheduler" not in deepspeed_config(LearnerConfig(lr_schedule="linear", warmup_steps=2), True)
    with pytest.raises(ValueError, match="warmup_steps=2; the run has 2"):
        linear_schedule(LearnerConfig(lr_schedule="linear", warmup_steps=2), total_updates=2)
