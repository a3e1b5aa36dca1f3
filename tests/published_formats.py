"""Small files in the datasets' published formats, written by the tests (never downloaded): the hub's parquet with
embedded image bytes (written with `datasets`, as the hub's own files are), COCO's instances JSON, the RefCOCO refs
pickle, json/jsonl rows. Images are drawn: one coloured rectangle per object on a grey page."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (160, 120)


def draw(boxes_xywh, seed: int, size=SIZE, text: str | None = None) -> bytes:
    """A PNG with a filled rectangle per [x, y, w, h] box (or `text` written on it)."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (200, 200, 200))
    pen = ImageDraw.Draw(image)
    for x, y, w, h in boxes_xywh:
        pen.rectangle([x, y, x + w - 1, y + h - 1], fill=tuple(rng.randint(0, 150) for _ in range(3)))
    if text is not None:
        pen.text((4, size[1] // 3), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def boxes(n: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[float(rng.randint(0, 100)), float(rng.randint(0, 70)), float(rng.randint(10, 50)),
             float(rng.randint(10, 40))] for _ in range(n)]


def write_parquet(rows: list[dict], path: Path, image_column: bool = True) -> Path:
    """Rows as the hub stores them: `datasets` with the image column as an Image feature (embedded bytes)."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if image_column:
        ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(path))
    return path


def refcoco_hub(path: Path, n: int) -> list[dict]:
    """lmms-lab/RefCOCO's columns: question_id, image, question, answer (expressions), segmentation, bbox (xywh),
    iscrowd, file_name. Returns the rows written (image bytes included)."""
    rows = []
    for i in range(n):
        [box] = boxes(1, i)
        rows.append({"question_id": f"q{i}", "image": {"bytes": draw([box], i), "path": None},
                     "question": "Please carefully observe the area circled in the image and come up with a "
                                 "caption for the area.",
                     "answer": [f"thing number {i}", f"the box {i}"], "segmentation": [box[0], box[1]],
                     "bbox": box, "iscrowd": 0, "file_name": f"COCO_train2014_{i:012d}.jpg"})
    write_parquet(rows, path)
    return rows


def refcoco_release(root: Path, rows: list[dict]) -> tuple[Path, Path, Path]:
    """The same objects as the original release: refs(unc).p + instances.json + image files."""
    images = root / "train2014"
    images.mkdir(parents=True, exist_ok=True)
    refs, inst = [], {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, row in enumerate(rows):
        (images / row["file_name"]).write_bytes(row["image"]["bytes"])
        inst["images"].append({"id": i, "file_name": row["file_name"], "width": SIZE[0], "height": SIZE[1]})
        inst["annotations"].append({"id": 100 + i, "image_id": i, "category_id": 1, "bbox": row["bbox"]})
        refs.append({"ref_id": row["question_id"], "ann_id": 100 + i, "image_id": i, "split": "val",
                     "sentences": [{"sent": s} for s in row["answer"]]})
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs))
    (root / "instances.json").write_text(json.dumps(inst))
    return root / "refs(unc).p", root / "instances.json", images


def pixmo_hub(path: Path, image_dir: Path, n: int, with_points: bool = True) -> list[dict]:
    """allenai/pixmo-count's columns: image_url, image_sha256, count, label, points (a list of {x, y}); the
    validation/test form has no points. Images are downloaded separately: written to `image_dir` as the download
    tool names them (<sha256>.png), and served at file:// URLs."""
    image_dir.mkdir(parents=True, exist_ok=True)
    source = image_dir.parent / "served"
    source.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        count = 1 + i % 4
        dots = [[float(10 + 30 * k), float(20 + 10 * (i % 5))] for k in range(count)]
        data = draw([[x - 4, y - 4, 8, 8] for x, y in dots], i)
        sha = hashlib.sha256(data).hexdigest()
        (source / f"img{i}.png").write_bytes(data)
        row = {"image_url": (source / f"img{i}.png").as_uri(), "image_sha256": sha, "count": count, "label": "dot"}
        if with_points:
            row["points"] = [{"x": x, "y": y} for x, y in dots]
        rows.append(row)
    write_parquet(rows, path, image_column=False)
    return rows


def coco_instances(path: Path, image_dir: Path, n: int) -> dict:
    """COCO 2017 instances JSON (boxes xywh, category ids 1-90) and its image folder."""
    image_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]}
    for i in range(n):
        objs = boxes(1 + i % 3, i)
        (image_dir / f"{i:012d}.jpg").write_bytes(draw(objs, i))
        data["images"].append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": SIZE[0], "height": SIZE[1]})
        for k, b in enumerate(objs):
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i + 1, "iscrowd": 0,
                                        "category_id": (1, 18, 90)[k % 3], "bbox": b, "area": b[2] * b[3]})
    path.write_text(json.dumps(data))
    return data


PAGES = ["The quick brown fox jumps over the lazy dog.", "今天天气很好，我们一起去公园散步。", "Page two: 42 apples."]


def pageocr_rows(path: Path, image_dir: Path, n: int) -> list[dict]:
    """Page-OCR conversation rows (English and Chinese pages) and their images."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = PAGES[i % len(PAGES)]
        (image_dir / f"page{i}.png").write_bytes(draw([], i, size=(224, 56), text=text.encode("ascii", "replace")
                                                       .decode()))
        rows.append({"image": f"page{i}.png", "conversations": [{"from": "human", "value": "<image>\nOCR this image."},
                                                                 {"from": "gpt", "value": text}]})
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return rows
