"""The shared-prefix learner forward: one prompt forward per group gives the same log-probs and the same gradients
as G full prompt + answer rows."""
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from common.policy import Policy
from common.records import TrainItem
from common.vision import encode_prompt
from learner.sequences import collate, collate_shared, packed_tokens, response_logprobs, shared_prefix_logprobs
from orchestration.warmstart.tiny_model import write_tiny_qwen25vl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = write_tiny_qwen25vl(tmp_path_factory.mktemp("tiny"), initializer_range=0.1)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    prompts = {
        "a": encode_prompt(processor, "a", Image.new("RGB", (56, 56), (200, 10, 10)), "What colour is the shape?",
                           min_pixels=3136, max_pixels=12544, max_prompt_tokens=256),
        "b": encode_prompt(processor, "b", Image.new("RGB", (112, 84), (10, 10, 200)),
                           "Output all the bounding boxes of the dot", min_pixels=3136, max_pixels=12544,
                           max_prompt_tokens=256),
    }
    assert len(prompts["a"].prompt_token_ids) != len(prompts["b"].prompt_token_ids)
    g = torch.Generator().manual_seed(0)
    V = model.config.get_text_config().vocab_size
    image_pad = model.config.image_token_id
    items = []
    for sid, lengths in (("a", [3, 5, 1]), ("b", [4, 2, 6])):
        for n in lengths:
            response = torch.randint(20, V, (n,), generator=g).tolist()
            items.append(TrainItem(sid, prompts[sid].prompt_token_ids, response, [-1.0] * n,
                                   float(torch.randn(1, generator=g))))
    items[4].response_token_ids[1] = image_pad  # a generated placeholder: masked out in both layouts
    return model, prompts, items


POLICIES = [Policy(temperature=1.0), Policy(temperature=0.7, top_k=20, top_p=0.9, suppressed_ids=(12, 13))]


def _loss(lp, mask, advantages):
    return -((lp * mask).sum(1) / mask.sum(1) * advantages).sum()


@pytest.mark.parametrize("policy", POLICIES)
def test_same_logprobs_and_gradients_as_full_rows(setup, policy):
    model, prompts, items = setup
    full = collate(items, prompts, model.config, 0, "cpu", torch.float32)
    model.zero_grad()
    lp_full = response_logprobs(model, full, policy)
    _loss(lp_full, full.mask, full.advantages).backward()
    grads_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared = collate_shared(items, prompts, model, 0, "cpu", torch.float32)
    assert shared.inputs["input_ids"].shape[0] == 2 and shared.targets.shape[0] == 6  # 2 rows hold 6 answers
    # padding-free: each row is its prompt then its answers back to back (b's 12 answer tokens the longest row)
    Lp = max(len(p.prompt_token_ids) for p in prompts.values())
    assert shared.inputs["input_ids"].shape[1] == Lp + 12 and packed_tokens(items, prompts, True) == 2 * (Lp + 12)
    assert shared.num_masked_vision_tokens == full.num_masked_vision_tokens == 1
    model.zero_grad()
    lp_shared = shared_prefix_logprobs(model, shared, policy)
    _loss(lp_shared, shared.mask, shared.advantages).backward()
    grads_shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Same numbers per answer token (the full layout is offset by each prompt's length).
    for r, it in enumerate(items):
        n, p = len(it.response_token_ids), len(it.prompt_token_ids)
        offset = p - 1 - full.start
        keep = shared.mask[r, :n].bool()
        torch.testing.assert_close(lp_shared[r, :n][keep], lp_full[r, offset : offset + n][keep], atol=1e-5, rtol=0)
    assert grads_full.keys() == grads_shared.keys()
    assert any("visual" in n for n in grads_shared), "gradients reach the vision tower through the one prefix"
    for name in grads_full:
        torch.testing.assert_close(grads_shared[name], grads_full[name], atol=1e-5, rtol=1e-4, msg=name)
