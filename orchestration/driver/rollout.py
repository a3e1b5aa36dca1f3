"""One step's data: generate G answers per prompt, score them as each group finishes, build learner shards."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
import ray
from ray.exceptions import RayActorError

from common.records import EncodedPrompt, RewardContext, SamplingParams, ScoredRollout, TrainItem, TrainShard
from learner.grpo import group_advantages
from orchestration.driver.services import restart_engine


def plan_calls(n_prompts: int, n_engines: int, calls_per_engine: int) -> list[tuple[int, list[int]]]:
    """(engine, prompt indices) per generate call: each engine gets a contiguous share of the step, split into
    `calls_per_engine` calls, so the first call's groups are scored while the engine generates the next."""
    calls = []
    share = math.ceil(n_prompts / n_engines)
    for e in range(n_engines):
        mine = list(range(e * share, min(n_prompts, (e + 1) * share)))
        if not mine:
            continue
        size = math.ceil(len(mine) / min(calls_per_engine, len(mine)))
        calls += [(e, mine[i : i + size]) for i in range(0, len(mine), size)]
    return calls


def generate_and_score(services, prompts: list[EncodedPrompt], contexts: list[RewardContext],
                       sampling: SamplingParams) -> tuple[list[list[ScoredRollout]], dict[str, float]]:
    """Groups in prompt order, and rollout metrics. Each call's groups go to the reward pool as soon as its engine
    returns them (`ray.wait`), so scoring overlaps generation. An engine that dies or hangs is restarted with the
    current weights and the prompts it held are generated again; every group comes back whole."""
    t0 = time.perf_counter()
    r_cfg = services.cfg.rollout

    def launch(engine: int, idx: list[int]):
        seed = None if sampling.seed is None else sampling.seed + idx[0] * sampling.n  # prompt i: seed + i * n
        ref = services.engines[engine].generate.remote([prompts[i] for i in idx], replace(sampling, seed=seed))
        running[ref] = (engine, idx)

    running: dict = {}
    for engine, idx in plan_calls(len(prompts), len(services.engines), r_cfg.calls_per_engine):
        launch(engine, idx)
    jobs, restarts, t_first_submit = [], 0, None
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=r_cfg.generate_timeout_s)
        failed, reason = None, ""
        if not ready:  # hung: every call still out is on a stuck engine or queued behind one
            failed, reason = next(iter(running.values()))[0], f"returned nothing for rollout.generate_timeout_s={r_cfg.generate_timeout_s}s"
        else:
            engine, idx = running[ready[0]]
            try:
                ray.get(ready[0], timeout=60)  # small: the answers; raises if the engine died under the call
            except RayActorError as exc:
                failed, reason = engine, f"died ({type(exc).__name__})"
        if failed is not None:
            lost = [(ref, idx) for ref, (e, idx) in running.items() if e == failed]
            for ref, _ in lost:
                running.pop(ref)
            restart_engine(services, failed, reason)
            restarts += 1
            for _, idx in lost:
                launch(failed, idx)
            continue
        running.pop(ready[0])
        jobs.append((idx, services.rewards.submit(ready[0], [contexts[i] for i in idx])))
        t_first_submit = t_first_submit if t_first_submit is not None else time.perf_counter() - t0
    t_gen = time.perf_counter() - t0
    pool = services.rewards.collect([job for _, job in jobs])
    groups: list = [None] * len(prompts)
    for idx, job in jobs:
        for i, group in zip(idx, job.result):
            groups[i] = group
    metrics = rollout_metrics(groups)
    metrics.update({"reward/retries": float(pool.retries), "reward/timeouts": float(pool.timeouts),
                    "reward/failed_groups": float(pool.failed_groups), "rollout/engine_restarts": float(restarts),
                    "time/generate_s": t_gen,
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
