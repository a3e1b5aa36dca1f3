"""The GRPO driver loop: sample prompts, generate, score, normalise, update, sync — in that order, every step.

    python -m orchestration.train --config configs/demo_cpu.yaml [key.sub=value ...]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.progress import progress, quiet_libraries
from common.records import SamplingParams, Sample
from common.storage import SharedStorageError, write_run_token
from orchestration.config import RunConfig, load_config
from orchestration.driver import checkpoint
from orchestration.data.datasets import PromptSampler, SkippedSamples, build_datasets
from orchestration.evaluate import HEADLINE
from orchestration.warmstart.sft import prepare_model
from orchestration.data.encode import BadSample, draw_prompts, encode_sample
from orchestration.driver.rollout import generate_and_score, make_shards
from orchestration.driver.services import Services, get_learners, shutdown, start_ray, start_services, sync_weights
from orchestration.driver.tracking import Tracker

log = logging.getLogger("perception_r1")


@dataclass
class TrainResult:
    """What a run returns: held-out reward and headline metric before and after, and every step's metrics."""
    eval_before: float
    eval_after: float
    steps: int
    output_dir: Path
    wandb_dir: str | None
    history: list[dict[str, float]]
    headline: str | None = None  # the task's headline held-out metric, and its value before and after
    headline_before: float | None = None
    headline_after: float | None = None


@dataclass
class EvalSet:
    """The held-out samples and the processor that prompts them. Each evaluation encodes them `train.eval_batch` at a
    time and holds no more: a real image's encoded pixels take 10-20 MB (COCO's 5,000 val images would be ~60 GB in
    the driver and in Ray's object store)."""

    processor: object
    samples: list[Sample]


EVAL_COUNTERS = ("reward/retries", "reward/timeouts", "reward/failed_groups")  # summed over the eval batches


def evaluate_policy(services: Services, cfg: RunConfig, evals: EvalSet, tracker: Tracker | None = None,
                    step: int = 0, images: int = 4) -> dict[str, float]:
    """Greedy decoding of the held-out set on the running engines, `train.eval_batch` prompts at a time (a sample
    that cannot be prompted is left out, logged): mean reward, its components and the task's metrics
    (`eval/...`); the first `images` scenes go to W&B with true (green) and predicted (red) boxes."""
    from orchestration.evaluate import task_metrics
    from orchestration.driver.rollout import rollout_metrics
    from reward_service.thinking import answer_part

    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens)
    samples, contexts, groups = [], [], []
    counters = dict.fromkeys(EVAL_COUNTERS, 0.0)
    n, skipped = cfg.train.eval_batch, 0
    for i in range(0, len(evals.samples), n):
        kept = []  # (sample, prompt, context) for the batch's usable samples
        for s in evals.samples[i : i + n]:
            try:
                kept.append((s, *encode_sample(evals.processor, cfg, s)))
            except BadSample as exc:
                skipped += 1
                log.warning("eval: leaving out sample %s: %s", s.origin or s.id, exc)
        if not kept:
            continue
        batch, prompts, batch_contexts = (list(column) for column in zip(*kept))
        batch_groups, metrics = generate_and_score(services, prompts, batch_contexts, greedy)
        samples += batch
        contexts += batch_contexts
        groups += batch_groups
        for k in EVAL_COUNTERS:
            counters[k] += metrics[k]
    if not groups:
        raise ValueError("no usable sample in the eval set")
    out = {f"eval/{k.split('/', 1)[1]}": v for k, v in {**rollout_metrics(groups), **counters}.items()
           if k.startswith("reward/")}
    out["eval/skipped"] = float(skipped)
    opts = cfg.reward.options
    answers = [answer_part(g[0].rollout.response_text, opts.thinking) for g in groups]
    task = task_metrics(cfg.data.task, samples, answers, contexts, [g[0] for g in groups], opts)
    out.update({f"eval/{k}": v for k, v in task.items()})
    if tracker is not None and images and cfg.data.task != "colour":
        from orchestration.evaluate import draw_example

        shown = list(zip(samples, answers, contexts))[:images]
        pictures = [draw_example(s, a, c, opts, None) for s, a, c in shown]
        tracker.log_images("eval/examples", pictures, [f"{s.question} -> {a[:120]}" for s, a, _ in shown], step)
    return out


@dataclass
class StepBatch:
    """One step's prompts with their scored groups, and the sampler's state right after they were drawn."""

    samples: list[Sample]
    prompts: list
    groups: list
    metrics: dict[str, float]
    draw_state: tuple[dict, int]  # (PromptSampler.state(), skipped count) after this step's draw


