"""Starting the services as Ray actors, and the calls that span them: weight sync, engine restarts, shutdown."""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayActorError

from common.sync_group import WeightPlan
from learner.actor import LearnerActor
from orchestration.config import RunConfig
from reward_service.pool import RewardPool
from rollout_workers.actor import EngineActor

log = logging.getLogger("perception_r1")


class LearnerDied(RuntimeError):
    """A learner rank is gone: its ZeRO-3 shard of the weights and optimizer went with it, so the run stops."""


@dataclass
class Services:
    """The running actors of a run and the weights version every engine holds."""
    cfg: RunConfig
    model_path: str
    engines: list  # EngineActor handles
    learners: list  # LearnerActor handles, index = rank
    rewards: RewardPool
    plan: WeightPlan
    version: int = -1  # the weights version every engine holds (-1: none synced yet)


# ---- the Ray cluster ----------------------------------------------------------------------------------------------
def _address_file() -> str:
    """Where `ray start` records the running local cluster (`ray_current_cluster` in Ray's temp directory)."""
    try:
        from ray._common.utils import get_ray_address_file

        return get_ray_address_file(None)
    except ImportError:  # Ray moved it
        return os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "ray_current_cluster")


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def start_ray(cfg: RunConfig) -> str:
    """Join the cluster named by `ray.address` or RAY_ADDRESS (as under `ray job submit`), else the running local
    cluster `ray start` recorded, else start a local one (also when that record is stale). Returns, and logs,
    which of these happened."""
    if ray.is_initialized():
        return "ray already initialised in this process"
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        how = f"joined the Ray cluster at {address}"
    else:
        recorded = None
        path = _address_file()
        if os.path.isfile(path):
            with open(path) as f:
                recorded = f.read().strip() or None
        if recorded and _reachable(recorded):
            ray.init(address=recorded)  # a cluster sizes itself: no local-only arguments
            how = f"joined the running local Ray cluster at {recorded} (recorded in {path})"
        else:
            needed = (cfg.learner.num_ranks * cfg.learner.cpus_per_rank
                      + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine
                      + cfg.reward.num_workers * cfg.reward.cpus_per_worker)
            ray.init(address="local", num_cpus=cfg.ray.num_cpus or math.ceil(needed) + 1, include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
            how = "started a local Ray cluster"
            if recorded:
                how += f" (the cluster recorded in {path}, {recorded}, is gone: stale record ignored)"
    log.info(how)
    return how


class ClusterTooSmall(RuntimeError):
    """The Ray cluster lacks the GPUs, CPUs or custom resources the config's actors ask for."""


def required_resources(cfg: RunConfig) -> dict[str, float]:
    """What the run's actors ask Ray for, in all: GPUs (one per CUDA learner rank and CUDA engine), CPUs (ranks,
    engines and reward actors, by their `cpus_per_*`), and each rank's `learner.ray_resources`."""
    r, learner = cfg.rollout, cfg.learner
    need = {"GPU": float(learner.num_ranks * (learner.device == "cuda") + r.num_engines * (r.device == "cuda")),
            "CPU": (learner.num_ranks * learner.cpus_per_rank + r.num_engines * r.cpus_per_engine
                    + cfg.reward.num_workers * cfg.reward.cpus_per_worker)}
    for name, amount in learner.ray_resources.items():
        need[name] = need.get(name, 0.0) + amount * learner.num_ranks
    return {k: v for k, v in need.items() if v > 0}


def check_resources(cfg: RunConfig, available: dict[str, float] | None = None) -> None:
    """Before any actor starts: the cluster's resources (`ray.cluster_resources()`) against `required_resources`.
    Ray would leave the actors it cannot place pending, and the run would wait for them; this fails at once,
    naming both numbers. Off with `ray.check_resources: false` (an autoscaling cluster that grows on demand)."""
    if not cfg.ray.check_resources:
        return
    have = ray.cluster_resources() if available is None else available
    short = [f"{name}: the config needs {need:g}, the cluster has {have.get(name, 0.0):g}"
             for name, need in required_resources(cfg).items() if have.get(name, 0.0) + 1e-9 < need]
    if short:
        r, learner = cfg.rollout, cfg.learner
        raise ClusterTooSmall(
            "the Ray cluster is too small for this config (" + "; ".join(short) + "). Asked for: "
            f"learner.num_ranks={learner.num_ranks} on {learner.device} x {learner.cpus_per_rank:g} CPUs"
            f"{' + ' + str(learner.ray_resources) if learner.ray_resources else ''}, rollout.num_engines="
            f"{r.num_engines} on {r.device} x {r.cpus_per_engine:g} CPUs, reward.num_workers={cfg.reward.num_workers}"
            f" x {cfg.reward.cpus_per_worker:g} CPUs. Lower them or add nodes (ray.check_resources=false skips "
            "this check on an autoscaling cluster).")


# ---- starting and restarting actors -----------------------------------------------------------------------------
def _threads(cpus: float) -> str:
    return str(max(1, int(cpus)))


def start_engine(cfg: RunConfig, model_path: str):
    """One engine actor of `rollout.backend`, with the threads (and, for vLLM on CPU, the KV cache) it may use."""
    r = cfg.rollout
    # Steps that alternate generate and train leave the learners idle while the engine generates: it may use every
    # core then. With generation overlapping training (max_staleness 1) it keeps to its own share.
    all_cores = r.device == "cpu" and cfg.train.max_staleness == 0
    threads = r.num_threads or (os.cpu_count() if all_cores else int(_threads(r.cpus_per_engine)))
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    vllm_kwargs = {}
    if r.backend == "vllm":
        vllm_kwargs = dict(gpu_memory_utilization=r.gpu_memory_utilization, seed=cfg.train.seed,
                           max_model_len=cfg.model.max_prompt_tokens + r.max_new_tokens)
        if r.device == "cpu":  # vLLM's CPU backend: KV cache size in GiB, no thread pinning on a shared machine
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
            env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return EngineActor.options(
        num_cpus=r.cpus_per_engine, num_gpus=1 if r.device == "cuda" else 0, runtime_env={"env_vars": env},
    ).remote(r.backend, model_path, r.device, r.dtype, num_threads=threads,
             allowed_tokens=r.allowed_tokens, **vllm_kwargs)


def start_services(cfg: RunConfig, model_path: str, run_dir: Path | None = None, token: str | None = None
                   ) -> Services:
    """Learner ranks (DeepSpeed ZeRO-3), engines and reward pool, with the weight-sync group joined. The engines
    and reward actors load while the learner ranks set up DeepSpeed. With `run_dir` and its `token`
    (common/storage.py), each rank first checks it sees that directory and the model."""
    learner_env = {"OMP_NUM_THREADS": _threads(cfg.learner.cpus_per_rank), "TOKENIZERS_PARALLELISM": "false",
                   # never DeepSpeed's guess: on a GPU node where CUDA fails it would pick its CPU accelerator
                   "DS_ACCELERATOR": cfg.learner.device}
    check_resources(cfg)
    learners = [
        LearnerActor.options(
            num_cpus=cfg.learner.cpus_per_rank, num_gpus=1 if cfg.learner.device == "cuda" else 0,
            resources=dict(cfg.learner.ray_resources), runtime_env={"env_vars": learner_env},
        ).remote()
        for _ in range(cfg.learner.num_ranks)
    ]
    timeout = cfg.ray.setup_timeout_s
    if run_dir is not None:
        placed = get_learners([learner.check_storage.remote(str(run_dir), token, model_path) for learner in learners],
                              timeout, "the learner ranks to start")
        for rank, (node, cwd) in enumerate(placed):
            log.info("learner rank %d on node %s (working directory %s) sees %s", rank, node, cwd, run_dir)
    master_host, master_port = get_learners([learners[0].address.remote()], timeout, "learner rank 0 to start")[0]
    setup = [
        actor.setup.remote(model_path, cfg.learner, cfg.grpo, rank, cfg.learner.num_ranks, master_host, master_port,
                           sampling=cfg.rollout.policy_sampling(),
                           allowed_tokens=cfg.rollout.allowed_tokens,
                           total_updates=cfg.train.steps * cfg.grpo.ppo_epochs)
        for rank, actor in enumerate(learners)
    ]
    engines = [start_engine(cfg, model_path) for _ in range(cfg.rollout.num_engines)]
    rewards = RewardPool(cfg.reward)
    get_learners(setup, timeout, "the learner ranks to load the model and set up DeepSpeed")
    services = Services(cfg, model_path, engines, learners, rewards,
                        plan=get_learners([learners[0].weight_plan.remote()], timeout, "the weight plan")[0])
    connect_sync_group(services)
    return services


def connect_sync_group(services: Services) -> None:
    """(Re)build the weight-sync group: learner rank r is its rank r, engine i its rank num_ranks + i. Rebuilt
    whenever an engine is replaced; every member joins the new group."""
    host, port = get_learners([services.learners[0].address.remote()])[0]
    n = len(services.learners)
    world = n + len(services.engines)
    refs = [learner.init_weight_sync.remote(host, port, world) for learner in services.learners]
    refs += [e.init_weight_sync.remote(services.cfg.learner.sync_backend, host, port, n + i, world)
             for i, e in enumerate(services.engines)]
    get_learners(refs, services.cfg.ray.setup_timeout_s, "the engines to load and join the weight-sync group")


def stop_engine(engine, timeout_s: float = 30.0) -> None:
    """End an engine actor, freeing its GPU: a graceful `shutdown` first (vLLM stops its engine-core process, which
    would otherwise hold the GPU's memory while the replacement starts on the same GPU), then the kill. A dead or
    hung actor gets the kill alone after `timeout_s`."""
    ray.wait([engine.shutdown.remote()], timeout=timeout_s)
    ray.kill(engine, no_restart=True)


def restart_engine(services: Services, i: int, reason: str) -> None:
    """Replace engine i (dead or hung): the old one stopped (`stop_engine`), a new actor, a rebuilt sync group, and
    the current weights."""
    log.warning("engine %d %s: restarting it", i, reason)
    stop_engine(services.engines[i])
    services.engines[i] = start_engine(services.cfg, services.model_path)
    connect_sync_group(services)
    sync_weights(services, services.version)


def get_learners(refs: list, timeout_s: float | None = None, waiting_for: str = "learner calls") -> list:
    """ray.get for calls that involve learner ranks. A dead rank stops the run at once, saying what to do next:
    the others would wait for it in their next collective until the process-group timeout. Past `timeout_s` it
    raises TimeoutError naming `waiting_for` (an actor Ray cannot place stays pending for ever)."""
    pending, deadline = list(refs), None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not done:
            raise TimeoutError(f"waited {timeout_s:g}s for {waiting_for} ({len(pending)} of {len(refs)} calls "
                               "still pending: an actor Ray cannot place, or one stuck loading; ray.setup_timeout_s)")
        try:
            ray.get(done[0])
        except RayActorError as exc:
            raise LearnerDied(
                f"a learner rank died ({exc.__class__.__name__}: {str(exc)[:300]}). Its ZeRO-3 shard of the weights "
                "and optimizer state is gone, so the run cannot go on. Resume from the last checkpoint: run the "
                "same command with --resume auto (under `ray job submit`, submit it again with --resume auto)."
            ) from exc
    return ray.get(refs)


def sync_weights(services: Services, version: int) -> dict[str, float]:
    """Broadcast the learner's full weights to every engine; returns when all engines hold `version`."""
    t0 = time.perf_counter()
    learner_refs = [learner.sync_weights.remote() for learner in services.learners]
    engine_refs = [engine.receive_weights.remote(version, services.plan) for engine in services.engines]
    rank_metrics = get_learners(learner_refs)
    versions = ray.get(engine_refs)
    if any(v != version for v in versions):
        raise RuntimeError(f"engines report policy versions {versions} after syncing version {version}")
    services.version = version
    return {"sync/bytes": rank_metrics[0]["sync/bytes"], "time/sync_s": time.perf_counter() - t0}


def shutdown(services: Services | None) -> None:
    """Stop the engines cleanly (vLLM's engine-core process too), then end every actor."""
    if services is None:
        return
    ray.wait([e.shutdown.remote() for e in services.engines], num_returns=len(services.engines), timeout=30)
    for actor in services.engines + services.learners + services.rewards.actors:
        ray.kill(actor, no_restart=True)
