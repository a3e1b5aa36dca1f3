"""The eval command: greedy answers, the task's metrics, report.json and example images with boxes drawn."""
import json

import pytest
from PIL import Image

from orchestration.config import load_config
from orchestration.evaluate import main as eval_main
from orchestration.tiny_model import write_tiny_qwen25vl
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
    from orchestration.synthetic import detection_samples

    sample = detection_samples(1, 0)[0]
    b = sample.solution["boxes"][0]
    ctx = RewardContext(sample.id, "detection", sample.solution, (1.0, 1.0), (112, 112), (112, 112))
    answer = json.dumps([{"bbox_2d": [b[0] + 5, b[1] + 5, b[2] - 5, b[3] - 5], "label": sample.solution["labels"][0]}])
    image = draw_example(sample, answer, ctx, load_config(CONFIG).reward.options, tmp_path / "x.png")
    assert image.getpixel((int(b[0]), int(b[1]) + 10)) == TRUE
    assert image.getpixel((int(b[0]) + 5, int(b[1]) + 10)) == PRED
