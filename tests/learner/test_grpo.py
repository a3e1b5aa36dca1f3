"""GRPO advantages, k3 KL and loss against a per-element reference written from SPEC.md's formulas."""
import math

import numpy as np
import pytest
import torch

from learner.grpo import group_advantages, grpo_loss, k3_kl


def ref_advantages(rewards, G, scale, eps):
    out = []
    all_r = list(rewards)
    batch_mean = sum(all_r) / len(all_r)
    batch_std = math.sqrt(sum((x - batch_mean) ** 2 for x in all_r) / (len(all_r) - 1))
    for g in range(len(rewards) // G):
        grp = all_r[g * G:(g + 1) * G]
        m = sum(grp) / G
        s = math.sqrt(sum((x - m) ** 2 for x in grp) / (G - 1))
        for x in grp:
            if scale == "group":
                out.append((x - m) / (s + eps))
            elif scale == "batch":
                out.append((x - m) / (batch_std + eps))
            else:
                out.append(x - m)
    return out


def ref_loss(lp, old, ref, adv, mask, beta, el, eh, agg, normalizer, behavior=None, cap=None):
    B, T = len(lp), len(lp[0])
    per_seq, tok_sum, n_tok = [], 0.0, 0
    for b in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[b][t]:
                continue
            ratio = math.exp(lp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - el), 1 + eh)
            term = max(-adv[b] * ratio, -adv[b] * clipped)
            if behavior is not None:
                term *= min(math.exp(old[b][t] - behavior[b][t]), cap)
            if ref is not None:
                d = ref[b][t] - lp[b][t]
                term += beta * (math.exp(d) - d - 1)
            s += term
            n += 1
        per_seq.append(s / max(n, 1))
        tok_sum += s
        n_tok += n
    if agg == "seq-mean":
        return sum(per_seq) / (normalizer if normalizer is not None else B)
    return tok_sum / (normalizer if normalizer is not None else max(n_tok, 1))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_advantages_match_reference(scale, eps):
    rng = np.random.default_rng(0)
    rewards = rng.random(6 * 8)
    rewards[8:16] = 0.5  # a group with no signal: advantages exactly 0
    got = group_advantages(rewards, 8, scale, eps)
    np.testing.assert_allclose(got, ref_advantages(rewards, 8, scale, eps), atol=1e-6, rtol=0)
    assert np.all(got[8:16] == 0)


def test_advantages_reject_bad_groups():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(np.zeros(8), 3)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(np.zeros(8), 4, "bogus")


