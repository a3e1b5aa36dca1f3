"""`perception-r1 sft --config C`: a supervised warm start, the stand-in for an instruction-tuned model.

Teaches a checkpoint each task's answer format (SPEC's prompts; qwen25vl JSON in resized-image pixels, or qwen2vl
special tokens) on the training set's perfect answers (`reward_service/answers.py`; the boxes of counting and
detection listed top to bottom, left to right, unless `sft.reading_order` is off), with cross-entropy on the answer
tokens. With `reward.options.thinking` the answer comes after a <think> block: for grounding scenes that annotate
every object (the synthetic ones), a description of the scene, each object named then boxed in reading order, then
the named object restated, from which the answer copies its box; otherwise an empty one. `sft.vision_lr_scale`
slows or (0) freezes the vision tower. Deterministic by `sft.seed`. The result is a from_pretrained checkpoint, cached under
`sft.output_dir` by a key of everything it depends on (`cache_key`: settings, and the prompts and answers it teaches
as rendered now), so later runs reuse it. With `sft.enabled`, `train` runs
(or reuses) it and starts GRPO from it; it also works on a real checkpoint as a format warm start.

    python -m orchestration.warmstart.sft --config C [key.sub=value ...]
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from common.policy import Policy
from common.progress import progress, quiet_libraries
from common.records import TrainItem
from orchestration.config import RunConfig, load_config
from orchestration.evaluate import HEADLINE, LOWER_IS_BETTER, greedy_answers, reaches

log = logging.getLogger("perception_r1")


def answer_label(sample) -> str | None:
    """The object name an answer carries: grounding's referring expression, counting's label."""
    if sample.task == "grounding":
        from orchestration.data.prompts import grounding_expression

        return grounding_expression(sample.question)
    if sample.task == "counting":
        from orchestration.data.prompts import counting_label

        return counting_label(sample.question)
    return None


KEY_SAMPLES = 32  # the cache key holds the prompts and answers of this many training samples, as taught now


def target_text(cfg: RunConfig, sample, ctx) -> str:
    """What the warm start teaches for `sample`: the task's perfect answer, after its <think> trace with
    `thinking` (a scene description for grounding scenes that annotate every object, else empty)."""
    from reward_service.answers import format_answer, scene_description, thinking_text

    convention, label = cfg.reward.options.box_convention, answer_label(sample)
    text = format_answer(sample.task, sample.solution, ctx, convention, label=label,
                         reading_order=cfg.sft.reading_order)
    if cfg.reward.options.thinking:
        text = thinking_text(scene_description(sample.solution, ctx, convention, label)
                             if sample.task == "grounding" else "", text)
    return text


def cache_key(cfg: RunConfig, base_path: str) -> str:
    """Everything the warm start depends on: the base model, the training data, SFT's settings, and what it teaches,
    read off the first `KEY_SAMPLES` training samples as they are rendered now (prompt tokens and target text). A
    change to a prompt, an answer format, a thinking trace, or an option that changes them makes a new warm start;
    nothing has to be bumped by hand."""
    from transformers import AutoProcessor

    from orchestration.data.datasets import build_datasets
    from orchestration.data.encode import BadSample, encode_sample

    processor = AutoProcessor.from_pretrained(base_path)
    taught = hashlib.sha256()
    few, _ = build_datasets(cfg.data.model_copy(update={"train_size": KEY_SAMPLES, "eval_size": 1}))
    for sample in few:
        try:
            prompt, ctx = encode_sample(processor, cfg, sample)
        except BadSample as exc:
            taught.update(f"bad: {exc}".encode())
            continue
        taught.update(json.dumps([prompt.prompt_token_ids, target_text(cfg, sample, ctx)]).encode())
    parts = {"model": cfg.model.model_dump(mode="json"),
             "sft": cfg.sft.model_dump(mode="json", exclude={"enabled", "output_dir"}),  # the cache may move
             "data": cfg.data.model_dump(mode="json", exclude={"eval", "eval_size"}), "taught": taught.hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def param_groups(model, lr: float, vision_scale: float) -> list[dict]:
    """AdamW groups: the vision tower (`model.model.visual`) at `lr * vision_scale`, frozen at 0; the rest at `lr`."""
    visual = list(model.model.visual.parameters())
    ids = {id(p) for p in visual}
    rest = {"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr}
    if vision_scale == 0:
        model.model.visual.requires_grad_(False)
        return [rest]
    return [rest, {"params": visual, "lr": lr * vision_scale}]


def prepare_model(cfg: RunConfig, out_dir: Path, warm: bool = True) -> str:
    """The checkpoint GRPO starts from: the base model (`models.base_model`: `model.path`, or a tiny random
    Qwen2.5-VL written into `out_dir`), or with `sft.enabled` (and `warm`) its supervised warm start (cached)."""
    from orchestration.warmstart.models import base_model

    base = base_model(cfg, out_dir)
    return warm_start(cfg, base) if warm and cfg.sft.enabled else base


def warm_start(cfg: RunConfig, base_path: str) -> str:
    """The warm-started checkpoint of `base_path` for `cfg`: reused from the cache, or trained and cached."""
    key = cache_key(cfg, base_path)
    out = Path(cfg.sft.output_dir) / f"{cfg.data.task}-{key}"
    if (out / "sft.json").is_file():
        log.info("warm start: reusing %s", out)
        return str(out)
    return str(run_sft(cfg, base_path, out, key))


def run_sft(cfg: RunConfig, base_path: str, out: Path, key: str | None = None) -> Path:
    """Supervised training on the perfect answers; writes a from_pretrained checkpoint to `out` (atomically).
    With `sft.target`, the last `sft.probe_size` training samples are held out as a probe set, decoded greedily
    every `sft.probe_every` steps, and training stops at the first probe whose headline metric reaches the target
    (else at `sft.steps`, with a warning). With `sft.tolerance`, a probe better than target + tolerance does not stop
    it: the weights and AdamW state go back to the last probe short of the target (`Snapshot`) and the learning rate
    halves, each time. `key`: the cache key it is stored under (`warm_start`), recorded in its sft.json with the steps
    taken (returned ones included), the number of returns and every probe."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from learner.sequences import collate, response_logprobs
    from orchestration.data.datasets import PromptSampler, SkippedSamples, build_datasets
    from orchestration.data.encode import draw_prompts

    quiet_libraries()
    s = cfg.sft
    torch.manual_seed(s.seed)
    if s.threads:
        torch.set_num_threads(s.threads)
    processor = AutoProcessor.from_pretrained(base_path)
    tokenizer = processor.tokenizer
    model = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch.float32)
    model.train()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    train_set, _ = build_datasets(cfg.data)
    # The weights probed and saved: the model itself, or an exponential moving average of it (torch's AveragedModel)
    averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        s.ema), use_buffers=True) if s.ema is not None else None)
    kept = averaged.module if averaged is not None else model
    probe = Probe(cfg, kept, processor, train_set) if s.target is not None else None
    if probe is not None:
        train_set = train_set[: -len(probe.samples)]
    optimizer = torch.optim.AdamW(param_groups(model, s.lr, s.vision_lr_scale), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, s.warmup_steps, s.steps,
                                                                                decay=s.target is None)
                                                 * (probe.lr_scale / 2 ** probe.halvings if probe is not None
                                                    else 1.0))

    # Prompts are encoded when drawn, never kept: ~1 ms for a demo scene, while a cache of every encoded prompt
    # held the whole training set's pixels in memory (10 GB for the grounding demo's 32,768 scenes). A sample that
    # cannot be prompted or taught is skipped, logged and counted (data.max_bad_rows), as in GRPO.
    sampler, skipped = PromptSampler(train_set, s.seed), SkippedSamples(cfg.data.max_bad_rows)
    losses, probes, t0 = [], [], time.perf_counter()
    short = None  # with sft.tolerance: the weights at the last probe short of the target (Snapshot)
    bar = progress(range(1, s.steps + 1), "SFT", total=s.steps)
    for step in bar:
        batch, prompts = [], {}
        while len(batch) < s.batch_size:
            [sample], [prompt], [ctx] = draw_prompts(processor, cfg, sampler, 1, skipped)
            try:
                answer = tokenizer.encode(target_text(cfg, sample, ctx), add_special_tokens=False) + [eos]
            except (KeyError, TypeError, ValueError) as exc:  # e.g. a count-only row: no boxes to teach
                skipped.report(sample, f"no answer to teach: {type(exc).__name__}: {exc}")
                sampler.exclude(sample.id)
                continue
            prompts[sample.id] = prompt
            batch.append(TrainItem(sample.id, prompt.prompt_token_ids, answer, [0.0] * len(answer), 0.0))
        rows = collate(batch, prompts, model.config, tokenizer.pad_token_id, "cpu", torch.float32)
        lp = response_logprobs(model, rows, Policy())
        loss = -(lp * rows.mask).sum() / rows.mask.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if averaged is not None:
            averaged.update_parameters(model)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if probe is not None and probe.due(step):
            probes.append({"step": step, **probe.measure(step)})
            value = probes[-1][probe.metric]
            if not reaches(probe.metric, value, s.target):
                short = Snapshot(step, model, optimizer, averaged) if s.tolerance is not None else None
            elif (s.tolerance is None or short is None
                  or not past_window(probe.metric, value, s.target, s.tolerance)):
                break
            else:  # jumped past the window: back to the last probe short of the target, at half the step
                short.restore(model, optimizer, averaged)
                probe.halvings += 1
                schedule.step()  # the halved rate from the next update on (the restored groups hold the old one)
                probes[-1]["returned_to"] = short.step
                log.info("warm start step %d: probe %s %.3f is past the window %.3f +- %.3f: back to step %d's "
                         "weights at 1/%d of the learning rate", step, probe.metric, value, s.target, s.tolerance,
                         short.step, 2 ** probe.halvings)
    steps = len(losses)
    info = {"task": cfg.data.task, "steps": steps, "batch_size": s.batch_size,
            "seconds": time.perf_counter() - t0, "first_loss": sum(losses[:20]) / len(losses[:20]),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "skipped": skipped.count, "key": key,
            "base": base_path}
    if probe is not None:
        reached = reaches(probe.metric, probes[-1][probe.metric], s.target)
        info.update({"target": {probe.metric: s.target}, "tolerance": s.tolerance, "reached": reached,
                     "returns": probe.halvings, "probes": probes})
        (log.info if reached else log.warning)(
            "warm start: probe %s %.3f %s target %.3f at step %d (of at most %d; %d probe samples)", probe.metric,
            probes[-1][probe.metric], "reaches" if reached else "has not reached", s.target, steps, s.steps,
            len(probe.samples))
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    kept.save_pretrained(partial)
    processor.save_pretrained(partial)
    (partial / "sft.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    log.info("warm start written to %s in %.0fs after %d steps (loss %.3f)", out, time.perf_counter() - t0, steps,
             losses[-1])
    return out


