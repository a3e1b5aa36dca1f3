"""Datasets by config: synthetic scenes for every task, or the public formats through orchestration/data/loaders.py."""
from __future__ import annotations

import logging
import random
from pathlib import Path

from common.records import Sample
from orchestration.data import loaders
from orchestration.config import DataConfig, SplitFiles
from orchestration.data.synthetic import SYNTHETIC

log = logging.getLogger("perception_r1")

SOURCE_TASK = {"coco": "detection", "refcoco": "grounding", "grounding_jsonl": "grounding",
               "pixmo_count": "counting", "pageocr": "ocr"}


# The file forms each source reads (orchestration/data/loaders.py); `auto` picks by suffix.
SOURCE_FORMATS = {"coco": ("json",), "refcoco": ("pickle", "parquet"), "grounding_jsonl": ("json",),
                  "pixmo_count": ("json", "parquet"), "pageocr": ("json", "parquet")}
SUFFIX_FORMAT = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".p": "pickle", ".pkl": "pickle",
                 ".pickle": "pickle"}


def split_format(cfg: DataConfig, files: SplitFiles, which: str) -> str:
    """The form of a split's file: `data.<which>.format`, or from its suffix (a folder or glob: parquet)."""
    allowed = SOURCE_FORMATS[cfg.source]
    fmt = files.format
    if fmt == "auto":
        path = Path(files.file)
        fmt = "parquet" if path.is_dir() or any(c in files.file for c in "*?[") else SUFFIX_FORMAT.get(
            path.suffix.lower())
        if fmt is None:
            raise loaders.DataError(f"data.{which}.file {files.file!r}: cannot tell its format from the suffix "
                                    f"{path.suffix!r}; data.source={cfg.source} reads {' or '.join(allowed)} "
                                    f"(set data.{which}.format)")
    if fmt not in allowed:
        raise loaders.DataError(f"data.{which}.file {files.file!r} is {fmt}, but data.source={cfg.source} reads "
                                f"{' or '.join(allowed)} (data.{which}.format)")
    return fmt


def _load_split(cfg: DataConfig, files: SplitFiles, which: str) -> list[Sample]:
    if not files.file or files.file.startswith("<"):
        raise loaders.DataError(f"data.{which}.file is not set for data.source={cfg.source!r}: "
                                f"point it at your copy of the dataset (got {files.file!r})")
    fmt = split_format(cfg, files, which)
    kw = {"max_bad_rows": cfg.max_bad_rows}
    if cfg.source == "coco":
        return loaders.load_coco(files.file, files.image_dir, **kw)
    if cfg.source == "refcoco":
        if fmt == "parquet":
            return loaders.load_refcoco_parquet(files.file, **kw)
        if not files.instances_file or not files.split:
            raise loaders.DataError(f"data.{which}.instances_file and data.{which}.split are needed for the refcoco "
                                    f"refs pickle")
        return loaders.load_refcoco(files.file, files.instances_file, files.image_dir, files.split, **kw)
    if cfg.source == "grounding_jsonl":
        return loaders.load_grounding_jsonl(files.file, files.image_dir, **kw)
    if cfg.source == "pixmo_count":
        return loaders.load_pixmo_count(files.file, files.image_dir, fmt=fmt, **kw)
    if cfg.source == "pageocr":
        return loaders.load_pageocr(files.file, files.image_dir, fmt=fmt, **kw)
    raise ValueError(f"unknown data.source {cfg.source!r}")


def build_datasets(cfg: DataConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out eval) samples."""
    return build_split(cfg, "train"), build_split(cfg, "eval")


def build_split(cfg: DataConfig, which: str) -> list[Sample]:
    """One split's samples (`which`: "train" or "eval"): synthetic scenes drawn by seed, or the public files of
    `data.<which>`, cut to `data.<which>_size` (the training subset as `data.subset` says, the eval set's first)."""
    size = cfg.train_size if which == "train" else cfg.eval_size
    if cfg.source == "synthetic":
        make = SYNTHETIC[cfg.task]
        kw = {"objects": cfg.objects} if cfg.objects else {}
        if cfg.distinct != "pair":
            kw["distinct"] = cfg.distinct
        return make(size or (2048 if which == "train" else 64), cfg.seed, cfg.image_size, which, **kw)
    if SOURCE_TASK[cfg.source] != cfg.task:
        raise ValueError(f"data.source={cfg.source!r} holds {SOURCE_TASK[cfg.source]} data, not data.task={cfg.task!r}")
    samples = _load_split(cfg, cfg.train if which == "train" else cfg.eval, which)
    return loaders.subset(samples, size, cfg.subset if which == "train" else "first", cfg.seed)


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
        """The next `n` samples of the endless shuffled epochs (excluded ones left out)."""
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
        """Leave `sample_id` out of later epochs (it could not be prompted)."""
        self.excluded.add(self._index[sample_id])

    def state(self) -> dict:
        """The sampler's position and RNG, JSON-serialisable, for a checkpoint."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order), "excluded": sorted(self.excluded)}

    def load_state(self, state: dict) -> None:
        """Continue exactly where `state` was taken."""
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
        """Count and log one skipped sample; DataError past the limit, naming the first and the last."""
        where = sample.origin or sample.id
        self.count += 1
        self.first = self.first or f"{where}: {reason}"
        log.warning("skipping sample %s: %s", where, reason)
        if self.count > self.limit:
            raise loaders.DataError(f"{self.count} samples skipped as unusable (data.max_bad_rows={self.limit}); "
                                    f"first: {self.first}; last: {where}: {reason}")
