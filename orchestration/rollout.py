"""One step's data: generate G answers per prompt, score them as each group finishes, build learner shards."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
import ray

from common.records import EncodedPrompt, RewardContext, SamplingParams, Sample, ScoredRollout, TrainItem, TrainShard
from common.vision import encode_prompt
from learner.grpo import group_advantages
from orchestration.config import RunConfig


def encode(processor, cfg: RunConfig, samples: list[Sample]) -> tuple[list[EncodedPrompt], list[RewardContext]]:
    """Prompts as both engines and learner will see them, and what the reward needs to score the answers."""
    prompts, contexts = [], []
    for s in samples:
        image = s.load_image()
        p = encode_prompt(processor, s.id, image, s.question, min_pixels=cfg.model.min_pixels,
                          max_pixels=cfg.model.max_pixels, max_prompt_tokens=cfg.model.max_prompt_tokens)
        prompts.append(p)
        contexts.append(RewardContext(s.id, s.task, s.solution, p.scale, (p.image.shape[1], p.image.shape[0]),
                                      image.size))
    return prompts, contexts


def generate_and_score(services, prompts: list[EncodedPrompt], contexts: list[RewardContext],
                       sampling: SamplingParams) -> tuple[list[list[ScoredRollout]], dict[str, float]]:
    """Groups in prompt order, and rollout metrics. Each group goes to the reward pool as soon as its engine
    returns it (`ray.wait`), so scoring overlaps generation."""
    t0 = time.perf_counter()
    engines = services.engines
    gen_refs = []
    for i, prompt in enumerate(prompts):
        seeded = replace(sampling, seed=None if sampling.seed is None else sampling.seed + i * sampling.n)
        gen_refs.append(engines[i % len(engines)].generate.remote([prompt], seeded))
    index = {ref: i for i, ref in enumerate(gen_refs)}
    score_refs: list = [None] * len(gen_refs)
    pending = list(gen_refs)
    t_first_submit = None
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        i = index[ready[0]]
        score_refs[i] = services.rewards.submit(ready[0], [contexts[i]])
        t_first_submit = t_first_submit if t_first_submit is not None else time.perf_counter() - t0
    t_gen = time.perf_counter() - t0
    results = services.rewards.collect(score_refs)
    groups, timeouts = [], 0
    for i, result in enumerate(results):
        if result is None:  # the reward call timed out: every answer of the group scores 0, counted
            timeouts += 1
            rollouts = ray.get(gen_refs[i])[0]
            groups.append([ScoredRollout(r, 0.0, {}, error="reward timeout") for r in rollouts])
        else:
            groups.append(result[0])
    metrics = rollout_metrics(groups)
    metrics.update({"reward/timeouts": float(timeouts), "time/generate_s": t_gen,
                    # how long scoring ran alongside generation: > 0 shows groups streamed to the reward pool
                    "time/reward_overlap_s": t_gen - (t_first_submit or t_gen),
                    "time/reward_tail_s": time.perf_counter() - t0 - t_gen})
    return groups, metrics


def rollout_metrics(groups: list[list[ScoredRollout]]) -> dict[str, float]:
    """Reward mean/std, each component's mean, error count, response lengths, truncation rate."""
    flat = [s for g in groups for s in g]
    rewards = np.array([s.reward for s in flat], dtype=np.float64)
    lengths = np.array([len(s.rollout.response_token_ids) for s in flat], dtype=np.float64)
    components: dict[str, list[float]] = defaultdict(list)
    for s in flat:
        for name, value in s.components.items():
            components[name].append(value)
    out = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()),
        "reward/errors": float(sum(s.error is not None for s in flat)),
        "reward/solved_groups": float(np.mean([all(s.reward == g[0].reward for s in g) for g in groups])),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncated_frac": float(np.mean([s.rollout.finish_reason == "length" for s in flat])),
    }
    # Components (and diagnostics such as iou or count_error) are averaged over all answers, an errored answer
    # counting as 0 in each, so the weighted components add up to reward/mean.
    for name, values in components.items():
        out[f"reward/{name}"] = float(np.sum(values) / len(flat))
    return out


def make_shards(groups: list[list[ScoredRollout]], prompts: list[EncodedPrompt], num_ranks: int,
                group_size: int, scale_rewards: str, advantage_eps: float) -> list[TrainShard]:
    """Group-normalised advantages, then contiguous equal shards (a prompt's answers stay on one rank)."""
    rewards = np.array([s.reward for g in groups for s in g])
    advantages = group_advantages(rewards, group_size, scale_rewards, advantage_eps)
    by_id = {p.sample_id: p for p in prompts}
    items = [
        TrainItem(s.rollout.sample_id, s.rollout.prompt_token_ids, s.rollout.response_token_ids,
                  s.rollout.logprobs, float(a))
        for s, a in zip((s for g in groups for s in g), advantages)
    ]
    if len(items) % num_ranks:
        raise ValueError(f"{len(items)} answers do not split over {num_ranks} learner ranks")
    per_rank = len(items) // num_ranks
    n_tokens = sum(len(it.response_token_ids) for it in items)
    shards = []
    for r in range(num_ranks):
        part = items[r * per_rank : (r + 1) * per_rank]
        shards.append(TrainShard(part, {it.sample_id: by_id[it.sample_id] for it in part}, len(items), n_tokens))
    return shards
