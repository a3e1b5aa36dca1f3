"""The learner's DeepSpeed settings: no optimizer built at run time on the GPU path (torch's fused AdamW, not
DeepSpeed's JIT-compiled FusedAdam), gradients accumulated in fp32 under bf16 weights, sync buckets by backend."""
import subprocess
import sys
from pathlib import Path

import pytest

from learner.config import LearnerConfig
from learner.rank import deepspeed_config
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
cfg = LearnerConfig(num_ranks=1, dtype="bfloat16", micro_batch_size=2)
rank = LearnerRank(str(path), cfg, GRPOConfig(group_size=2, beta=0.0), 0, 1, *free_port(),
                   sampling=dict(temperature=1.0, top_k=0, top_p=1.0))
opt = rank.engine.optimizer
print("RESULT", opt.gradient_accumulation_dtype, type(opt.optimizer).__module__ + "." + type(opt.optimizer).__name__,
      rank.engine.module.dtype)
"""


def test_a_bf16_zero3_learner_accumulates_gradients_in_fp32(tmp_path):
    """A real one-rank ZeRO-3 engine in bf16 (on the CPU, in its own process): DeepSpeed's stage-3 optimizer
    accumulates the micro-batches' gradient partitions in fp32 around torch's AdamW."""
    run = subprocess.run([sys.executable, "-c", CHILD.format(tmp=tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[2])
    [line] = [l for l in run.stdout.splitlines() if l.startswith("RESULT")] or [run.stderr[-3000:]]
    assert line == "RESULT torch.float32 torch.optim.adamw.AdamW torch.bfloat16", line
