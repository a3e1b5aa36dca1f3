"""The policy's per-token log-probability, one definition shared by the engines and the learner.

Both must compute exactly the same function, or `sampling/logprob_diff` stops proving weight sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   allowed_ids: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(token) for logits [..., V] and tokens [...]: softmax of logits / temperature, restricted to
    `allowed_ids` when an answer vocabulary is configured (then the policy samples only those tokens)."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if allowed_ids is not None:
        mask = torch.full((logits.shape[-1],), float("-inf"), device=logits.device)
        mask[allowed_ids.to(logits.device)] = 0.0
        logits = logits + mask
    return torch.gather(F.log_softmax(logits, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def vision_token_ids(config) -> list[int]:
    """Ids the policy must never sample: image/video placeholders and vision delimiters. In the learner's forward
    they would be taken for image slots ("image features and image tokens do not match")."""
    ids = (config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id)
    return [int(i) for i in ids if i is not None]


def eos_token_ids(generation_config, tokenizer) -> set[int]:
    """The ids that end an answer: the checkpoint's generation config (Qwen: <|im_end|>, <|endoftext|>)."""
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def resolve_allowed_ids(tokenizer, tokens: list[str] | None, eos_ids) -> torch.Tensor | None:
    """Token strings of an answer vocabulary -> sorted ids (end-of-turn ids always included); unknown ones raise."""
    if not tokens:
        return None
    ids = set(int(i) for i in eos_ids)
    for tok in tokens:
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is None or i == tokenizer.unk_token_id:
            raise ValueError(f"allowed token {tok!r} is not in the tokenizer's vocabulary")
        ids.add(int(i))
    return torch.tensor(sorted(ids), dtype=torch.long)
