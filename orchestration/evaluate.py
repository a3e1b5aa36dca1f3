"""Evaluation: greedy decoding of a checkpoint over a dataset, the task's metrics, a JSON report, example images.

    perception-r1 eval --config C --checkpoint P [key.sub=value ...]
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from common.progress import progress
from common.records import RewardContext, SamplingParams, Sample
from orchestration.config import RunConfig
from orchestration.data.encode import BadSample, encode_sample
from reward_service.boxes import parse_boxes, to_original_space
from reward_service.config import RewardOptions
from reward_service.counting import count_boxes, counting_metrics
from reward_service.detection import answer_to_coco, coco_ap
from reward_service.grounding import grounding_metrics
from reward_service.ocr import ocr_metrics
from reward_service.thinking import answer_part
from reward_service.worker import score_one

TRUE, PRED = (0, 200, 0), (230, 0, 0)
log = logging.getLogger("perception_r1")

# The number each task is judged by (SPEC): grounding Acc@0.5, counting exact-count accuracy, OCR edit distance
# (lower is better), detection COCO AP50.
HEADLINE = {"grounding": "acc@0.5", "counting": "count_acc", "ocr": "edit_distance", "detection": "AP50",
            "colour": "accuracy"}
LOWER_IS_BETTER = {"edit_distance"}


def reaches(metric: str, value: float | None, target: float) -> bool:
    """Whether `value` of `metric` is at least as good as `target` (at or below it for a lower-is-better metric);
    an undefined value (None) reaches nothing."""
    if value is None:
        return False
    return value <= target if metric in LOWER_IS_BETTER else value >= target


def official_coco_gt(annotation_file: str, samples: list[Sample]) -> dict:
    """The original annotation file limited to the evaluated images: crowd regions stay (COCOeval ignores
    detections on them), ids stay COCO's own."""
    data = json.loads(Path(annotation_file).read_text())
    keep = {s.solution["image_id"] for s in samples}
    return {"images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
            "categories": data["categories"]}


def task_metrics(task: str, samples: list[Sample], answers: list[str], contexts: list[RewardContext],
                 scored, opts: RewardOptions, coco_gt: dict | None = None) -> dict[str, float]:
    """The paper's metrics for the task, computed from the greedy answers."""
    if task == "grounding":
        return grounding_metrics([s.components.get("iou", 0.0) for s in scored])
    if task == "counting":
        return counting_metrics([_per_answer(count_boxes, None, a, opts.box_convention) for a in answers],
                                [s.solution["count"] for s in samples])
    if task == "ocr":
        return ocr_metrics(answers, [s.solution["text"] for s in samples])
    if task == "detection":
        if coco_gt is not None:
            gt, ids = coco_gt, {c["name"]: c["id"] for c in coco_gt["categories"]}
            image_ids = [s.solution["image_id"] for s in samples]
        else:  # build a COCO-format ground truth from the samples (synthetic scenes, other sources)
            names = sorted({c for s in samples for c in (opts.categories or s.solution["categories"])})
            ids = {n: i + 1 for i, n in enumerate(names)}
            gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in ids.items()]}
            image_ids = list(range(1, len(samples) + 1))
            for k, (s, ctx) in zip(image_ids, zip(samples, contexts)):
                gt["images"].append({"id": k, "width": ctx.orig_size[0], "height": ctx.orig_size[1]})
                for b, label in zip(s.solution["boxes"], s.solution["labels"]):
                    w, h = b[2] - b[0], b[3] - b[1]
                    gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": k, "iscrowd": 0,
                                              "category_id": ids[label], "bbox": [b[0], b[1], w, h], "area": w * h})
        results = []
        for k, s, a, ctx in zip(image_ids, samples, answers, contexts):
            results += _per_answer(answer_to_coco, [], a, opts.categories or s.solution["categories"], ids,
                                   convention=opts.box_convention, scale=ctx.scale, orig_size=ctx.orig_size,
                                   image_id=k)
        return coco_ap(gt, results)
    if task == "colour":
        return {"accuracy": float(np.mean([s.components.get("accuracy", 0.0) for s in scored]))}
    raise ValueError(f"no metrics for task {task!r}")


def _per_answer(fn, wrong, *args, **kwargs):
    """One answer's step of a metric; should it raise, the answer counts as wrong (`wrong`) and eval goes on."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the recovery: this answer is scored as wrong
        log.warning("answer scored as wrong: %s raised %s: %s", fn.__name__, type(exc).__name__, exc)
        return wrong


def true_boxes(sample: Sample) -> list[list[float]]:
    """The sample's true boxes in original pixels for drawing (a counting point as a 4-pixel box)."""
    sol = sample.solution
    if sample.task == "grounding":
        return [sol["box"]]
    if sample.task == "detection":
        return sol["boxes"]
    if sample.task == "counting":
        return [[x - 2, y - 2, x + 2, y + 2] for x, y in sol["points"] or ()]
    return []


