"""Datasets by config: synthetic scenes for every task, or the public formats through orchestration/loaders.py."""
from __future__ import annotations

import random

from common.records import Sample
from orchestration import loaders
from orchestration.config import DataConfig, SplitFiles
from orchestration.synthetic import SYNTHETIC

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
        return (make(cfg.train_size or 2048, cfg.seed, cfg.image_size, "train"),
                make(cfg.eval_size or 64, cfg.seed, cfg.image_size, "eval"))
    if SOURCE_TASK[cfg.source] != cfg.task:
        raise ValueError(f"data.source={cfg.source!r} holds {SOURCE_TASK[cfg.source]} data, not data.task={cfg.task!r}")
    train = loaders.subset(_load_split(cfg, cfg.train, "train"), cfg.train_size, cfg.subset, cfg.seed)
    evaluation = loaders.subset(_load_split(cfg, cfg.eval, "eval"), cfg.eval_size, "first", cfg.seed)
    return train, evaluation


class PromptSampler:
    """Endless shuffled epochs over the training set, reproducible by seed."""

    def __init__(self, samples: list[Sample], seed: int):
        if not samples:
            raise ValueError("the training set is empty")
        self.samples, self.rng, self.order = samples, random.Random(seed), []

    def next(self, n: int) -> list[Sample]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.samples)))
                self.rng.shuffle(self.order)
            out.append(self.samples[self.order.pop()])
        return out