def test_k3_is_nonnegative_and_zero_at_equality():
    torch.manual_seed(0)
    lp, ref = torch.randn(4, 7), torch.randn(4, 7)
    kl = k3_kl(lp, ref)
    assert torch.all(kl >= 0)
    assert torch.allclose(k3_kl(lp, lp), torch.zeros_like(lp))
    d = ref - lp
    torch.testing.assert_close(kl, torch.exp(d) - d - 1)


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("normalizer", [None, 3.5])
@pytest.mark.parametrize("mu_gt_1", [False, True])
def test_loss_matches_reference(agg, beta, eps, normalizer, mu_gt_1):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 9
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    # mu > 1: the policy has moved since sampling, so ratios != 1 and clipping acts
    old = lp + (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4 if mu_gt_1 else 0)
    ref = lp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.3).double()
    mask[2] = 0  # an answer with no counted token must not divide by zero
    loss, stats = grpo_loss(lp, old, adv, mask, ref_logprobs=ref if beta else None, beta=beta,
                            clip_eps_low=eps[0], clip_eps_high=eps[1], loss_agg=agg, normalizer=normalizer)
    expect = ref_loss(lp.tolist(), old.tolist(), ref.tolist() if beta else None, adv.tolist(), mask.tolist(),
                      beta, eps[0], eps[1], agg, normalizer)
    assert abs(float(loss) - expect) < 1e-6
    if mu_gt_1:
        assert float(stats["clip_frac"]) > 0
    else:
        assert float(stats["clip_frac"]) == 0 and abs(float(stats["ratio"]) - 1) < 1e-12


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
@pytest.mark.parametrize("mu_gt_1", [False, True])
@pytest.mark.parametrize("cap", [2.0, 1.2])
def test_stale_answers_are_weighted_by_the_truncated_importance_weight(agg, mu_gt_1, cap):
    """Answers sampled by an older engine policy: each token's surrogate is scaled by min(pi_old / pi_engine, cap),
    as a per-element reference computes it; the KL term is not reweighted."""
    g = torch.Generator().manual_seed(2)
    B, T = 6, 7
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = lp + (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 if mu_gt_1 else 0)
    behavior = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.6  # the stale engine's policy
    ref = lp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.2).double()
    loss, stats = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, behavior_logprobs=behavior, tis_cap=cap, beta=0.04,
                            loss_agg=agg)
    expect = ref_loss(lp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.04, 0.2, 0.2, agg, None,
                      behavior.tolist(), cap)
    assert abs(float(loss) - expect) < 1e-6
    assert 0 < float(stats["is_truncated_frac"]) < 1 and float(stats["is_weight_max"]) <= cap
    # Engine and learner on the same weights: weight 1, the plain loss.
    same, _ = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, behavior_logprobs=old, tis_cap=cap, beta=0.04,
                        loss_agg=agg)
    plain, _ = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, beta=0.04, loss_agg=agg)
    assert abs(float(same) - float(plain)) < 1e-12


def test_loss_gradient_raises_logprob_of_positive_advantage():
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3), beta=0.0)
    loss.backward()
    assert torch.all(lp.grad[0] < 0) and torch.all(lp.grad[1] > 0)  # descent raises answer 0, lowers answer 1


def test_loss_rejects_unknown_aggregation():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="loss_agg"):
        grpo_loss(x, x, torch.zeros(1), torch.ones(1, 2), loss_agg="sum")


@pytest.mark.parametrize("junk", [float("-inf"), float("inf"), float("nan"), -1e30])
def test_values_at_masked_positions_never_reach_the_loss_or_its_gradient(junk):
    """Padded and masked positions may hold anything (a pad id outside an answer vocabulary has log-prob -inf): the
    loss, its statistics and its gradient are those of the same batch with 0 there."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    clean = torch.randn(2, 4) - 2
    kw = dict(beta=0.04, tis_cap=2.0, loss_agg="seq-mean")

    def run(fill):
        lp = torch.where(mask.bool(), clean, torch.tensor(fill)).requires_grad_(True)
        other = torch.where(mask.bool(), clean - 0.1, torch.tensor(fill))
        loss, stats = grpo_loss(lp, other, torch.tensor([1.0, -0.5]), mask, ref_logprobs=other,
                                behavior_logprobs=other, **kw)
        loss.backward()
        return loss, stats, lp.grad

    (loss, stats, grad), (ref_loss, ref_stats, ref_grad) = run(junk), run(0.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss == ref_loss and torch.equal(grad, ref_grad) and (grad[~mask.bool()] == 0).all()
    assert all(torch.isfinite(v) and v == ref_stats[k] for k, v in stats.items())


def test_huge_log_ratios_stay_finite():
    """A token the reference (or the sampling engine) all but excludes: log-ratios of +-1e4 nats give a finite loss
    and gradient, the KL and the importance weight clamped rather than overflowing to inf."""
    lp = torch.tensor([[-0.1, -50.0]], requires_grad=True)
    far = torch.tensor([[-1e4, -0.1]])
    loss, stats = grpo_loss(lp, lp.detach(), torch.tensor([1.0]), torch.ones(1, 2), ref_logprobs=far,
                            behavior_logprobs=far, tis_cap=2.0, beta=0.04)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert torch.isfinite(stats["kl"]) and stats["is_weight_max"] == 2.0
    assert torch.isfinite(k3_kl(torch.tensor([-1e4]), torch.tensor([0.0]))).all()
