"""The transformers engine: G samples per prompt, log-probs that a full forward reproduces, weights by name."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from common.policy import processed_logits, token_logprobs, truncation_mask
from common.records import SamplingParams
from transformers.cache_utils import DynamicLayer

from common.vision import encode_prompt, mm_token_type_ids
from orchestration.warmstart.tiny_model import write_tiny_qwen25vl
from rollout_workers.transformers_engine import PreallocatedLayer, TransformersEngine


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = write_tiny_qwen25vl(tmp_path_factory.mktemp("tiny"))
    processor = AutoProcessor.from_pretrained(path)
    prompt = encode_prompt(processor, "s0", Image.new("RGB", (70, 50), (200, 10, 10)), "What colour is the shape?",
                           min_pixels=3136, max_pixels=12544, max_prompt_tokens=256)
    return TransformersEngine(str(path)), processor, prompt


PAPER = dict(temperature=1.0, top_k=50, top_p=0.9)  # SPEC's sampling; the tiny vocabulary is ~130 tokens


def _forward_logits(engine, prompt, response_ids):
    """Next-token logits over prompt + response, from one plain forward (no cache, no batching)."""
    ids = torch.tensor([prompt.prompt_token_ids + response_ids])
    with torch.no_grad():
        return engine.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                            pixel_values=torch.from_numpy(prompt.pixel_values),
                            image_grid_thw=torch.from_numpy(prompt.image_grid_thw),
                            mm_token_type_ids=mm_token_type_ids(ids, engine.model.config)).logits[0]


@pytest.mark.parametrize("sampling", [dict(temperature=1.0, top_k=0, top_p=1.0), PAPER,
                                      dict(temperature=0.7, top_k=5, top_p=0.8)])
def test_group_logprobs_are_the_policy_of_a_full_forward(setup, sampling):
    """The engine reports log pi(token) under the policy it sampled from (temperature, top-k, top-p, suppressed
    ids): a plain forward over prompt + answer and `token_logprobs` give the same numbers."""
    engine, processor, prompt = setup
    [group] = engine.generate([prompt], SamplingParams(n=6, max_new_tokens=5, seed=3, **sampling))
    policy = replace(engine.policy, **sampling)
    assert len(group) == 6
    suppressed = set(engine.policy.suppressed_ids)
    assert {processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")} <= suppressed
    for r in group:
        assert 1 <= len(r.response_token_ids) <= 5 and len(r.logprobs) == len(r.response_token_ids)
        assert not suppressed & set(r.response_token_ids), "vision placeholders must never be sampled"
        assert (r.finish_reason == "stop") == (r.response_token_ids[-1] in engine.eos_ids)
        p = len(r.prompt_token_ids)
        logits = _forward_logits(engine, prompt, r.response_token_ids)[p - 1 : -1]
        lp = token_logprobs(logits, torch.tensor(r.response_token_ids), policy)
        np.testing.assert_allclose(lp.numpy(), r.logprobs, atol=1e-5)
        if policy.truncates:  # every sampled token lies inside the top-k / nucleus set of its position
            kept = ~truncation_mask(processed_logits(logits, replace(policy, top_k=0, top_p=1.0)),
                                    policy.top_k, policy.top_p)
            assert kept[torch.arange(len(r.response_token_ids)), torch.tensor(r.response_token_ids)].all()


def test_batched_prompts_give_the_answers_of_single_calls(setup):
    """Prefill-once batching changes nothing a prompt sees: with the seed convention (request i uses
    seed + i * n) a batch of prompts of different lengths gives each prompt the answers and log-probs it gets
    alone."""
    engine, processor, prompt = setup
    other = encode_prompt(processor, "s1", Image.new("RGB", (112, 56), (10, 10, 200)), "What colour is the shape of this image?",
                          min_pixels=3136, max_pixels=12544, max_prompt_tokens=256)
    assert len(other.prompt_token_ids) != len(prompt.prompt_token_ids)
    n = 4
    together = engine.generate([prompt, other], SamplingParams(n=n, max_new_tokens=6, seed=11, **PAPER))
    alone = [engine.generate([prompt], SamplingParams(n=n, max_new_tokens=6, seed=11, **PAPER))[0],
             engine.generate([other], SamplingParams(n=n, max_new_tokens=6, seed=11 + n, **PAPER))[0]]
    for batch_group, single_group in zip(together, alone):
        assert [r.response_token_ids for r in batch_group] == [r.response_token_ids for r in single_group]
        for a, b in zip(batch_group, single_group):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
            assert a.sample_id == b.sample_id and a.prompt_token_ids == b.prompt_token_ids


def test_seeded_sampling_is_reproducible_and_greedy_is_deterministic(setup):
    engine, _, prompt = setup
    a = engine.generate([prompt], SamplingParams(n=4, max_new_tokens=5, seed=7))[0]
    b = engine.generate([prompt], SamplingParams(n=4, max_new_tokens=5, seed=7))[0]
    assert [r.response_token_ids for r in a] == [r.response_token_ids for r in b]
    g1 = engine.generate([prompt], SamplingParams(n=1, temperature=0, max_new_tokens=5))[0][0]
    g2 = engine.generate([prompt], SamplingParams(n=1, temperature=0, max_new_tokens=5))[0][0]
    assert g1.response_token_ids == g2.response_token_ids


def test_load_weights_by_name_and_reject_unknown(setup):
    engine, _, _ = setup
    name = "lm_head.weight"
    new = torch.full_like(engine.model.get_parameter(name), 0.5)
    assert engine.load_weights(5, [(name, new)]) == 5 and engine.policy_version() == 5
    assert np.all(engine.get_parameter(name) == 0.5)
    with pytest.raises(KeyError, match="no_such.weight"):
        engine.load_weights(6, [("no_such.weight", new)])
    with pytest.raises(ValueError, match="shape mismatch"):
        engine.load_weights(6, [(name, new[:3])])


def test_answer_vocabulary_defines_the_policy(setup, tmp_path):
    """With allowed tokens the engine samples only those (and end of turn), its log-probs are over them alone,
    and the learner's recomputation with the same function agrees."""
    from learner.sequences import collate, response_logprobs
    from common.records import TrainItem

    base, processor, prompt = setup
    path = base.model.name_or_path
    engine = TransformersEngine(path, allowed_tokens=["red", "green", "blue", "yellow"])
    allowed = set(engine.policy.allowed_ids)
    assert allowed == {processor.tokenizer.convert_tokens_to_ids(t)
                       for t in ["red", "green", "blue", "yellow"]} | engine.eos_ids
    [group] = engine.generate([prompt], SamplingParams(n=16, max_new_tokens=3, seed=0, top_k=0, top_p=1.0))
    assert all(set(r.response_token_ids) <= allowed for r in group)
    # The allowed tokens' probabilities sum to one at the first answer position.
    ids = torch.tensor([prompt.prompt_token_ids])
    with torch.no_grad():
        logits = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              pixel_values=torch.from_numpy(prompt.pixel_values),
                              image_grid_thw=torch.from_numpy(prompt.image_grid_thw),
                              mm_token_type_ids=mm_token_type_ids(ids, engine.model.config)).logits[0, -1]
    ids_allowed = torch.tensor(engine.policy.allowed_ids)
    lp = token_logprobs(logits.expand(len(allowed), -1), ids_allowed, replace(engine.policy, top_k=0, top_p=1.0))
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-5
    items = [TrainItem("s0", r.prompt_token_ids, r.response_token_ids, r.logprobs, 0.0) for r in group]
    batch = collate(items, {"s0": prompt}, engine.model.config, engine.pad_id, "cpu", torch.float32)
    with torch.no_grad():
        learner_lp = response_logprobs(engine.model, batch, replace(engine.policy, top_k=0, top_p=1.0))
    assert float(((learner_lp - batch.engine_logprobs).abs() * batch.mask).max()) < 1e-5


