"""The CUDA path on one GPU, without Ray or vLLM: the transformers engine samples a group on the GPU in bfloat16, a
one-rank DeepSpeed ZeRO-3 learner (NCCL) takes a GRPO step on those answers on the same GPU, and the weight
broadcast leaves the engine with the learner's new weights. One GPU cannot hold two NCCL ranks, so the broadcast
runs on gloo, staged through host memory (`common/sync_group.py`) - the path a CPU fallback engine takes too.

Skipped without a CUDA GPU (CI has none). `run_path(tmp, "cpu")` runs the same checks on CPU. On CUDA the learner
uses torch's fused AdamW (nothing compiled at run time); the second case adds the GPU configs' gradient
checkpointing.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

GROUP = 8


def _learner(path: str, device: str, opts: dict, shard, sampling: dict, sync_addr, out) -> None:
    """Child process: one ZeRO-3 rank; reports (checksums before, after, step metrics, plan), then syncs."""
    try:
        os.environ["DS_ACCELERATOR"] = device
        from common.sync_group import free_port
        from learner.config import GRPOConfig, LearnerConfig
        from learner.rank import LearnerRank

        backend = "nccl" if device == "cuda" else "gloo"
        cfg = LearnerConfig(num_ranks=1, device=device, dtype="bfloat16", lr=1e-3, micro_batch_size=GROUP,
                            dist_backend=backend, sync_backend="gloo", **opts)
        t0 = time.perf_counter()
        rank = LearnerRank(path, cfg, GRPOConfig(group_size=GROUP, beta=0.04), 0, 1, *free_port(),
                           sampling=sampling)
        load_s = time.perf_counter() - t0
        before = rank.state_checksums()
        t0 = time.perf_counter()
        metrics = rank.train_step(shard)
        metrics["time/step_wall_s"] = time.perf_counter() - t0
        metrics["time/load_s"] = load_s
        if device == "cuda":
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out.put((before, rank.state_checksums(), metrics, rank.weight_plan()))
        rank.init_weight_sync(*sync_addr, world_size=2)
        out.put(rank.sync_weights())
    except BaseException:  # noqa: BLE001 - the parent raises it with the child's traceback
        out.put(traceback.format_exc())


def _get(out, proc):
    item = out.get(timeout=300)
    if isinstance(item, str):
        proc.join(10)
        raise AssertionError(f"learner process failed:\n{item}")
    return item


SMALL = {"hidden_size": 128, "num_layers": 4, "vision_hidden_size": 64}


def run_path(tmp_path, device: str, learner_opts: dict | None = None, model: dict | None = None,
             max_new_tokens: int = 24) -> dict:
    """Every check of the module on `device`; `model` (write_tiny_qwen25vl's sizes) runs it at another scale."""
    from transformers import AutoProcessor

    from common.records import SamplingParams, TrainItem, TrainShard
    from common.sync_group import free_port
    from common.vision import encode_prompt
    from learner.grpo import group_advantages
    from orchestration.data.synthetic import grounding_samples
    from orchestration.warmstart.tiny_model import write_tiny_qwen25vl
    from rollout_workers.transformers_engine import TransformersEngine

    path = str(write_tiny_qwen25vl(tmp_path / "tiny", **(model or SMALL)))
    processor = AutoProcessor.from_pretrained(path)
    prompts = [encode_prompt(processor, s.id, s.load_image(), s.question, min_pixels=3136,
                             max_pixels=12544, max_prompt_tokens=512) for s in grounding_samples(2, seed=0)]
    engine = TransformersEngine(path, device=device, dtype="bfloat16")
    assert next(engine.model.parameters()).device.type == device
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    sampling = {"temperature": 1.0, "top_k": 50, "top_p": 0.9}
    t0 = time.perf_counter()
    groups = engine.generate(prompts, SamplingParams(n=GROUP, max_new_tokens=max_new_tokens, seed=0, **sampling))
    generate_s = time.perf_counter() - t0
    suppressed = set(engine.policy.suppressed_ids)
    for group in groups:
        assert len(group) == GROUP
        for r in group:
            assert 1 <= len(r.response_token_ids) <= max_new_tokens and len(r.logprobs) == len(r.response_token_ids)
            assert all(lp <= 0 for lp in r.logprobs) and not suppressed & set(r.response_token_ids)
    # A stand-in reward that varies inside each group (a random model writes no box): distinct tokens per answer.
    rollouts = [r for g in groups for r in g]
    rewards = torch.tensor([float(len(set(r.response_token_ids))) for r in rollouts]).numpy()
    advantages = group_advantages(rewards, GROUP, "group", 1e-4)
    assert abs(advantages).sum() > 0
    items = [TrainItem(r.sample_id, r.prompt_token_ids, r.response_token_ids, r.logprobs, float(a))
             for r, a in zip(rollouts, advantages)]
    shard = TrainShard(items, {p.sample_id: p for p in prompts}, len(items),
                       sum(len(i.response_token_ids) for i in items))

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    sync_addr = free_port()
    proc = ctx.Process(target=_learner, args=(path, device, learner_opts or {}, shard, sampling, sync_addr, out))
    proc.start()
    try:
        before, after, metrics, plan = _get(out, proc)
        engine.init_weight_sync("gloo", *sync_addr, rank=1, world_size=2)
        t0 = time.perf_counter()
        assert engine.receive_weights(1, plan) == 1
        receive_s = time.perf_counter() - t0
        sync = _get(out, proc)
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
    changed = [n for n in after if after[n] != before[n]]
    gap = metrics["sampling/logprob_diff_sum"] / metrics["sampling/num_tokens"]
    figures = {"generate_s": generate_s, "answers": len(rollouts), "answer_tokens": shard.num_tokens_global,
               "logprob_gap_mean": gap, "logprob_gap_max": metrics["sampling/logprob_diff_max"],
               "loss": metrics["train/loss"], "grad_norm": metrics["train/grad_norm"],
               "learner_load_s": metrics["time/load_s"], "step_s": metrics["time/step_wall_s"],
               "sync_bytes": sync["sync/bytes"], "send_s": sync["sync/rank_s"], "receive_s": receive_s,
               "params_changed": len(changed),
               "params": len(after), "peak_gib": metrics.get("memory/peak_gib", 0.0)}
    print(f"\n{device} path {learner_opts or ''}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in figures.items()))
    # The learner re-scores the engine's answers under the same bf16 weights: the gap is rounding, not a policy.
    assert gap < 0.05 and metrics["sampling/logprob_diff_max"] < 1.0
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["train/grad_norm"]])).all()
    assert len(changed) > len(after) // 2, "the GRPO step must move most parameters"
    assert engine.state_checksums() == after, "after the sync the engine must hold the learner's weights exactly"
    return figures


@pytest.mark.parametrize("learner_opts", [{}, {"gradient_checkpointing": True}],
                         ids=["torch-adamw", "checkpointing"])  # the second: configs/refcoco.yaml's learner
def test_cuda_engine_learner_and_weight_sync_on_one_gpu(tmp_path, learner_opts):
    run_path(tmp_path, "cuda", learner_opts)
