"""The eval command: greedy answers, the task's metrics, report.json and example images with boxes drawn."""
import json

import pytest
from PIL import Image

from orchestration.config import load_config
from orchestration.cli import eval_main
from orchestration.warmstart.tiny_model import write_tiny_qwen25vl
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu_perception.yaml"


@pytest.mark.parametrize("task, metric", [("detection", "AP50"), ("grounding", "acc@0.5"), ("counting", "count_acc"),
                                          ("ocr", "edit_distance")])
def test_eval_writes_report_and_examples(tmp_path, task, metric):
    ckpt = write_tiny_qwen25vl(tmp_path / "ckpt", min_pixels=12544, max_pixels=12544)
    out = tmp_path / "eval"
    code = eval_main(["--config", str(CONFIG), "--checkpoint", str(ckpt), "--out", str(out), "--examples", "2",
                      f"data.task={task}", "data.eval_size=3", "rollout.max_new_tokens=8", "wandb.mode=offline"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == task and report["num_samples"] == 3 and metric in report["metrics"]
    assert len(report["examples"]) == 2
    expected_size = (224, 56) if task == "ocr" else (112, 112)
    assert Image.open(out / "example_0.png").size == expected_size


def test_eval_draws_true_and_predicted_boxes(tmp_path):
    from common.records import RewardContext
    from orchestration.evaluate import PRED, TRUE, draw_example
    from orchestration.data.synthetic import detection_samples

    sample = detection_samples(1, 0)[0]
    b = sample.solution["boxes"][0]
    ctx = RewardContext(sample.id, "detection", sample.solution, (1.0, 1.0), (112, 112), (112, 112))
    answer = json.dumps([{"bbox_2d": [b[0] + 5, b[1] + 5, b[2] - 5, b[3] - 5], "label": sample.solution["labels"][0]}])
    image = draw_example(sample, answer, ctx, load_config(CONFIG).reward.options, tmp_path / "x.png")
    assert image.getpixel((int(b[0]), int(b[1]) + 10)) == TRUE
    assert image.getpixel((int(b[0]) + 5, int(b[1]) + 10)) == PRED


def test_coco_eval_scores_against_the_official_annotations_with_crowd_regions(tmp_path):
    """A prediction on a crowd region is ignored by COCOeval (not a false positive) when the real file is used."""
    from common.records import RewardContext
    from orchestration.evaluate import official_coco_gt, task_metrics
    from orchestration.data.loaders import load_coco

    (tmp_path / "img").mkdir()
    Image.new("RGB", (200, 200)).save(tmp_path / "img" / "a.jpg")
    ann = {"images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 200}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 50], "area": 2500,
                            "iscrowd": 0},
                           {"id": 2, "image_id": 7, "category_id": 3, "bbox": [100, 100, 80, 80], "area": 6400,
                            "iscrowd": 1}],
           "categories": [{"id": 3, "name": "car"}]}
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(ann))
    samples = load_coco(path, tmp_path / "img")
    answer = json.dumps([{"bbox_2d": [10, 10, 60, 60], "label": "car"}, {"bbox_2d": [100, 100, 180, 180], "label": "car"}])
    ctx = [RewardContext(samples[0].id, "detection", samples[0].solution, (1.0, 1.0), (200, 200), (200, 200))]
    opts = load_config(CONFIG).reward.options
    official = task_metrics("detection", samples, [answer], ctx, [], opts, coco_gt=official_coco_gt(path, samples))
    rebuilt = task_metrics("detection", samples, [answer], ctx, [], opts)
    assert official["AP"] == pytest.approx(1.0)  # the crowd-region box is ignored
    assert rebuilt["AP"] < 1.0  # without the crowd annotation it is a false positive
