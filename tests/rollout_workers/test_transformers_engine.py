"""The transformers engine: G samples per prompt, log-probs that a full forward reproduces, weights by name."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from common.records import SamplingParams
from common.vision import encode_prompt
from orchestration.tiny_model import write_tiny_qwen25vl
from common.vision import mm_token_type_ids
from rollout_workers.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = write_tiny_qwen25vl(tmp_path_factory.mktemp("tiny"))
    processor = AutoProcessor.from_pretrained(path)
    prompt = encode_prompt(processor, "s0", Image.new("RGB", (70, 50), (200, 10, 10)), "What colour is the shape?",
                           min_pixels=3136, max_pixels=12544, max_prompt_tokens=256)
    return TransformersEngine(str(path)), processor, prompt


def test_group_of_samples_with_consistent_logprobs(setup):
    engine, processor, prompt = setup
    [group] = engine.generate([prompt], SamplingParams(n=6, max_new_tokens=5, seed=3, top_k=0, top_p=1.0))
    assert len(group) == 6
    suppressed = set(engine.suppressed_ids)
    for r in group:
        assert 1 <= len(r.response_token_ids) <= 5 and len(r.logprobs) == len(r.response_token_ids)
        assert not suppressed & set(r.response_token_ids), "vision placeholders must never be sampled"
        assert (r.finish_reason == "stop") == (r.response_token_ids[-1] in engine.eos_ids)
        # A full forward over prompt + response gives the same per-token log-probs as sampling did.
        ids = torch.tensor([r.prompt_token_ids + r.response_token_ids])
        with torch.no_grad():
            logits = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values=torch.from_numpy(prompt.pixel_values),
                                  image_grid_thw=torch.from_numpy(prompt.image_grid_thw),
                                  mm_token_type_ids=mm_token_type_ids(ids, engine.model.config)).logits
        p = len(r.prompt_token_ids)
        lp = torch.log_softmax(logits[0, p - 1 : -1], -1).gather(1, ids[0, p:, None]).squeeze(1)
        np.testing.assert_allclose(lp.numpy(), r.logprobs, atol=1e-4)


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
    from common.policy import token_logprobs
    from learner.sequences import collate, response_logprobs
    from common.records import TrainItem

    base, processor, prompt = setup
    path = base.model.name_or_path
    engine = TransformersEngine(path, allowed_tokens=["red", "green", "blue", "yellow"])
    allowed = set(engine.allowed_ids.tolist())
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
    lp = token_logprobs(logits.expand(len(allowed), -1), engine.allowed_ids, 1.0, engine.allowed_ids)
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-5
    items = [TrainItem("s0", r.prompt_token_ids, r.response_token_ids, r.logprobs, 0.0) for r in group]
    batch = collate(items, {"s0": prompt}, engine.model.config, engine.pad_id, "cpu", torch.float32)
    with torch.no_grad():
        learner_lp = response_logprobs(engine.model, batch, 1.0, engine.allowed_ids)
    assert float(((learner_lp - batch.engine_logprobs).abs() * batch.mask).max()) < 1e-5


def test_unknown_allowed_token_is_named(setup):
    base, _, _ = setup
    with pytest.raises(ValueError, match="'purple'"):
        TransformersEngine(base.model.name_or_path, allowed_tokens=["red", "purple"])
