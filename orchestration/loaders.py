"""Loaders for the public dataset formats (SPEC.md), producing `Sample`s with boxes in original-image pixels.

A corrupt row is reported with its file and row number and skipped, counted; past `max_bad_rows` the load fails.
A missing file fails at once, naming the path. Images are not opened here (decoded lazily by `Sample.load_image`).
"""
from __future__ import annotations

import json
import logging
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from common.records import Sample
from orchestration.prompts import counting_prompt, detection_prompt, grounding_prompt, ocr_prompt

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset file is missing, unreadable, or has more corrupt rows than allowed."""


@dataclass
class BadRows:
    """Counts corrupt rows of one file; raises once there are more than `limit`."""

    path: Path
    limit: int
    messages: list[str] = field(default_factory=list)

    def report(self, row: int, reason: str) -> None:
        msg = f"{self.path}:{row}: {reason}"
        self.messages.append(msg)
        log.warning("skipping corrupt row %s", msg)
        if len(self.messages) > self.limit:
            raise DataError(f"{len(self.messages)} corrupt rows in {self.path} (max_bad_rows={self.limit}); "
                            f"first: {self.messages[0]}; last: {msg}")


def _require(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {str(p)!r} does not exist")
    return p


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON {str(path)!r}: {exc}") from None


def _read_rows(path: Path, bad: BadRows) -> list[tuple[int, object]]:
    """(row number, row) of a .jsonl file (one JSON per line, numbered from 1) or a .json list (from 0)."""
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except ValueError as exc:
                bad.report(i, f"invalid JSON ({exc})")
        return rows
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{str(path)!r} must hold a JSON list of rows")
    return list(enumerate(data))


ROW_ERRORS = (KeyError, TypeError, ValueError, IndexError)


def _load_rows(path: str | Path, what: str, max_bad_rows: int, make_sample) -> list[Sample]:
    """`make_sample(path, row_no, row)` over every row of a .jsonl/.json file; a row it fails on is reported."""
    p = _require(path, what)
    bad = BadRows(p, max_bad_rows)
    samples = []
    for row_no, row in _read_rows(p, bad):
        try:
            sample = make_sample(p, row_no, row)
            sample.origin = f"{p}:{row_no}"
            samples.append(sample)
        except ROW_ERRORS as exc:
            bad.report(row_no, repr(exc))
    return samples


def _xywh_to_xyxy(b) -> list[float]:
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b):
        raise ValueError(f"bbox must be 4 numbers, got {b!r}")
    x, y, w, h = (float(v) for v in b)
    if w < 0 or h < 0:
        raise ValueError(f"bbox has negative size {b!r}")
    return [x, y, x + w, y + h]


def subset(samples: list[Sample], limit: int | None, mode: str = "first", seed: int = 0) -> list[Sample]:
    """The paper trains on subsets (RefCOCO 5k of 320k...): the first N, or N drawn at random by seed."""
    if limit is None or limit >= len(samples):
        return samples
    if mode == "first":
        return samples[:limit]
    if mode == "random":
        return random.Random(seed).sample(samples, limit)
    raise ValueError(f"subset mode must be 'first' or 'random', got {mode!r}")


def load_coco(annotation_file: str | Path, image_dir: str | Path, *, max_bad_rows: int = 100) -> list[Sample]:
    """COCO 2017 `instances_*.json` + image folder -> detection samples (crowd boxes left out, as COCOeval does)."""
    path = _require(annotation_file, "COCO annotation file")
    _require(image_dir, "COCO image folder")
    data = _read_json(path)
    bad = BadRows(path, max_bad_rows)
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    if not cats:
        raise DataError(f"{str(path)!r} has no categories")
    names = [cats[k] for k in sorted(cats)]
    by_image: dict[int, list] = defaultdict(list)
    for i, ann in enumerate(data.get("annotations", [])):
        try:
            if ann.get("iscrowd", 0):
                continue
            if ann["category_id"] not in cats:
                raise ValueError(f"unknown category_id {ann['category_id']!r}")
            by_image[ann["image_id"]].append((_xywh_to_xyxy(ann["bbox"]), cats[ann["category_id"]]))
        except ROW_ERRORS as exc:
            bad.report(i, f"annotation: {exc!r}")
    samples = []
    for i, img in enumerate(data.get("images", [])):
        try:
            objs = by_image.get(img["id"], [])
            samples.append(Sample(
                id=f"coco-{img['id']}", task="detection", image=str(Path(image_dir) / img["file_name"]),
                question=detection_prompt(names), image_size=(int(img["width"]), int(img["height"])),
                origin=f"{path}:images[{i}]",
                solution={"boxes": [b for b, _ in objs], "labels": [n for _, n in objs], "categories": names,
                          "image_id": img["id"]},
            ))
        except ROW_ERRORS as exc:
            bad.report(i, f"image: {exc!r}")
    return samples


def load_refcoco(refs_file: str | Path, instances_file: str | Path, image_dir: str | Path, split: str, *,
                 max_bad_rows: int = 100) -> list[Sample]:
    """The classic `refs(unc).p` / `refs(umd).p` pickle + `instances.json`: one grounding sample per sentence."""
    refs_path = _require(refs_file, "RefCOCO refs pickle")
    inst_path = _require(instances_file, "RefCOCO instances file")
    try:
        with open(refs_path, "rb") as f:
            refs = pickle.load(f)  # noqa: S301 - the dataset's own format; load only files you trust
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read refs pickle {str(refs_path)!r}: {exc}") from None
    inst = _read_json(inst_path)
    anns = {a["id"]: a for a in inst.get("annotations", [])}
    images = {im["id"]: im for im in inst.get("images", [])}
    bad = BadRows(refs_path, max_bad_rows)
    samples = []
    for i, ref in enumerate(refs):
        try:
            if ref["split"] != split:
                continue
            ann = anns[ref["ann_id"]]
            img = images[ref["image_id"]]
            box = _xywh_to_xyxy(ann["bbox"])
            for j, sent in enumerate(ref["sentences"]):
                text = sent["sent"] if isinstance(sent, dict) else str(sent)
                samples.append(Sample(
                    id=f"refcoco-{ref['ref_id']}-{j}", task="grounding", image=str(Path(image_dir) / img["file_name"]),
                    question=grounding_prompt(text), solution={"box": box},
                    image_size=(int(img["width"]), int(img["height"])), origin=f"{refs_path}:refs[{i}]",
                ))
        except ROW_ERRORS as exc:
            bad.report(i, f"ref: {exc!r}")
    return samples


def load_grounding_jsonl(path: str | Path, image_root: str | Path = ".", *, max_bad_rows: int = 100) -> list[Sample]:
    """The common jsonl form `{"image": path, "problem": expression, "solution": [x1, y1, x2, y2]}` (pixels)."""

    def make(p: Path, row_no: int, row) -> Sample:
        box = row["solution"]
        if isinstance(box, str):
            box = json.loads(box)
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ValueError(f"solution must be [x1, y1, x2, y2], got {row['solution']!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"solution box is inverted: {box!r}")
        return Sample(id=f"{p.stem}-{row_no}", task="grounding", image=str(Path(image_root) / row["image"]),
                      question=grounding_prompt(str(row["problem"])), solution={"box": [float(v) for v in box]})

    return _load_rows(path, "grounding jsonl", max_bad_rows, make)


def load_pixmo_count(path: str | Path, image_root: str | Path = ".", *, max_bad_rows: int = 100) -> list[Sample]:
    """PixMo-Count rows: a local `image` path, `label`, `count` and `points` ([x, y] or {"x", "y"}, pixels)."""

    def make(p: Path, row_no: int, row) -> Sample:
        image = row.get("image") or row.get("image_path")
        if not image:
            raise ValueError("no local 'image' path (download the images first; URLs are not fetched)")
        points = [[float(q["x"]), float(q["y"])] if isinstance(q, dict) else [float(q[0]), float(q[1])]
                  for q in row["points"]]
        if int(row["count"]) != len(points):
            raise ValueError(f"count {row['count']} != {len(points)} points")
        return Sample(id=f"{p.stem}-{row_no}", task="counting", image=str(Path(image_root) / image),
                      question=counting_prompt(str(row["label"])), solution={"points": points, "count": len(points)})

    return _load_rows(path, "PixMo-Count file", max_bad_rows, make)


def load_pageocr(path: str | Path, image_root: str | Path = ".", *, max_bad_rows: int = 100) -> list[Sample]:
    """PageOCR rows `{"image": ..., "conversations": [{"from": "human", ...}, {"from": "gpt", "value": text}]}`."""

    def make(p: Path, row_no: int, row) -> Sample:
        answers = [c["value"] for c in row["conversations"] if c.get("from") == "gpt"]
        if len(answers) != 1 or not isinstance(answers[0], str):
            raise ValueError("needs exactly one 'gpt' turn with the page text")
        return Sample(id=f"{p.stem}-{row_no}", task="ocr", image=str(Path(image_root) / row["image"]),
                      question=ocr_prompt(), solution={"text": answers[0]})

    return _load_rows(path, "PageOCR file", max_bad_rows, make)
