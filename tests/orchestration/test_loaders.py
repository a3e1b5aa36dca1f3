"""Each loader reads a small file in its public format; corrupt rows are named by file and row, and counted."""
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from orchestration.config import load_config
from orchestration.datasets import build_datasets
from orchestration.loaders import (DataError, load_coco, load_grounding_jsonl, load_pageocr, load_pixmo_count,
                                   load_refcoco, subset)

COCO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "coco_det.yaml"


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (200, 100), (10, 20, 30)).save(d / name)
    return d


def coco_json(tmp_path, extra_ann=None):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [50, 5, 10, 10], "iscrowd": 0},
                        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1}]
                       + (extra_ann or []),
        "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
    }
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return path


def test_coco(tmp_path, images):
    samples = load_coco(coco_json(tmp_path), images)
    assert [s.id for s in samples] == ["coco-1", "coco-2"]
    s = samples[0]
    assert s.task == "detection" and s.image_size == (200, 100)
    assert s.solution["boxes"] == [[10, 20, 40, 60], [50, 5, 60, 15]]
    assert s.solution["labels"] == ["person", "toothbrush"]
    assert s.question == "Please output bbox coordinates and names of person, toothbrush."
    assert samples[1].solution["boxes"] == []  # the crowd box is left out
    assert s.load_image().size == (200, 100)


def test_coco_corrupt_rows_are_named_and_limited(tmp_path, images, caplog):
    bad = [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},
           {"id": 10, "image_id": 1, "category_id": 77, "bbox": [1, 2, 3, 4]}]
    path = coco_json(tmp_path, bad)
    samples = load_coco(path, images, max_bad_rows=2)
    assert len(samples[0].solution["boxes"]) == 2
    assert f"{path}:3:" in caplog.text and "bbox must be 4 numbers" in caplog.text
    assert f"{path}:4:" in caplog.text and "unknown category_id 77" in caplog.text
    with pytest.raises(DataError, match=r"2 corrupt rows in .*instances_val2017.json \(max_bad_rows=1\)"):
        load_coco(path, images, max_bad_rows=1)


def test_refcoco_pickle(tmp_path, images):
    coco_json(tmp_path)
    refs = [{"ref_id": 7, "ann_id": 1, "image_id": 1, "split": "val",
             "sentences": [{"sent": "man on the left"}, {"sent": "person"}]},
            {"ref_id": 8, "ann_id": 2, "image_id": 1, "split": "train", "sentences": [{"sent": "brush"}]},
            {"ref_id": 9, "ann_id": 404, "image_id": 1, "split": "val", "sentences": [{"sent": "ghost"}]}]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs))
    samples = load_refcoco(tmp_path / "refs(unc).p", tmp_path / "instances_val2017.json", images, "val",
                           max_bad_rows=1)
    assert [s.question for s in samples] == ["Output the bounding box of the man on the left in the image.",
                                             "Output the bounding box of the person in the image."]
    assert samples[0].solution == {"box": [10.0, 20.0, 40.0, 60.0]}


def test_grounding_jsonl(tmp_path, images):
    path = tmp_path / "refcoco_val.jsonl"
    path.write_text("\n".join([
        json.dumps({"image": "a.jpg", "problem": "the dog", "solution": [1, 2, 30, 40]}),
        "{not json",
        json.dumps({"image": "b.jpg", "problem": "cat", "solution": "[5, 6, 7, 8]"}),
        json.dumps({"image": "b.jpg", "problem": "cat", "solution": [9, 9, 1, 1]}),
    ]))
    samples = load_grounding_jsonl(path, images, max_bad_rows=2)
    assert [s.solution["box"] for s in samples] == [[1, 2, 30, 40], [5, 6, 7, 8]]
    with pytest.raises(DataError, match=r"refcoco_val.jsonl \(max_bad_rows=1\); first: .*refcoco_val.jsonl:2: invalid JSON"):
        load_grounding_jsonl(path, images, max_bad_rows=1)


def test_pixmo_count(tmp_path, images):
    path = tmp_path / "pixmo.jsonl"
    path.write_text("\n".join([
        json.dumps({"image": "a.jpg", "label": "apple", "count": 2, "points": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}),
        json.dumps({"image": "b.jpg", "label": "car", "count": 3, "points": [[1, 2]]}),
        json.dumps({"image_url": "https://example.invalid/x.jpg", "label": "car", "count": 0, "points": []}),
    ]))
    samples = load_pixmo_count(path, images, max_bad_rows=2)
    assert len(samples) == 1 and samples[0].solution == {"points": [[1.0, 2.0], [3.0, 4.0]], "count": 2}
    assert samples[0].question == "Output all the bounding boxes of the apple"


def test_pageocr(tmp_path, images):
    path = tmp_path / "pageocr.json"
    path.write_text(json.dumps([
        {"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nOCR"},
                                             {"from": "gpt", "value": "Page text."}]},
        {"image": "b.jpg", "conversations": [{"from": "human", "value": "no answer"}]},
    ]))
    samples = load_pageocr(path, images, max_bad_rows=1)
    assert len(samples) == 1 and samples[0].solution == {"text": "Page text."}


def test_missing_file_and_placeholder_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pageocr(tmp_path / "nope.json")
    cfg = load_config(COCO_CONFIG)
    with pytest.raises(DataError, match=r"data.train.file is not set"):
        build_datasets(cfg.data)


def test_subset_first_and_random(tmp_path, images):
    samples = load_coco(coco_json(tmp_path), images)
    assert subset(samples, 1, "first") == samples[:1]
    assert subset(samples, 1, "random", seed=3) == subset(samples, 1, "random", seed=3)
    assert subset(samples, None) == samples


def test_coco_config_loads_real_format_end_to_end(tmp_path, images):
    path = coco_json(tmp_path)
    cfg = load_config(COCO_CONFIG, [f"data.train.file={path}", f"data.train.image_dir={images}",
                                                 f"data.eval.file={path}", f"data.eval.image_dir={images}"])
    train, evaluation = build_datasets(cfg.data)
    assert len(train) == 2 and len(evaluation) == 2
