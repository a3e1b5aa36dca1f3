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
    """A micro-batch packed for the shared-prefix forward: one row per distinct prompt, holding the prompt once and
    then its answers back to back, each at its own length (no padding between answers; a row shorter than the
    longest is padded at its end); a 4D attention mask lets every answer see the prompt and its own earlier tokens,
    never another answer.

    Over the T answer positions (T the longest answer): `targets`, `mask`, `engine_logprobs` [R, T]; `advantages`
    [R]; `row_group` [R] is the packed row of each answer and `logit_index` [R, T] where its logits sit in the kept
    window (0 past an answer's end, where `mask` is 0).
    """

    inputs: dict[str, torch.Tensor]  # input_ids [U, L], 4D attention mask, 3D position ids, images
    window: int  # logits kept: the prompt's last position and every answer position
    row_group: torch.Tensor  # [R]
    logit_index: torch.Tensor  # [R, T]
    targets: torch.Tensor  # [R, T]
    mask: torch.Tensor  # [R, T]
    engine_logprobs: torch.Tensor  # [R, T]
    advantages: torch.Tensor  # [R]
    num_masked_vision_tokens: int


def collate_shared(items: list[TrainItem], prompts: dict[str, EncodedPrompt], model, pad_id: int, device,
                   dtype) -> SharedBatch:
    """Pack a micro-batch's answers under their prompts (first-seen order) for `shared_prefix_logprobs`: row u is
    [left-padded prompt u | answer | answer | ... | end padding], the answers at their own lengths, so the forward
    holds `packed_tokens` positions and none is spent on padding between answers (veRL's and OpenRLHF's
    padding-free packing, here within a prompt's row)."""
    config = model.config
    order = list(dict.fromkeys(it.sample_id for it in items))
    U, R = len(order), len(items)
    Lp = max(len(prompts[s].prompt_token_ids) for s in order)
    T = max(len(it.response_token_ids) for it in items)
    row_group = [order.index(it.sample_id) for it in items]
    offset = [0] * R  # where each answer starts in its row, counted from the end of the prompt
    used = [0] * U
    for r, (u, it) in enumerate(zip(row_group, items)):
        offset[r], used[u] = used[u], used[u] + len(it.response_token_ids)
    L = Lp + max(used)
    ids = torch.full((U, L), pad_id, dtype=torch.long)
    key_ok = torch.zeros((U, L), dtype=torch.bool)  # positions a query may attend to (not padding)
    for u, sid in enumerate(order):
        p = prompts[sid].prompt_token_ids
        ids[u, Lp - len(p) : Lp] = torch.tensor(p)
        key_ok[u, Lp - len(p) : Lp] = True
    # torch.tensor copies: arrays from Ray's object store are read-only.
    grid = torch.cat([torch.tensor(prompts[s].image_grid_thw) for s in order])
    prompt_types = mm_token_type_ids(ids[:, :Lp], config)
    prompt_pos, _ = model.model.get_rope_index(ids[:, :Lp], prompt_types, image_grid_thw=grid,
                                               attention_mask=key_ok[:, :Lp].long())
    next_pos = prompt_pos.amax(dim=(0, 2)) + 1  # [U] each prompt's first answer position
    positions = torch.zeros((3, U, L), dtype=torch.long)
    positions[:, :, :Lp] = prompt_pos
    vision_ids = torch.tensor(sorted(i for i in (config.image_token_id, config.video_token_id) if i is not None))
    targets = torch.full((R, T), pad_id, dtype=torch.long)
    mask = torch.zeros((R, T), dtype=torch.float32)
    engine_lp = torch.zeros((R, T), dtype=torch.float32)
    logit_index = torch.zeros((R, T), dtype=torch.long)
    segment = torch.full((U, L), -2, dtype=torch.long)  # -1: prompt, r: answer r, -2: end padding
    segment[:, :Lp] = -1
    masked = 0
    for r, it in enumerate(items):
        u, n = row_group[r], len(it.response_token_ids)
        response = torch.tensor(it.response_token_ids, dtype=torch.long)
        bad = torch.isin(response, vision_ids)  # a generated placeholder would be taken for an image slot
        masked += int(bad.sum())
        start = Lp + offset[r]
        ids[u, start : start + n] = torch.where(bad, torch.tensor(pad_id), response)
        key_ok[u, start : start + n] = True
        segment[u, start : start + n] = r
        positions[:, u, start : start + n] = next_pos[u] + torch.arange(n)
        targets[r, :n] = response
        mask[r, :n] = (~bad).float()
        engine_lp[r, :n] = torch.tensor(it.engine_logprobs, dtype=torch.float32)
        # Window index 0 is the prompt's last position (predicts token 0); token t > 0 is predicted at position
        # start + t - 1, window index offset + t.
        logit_index[r, 1:n] = offset[r] + torch.arange(1, n)
    index = torch.arange(L)
    causal = index[None, :] <= index[:, None]  # [L, L]
    visible = causal[None] & ((segment[:, None, :] == -1) | (segment[:, None, :] == segment[:, :, None]))
    allowed = visible & key_ok[:, None, :]  # [U, L, L]
    allowed |= torch.eye(L, dtype=torch.bool)[None]  # a padding query sees itself (no empty softmax row)
    attention = torch.zeros((U, 1, L, L), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    inputs = dict(
        input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
        image_grid_thw=grid.to(device),
        pixel_values=torch.cat([torch.tensor(prompts[s].pixel_values) for s in order]).to(device, dtype),
    )
    return SharedBatch(
        inputs=inputs, window=L - Lp + 1, row_group=torch.tensor(row_group, device=device),
        logit_index=logit_index.to(device), targets=targets.to(device), mask=mask.to(device),
        engine_logprobs=engine_lp.to(device),
        advantages=torch.tensor([it.advantage for it in items], dtype=torch.float32, device=device),
        num_masked_vision_tokens=masked,
    )


def shared_prefix_logprobs(model, batch: SharedBatch, policy: Policy) -> torch.Tensor:
    """Log-probs [R, T] of every answer token with each prompt (and its image) encoded once, in one forward: the
    same numbers and gradients as `response_logprobs` over G full rows (gradients from every answer accumulate
    into the one prompt), for a fraction of the prompt tokens."""
    window = model(**batch.inputs, use_cache=False, logits_to_keep=batch.window).logits  # [U, window, V]
    logits = window[batch.row_group[:, None], batch.logit_index]  # [R, T, V]
    return token_logprobs(logits, batch.targets, policy)


def packed_tokens(items: list[TrainItem], prompts: dict[str, EncodedPrompt], shared_prefix: bool) -> int:
    """Tokens one forward over `items` processes, padding included: shared prefix, one row per prompt of its
    prompt and its answers back to back [U x (longest prompt + longest row of answers)]; full rows
    [B x max(prompt + answer)]."""
    if not shared_prefix:
        return len(items) * max(len(it.prompt_token_ids) + len(it.response_token_ids) for it in items)
    answers: dict[str, int] = {}
    for it in items:
        answers[it.sample_id] = answers.get(it.sample_id, 0) + len(it.response_token_ids)
    longest_prompt = max(len(prompts[s].prompt_token_ids) for s in answers)
    return len(answers) * (longest_prompt + max(answers.values()))


def plan_microbatches(items: list[TrainItem], prompts: dict[str, EncodedPrompt], *, shared_prefix: bool,
                      max_tokens: int | None, max_items: int, count: int | None = None) -> list[list[TrainItem]]:
    """Consecutive runs of `items` (a shard holds each prompt's answers together), one per forward: as many as
    `max_tokens` padded tokens hold (`packed_tokens`), or `max_items` answers when `max_tokens` is None. An answer
    that alone is over the budget gets a forward of its own. With `count` (at least the planned number, at most
    len(items)), the plan is split further, the costliest run first, to exactly that many: every ZeRO-3 rank
    must run as many forwards as the others (each gathers the weights with all of them)."""
    plan: list[list[TrainItem]] = []
    for it in items:
        if plan and (len(plan[-1]) < max_items if max_tokens is None else
                     packed_tokens(plan[-1] + [it], prompts, shared_prefix) <= max_tokens):
            plan[-1].append(it)
        else:
            plan.append([it])
    if count is not None:
        if not len(plan) <= count <= len(items):
            raise ValueError(f"cannot run {len(items)} answers as {count} micro-batches (planned {len(plan)})")
        while len(plan) < count:
            i = max((j for j in range(len(plan)) if len(plan[j]) > 1),
                    key=lambda j: packed_tokens(plan[j], prompts, shared_prefix))
            half = len(plan[i]) // 2
            plan[i : i + 1] = [plan[i][:half], plan[i][half:]]
    return plan
