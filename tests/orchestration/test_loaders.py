"""Each loader reads a small file in its public format; corrupt rows are named by file and row, and counted."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestration.config import load_config
from orchestration.data.datasets import build_datasets
from orchestration.data.download import download_images, image_rows
from orchestration.data.loaders import (DataError, load_coco, load_grounding_jsonl, load_pageocr, load_pixmo_count,
                                   load_refcoco, load_refcoco_parquet, pixmo_points, subset)
from tests.published_formats import PAGES, pageocr_rows, pixmo_hub, refcoco_hub, refcoco_release, write_parquet

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


# ---- the hub's parquet and the original releases ----------------------------------------------------------------

def test_refcoco_hub_parquet_and_the_original_release_give_the_same_samples(tmp_path):
    """lmms-lab's parquet (embedded images, xywh boxes, a list of expressions per object) and the refs pickle +
    instances JSON of the same objects load into the same questions, boxes and pixels."""
    rows = refcoco_hub(tmp_path / "val-00000-of-00001.parquet", 5)
    hub = load_refcoco_parquet(tmp_path / "val-00000-of-00001.parquet")
    refs, inst, images = refcoco_release(tmp_path / "release", rows)
    release = load_refcoco(refs, inst, images, "val")
    assert len(hub) == len(release) == 10  # two expressions per object
    assert [(s.question, s.solution) for s in hub] == [(s.question, s.solution) for s in release]
    x, y, w, h = rows[0]["bbox"]
    assert hub[0].solution == {"box": [x, y, x + w, y + h]}
    assert hub[1].question == "Output the bounding box of the the box 0 in the image."
    assert hub[0].origin.endswith("val-00000-of-00001.parquet:0") and hub[2].origin.endswith(":1")
    assert np.array_equal(np.asarray(hub[3].load_image()), np.asarray(release[3].load_image()))
    # A folder of parquet files (a hub snapshot's data/) and a glob read the same rows.
    assert [s.id for s in load_refcoco_parquet(tmp_path)] == [s.id for s in hub]
    assert [s.id for s in load_refcoco_parquet(str(tmp_path / "val-*.parquet"))] == [s.id for s in hub]


def test_pixmo_points_arrive_in_every_form_the_readers_give():
    """The hub's schema is a sequence of {x, y}: pyarrow reads a list of dicts, `datasets` one dict of lists."""
    dict_of_lists = {"x": [10.5, 40.0, 90.25], "y": [12.0, 50.5, 70.0]}
    expected = [[10.5, 12.0], [40.0, 50.5], [90.25, 70.0]]
    assert pixmo_points(dict_of_lists) == expected
    assert pixmo_points([{"x": 10.5, "y": 12.0}, {"x": 40.0, "y": 50.5}, {"x": 90.25, "y": 70.0}]) == expected
    assert pixmo_points([[10.5, 12.0], [40, 50.5], (90.25, 70)]) == expected
    assert pixmo_points(None) is None
    with pytest.raises(ValueError, match="3 x but 2 y"):
        pixmo_points({"x": [1, 2, 3], "y": [1, 2]})


def test_pixmo_rows_with_points_as_one_dict_and_count_only_eval_rows(tmp_path, images):
    path = tmp_path / "pixmo.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"image": "a.jpg", "label": "apple", "count": 3, "points": {"x": [10.5, 40.0, 90.25], "y": [12.0, 50.5, 70.0]}},
        {"image": "b.jpg", "label": "chair", "count": 4},
    ]))
    apple, chair = load_pixmo_count(path, images)
    assert apple.solution == {"points": [[10.5, 12.0], [40.0, 50.5], [90.25, 70.0]], "count": 3}
    assert chair.solution == {"points": None, "count": 4} and chair.question.endswith("of the chair")