def lr_factor(i: int, warmup: int, steps: int, decay: bool) -> float:
    """The learning rate's multiple at optimizer step `i` (from 0): linear warm-up over `warmup` steps, then a
    cosine decay to 0 at `steps`, or (`decay` false: a warm start stopped by its target, whose end is not known in
    advance) constant."""
    ramp = min(1.0, (i + 1) / max(1, warmup))
    return ramp * (0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)) if decay else 1.0)


def past_window(metric: str, value: float, target: float, tolerance: float) -> bool:
    """Whether `value` of `metric` is better than `target` by more than `tolerance` (above it, or below it for a
    lower-is-better metric); a value at the window's edge (e.g. 520 of 1,000 scenes against 0.5 + 0.02) is in it."""
    eps = 1e-9
    return value < target - tolerance - eps if metric in LOWER_IS_BETTER else value > target + tolerance + eps


class Snapshot:
    """A copy, in host memory, of the model's weights, the optimizer's state (AdamW's moments and step count) and
    the moving average's weights after SFT step `step`, for `sft.tolerance`'s return to it. Twice the model's
    size again: meant for the demos' tiny models and a warm start's few probes, not a 7 B checkpoint."""

    def __init__(self, step: int, model, optimizer, averaged=None):
        self.step = step
        self.model = copy.deepcopy(model.state_dict())
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.averaged = None if averaged is None else copy.deepcopy(averaged.state_dict())

    def restore(self, model, optimizer, averaged=None) -> None:
        """Put the copied state back; the copy stays intact (torch's optimizer adopts the tensors it is given, so
        it gets clones) for a further return."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if averaged is not None:
            averaged.load_state_dict(self.averaged)


class Probe:
    """The warm start's yardstick: the last `sft.probe_size` training samples (held out of its training, apart from
    the eval set), decoded greedily with the weights being trained; `measure` gives the task's metrics there.

    Until the headline metric is half-way from its first probe to the target, probes come every 4 x
    `sft.probe_every` steps on a fifth of the set (they only look for the half-way mark); from then on every
    `sft.probe_every` steps on all of it, and only those decide the stop (500 demo scenes cost ~10 training
    steps)."""

    FAR = 4  # far from the target: probes this many times less often, on 1 / FAR_SHARE of the set
    FAR_SHARE = 5

    def __init__(self, cfg: RunConfig, model, processor, train_set: list):
        from rollout_workers.transformers_engine import TransformersEngine

        size = cfg.sft.probe_size
        if len(train_set) <= size:
            raise ValueError(f"sft.probe_size={size} leaves no training sample of the {len(train_set)} in the "
                             f"training set (data.train_size={cfg.data.train_size})")
        self.cfg, self.processor, self.samples = cfg, processor, train_set[-size:]
        self.metric = HEADLINE[cfg.data.task]
        self.engine = TransformersEngine.from_model(model, processor.tokenizer, cfg.rollout.allowed_tokens)
        self.first: float | None = None
        self.near = False
        self.lr_scale = 1.0  # with sft.anneal: the share of the way to the target still to go
        self.halvings = 0  # with sft.tolerance: returns from a probe past the window, each halving the rate

    def due(self, step: int) -> bool:
        """Whether to probe after optimizer step `step` (the last allowed step is always probed)."""
        every = self.cfg.sft.probe_every * (1 if self.near else self.FAR)
        return step % every == 0 or step == self.cfg.sft.steps

    def measure(self, step: int) -> dict[str, float | None]:
        """The task's metrics on the probe set (greedy; a fifth of it while far from the target), logged with
        `step`. The probe that first passes the half-way mark is repeated on the whole set."""
        metrics = self._metrics(self.samples if self.near else self.samples[: max(1, len(self.samples)
                                                                               // self.FAR_SHARE)])
        value = metrics[self.metric]
        if value is not None:
            self.first = value if self.first is None else self.first
            if not self.near and reaches(self.metric, value, (self.first + self.cfg.sft.target) / 2):
                self.near = True
                metrics = self._metrics(self.samples)
                value = metrics[self.metric]
            if self.cfg.sft.anneal and value is not None and self.cfg.sft.target != self.first:
                left = (self.cfg.sft.target - value) / (self.cfg.sft.target - self.first)
                self.lr_scale = min(1.0, max(self.cfg.sft.anneal, left))
        log.info("warm start step %d: probe %s %s", step, self.metric, "undefined" if value is None else f"{value:.3f}")
        return {**metrics, "probe_samples": float(len(self.samples) if self.near else len(self.samples)
                                                  // self.FAR_SHARE)}

    def _metrics(self, samples: list) -> dict[str, float | None]:
        return greedy_answers(self.engine, self.processor, self.cfg, samples, self.cfg.train.eval_batch).metrics(
            self.cfg)


def main(argv: list[str] | None = None) -> int:
    """`perception-r1 sft --config C [key.sub=value ...]`: print the warm start's directory (built or cached)."""
    parser = argparse.ArgumentParser(description="Supervised warm start of a Qwen2.5-VL on a task's answers")
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    base = prepare_model(cfg, Path(cfg.sft.output_dir), warm=False)
    print(warm_start(cfg, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
