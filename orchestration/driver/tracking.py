"""Metrics to Weights & Biases (offline unless WANDB_API_KEY is set) and to metrics.jsonl beside the run.

`samples.jsonl` records which prompts each step trained on. A resumed run continues the same W&B run (same id) and
both files from the checkpoint's step: rows logged after it by the interrupted run are dropped, so no step appears
twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from orchestration.config import RunConfig


def read_jsonl(path: Path) -> list[dict]:
    """The rows a run logged to `path` (metrics.jsonl, samples.jsonl), in order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_jsonl(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class Tracker:
    """W&B (online with WANDB_API_KEY, offline otherwise) and metrics.jsonl / samples.jsonl beside it; on resume both
    files drop rows past the checkpoint."""
    def __init__(self, cfg: RunConfig, out_dir: Path, resume_step: int | None = None, run_id: str | None = None):
        import wandb

        out_dir.mkdir(parents=True, exist_ok=True)
        mode = cfg.wandb.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.mode = mode
        self.run = None
        if mode != "disabled":
            # The config holds no secrets; the API key is read by wandb from the environment, never logged.
            self.run = wandb.init(project=cfg.wandb.project, name=cfg.wandb.run_name, mode=mode,
                                  dir=str(out_dir), config=cfg.model_dump(mode="json"),
                                  id=run_id, resume="allow" if run_id else None)
        if resume_step is not None:
            for name in ("metrics.jsonl", "samples.jsonl"):
                _truncate_jsonl(out_dir / name, resume_step)
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        self.samples = open(out_dir / "samples.jsonl", "a")

    @property
    def run_dir(self) -> str | None:
        """The W&B run's directory (None when W&B is disabled)."""
        return None if self.run is None else str(Path(self.run.dir).parent)

    @property
    def run_id(self) -> str | None:
        """The W&B run id, kept in checkpoints so a resumed run continues it."""
        return None if self.run is None else self.run.id

    def log(self, metrics: dict[str, float | None], step: int) -> None:
        """A metric that is undefined here (None, e.g. COCO's AP of a size no image holds) is left out of W&B, so
        no chart shows a made-up 0, and written as null to metrics.jsonl."""
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()

    def log_samples(self, sample_ids: list[str], step: int) -> None:
        """The sample ids trained at `step` (resume tests compare them)."""
        self.samples.write(json.dumps({"step": step, "sample_ids": sample_ids}) + "\n")
        self.samples.flush()

    def log_images(self, key: str, images, captions: list[str], step: int) -> None:
        """Images with captions to W&B at `step`."""
        if self.run is not None:
            import wandb

            self.run.log({key: [wandb.Image(im, caption=c) for im, c in zip(images, captions)]}, step=step)

    def finish(self) -> None:
        """Close W&B and the files."""
        if self.run is not None:
            self.run.finish()
        self.jsonl.close()
        self.samples.close()
