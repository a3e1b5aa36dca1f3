"""Metrics to Weights & Biases (offline unless WANDB_API_KEY is set) and to metrics.jsonl beside the run."""
from __future__ import annotations

import json
import os
from pathlib import Path

from orchestration.config import RunConfig


class Tracker:
    def __init__(self, cfg: RunConfig, out_dir: Path):
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
                                  dir=str(out_dir), config=cfg.model_dump(mode="json"))
        self.jsonl = open(out_dir / "metrics.jsonl", "a")

    @property
    def run_dir(self) -> str | None:
        return None if self.run is None else str(Path(self.run.dir).parent)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()

    def log_images(self, key: str, images, captions: list[str], step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: [wandb.Image(im, caption=c) for im, c in zip(images, captions)]}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
        self.jsonl.close()
