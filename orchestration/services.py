"""Starting the services as Ray actors and the two calls that span them: weight sync and shutdown."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import ray

from common.sync_group import WeightPlan
from learner.actor import LearnerActor
from orchestration.config import RunConfig
from reward_service.pool import RewardPool
from rollout_workers.actor import EngineActor


@dataclass
class Services:
    engines: list  # EngineActor handles
    learners: list  # LearnerActor handles, index = rank
    rewards: RewardPool
    plan: WeightPlan


def start_ray(cfg: RunConfig) -> None:
    """Join the cluster named by config or RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    needed = (cfg.learner.num_ranks * cfg.learner.cpus_per_rank + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine
              + cfg.reward.num_workers * cfg.reward.cpus_per_worker)
    ray.init(num_cpus=cfg.ray.num_cpus or math.ceil(needed) + 1, include_dashboard=False,
             log_to_driver=True, configure_logging=False)


def _threads(cpus: float) -> str:
    return str(max(1, int(cpus)))


def start_engine(cfg: RunConfig, model_path: str):
    """One engine actor of `rollout.backend`, with the threads (and, for vLLM on CPU, the KV cache) it may use."""
    r = cfg.rollout
    env = {"OMP_NUM_THREADS": _threads(r.cpus_per_engine), "TOKENIZERS_PARALLELISM": "false"}
    vllm_kwargs = {}
    if r.backend == "vllm":
        vllm_kwargs = dict(gpu_memory_utilization=r.gpu_memory_utilization, seed=cfg.train.seed,
                           max_model_len=cfg.model.max_prompt_tokens + r.max_new_tokens)
        if r.device == "cpu":  # vLLM's CPU backend: KV cache size in GiB, no thread pinning on a shared machine
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
            env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return EngineActor.options(
        num_cpus=r.cpus_per_engine, num_gpus=1 if r.device == "cuda" else 0, runtime_env={"env_vars": env},
    ).remote(r.backend, model_path, r.device, r.dtype, num_threads=int(_threads(r.cpus_per_engine)),
             allowed_tokens=r.allowed_tokens, **vllm_kwargs)


def start_services(cfg: RunConfig, model_path: str) -> Services:
    """Learner ranks (DeepSpeed ZeRO-3), engines and reward pool, with the weight-sync group joined."""
    learner_env = {"OMP_NUM_THREADS": _threads(cfg.learner.cpus_per_rank), "TOKENIZERS_PARALLELISM": "false"}
    if cfg.learner.device == "cpu":
        learner_env["DS_ACCELERATOR"] = "cpu"
    learners = [
        LearnerActor.options(
            num_cpus=cfg.learner.cpus_per_rank, num_gpus=1 if cfg.learner.device == "cuda" else 0,
            runtime_env={"env_vars": learner_env},
        ).remote()
        for _ in range(cfg.learner.num_ranks)
    ]
    master_host, master_port = ray.get(learners[0].address.remote())
    ray.get([
        actor.setup.remote(model_path, cfg.learner, cfg.grpo, rank, cfg.learner.num_ranks, master_host, master_port,
                           grad_accum=cfg.grad_accum, sampling=cfg.rollout.policy_sampling(),
                           allowed_tokens=cfg.rollout.allowed_tokens)
        for rank, actor in enumerate(learners)
    ])
    engines = [start_engine(cfg, model_path) for _ in range(cfg.rollout.num_engines)]
    rewards = RewardPool(cfg.reward)
    # One sync group: learner rank 0 is its rank 0, engine i its rank i + 1.
    sync_host, sync_port = ray.get(learners[0].address.remote())
    world = 1 + len(engines)
    ray.get(
        [learners[0].init_weight_sync.remote(sync_host, sync_port, world)]
        + [e.init_weight_sync.remote(cfg.learner.sync_backend, sync_host, sync_port, i + 1, world)
           for i, e in enumerate(engines)]
    )
    plan = ray.get(learners[0].weight_plan.remote())
    return Services(engines=engines, learners=learners, rewards=rewards, plan=plan)


def sync_weights(services: Services, version: int) -> dict[str, float]:
    """Broadcast the learner's full weights to every engine; returns when all engines hold `version`."""
    t0 = time.perf_counter()
    learner_refs = [learner.sync_weights.remote() for learner in services.learners]
    engine_refs = [engine.receive_weights.remote(version, services.plan) for engine in services.engines]
    rank_metrics = ray.get(learner_refs)
    versions = ray.get(engine_refs)
    if any(v != version for v in versions):
        raise RuntimeError(f"engines report policy versions {versions} after syncing version {version}")
    return {"sync/bytes": rank_metrics[0]["sync/bytes"], "time/sync_s": time.perf_counter() - t0}


def shutdown(services: Services | None) -> None:
    """Stop the engines cleanly (vLLM's engine-core process too), then end every actor."""
    if services is None:
        return
    ray.wait([e.shutdown.remote() for e in services.engines], num_returns=len(services.engines), timeout=30)
    for actor in services.engines + services.learners + services.rewards.actors:
        ray.kill(actor)
