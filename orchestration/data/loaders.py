"""Loaders for the public dataset formats (SPEC.md), producing `Sample`s with boxes in original-image pixels.

Each source reads the forms users download: the original releases (COCO instances JSON, the RefCOCO refs pickle +
instances JSON, json/jsonl rows) and the Hugging Face hub's parquet files (lmms-lab RefCOCO/+/g, allenai
PixMo-Count, page-OCR parquet with embedded images), read with `datasets`. `format` (`data.<split>.format`) picks
one, or `auto` picks by the file's suffix; a file of another form gets one error naming the file and the field.

A corrupt row is reported with its file and row number and skipped, counted; past `max_bad_rows` the load fails.
A missing file fails at once, naming the path. Images are not decoded here (`Sample.load_image` does, when drawn);
parquet images stay in the memory-mapped table until then.
"""
from __future__ import annotations

import glob
import json
import logging
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common.records import Sample
from orchestration.data.prompts import counting_prompt, detection_prompt, grounding_prompt, ocr_prompt

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
        """Log one corrupt row as file:row: reason; DataError past the limit."""
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
    if not isinstance(refs, list):
        raise DataError(f"refs pickle {str(refs_path)!r} must hold a list of refs, got {type(refs).__name__}")
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


def load_refcoco_parquet(files: str | Path, *, max_bad_rows: int = 100) -> list[Sample]:
    """RefCOCO/+/g as on the hub (lmms-lab): `question_id`, `image` (embedded), `answer` (the object's referring
    expressions), `bbox` (COCO [x, y, w, h], pixels), `file_name`; one grounding sample per expression. The
    `question` column is lmms-eval's captioning prompt, not used. One split per file (val, test, testA, testB)."""
    table = read_table(files, "RefCOCO parquet", ("question_id", "image", "answer", "bbox"))
    images = table.image_column("image")

    def make(row_no: int, row) -> list[Sample]:
        box = _xywh_to_xyxy(row["bbox"])
        answers = [row["answer"]] if isinstance(row["answer"], str) else row["answer"]
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"answer must be a list of referring expressions, got {row['answer']!r}")
        return [Sample(id=f"refcoco-{row['question_id']}-{j}", task="grounding", image=TableImage(images, row_no),
                       question=grounding_prompt(text.strip()), solution={"box": box})
                for j, text in enumerate(answers)]

    return table.samples(max_bad_rows, make)


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


def pixmo_points(value) -> list[list[float]] | None:
    """PixMo-Count's `points` in any form it arrives in: a list of `{"x", "y"}` (the hub's schema, as pyarrow
    reads it), one `{"x": [...], "y": [...]}` (as `datasets` reads a sequence of structs), a list of [x, y] pairs;
    None where the row has none (the validation and test splits)."""
    if value is None:
        return None
    if isinstance(value, dict):
        xs, ys = value["x"], value["y"]
        if len(xs) != len(ys):
            raise ValueError(f"points has {len(xs)} x but {len(ys)} y values")
        return [[float(x), float(y)] for x, y in zip(xs, ys)]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"points must be a list of {{x, y}}, one {{x: [...], y: [...]}} or [x, y] pairs, "
                         f"got {type(value).__name__}")
    return [[float(q["x"]), float(q["y"])] if isinstance(q, dict) else [float(q[0]), float(q[1])] for q in value]


class ImageFolder:
    """Downloaded images in one folder, found by a row's local path, its SHA-256 (the file's stem, any suffix:
    what `perception-r1 download-images` writes), or its URL's file name."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._names: dict[str, str] | None = None

    def find(self, row: dict) -> str:
        """The local path of a row's image (ValueError naming the hash, the URL and the folder where it is missing)."""
        local = row.get("image") or row.get("image_path")
        if isinstance(local, str) and local:
            return str(self.root / local)
        url, sha = row.get("image_url"), row.get("image_sha256")
        if not url and not sha:
            raise ValueError("no image: needs 'image' (a local path) or 'image_url' + 'image_sha256'")
        if self._names is None:
            self._names = {}
            for f in (self.root.iterdir() if self.root.is_dir() else ()):
                self._names.setdefault(f.stem, f.name)
                self._names.setdefault(f.name, f.name)
        for key in (sha, Path(urlparse(url).path).name if url else None):
            if key and key in self._names:
                return str(self.root / self._names[key])
        raise ValueError(f"image {sha or url} (from {url}) is not in {str(self.root)!r}: download the images once "
                         f"with `perception-r1 download-images --file <rows> --out {self.root}`")


def load_pixmo_count(path: str | Path, image_root: str | Path = ".", *, fmt: str = "json",
                     max_bad_rows: int = 100) -> list[Sample]:
    """PixMo-Count: json/jsonl rows or the hub's parquet (allenai: `image_url`, `image_sha256`, `count`, `label`,
    `points` in pixels). Images come from `image_root` (`ImageFolder`). A row without points (the validation and
    test splits, 540 rows each) is an eval row whose truth is `count`; where both are given they must agree."""
    folder = ImageFolder(image_root)

    def make(name: str, row_no: int, row) -> Sample:
        points = pixmo_points(row.get("points"))
        count = row.get("count")
        if points is None and count is None:
            raise ValueError("neither points nor count")
        if points is not None and count is not None and int(count) != len(points):
            raise ValueError(f"count {count} != {len(points)} points")
        return Sample(id=f"{Path(name).stem}-{row_no}", task="counting", image=folder.find(row),
                      question=counting_prompt(str(row["label"])),
                      solution={"points": points, "count": len(points) if points is not None else int(count)})

    if fmt == "parquet":
        table = read_table(path, "PixMo-Count parquet", ("label",), any_of=("count", "points"))
        return table.samples(max_bad_rows, lambda i, row: make(table.name, i, row))
    return _load_rows(path, "PixMo-Count file", max_bad_rows, lambda p, i, row: make(p.name, i, row))


