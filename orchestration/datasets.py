"""Datasets by config: synthetic scenes now; the public-format loaders plug in here."""
from __future__ import annotations

import random

from common.records import Sample
from orchestration.config import DataConfig
from orchestration.synthetic import colour_samples


def build_datasets(cfg: DataConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out eval) samples."""
    if cfg.source == "synthetic" and cfg.task == "colour":
        return (colour_samples(cfg.train_size, cfg.seed, cfg.image_size, "train"),
                colour_samples(cfg.eval_size, cfg.seed, cfg.image_size, "eval"))
    raise ValueError(f"no dataset for data.task={cfg.task!r} with data.source={cfg.source!r}")


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