def draw_example(sample: Sample, answer: str, ctx: RewardContext, opts: RewardOptions, path: Path | None):
    """The original image with true boxes in green and predicted ones in red (saved to `path` when given)."""
    image = sample.load_image()
    draw = ImageDraw.Draw(image)
    for b in true_boxes(sample):
        draw.rectangle(b, outline=TRUE, width=2)
    for b in _per_answer(parse_boxes, None, answer, opts.box_convention) or []:
        if b is not None and b.valid:
            draw.rectangle(to_original_space(b.as_list(), opts.box_convention, ctx.scale, ctx.orig_size),
                           outline=PRED, width=2)
    if path is not None:
        image.save(path)
    return image


@dataclass
class GreedyAnswers:
    """A greedy pass over samples: the ones that could be prompted with their answers (the <answer> part), reward
    contexts and scored rollouts, in order, and the ones left out (`{"id", "origin", "reason"}`)."""

    samples: list[Sample] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    contexts: list[RewardContext] = field(default_factory=list)
    scored: list = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def metrics(self, cfg: RunConfig, coco_gt: dict | None = None) -> dict[str, float]:
        """The task's metrics (`task_metrics`) and `reward_mean`."""
        if not self.samples:
            raise ValueError(f"no usable sample to evaluate ({len(self.skipped)} left out)")
        out = task_metrics(cfg.data.task, self.samples, self.answers, self.contexts, self.scored,
                           cfg.reward.options, coco_gt)
        out["reward_mean"] = float(np.mean([s.reward for s in self.scored]))
        return out


def greedy_answers(engine, processor, cfg: RunConfig, samples: list[Sample], batch: int,
                   show: bool = False) -> GreedyAnswers:
    """Greedy answers of an in-process engine for `samples`, `batch` prompts per generate call, each scored with
    the task reward. A sample that cannot be prompted is logged and listed in `skipped`, never a crash."""
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens)
    out = GreedyAnswers()
    starts = range(0, len(samples), batch)
    for i in progress(starts, "eval", unit="batch") if show else starts:
        kept = []
        for s in samples[i : i + batch]:
            try:
                kept.append((s, *encode_sample(processor, cfg, s)))
            except BadSample as exc:
                log.warning("eval: skipping sample %s: %s", s.origin or s.id, exc)
                out.skipped.append({"id": s.id, "origin": s.origin, "reason": str(exc)})
        if not kept:
            continue
        groups = engine.generate([p for _, p, _ in kept], greedy)
        for (s, _, ctx), [rollout] in zip(kept, groups, strict=True):
            out.samples.append(s)
            out.answers.append(answer_part(rollout.response_text, cfg.reward.options.thinking))
            out.contexts.append(ctx)
            out.scored.append(score_one(rollout, ctx, cfg.reward.options))
    return out


def run_eval(cfg: RunConfig, checkpoint: str, out_dir: str | Path, num_examples: int = 4, tracker=None) -> dict:
    """Greedy answers for the eval split (`train.eval_batch` prompts per generate call); writes `report.json` and
    example PNGs to out_dir; returns the report."""
    from transformers import AutoProcessor

    from orchestration.data.datasets import build_split

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = cfg.reward.options
    processor = AutoProcessor.from_pretrained(checkpoint)
    samples = build_split(cfg.data, "eval")
    engine = _engine(cfg, checkpoint)
    t0 = time.perf_counter()
    done = greedy_answers(engine, processor, cfg, samples, cfg.train.eval_batch, show=True)
    elapsed = time.perf_counter() - t0
    metrics = done.metrics(cfg, coco_gt=official_coco_gt(cfg.data.eval.file, done.samples)
                           if cfg.data.source == "coco" else None)
    reward_mean = metrics.pop("reward_mean")
    shown = list(zip(done.samples, done.answers, done.contexts))[:num_examples]
    report = {
        "task": cfg.data.task, "checkpoint": str(checkpoint), "num_samples": len(done.samples),
        "skipped": done.skipped, "metrics": metrics, "reward_mean": reward_mean,
        "reward_errors": sum(s.error is not None for s in done.scored), "seconds": elapsed,
        "examples": [{"id": s.id, "question": s.question, "answer": a, "solution": s.solution} for s, a, _ in shown],
    }
    images = [draw_example(s, a, c, opts, out / f"example_{i}.png") for i, (s, a, c) in enumerate(shown)]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if tracker is not None:
        tracker.log({f"eval/{k}": v for k, v in report["metrics"].items()}, step=0)
        tracker.log_images("eval/examples", images, [r["answer"][:200] for r in report["examples"]], step=0)
    return report


def _engine(cfg: RunConfig, checkpoint: str):
    if cfg.rollout.backend == "vllm":
        from rollout_workers.vllm_engine import VLLMEngine

        return VLLMEngine(checkpoint, dtype=cfg.rollout.dtype, allowed_tokens=cfg.rollout.allowed_tokens,
                          gpu_memory_utilization=cfg.rollout.gpu_memory_utilization)
    from rollout_workers.transformers_engine import TransformersEngine

    return TransformersEngine(checkpoint, device=cfg.rollout.device, dtype=cfg.rollout.dtype,
                              allowed_tokens=cfg.rollout.allowed_tokens)