def load_pageocr(path: str | Path, image_root: str | Path = ".", *, fmt: str = "json",
                 max_bad_rows: int = 100) -> list[Sample]:
    """Page OCR (English or Chinese pages): json rows `{"image": ..., "conversations": [{"from": "human", ...},
    {"from": "gpt", "value": text}]}`, or parquet with an `image` (embedded or a path under `image_root`) and the
    page text in `text` / `answer` or a `conversations` column."""

    def page_text(row) -> str:
        if row.get("conversations") is not None:
            answers = [c["value"] for c in row["conversations"] if c.get("from") == "gpt"]
            if len(answers) != 1 or not isinstance(answers[0], str):
                raise ValueError("needs exactly one 'gpt' turn with the page text")
            return answers[0]
        for key in ("text", "answer"):
            if isinstance(row.get(key), str):
                return row[key]
        raise ValueError("no page text: needs 'conversations' with one 'gpt' turn, or 'text'")

    if fmt == "parquet":
        table = read_table(path, "page-OCR parquet", ("image",), any_of=("text", "answer", "conversations"))
        images = table.image_column("image", image_root)
        return table.samples(max_bad_rows, lambda i, row: Sample(
            id=f"{Path(table.name).stem}-{i}", task="ocr", image=TableImage(images, i), question=ocr_prompt(),
            solution={"text": page_text(row)}))

    def make(p: Path, row_no: int, row) -> Sample:
        return Sample(id=f"{p.stem}-{row_no}", task="ocr", image=str(Path(image_root) / row["image"]),
                      question=ocr_prompt(), solution={"text": page_text(row)})

    return _load_rows(path, "page-OCR file", max_bad_rows, make)


# ---- parquet through `datasets` --------------------------------------------------------------------------------

def parquet_files(spec: str | Path, what: str) -> list[str]:
    """The parquet files `spec` names: one file, a folder of them (a hub snapshot's `data/`), or a glob pattern
    (`data/val-*.parquet`)."""
    text, p = str(spec), Path(spec)
    if p.is_dir():
        files = sorted(str(f) for f in p.glob("*.parquet"))
        if not files:
            raise DataError(f"{what} folder {text!r} holds no .parquet file")
        return files
    if any(c in text for c in "*?["):
        files = sorted(glob.glob(text))
        if not files:
            raise DataError(f"{what} pattern {text!r} matches no file")
        return files
    return [str(_require(p, what))]


@dataclass
class Table:
    """A parquet split read with `datasets` (memory-mapped Arrow): its name for messages, and its rows."""

    name: str
    data: Any  # datasets.Dataset

    def samples(self, max_bad_rows: int, make) -> list[Sample]:
        """`make(row_no, row)` (a Sample or a list of them) over every row, the image column left out; a row it
        fails on is reported by file and row (`BadRows`)."""
        bad = BadRows(Path(self.name), max_bad_rows)
        meta = self.data.remove_columns([c for c in ("image",) if c in self.data.column_names])
        out = []
        for row_no, row in enumerate(meta):
            try:
                made = make(row_no, row)
            except ROW_ERRORS as exc:
                bad.report(row_no, repr(exc))
                continue
            for sample in made if isinstance(made, list) else [made]:
                sample.origin = f"{self.name}:{row_no}"
                out.append(sample)
        return out

    def image_column(self, column: str, image_root: str | Path | None = None) -> ImageColumn:
        """The `column` of images, undecoded (bytes or paths under `image_root`)."""
        import datasets

        images = self.data.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        return ImageColumn(images, column, Path(image_root) if image_root is not None else None)


@dataclass(frozen=True)
class ImageColumn:
    """A table's image column, undecoded: each cell holds embedded bytes or a path (under `root`)."""

    data: Any
    column: str
    root: Path | None

    def read(self, row: int) -> bytes | str:
        """The image of the row: embedded bytes, or its path."""
        cell = self.data[row][self.column] or {}
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            return str((self.root or Path(".")) / cell["path"])
        raise ValueError(f"row {row} has neither image bytes nor an image path")


@dataclass(frozen=True)
class TableImage:
    """An image inside a parquet table (the hub's embedded bytes), read only when its sample is drawn."""

    images: ImageColumn
    row: int

    def read(self) -> bytes | str:
        """The image of the row: embedded bytes, or its path."""
        return self.images.read(self.row)

    def __str__(self) -> str:
        return f"<image of row {self.row}>"


def read_table(spec: str | Path, what: str, columns: tuple[str, ...], any_of: tuple[str, ...] = ()) -> Table:
    """Parquet file(s) read with `datasets`; a file that is not parquet, or lacks a column the format needs, fails
    naming the file and the column."""
    import datasets

    files = parquet_files(spec, what)
    datasets.disable_progress_bars()
    try:
        data = datasets.Dataset.from_parquet(files)
    except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises, the message names the file
        raise DataError(f"cannot read {what} {str(spec)!r} as parquet: {type(exc).__name__}: {exc}") from None
    name = files[0] if len(files) == 1 else str(spec)
    missing = [c for c in columns if c not in data.column_names]
    if any_of and not any(c in data.column_names for c in any_of):
        missing.append(" or ".join(any_of))
    if missing:
        raise DataError(f"{what} {name!r} has no column {', '.join(repr(m) for m in missing)} (its columns: "
                        f"{', '.join(data.column_names)})")
    return Table(name, data)
