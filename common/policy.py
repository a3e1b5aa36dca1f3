"""The policy: how logits become the distribution the engines sample from. One definition for engines and learner.

The learner optimises the distribution that is actually sampled, so that the importance ratio, the KL term and
`sampling/logprob_diff` all refer to one function of the logits:

1. ids outside an answer vocabulary (when one is configured) get -inf;
2. ids the policy must never emit (vision placeholders, ids beyond the tokenizer) get a logit bias of -100, the
   strongest bias vLLM's `logit_bias` accepts (so both backends apply the very same number);
3. divide by the temperature;
4. top-k, then top-p on what top-k left (vLLM's order and tie rules: every logit equal to the k-th is kept; the
   nucleus is the smallest set whose mass reaches p, the most likely token always kept);
5. log-softmax over what is left.

Greedy decoding (temperature 0) skips 3-4, as vLLM does. In the learner, the sampled token always counts as kept
in step 4: it was inside the sampler's nucleus, and only float noise at the nucleus edge (or, with several updates
per batch, the policy having moved) could otherwise give it probability 0 and a log-prob of -inf.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

SUPPRESS_BIAS = -100.0  # vLLM clamps logit_bias to [-100, 100]
_TRUNCATE_ROWS = 4096  # rows per chunk when sorting the vocabulary for top-p (bounds the learner's extra memory)


@dataclass(frozen=True)
class Policy:
    """Everything besides the weights that defines the sampled distribution (module docstring, steps 1-5)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    suppressed_ids: tuple[int, ...] = ()
    allowed_ids: tuple[int, ...] | None = None  # an answer vocabulary (end-of-turn ids included)

    @property
    def greedy(self) -> bool:
        """Temperature 0: argmax decoding, no temperature or truncation applied."""
        return self.temperature <= 0

    @property
    def truncates(self) -> bool:
        """Whether top-k or top-p removes tokens (never when greedy)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


@functools.lru_cache(maxsize=16)
def _vocabulary_terms(allowed_ids, suppressed_ids, V: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(mask of ids outside the answer vocabulary, logit bias of suppressed ids) as [V] tensors, built once."""
    outside = bias = None
    if allowed_ids is not None:
        outside = torch.ones(V, dtype=torch.bool, device=device)
        outside[torch.tensor(allowed_ids, device=device)] = False
    if suppressed_ids:
        bias = torch.zeros(V, device=device)
        bias[torch.tensor(suppressed_ids, device=device)] = SUPPRESS_BIAS
    return outside, bias


