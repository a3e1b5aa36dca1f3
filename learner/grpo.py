"""GRPO math as small pure functions (Perception-R1 / DeepSeekMath GRPO, with the options of SPEC.md).

Shapes: B answers, T response positions; `mask` is 1 on response tokens that count, 0 on padding.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

ScaleRewards = Literal["group", "batch", "none"]
LossAgg = Literal["seq-mean", "token-mean"]


def group_advantages(
    rewards: np.ndarray, group_size: int, scale: ScaleRewards = "group", eps: float = 1e-4
) -> np.ndarray:
    """Advantages of `rewards` [num_groups * G], laid out group by group.

    group: (r - mean_g) / (std_g + eps)   (paper; eps 1e-4 as in its TRL-based code)
    batch: (r - mean_g) / (std_batch + eps)
    none:  r - mean_g                      (Dr. GRPO)
    std is the unbiased sample std, as `torch.std` in TRL's GRPO.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if group_size < 2 or r.size % group_size:
        raise ValueError(f"{r.size} rewards do not split into groups of {group_size} (need G >= 2)")
    groups = r.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + eps)
    elif scale == "batch":
        centred = centred / (r.std(ddof=1) + eps)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale!r}")
    return centred.reshape(-1)


# Log-ratios are clamped to +-20 before exp (e^20 ~ 5e8): a token that one policy all but excludes would otherwise
# overflow to inf and turn the loss and its gradient to NaN. veRL clamps its low-variance KL the same way.
LOG_RATIO_CLAMP = 20.0


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1, always >= 0 and finite (the
    log-ratio clamped to +-LOG_RATIO_CLAMP). [B, T]."""
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


def _masked(x: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    """`x` with 0 wherever `keep` is False: log-probs at padded or masked positions may be anything (-inf for a
    pad id outside the answer vocabulary, NaN), and inf * 0 is NaN, in the loss and in its gradient alike."""
    return None if x is None else torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    behavior_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
    beta: float = 0.04,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    loss_agg: LossAgg = "seq-mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate GRPO loss with a k3 KL penalty, corrected for the policy that sampled.

    logprobs, old_logprobs, ref_logprobs, behavior_logprobs, mask: [B, T]; advantages: [B].
    `old_logprobs` are the learner's policy at the start of the update (the proximal policy); `behavior_logprobs`
    the engine's, which sampled the answers, possibly with older weights (train.max_staleness). Each token's
    surrogate is weighted by the truncated importance weight min(exp(old - behavior), tis_cap), held constant (the
    decoupled objective of AReaL, truncated as in veRL's TIS): 1 to float precision when engine and learner hold the
    same weights, and the correction otherwise.
    seq-mean: mean over each answer's tokens, then over answers (paper); token-mean: over all tokens (DAPO).
    `normalizer` replaces the local count of answers (seq-mean) or tokens (token-mean), so that micro-batches on
    several ranks add up to the loss of the whole batch. With one update per batch old == logprobs.detach(), the
    ratio is 1 and clipping is inert; clip_eps_high > clip_eps_low is DAPO's clip-higher.
    """
    keep = mask.bool()
    logprobs, old_logprobs = _masked(logprobs, keep), _masked(old_logprobs, keep)
    ref_logprobs, behavior_logprobs = _masked(ref_logprobs, keep), _masked(behavior_logprobs, keep)
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)
    per_token = torch.maximum(-adv * ratio, -adv * clipped)
    weight = None
    if behavior_logprobs is not None and tis_cap is not None:
        with torch.no_grad():
            weight = torch.exp((old_logprobs - behavior_logprobs).clamp(max=LOG_RATIO_CLAMP)).clamp(max=tis_cap)
        per_token = per_token * weight
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    if beta:
        per_token = per_token + beta * kl
    if loss_agg == "seq-mean":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss = per_seq.sum() / (normalizer if normalizer is not None else logprobs.shape[0])
    elif loss_agg == "token-mean":
        loss = (per_token * mask).sum() / (normalizer if normalizer is not None else mask.sum().clamp(min=1))
    else:
        raise ValueError(f"loss_agg must be seq-mean or token-mean, got {loss_agg!r}")
    n_tok = mask.sum().clamp(min=1)
    with torch.no_grad():
        is_clipped = ((ratio < 1 - clip_eps_low) & (adv < 0)) | ((ratio > 1 + clip_eps_high) & (adv > 0))
        stats = {
            "kl": (kl * mask).sum() / n_tok,
            "clip_frac": (is_clipped.to(mask.dtype) * mask).sum() / n_tok,
            "ratio": (ratio * mask).sum() / n_tok,
        }
        if weight is not None:
            stats["is_weight"] = (weight * mask).sum() / n_tok
            stats["is_weight_max"] = (weight * mask).max()
            stats["is_truncated_frac"] = ((weight >= tis_cap).to(mask.dtype) * mask).sum() / n_tok
    return loss, stats