class StepRollouts:
    """Each step's answers: generated when the step asks for them (train.max_staleness 0), or one step ahead in a
    background thread while the learner trains (max_staleness 1: the engines generate step t+1 with the weights
    of step t-1, the loss corrects with the truncated importance weight). Prompts are drawn in step order either
    way, and seeds follow the step, so both modes train on the same prompts."""

    def __init__(self, services: Services, cfg: RunConfig, processor, sampler, skipped, sampling: SamplingParams):
        self.services, self.cfg, self.processor = services, cfg, processor
        self.sampler, self.skipped, self.sampling = sampler, skipped, sampling
        self.ahead = cfg.train.max_staleness > 0
        self._pool = ThreadPoolExecutor(max_workers=1) if self.ahead else None
        self._pending: tuple[int, Future] | None = None

    def _generate(self, step: int) -> StepBatch:
        samples, prompts, contexts = draw_prompts(self.processor, self.cfg, self.sampler,
                                                  self.cfg.train.prompts_per_step, self.skipped)
        draw_state = (self.sampler.state(), self.skipped.count)
        seeded = replace(self.sampling, seed=self.cfg.train.seed + step * 100_003)
        if self._pool is None:
            return StepBatch(samples, prompts, *generate_and_score(self.services, prompts, contexts, seeded),
                             draw_state)
        future = self._pool.submit(generate_and_score, self.services, prompts, contexts, seeded)
        return StepBatch(samples, prompts, future, {}, draw_state)  # groups: a Future until `take` resolves it

    def take(self, step: int, last: int) -> StepBatch:
        """Step `step`'s scored groups; in the ahead mode this also starts generating step + 1."""
        if self._pending is not None and self._pending[0] == step:
            batch = self._pending[1]
        else:
            batch = self._generate(step)
        self._pending = (step + 1, self._generate(step + 1)) if self.ahead and step < last else None
        if isinstance(batch.groups, Future):
            batch.groups, batch.metrics = batch.groups.result()
        return batch

    def settle(self) -> None:
        """Wait for the generation in flight (the engines and the reward pool are then free, e.g. for eval)."""
        if self._pending is not None:
            self._pending[1].groups.exception()

    def close(self) -> None:
        """Stop the background generation thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def train(cfg: RunConfig, resume: str | None = None) -> TrainResult:
    """Run GRPO for `train.steps` steps; `resume` ("auto" or a checkpoint directory) continues a run exactly."""
    quiet_libraries()
    start_ray(cfg)
    out_dir = run_directory(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    token = write_run_token(out_dir)
    (out_dir / "config.yaml").write_text(_yaml(cfg))
    ckpt = checkpoint.resolve(resume, out_dir)
    state = checkpoint.read_state(ckpt) if ckpt else None
    model_path = prepare_model(cfg, out_dir)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    train_set, eval_set = build_datasets(cfg.data)
    sampler = PromptSampler(train_set, cfg.train.seed)
    skipped = SkippedSamples(cfg.data.max_bad_rows)
    evals = EvalSet(processor, eval_set)
    sampling = SamplingParams(n=cfg.grpo.group_size, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.train.seed)
    tracker = Tracker(cfg, out_dir, resume_step=state.step if state else None,
                      run_id=state.wandb_id if state else None)
    services = rollouts = None
    history: list[dict[str, float]] = []
    try:
        t0 = time.perf_counter()
        services = start_services(cfg, model_path, out_dir, token)
        version, first_step = 0, 1
        if state is not None:
            checkpoint.restore(services, ckpt)
            sampler.load_state(state.sampler)
            skipped.count = state.skipped
            version, first_step = state.version, state.step + 1
            log.info("resumed from %s: step %d, policy version %d", ckpt, state.step, version)
        sync_weights(services, version)  # the engines start from the learner's (restored) weights
        log.info("services up in %.1fs", time.perf_counter() - t0)
        headline = HEADLINE.get(cfg.data.task)
        if state is None:
            first = evaluate_policy(services, cfg, evals, tracker, step=0)
            before, headline_before = first["eval/mean"], first.get(f"eval/{headline}")
            tracker.log({**first, "policy/version": version}, step=0)
        else:
            before, headline_before = state.eval_before, state.headline_before
        print(f"eval before training: reward {before:.3f}"
              + (f", {headline} {_value(headline_before)}" if headline is not None else ""), flush=True)

        bar = progress(range(first_step, cfg.train.steps + 1), "GRPO", total=cfg.train.steps,
                       initial=first_step - 1)
        rollouts = StepRollouts(services, cfg, processor, sampler, skipped, sampling)
        for step in bar:
            t_step = time.perf_counter()
            batch = rollouts.take(step, last=cfg.train.steps)
            metrics = batch.metrics
            metrics.update(staleness_metrics(batch.groups, version))

            t_train = time.perf_counter()
            shards = make_shards(batch.groups, batch.prompts, cfg.learner.num_ranks, cfg.grpo.group_size,
                                 cfg.grpo.scale_rewards, cfg.grpo.advantage_eps)
            rank_metrics = get_learners([l.train_step.remote(s) for l, s in zip(services.learners, shards)])
            metrics.update(_merge_rank_metrics(rank_metrics))
            metrics["time/train_s"] = time.perf_counter() - t_train

            version += 1
            metrics.update(sync_weights(services, version))  # queued behind any generation in flight
            metrics["policy/version"] = float(version)
            metrics["data/skipped"] = float(batch.draw_state[1])
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                rollouts.settle()
                metrics.update(evaluate_policy(services, cfg, evals, tracker, step=step))
            if step == cfg.train.steps or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                t_ckpt = time.perf_counter()
                rollouts.settle()
                # The sampler as it was after this step's draw: a resumed run draws step + 1 again.
                state = checkpoint.RunState(step, version, *batch.draw_state, before, tracker.run_id,
                                            headline_before)
                checkpoint.save(services, state, out_dir, cfg.train.keep_checkpoints)
                metrics["time/checkpoint_s"] = time.perf_counter() - t_ckpt
            metrics["time/step_s"] = time.perf_counter() - t_step
            tracker.log(metrics, step=step)
            tracker.log_samples([s.id for s in batch.samples], step=step)
            history.append(metrics)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", lp_diff=f"{metrics['sampling/logprob_diff']:.1e}",
                            step_s=f"{metrics['time/step_s']:.1f}")

        after = evaluate_policy(services, cfg, evals, tracker, step=cfg.train.steps)
        tracker.log(after, step=cfg.train.steps)
        _print_timing(history)
        if cfg.train.export_final:
            get_learners([l.export_hf.remote(str(out_dir / "final"), model_path) for l in services.learners])
        if headline is not None:
            print(f"eval {headline}: before {_value(headline_before)} -> after {_value(after.get(f'eval/{headline}'))}",
                  flush=True)
        print(f"eval reward: before {before:.3f} -> after {after['eval/mean']:.3f}", flush=True)
        return TrainResult(before, after["eval/mean"], cfg.train.steps, out_dir, tracker.run_dir, history,
                           headline, headline_before, after.get(f"eval/{headline}"))
    finally:
        if rollouts is not None:
            rollouts.close()
        tracker.finish()
        shutdown(services)


def run_directory(cfg: RunConfig) -> Path:
    """`train.output_dir` as an absolute path. A relative one is resolved here on one node; on a cluster of several
    nodes it is an error, since each node would resolve it against its own working directory (under `ray job
    submit --working-dir`, a per-node copy): checkpoints need one directory that every node mounts."""
    import ray

    path = Path(cfg.train.output_dir).expanduser()
    if path.is_absolute():
        return path
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1:
        raise SharedStorageError(
            f"train.output_dir {cfg.train.output_dir!r} is relative, on a Ray cluster of {nodes} nodes: give an "
            "absolute path on storage that the driver and every learner node mount (e.g. train.output_dir="
            "/mnt/shared/runs/coco)")
    return path.resolve()


def _value(v: float | None) -> str:
    """A metric for the console: 3 decimals, or `undefined` (COCO's AP of a size no image holds)."""
    return "undefined" if v is None else f"{v:.3f}"


def staleness_metrics(groups, learner_version: int) -> dict[str, float]:
    """How many updates behind the learner the answers' sampling policy is (0 for strictly on-policy steps)."""
    lag = np.array([learner_version - s.rollout.policy_version for g in groups for s in g], dtype=np.float64)
    return {"policy/staleness": float(lag.max()), "policy/staleness_mean": float(lag.mean())}


def _merge_rank_metrics(ranks: list[dict[str, float]]) -> dict[str, float]:
    """Average rank metrics, except the log-prob gap, which is pooled over all tokens of all ranks."""
    tokens = sum(m["sampling/num_tokens"] for m in ranks)
    out = {k: float(np.mean([m[k] for m in ranks])) for k in ranks[0]
           if not k.startswith("sampling/") and k != "time/train_rank_s"}
    out["train/masked_vision_tokens"] = float(sum(m["train/masked_vision_tokens"] for m in ranks))
    out["sampling/logprob_diff"] = sum(m["sampling/logprob_diff_sum"] for m in ranks) / max(tokens, 1.0)
    out["sampling/logprob_diff_max"] = max(m["sampling/logprob_diff_max"] for m in ranks)
    out["time/train_rank_max_s"] = max(m["time/train_rank_s"] for m in ranks)
    return out


def _print_timing(history: list[dict[str, float]]) -> None:
    if not history:
        return
    keys = ["time/generate_s", "time/reward_tail_s", "time/train_s", "time/sync_s", "time/step_s"]
    parts = [f"{k.split('/')[1].removesuffix('_s')} {np.mean([h[k] for h in history]):.2f}s" for k in keys]
    print("mean time per step: " + ", ".join(parts), flush=True)


def _yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestration.train --config C [--resume auto|PATH] [key.sub=value ...]`."""
    parser = argparse.ArgumentParser(description="GRPO training of a Qwen2.5-VL perception policy")
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue a run: 'auto' takes the newest complete checkpoint under train.output_dir "
                             "(a fresh start when there is none), or give a checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(load_config(args.config, args.overrides), resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