def processed_logits(logits: torch.Tensor, policy: Policy, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [..., V] -> float32 logits of the policy (-inf where it cannot sample); `keep` [...] are token ids
    that stay inside the top-k/top-p set whatever their rank (the learner passes the sampled tokens)."""
    z = logits.float()
    outside, bias = _vocabulary_terms(policy.allowed_ids, policy.suppressed_ids, z.shape[-1], z.device)
    if outside is not None:
        z = z.masked_fill(outside, float("-inf"))
    if bias is not None:
        z = z + bias
    if policy.greedy:
        return z
    if policy.temperature != 1.0:
        z = z / policy.temperature
    if policy.truncates:
        drop = truncation_mask(z.detach(), policy.top_k, policy.top_p)
        if keep is not None:
            drop.scatter_(-1, keep.unsqueeze(-1).to(z.device), False)
        z = z.masked_fill(drop, float("-inf"))
    return z


@torch.no_grad()
def truncation_mask(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """True where top-k (then top-p) removes a token, for temperature-scaled logits z [..., V].

    The same rules and arithmetic as vLLM's `apply_top_k_top_p_pytorch` (every logit equal to the k-th kept; the
    nucleus from an ascending float32 cumulative sum compared with 1 - p), so a token at the nucleus edge falls on
    the same side in the engine and in the learner. With top-k on, the nucleus is computed among the k largest
    logits only (`topk`, no sort of the whole vocabulary: 151,936 ids per position for Qwen); rows whose k-th logit
    is tied beyond k fall back to the full sort."""
    flat = z.reshape(-1, z.shape[-1])
    out = torch.empty_like(flat, dtype=torch.bool)
    for start in range(0, flat.shape[0], _TRUNCATE_ROWS):
        rows = flat[start : start + _TRUNCATE_ROWS].float()
        out[start : start + _TRUNCATE_ROWS] = _truncate_rows(rows, top_k, top_p)
    return out.view(z.shape)


def _truncate_rows(rows: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`truncation_mask` of a [N, V] float32 chunk."""
    V = rows.shape[-1]
    p_tail = 1 - torch.tensor(top_p, dtype=torch.float32, device=rows.device)
    if not 0 < top_k < V:
        return _nucleus_by_sort(rows, torch.zeros_like(rows, dtype=torch.bool), p_tail) if top_p < 1.0 else \
            torch.zeros_like(rows, dtype=torch.bool)
    values, index = torch.topk(rows, top_k, dim=-1)  # descending
    drop = rows < values[:, -1:]
    if top_p >= 1.0:
        return drop
    tied = (~drop).sum(dim=-1) > top_k  # the k-th logit repeats past k: keep vLLM's rule with the full sort
    ascending = values.flip(-1)
    tail = ascending.softmax(dim=-1).cumsum(dim=-1) <= p_tail
    tail[:, -1] = False
    out = drop | torch.zeros_like(drop).scatter_(-1, index, tail.flip(-1))
    if tied.any():
        out[tied] = _nucleus_by_sort(rows[tied], drop[tied], p_tail)
    return out


def _nucleus_by_sort(rows: torch.Tensor, drop: torch.Tensor, p_tail: torch.Tensor) -> torch.Tensor:
    """`drop` plus the top-p tail of what it keeps, by sorting the whole vocabulary ascending (vLLM's way)."""
    sorted_z, order = rows.masked_fill(drop, float("-inf")).sort(dim=-1, descending=False)
    tail = sorted_z.softmax(dim=-1).cumsum(dim=-1) <= p_tail
    tail[:, -1] = False
    return drop | torch.zeros_like(drop).scatter_(-1, order, tail)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, policy: Policy) -> torch.Tensor:
    """log pi(token) under `policy` for logits [..., V] and tokens [...]: what engines report and the learner
    recomputes (differentiable in `logits`)."""
    z = processed_logits(logits, policy, keep=tokens)
    return torch.gather(torch.log_softmax(z, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def vision_token_ids(config) -> list[int]:
    """Image/video placeholders and vision delimiters. In the learner's forward a generated one would be taken for
    an image slot ("image features and image tokens do not match")."""
    ids = (config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id)
    return [int(i) for i in ids if i is not None]


def eos_token_ids(generation_config, tokenizer) -> set[int]:
    """The ids that end an answer: the checkpoint's generation config (Qwen: <|im_end|>, <|endoftext|>)."""
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def model_policy(tokenizer, config, eos_ids, answer_tokens: list[str] | None = None, **sampling) -> Policy:
    """The policy of a checkpoint: vision ids and the ids past the tokenizer (padding rows of the output layer)
    suppressed, optionally an answer vocabulary; `sampling` sets temperature / top_k / top_p."""
    vocab_size = config.get_text_config().vocab_size
    suppressed = set(vision_token_ids(config)) | set(range(len(tokenizer), vocab_size))
    allowed = None
    if answer_tokens:
        ids = set(int(i) for i in eos_ids)
        for tok in answer_tokens:
            i = tokenizer.convert_tokens_to_ids(tok)
            if i is None or i == tokenizer.unk_token_id:
                raise ValueError(f"allowed token {tok!r} is not in the tokenizer's vocabulary")
            ids.add(int(i))
        allowed = tuple(sorted(ids))
    return Policy(suppressed_ids=tuple(sorted(suppressed)), allowed_ids=allowed, **sampling)
