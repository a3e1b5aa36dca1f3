"""A user's first run on each task's published format: `perception-r1 eval` over a 50-row file written as the
dataset publishes it (images drawn by the test), through a tiny random Qwen2.5-VL, with the task's real config
(configs/*.yaml) and only the paths, the model and the engine overridden. Each writes report.json with the task's
metrics over all 50 samples."""
import json
import math
from pathlib import Path

import pytest

from orchestration.cli import main as cli
from orchestration.data.download import download_images
from orchestration.warmstart.tiny_model import write_tiny_qwen25vl
from tests.published_formats import coco_instances, pageocr_rows, pixmo_hub, refcoco_hub

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CPU = ["rollout.backend=transformers", "rollout.device=cpu", "rollout.dtype=float32", "rollout.max_new_tokens=12",
       "learner.device=cpu", "learner.dtype=float32", "learner.dist_backend=gloo", "learner.sync_backend=gloo",
       "wandb.mode=offline"]


def write(task: str, root: Path) -> list[str]:
    """The published file for `task` under `root`, and the overrides that point the task's config at it."""
    if task == "grounding":  # lmms-lab/RefCOCO val parquet, embedded images
        refcoco_hub(root / "val-00000-of-00001.parquet", 25)  # two expressions per object: 50 samples
        return [f"data.eval.file={root}", "data.eval.instances_file=null", "data.eval.split=null"]
    if task == "counting":  # allenai/pixmo-count validation parquet: count only, images by URL + SHA-256
        rows = pixmo_hub(root / "validation.parquet", root / "images", 50, with_points=False)
        assert not download_images(rows, root / "images").failed
        return [f"data.eval.file={root / 'validation.parquet'}", f"data.eval.image_dir={root / 'images'}"]
    if task == "detection":  # COCO 2017 instances JSON + image folder
        coco_instances(root / "instances_val2017.json", root / "val2017", 50)
        return [f"data.eval.file={root / 'instances_val2017.json'}", f"data.eval.image_dir={root / 'val2017'}"]
    pageocr_rows(root / "test.json", root / "pages", 50)  # page OCR, English and Chinese pages
    return [f"data.eval.file={root / 'test.json'}", f"data.eval.image_dir={root / 'pages'}"]


@pytest.mark.parametrize("task, config, metric", [
    ("grounding", "refcoco.yaml", "acc@0.5"), ("counting", "pixmo_count.yaml", "count_acc"),
    ("detection", "coco_det.yaml", "AP50"), ("ocr", "pageocr.yaml", "edit_distance")])
def test_eval_on_fifty_rows_of_the_published_format(tmp_path, task, config, metric):
    model = write_tiny_qwen25vl(tmp_path / "tiny", min_pixels=3136, max_pixels=1_000_000)
    out = tmp_path / "eval"
    code = cli(["eval", "--config", str(CONFIGS / config), "--checkpoint", str(model), "--out", str(out),
                f"model.path={model}", "data.eval_size=50", *CPU, *write(task, tmp_path / "data")])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == task and report["num_samples"] == 50 and report["skipped"] == []
    assert metric in report["metrics"]
    assert all(v is None or math.isfinite(v) for v in report["metrics"].values()), report["metrics"]
    assert math.isfinite(report["reward_mean"]) and report["reward_errors"] == 0
    assert (out / "example_0.png").is_file()
