"""Turn train items into Qwen2.5-VL model inputs and recompute per-token log-probs of the responses."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.policy import Policy, token_logprobs
from common.records import EncodedPrompt, TrainItem
from common.vision import mm_token_type_ids


@dataclass
class Collated:
    """Model inputs plus, over the T scored positions: `mask`, `engine_logprobs`, `advantages`."""

    inputs: dict[str, torch.Tensor]
    start: int  # position of the first predicted token scored (min prompt length - 1)
    mask: torch.Tensor  # [B, T]
    engine_logprobs: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B]
    num_masked_vision_tokens: int


def collate(
    items: list[TrainItem], prompts: dict[str, EncodedPrompt], config, pad_id: int, device, dtype
) -> Collated:
    """Right-pad prompt+response; image pads the policy generated are replaced and masked out of the loss.

    A generated `<|image_pad|>` would otherwise be counted as an image slot by the model and fail the forward
    ("image features and image tokens do not match").
    """
    vision_ids = {config.image_token_id, config.video_token_id}
    lengths = [len(it.prompt_token_ids) + len(it.response_token_ids) for it in items]
    B, L = len(items), max(lengths)
    start = min(len(it.prompt_token_ids) for it in items) - 1
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    types = torch.zeros((B, L), dtype=torch.int32)
    mask = torch.zeros((B, L), dtype=torch.float32)
    engine_lp = torch.zeros((B, L), dtype=torch.float32)
    masked = 0
    for b, it in enumerate(items):
        p, r = len(it.prompt_token_ids), len(it.response_token_ids)
        prompt = torch.tensor(it.prompt_token_ids)
        response = torch.tensor(it.response_token_ids, dtype=torch.long)
        bad = torch.isin(response, torch.tensor(sorted(i for i in vision_ids if i is not None)))
        masked += int(bad.sum())
        input_ids[b, :p] = prompt
        input_ids[b, p : p + r] = torch.where(bad, torch.tensor(pad_id), response)
        attention[b, : p + r] = 1
        types[b, :p] = mm_token_type_ids(prompt, config)  # the response stays text (0)
        # Position i holds the log-prob of token i+1, so response token j sits at p + j - 1.
        mask[b, p - 1 : p + r - 1] = (~bad).float()
        engine_lp[b, p - 1 : p + r - 1] = torch.tensor(it.engine_logprobs, dtype=torch.float32)
    # torch.tensor copies: arrays from Ray's object store are read-only.
    pixel_values = torch.cat([torch.tensor(prompts[it.sample_id].pixel_values) for it in items])
    grid = torch.cat([torch.tensor(prompts[it.sample_id].image_grid_thw) for it in items])
    inputs = dict(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        mm_token_type_ids=types.to(device),
        pixel_values=pixel_values.to(device, dtype),
        image_grid_thw=grid.to(device),
    )
    T = slice(start, L - 1)
    return Collated(
        inputs=inputs,
        start=start,
        mask=mask[:, T].to(device),
        engine_logprobs=engine_lp[:, T].to(device),
        advantages=torch.tensor([it.advantage for it in items], dtype=torch.float32, device=device),
        num_masked_vision_tokens=masked,
    )


def response_logprobs(model, batch: Collated, policy: Policy) -> torch.Tensor:
    """Log-probs [B, T] of each next token under `model` and `policy`, the same function the engine reports."""
    logits = model(**batch.inputs, use_cache=False).logits[:, batch.start : -1]
    targets = batch.inputs["input_ids"][:, batch.start + 1 :]
    return token_logprobs(logits, targets, policy)