def test_pixmo_hub_parquet_finds_images_by_sha256_and_names_a_missing_one(tmp_path, caplog):
    folder = tmp_path / "pixmo_images"
    rows = pixmo_hub(tmp_path / "train.parquet", folder, 6)
    report = download_images(image_rows(tmp_path / "train.parquet"), folder)
    assert (report.fetched, report.present, report.failed) == (6, 0, [])
    assert download_images(image_rows(tmp_path / "train.parquet"), folder).present == 6  # not fetched twice
    samples = load_pixmo_count(tmp_path / "train.parquet", folder, fmt="parquet")
    assert [s.solution["count"] for s in samples] == [r["count"] for r in rows]
    assert samples[2].solution["points"] == [[p["x"], p["y"]] for p in rows[2]["points"]]
    assert Path(samples[0].image).name == rows[0]["image_sha256"] + ".png" and samples[0].load_image().size == (160, 120)
    # One image not downloaded: that row is reported with the file, the row, the hash and what to run.
    Path(samples[1].image).unlink()
    kept = load_pixmo_count(tmp_path / "train.parquet", folder, fmt="parquet", max_bad_rows=1)
    assert len(kept) == 5 and f"train.parquet:1: " in caplog.text and rows[1]["image_sha256"] in caplog.text
    assert "perception-r1 download-images" in caplog.text


def test_download_keeps_no_image_whose_bytes_do_not_match_its_hash(tmp_path):
    rows = pixmo_hub(tmp_path / "val.parquet", tmp_path / "images", 2, with_points=False)
    rows[0]["image_sha256"] = "0" * 64
    report = download_images(rows, tmp_path / "images")
    assert report.fetched == 1 and len(report.failed) == 1 and "SHA-256" in report.failed[0][1]
    assert not list((tmp_path / "images").glob("0000*"))


def test_pixmo_count_only_hub_rows_are_eval_samples_with_their_count(tmp_path):
    folder = tmp_path / "images"
    rows = pixmo_hub(tmp_path / "validation.parquet", folder, 4, with_points=False)
    download_images(rows, folder)
    samples = load_pixmo_count(tmp_path / "validation.parquet", folder, fmt="parquet")
    assert [s.solution for s in samples] == [{"points": None, "count": r["count"]} for r in rows]


def test_page_ocr_json_and_parquet_in_english_and_chinese(tmp_path):
    rows = pageocr_rows(tmp_path / "pages.json", tmp_path / "pages", 3)
    from_json = load_pageocr(tmp_path / "pages.json", tmp_path / "pages")
    write_parquet([{"image": {"bytes": (tmp_path / "pages" / r["image"]).read_bytes(), "path": None},
                    "text": r["conversations"][1]["value"]} for r in rows], tmp_path / "pages.parquet")
    from_parquet = load_pageocr(tmp_path / "pages.parquet", fmt="parquet")
    assert [s.solution["text"] for s in from_json] == [s.solution["text"] for s in from_parquet] == PAGES
    assert from_parquet[1].load_image().size == (224, 56)


@pytest.mark.parametrize("name, overrides, message", [
    ("rows.csv", [], r"data.train.file '.*rows.csv': cannot tell its format from the suffix '.csv'; "
                     r"data.source=pixmo_count reads json or parquet \(set data.train.format\)"),
    ("rows.json", ["data.train.format=pickle"], r"data.train.file '.*rows.json' is pickle, but "
                                                r"data.source=pixmo_count reads json or parquet"),
    ("rows.parquet", [], r"PixMo-Count parquet '.*rows.parquet' has no column 'label'"),
    ("broken.parquet", [], r"cannot read PixMo-Count parquet '.*broken.parquet' as parquet"),
])
def test_a_file_of_another_form_gets_one_error_naming_the_file_and_the_field(tmp_path, name, overrides, message):
    path = tmp_path / name
    if name == "rows.parquet":
        write_parquet([{"image_url": "x", "image_sha256": "y", "count": 1}], path, image_column=False)
    else:
        path.write_text("not this format")
    cfg = load_config(None, ["data.task=counting", "data.source=pixmo_count", f"data.train.file={path}",
                             f"data.eval.file={path}"] + overrides)
    with pytest.raises(DataError, match=message):
        build_datasets(cfg.data)
