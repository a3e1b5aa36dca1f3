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


@dataclass
class SharedBatch:
    """A micro-batch laid out for the shared-prefix forward: each distinct prompt once, its answers as rows.

    Over the T answer positions: `mask`, `engine_logprobs` [R, T]; `advantages` [R]; `row_prompt` [R] is the
    prompt (index into the prefix batch) of each answer row.
    """

    prefix: dict[str, torch.Tensor]  # left-padded prompts [U, Lp] with their images and 3D positions
    next_position: torch.Tensor  # [U] position of each prompt's first answer token
    answers: torch.Tensor  # [R, T] answer ids (vision placeholders replaced by pad), right-padded
    answer_attention: torch.Tensor  # [R, T]
    targets: torch.Tensor  # [R, T] the ids whose log-probs are scored (the answers as sampled)
    row_prompt: torch.Tensor  # [R]
    mask: torch.Tensor  # [R, T]
    engine_logprobs: torch.Tensor  # [R, T]
    advantages: torch.Tensor  # [R]
    num_masked_vision_tokens: int


def collate_shared(items: list[TrainItem], prompts: dict[str, EncodedPrompt], model, pad_id: int, device,
                   dtype) -> SharedBatch:
    """Group a micro-batch's answers under their prompts (first-seen order) for `shared_prefix_logprobs`."""
    config = model.config
    order = list(dict.fromkeys(it.sample_id for it in items))
    U, R = len(order), len(items)
    Lp = max(len(prompts[s].prompt_token_ids) for s in order)
    T = max(len(it.response_token_ids) for it in items)
    ids = torch.full((U, Lp), pad_id, dtype=torch.long)
    attention = torch.zeros((U, Lp), dtype=torch.long)
    for u, sid in enumerate(order):
        p = prompts[sid].prompt_token_ids
        ids[u, Lp - len(p):] = torch.tensor(p)
        attention[u, Lp - len(p):] = 1
    types = mm_token_type_ids(ids, config)
    # torch.tensor copies: arrays from Ray's object store are read-only.
    grid = torch.cat([torch.tensor(prompts[s].image_grid_thw) for s in order])
    positions, _ = model.model.get_rope_index(ids, types, image_grid_thw=grid, attention_mask=attention)
    vision_ids = torch.tensor(sorted(i for i in (config.image_token_id, config.video_token_id) if i is not None))
    answers = torch.full((R, T), pad_id, dtype=torch.long)
    targets = torch.full((R, T), pad_id, dtype=torch.long)
    answer_attention = torch.zeros((R, T), dtype=torch.long)
    mask = torch.zeros((R, T), dtype=torch.float32)
    engine_lp = torch.zeros((R, T), dtype=torch.float32)
    masked = 0
    for r, it in enumerate(items):
        response = torch.tensor(it.response_token_ids, dtype=torch.long)
        bad = torch.isin(response, vision_ids)
        masked += int(bad.sum())
        n = len(response)
        targets[r, :n] = response
        answers[r, :n] = torch.where(bad, torch.tensor(pad_id), response)
        answer_attention[r, :n] = 1
        mask[r, :n] = (~bad).float()
        engine_lp[r, :n] = torch.tensor(it.engine_logprobs, dtype=torch.float32)
    prefix = dict(
        input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
        mm_token_type_ids=types.to(device), image_grid_thw=grid.to(device),
        pixel_values=torch.cat([torch.tensor(prompts[s].pixel_values) for s in order]).to(device, dtype),
    )
    return SharedBatch(
        prefix=prefix, next_position=(positions.amax(dim=(0, 2)) + 1).to(device), answers=answers.to(device),
        answer_attention=answer_attention.to(device), targets=targets.to(device),
        row_prompt=torch.tensor([order.index(it.sample_id) for it in items], device=device),
        mask=mask.to(device), engine_logprobs=engine_lp.to(device),
        advantages=torch.tensor([it.advantage for it in items], dtype=torch.float32, device=device),
        num_masked_vision_tokens=masked,
    )


def shared_prefix_logprobs(model, batch: SharedBatch, policy: Policy, config) -> torch.Tensor:
    """Log-probs [R, T] of every answer token, each prompt (and its image) encoded once: the prompt forward fills a
    KV cache, which is indexed out to the prompt's answer rows (a differentiable gather, so gradients from every
    answer accumulate into the one prompt forward), and all answers then run as one batch against it. The same
    numbers and gradients as `response_logprobs` over G full rows, at a fraction of the prompt tokens."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    out = model(**batch.prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1][batch.row_prompt]  # [R, V] predicts each answer's first token
    cache.batch_select_indices(batch.row_prompt)
    R, T = batch.answers.shape
    attention = torch.cat([batch.prefix["attention_mask"][batch.row_prompt], batch.answer_attention], dim=1)
    steps = torch.arange(T, device=batch.answers.device)
    positions = (batch.next_position[batch.row_prompt][:, None] + steps).unsqueeze(0).expand(3, R, T)
    logits = model(input_ids=batch.answers, attention_mask=attention, position_ids=positions,
                   past_key_values=cache, use_cache=True).logits  # [R, T, V]; position t predicts token t + 1
    logits = torch.cat([first.unsqueeze(1), logits[:, :-1]], dim=1)
    return token_logprobs(logits, batch.targets, policy)
