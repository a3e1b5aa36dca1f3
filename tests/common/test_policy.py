"""The one policy definition: masking, suppression, temperature and top-k/top-p, as engines and learner use it."""
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from common.policy import SUPPRESS_BIAS, Policy, processed_logits, token_logprobs, truncation_mask


def _reference_drop(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Hugging Face's top-k then top-p warpers (the rules vLLM's sampler follows too), as a mask of removed ids."""
    out = z.clone()
    if top_k:
        out = TopKLogitsWarper(top_k)(None, out)
    if top_p < 1:
        out = TopPLogitsWarper(top_p)(None, out)
    return torch.isinf(out) & ~torch.isinf(z)


@pytest.mark.parametrize("top_k,top_p", [(50, 0.9), (0, 0.9), (5, 1.0), (3, 0.5), (1, 0.9), (200, 0.99)])
def test_truncation_matches_the_reference_warpers(top_k, top_p):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 150, generator=g) * 3
    z[:8, :20] = 1.5  # ties at the top-k edge: every logit equal to the k-th is kept
    assert torch.equal(truncation_mask(z, top_k, top_p), _reference_drop(z, top_k, top_p))


def test_truncation_keeps_the_most_likely_token_and_reaches_p():
    z = torch.tensor([[10.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    drop = truncation_mask(z, 0, 0.5)
    assert drop[0].tolist() == [False, True, True, True]  # one token already holds the mass
    kept_mass = torch.softmax(z[1], -1)[~drop[1]].sum()
    assert kept_mass >= 0.5 and (~drop[1]).sum() == 2


def test_processed_logits_apply_mask_bias_temperature_in_vllms_order():
    logits = torch.tensor([[2.0, 1.0, 0.5, 3.0, -1.0]])
    policy = Policy(temperature=2.0, suppressed_ids=(3,), allowed_ids=(0, 1, 3))
    z = processed_logits(logits, policy)
    assert torch.isinf(z[0, 2]) and torch.isinf(z[0, 4])  # outside the answer vocabulary
    assert z[0, 3] == pytest.approx((3.0 + SUPPRESS_BIAS) / 2)  # bias before temperature, as vLLM
    assert z[0, 0] == pytest.approx(1.0) and z[0, 1] == pytest.approx(0.5)
    greedy = processed_logits(logits, Policy(temperature=0, top_k=1, top_p=0.1))
    assert torch.equal(greedy, logits)  # greedy: no temperature, no truncation


def test_learner_logprob_of_a_sampled_token_is_finite_and_differentiable():
    """A token outside the learner's nucleus (float noise, or the policy moved) keeps a finite log-prob; the
    gradient reaches the kept logits only."""
    logits = torch.tensor([[4.0, 3.9, 0.0, -2.0]], requires_grad=True)
    policy = Policy(temperature=1.0, top_k=2, top_p=1.0)
    lp = token_logprobs(logits, torch.tensor([2]), policy)
    assert torch.isfinite(lp).all()
    expected = 0.0 - torch.logsumexp(torch.tensor([4.0, 3.9, 0.0]), 0)
    assert float(lp.detach()) == pytest.approx(float(expected), abs=1e-6)
    lp.sum().backward()
    assert logits.grad[0, 3] == 0 and logits.grad[0, 2] != 0
    # Inside the set, the log-prob is the renormalised one.
    lp0 = token_logprobs(logits.detach(), torch.tensor([0]), policy)
    assert float(lp0) == pytest.approx(float(4.0 - torch.logsumexp(torch.tensor([4.0, 3.9]), 0)), abs=1e-6)


def test_chunked_truncation_equals_one_pass(monkeypatch):
    import common.policy as policy_module

    z = torch.randn(2, 37, 90, generator=torch.Generator().manual_seed(1))
    whole = truncation_mask(z, 20, 0.8)
    monkeypatch.setattr(policy_module, "_TRUNCATE_ROWS", 7)
    assert torch.equal(truncation_mask(z, 20, 0.8), whole)


@pytest.mark.parametrize("top_k,top_p", [(50, 0.9), (20, 0.5), (100, 0.99), (7, 0.3)])
def test_top_k_first_nucleus_equals_the_full_vocabulary_sort(top_k, top_p):
    """The nucleus computed among the k largest logits (no sort of the vocabulary) drops exactly what vLLM's sort of
    the whole vocabulary drops, over 4,000 rows of a 5,000-id vocabulary."""
    from common.policy import _nucleus_by_sort

    g = torch.Generator().manual_seed(2)
    z = torch.randn(4000, 5000, generator=g) * torch.rand(4000, 1, generator=g) * 6
    kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
    full = _nucleus_by_sort(z, z < kth, 1 - torch.tensor(top_p, dtype=torch.float32))
    assert torch.equal(truncation_mask(z, top_k, top_p), full)
