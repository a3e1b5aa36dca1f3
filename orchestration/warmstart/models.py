"""The base checkpoint: a directory the user names, or a tiny random Qwen2.5-VL written for the demos and tests.
(`orchestration.warmstart.sft.prepare_model` adds the warm start.)"""
from __future__ import annotations

from pathlib import Path

from orchestration.config import RunConfig


def base_model(cfg: RunConfig, out_dir: Path) -> str:
    """The checkpoint a run starts from before any warm start: `model.path` (a directory; FileNotFoundError
    otherwise), or for `tiny` a random tiny Qwen2.5-VL written into `out_dir`/tiny_model."""
    if cfg.model.path != "tiny":
        if not Path(cfg.model.path).is_dir():
            raise FileNotFoundError(f"model.path {cfg.model.path!r} is not a checkpoint directory")
        base = cfg.model.path
    else:
        from orchestration.warmstart.tiny_model import write_tiny_qwen25vl

        base = str(write_tiny_qwen25vl(out_dir / "tiny_model", min_pixels=cfg.model.min_pixels,
                                       max_pixels=cfg.model.max_pixels, **cfg.model.tiny.model_dump()))
    return base