def test_unknown_allowed_token_is_named(setup):
    base, _, _ = setup
    with pytest.raises(ValueError, match="'purple'"):
        TransformersEngine(base.model.name_or_path, allowed_tokens=["red", "purple"])


@pytest.mark.parametrize("capacity", [9, 6])  # room for every token; and 3 tokens short, so it must grow
def test_preallocated_cache_layer_holds_what_dynamic_layer_holds(capacity):
    """The engine's KV-cache layer writes into a buffer where transformers' concatenates: after a prefill, G-fold
    repetition, decode steps and a row selection, both hold bit-identical keys and values of the same shapes."""
    g = torch.Generator().manual_seed(0)
    kv = lambda rows, n: (torch.randn(rows, 2, n, 8, generator=g), torch.randn(rows, 2, n, 8, generator=g))
    ours, theirs = PreallocatedLayer(capacity), DynamicLayer()
    prefill = kv(3, 4)
    for layer in (ours, theirs):
        layer.update(*prefill)
        layer.batch_repeat_interleave(2)
    for step in range(5):
        if step == 2:
            for layer in (ours, theirs):
                layer.batch_select_indices(torch.tensor([0, 2, 3, 5]))
        new = kv(6 if step < 2 else 4, 1)
        k, v = ours.update(*new)
        k_ref, v_ref = theirs.update(*new)
        assert k.shape == k_ref.shape and torch.equal(k, k_ref) and torch.equal(v, v_ref)
        assert ours.get_seq_length() == theirs.get_seq_length() == 5 + step
