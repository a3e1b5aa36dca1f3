"""Datasets by config: synthetic scenes for every task, or the public formats through orchestration/loaders.py."""
from __future__ import annotations

import logging
import random

from common.records import Sample
from orchestration import loaders
from orchestration.config import DataConfig, SplitFiles
from orchestration.synthetic import SYNTHETIC

log = logging.getLogger("perception_r1")

SOURCE_TASK = {"coco": "detection", "refcoco": "grounding", "grounding_jsonl": "grounding",
               "pixmo_count": "counting", "pageocr": "ocr"}


def _load_split(cfg: DataConfig, files: SplitFiles, which: str) -> list[Sample]:
    if not files.file or files.file.startswith("<"):
        raise loaders.DataError(f"data.{which}.file is not set for data.source={cfg.source!r}: "
                                f"point it at your copy of the dataset (got {files.file!r})")
    kw = {"max_bad_rows": cfg.max_bad_rows}
    if cfg.source == "coco":
        return loaders.load_coco(files.file, files.image_dir, **kw)
    if cfg.source == "refcoco":
        if not files.instances_file or not files.split:
            raise loaders.DataError(f"data.{which}.instances_file and data.{which}.split are needed for refcoco")
        return loaders.load_refcoco(files.file, files.instances_file, files.image_dir, files.split, **kw)
    if cfg.source == "grounding_jsonl":
        return loaders.load_grounding_jsonl(files.file, files.image_dir, **kw)
    if cfg.source == "pixmo_count":
        return loaders.load_pixmo_count(files.file, files.image_dir, **kw)
    if cfg.source == "pageocr":
        return loaders.load_pageocr(files.file, files.image_dir, **kw)
    raise ValueError(f"unknown data.source {cfg.source!r}")


def build_datasets(cfg: DataConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out eval) samples."""
    if cfg.source == "synthetic":
        make = SYNTHETIC[cfg.task]
        kw = {"objects": cfg.objects} if cfg.objects else {}
        if cfg.distinct != "pair":
            kw["distinct"] = cfg.distinct
        return (make(cfg.train_size or 2048, cfg.seed, cfg.image_size, "train", **kw),
                make(cfg.eval_size or 64, cfg.seed, cfg.image_size, "eval", **kw))
    if SOURCE_TASK[cfg.source] != cfg.task:
        raise ValueError(f"data.source={cfg.source!r} holds {SOURCE_TASK[cfg.source]} data, not data.task={cfg.task!r}")
    train = loaders.subset(_load_split(cfg, cfg.train, "train"), cfg.train_size, cfg.subset, cfg.seed)
    evaluation = loaders.subset(_load_split(cfg, cfg.eval, "eval"), cfg.eval_size, "first", cfg.seed)
    return train, evaluation


class PromptSampler:
    """Endless shuffled epochs over the training set, reproducible by seed; its position can be saved and restored
    exactly (`state` / `load_state`), and samples that turned out unusable are left out of later epochs."""

    def __init__(self, samples: list[Sample], seed: int):
        if not samples:
            raise ValueError("the training set is empty")
        self.samples, self.rng, self.order = samples, random.Random(seed), []
        self.excluded: set[int] = set()
        self._index = {s.id: i for i, s in enumerate(samples)}

    def next(self, n: int) -> list[Sample]:
        out = []
        while len(out) < n:
            if not self.order:
                if len(self.excluded) == len(self.samples):
                    raise ValueError("every training sample has been skipped as unusable")
                self.order = list(range(len(self.samples)))
                self.rng.shuffle(self.order)
            i = self.order.pop()
            if i not in self.excluded:
                out.append(self.samples[i])
        return out

    def exclude(self, sample_id: str) -> None:
        self.excluded.add(self._index[sample_id])

    def state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order), "excluded": sorted(self.excluded)}

    def load_state(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])
        self.excluded = set(state["excluded"])


class SkippedSamples:
    """Samples skipped when drawn (missing, unreadable or oversized image, prompt too long): logged with their
    origin, counted, and fatal past `limit` (data.max_bad_rows), naming where they came from."""

    def __init__(self, limit: int, count: int = 0):
        self.limit, self.count, self.first = limit, count, None

    def report(self, sample: Sample, reason: str) -> None:
        where = sample.origin or sample.id
        self.count += 1
        self.first = self.first or f"{where}: {reason}"
        log.warning("skipping sample %s: %s", where, reason)
        if self.count > self.limit:
            raise loaders.DataError(f"{self.count} samples skipped as unusable (data.max_bad_rows={self.limit}); "
                                    f"first: {self.first}; last: {where}: {reason}")
