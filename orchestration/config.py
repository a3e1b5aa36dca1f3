"""The run config: one pydantic model composed of each service's section, loaded from YAML plus overrides.

Validated once, at load: an unknown or ill-typed key fails with its dotted name in the message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from learner.config import GRPOConfig, LearnerConfig
from reward_service.config import RewardConfig
from rollout_workers.config import RolloutConfig


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class Strict(BaseModel):
    """A config section: unknown keys are errors, named in the message."""
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(Strict):
    """The random tiny Qwen2.5-VL of `model.path: tiny` (orchestration/warmstart/tiny_model.py)."""
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    vision_hidden_size: int = Field(32, ge=8)
    vision_depth: int = Field(2, ge=1)
    initializer_range: float = Field(0.02, gt=0, description="init std; larger makes a random policy see more of the image")
    seed: int = 0
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    rope_theta: float = Field(10000.0, gt=0)
    mrope_section: list[int] | None = Field(None, description="(t, h, w) rotary frequencies, summing to head_dim / 2; "
                                                              "None: Qwen's 2:3:3 split")
    tie_word_embeddings: bool = Field(False, description="output layer = input embedding (as Qwen2.5-VL-3B)")


class ModelConfig(Strict):
    """The checkpoint and its image and prompt limits (Qwen's smart_resize bounds, in pixels)."""
    path: str = Field("tiny", description="a checkpoint directory, or 'tiny' to write a random tiny Qwen2.5-VL")
    tiny: TinyModelConfig = TinyModelConfig()
    min_pixels: int = Field(3136, ge=784, description="Qwen's smart_resize lower bound on an image's pixels")
    max_pixels: int = Field(1_000_000, ge=784, description="upper bound (the paper's runs: 1,000,000)")
    max_prompt_tokens: int = Field(2048, ge=16)

    @model_validator(mode="after")
    def _pixel_bounds_in_order(self) -> ModelConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"model.min_pixels={self.min_pixels} is above model.max_pixels={self.max_pixels}")
        return self


class SplitFiles(Strict):
    """Where one split of a public dataset lies (which keys a source needs: orchestration/data/datasets.py)."""

    file: str | None = Field(None, description="annotations / rows: COCO instances json, refs pickle, jsonl, json, "
                                                "or the hub's parquet (a file, a folder of them, or a glob)")
    format: Literal["auto", "json", "parquet", "pickle"] = Field(
        "auto", description="the file's form; auto: by its suffix (.json/.jsonl, .parquet or a folder, .p/.pkl)")
    image_dir: str = "."
    instances_file: str | None = Field(None, description="RefCOCO: instances.json beside the refs pickle")
    split: str | None = Field(None, description="RefCOCO: val, testA, testB, train...")


class DataConfig(Strict):
    """Which task and data: synthetic scenes, or the public formats of `data.source` (orchestration/data)."""
    task: Literal["colour", "grounding", "counting", "ocr", "detection"] = "colour"
    source: Literal["synthetic", "coco", "refcoco", "grounding_jsonl", "pixmo_count", "pageocr"] = "synthetic"
    train: SplitFiles = SplitFiles()
    eval: SplitFiles = SplitFiles()
    train_size: int | None = Field(2048, ge=1, description="subset size (synthetic: how many to draw); None = all")
    eval_size: int | None = Field(64, ge=1)
    subset: Literal["first", "random"] = "first"
    max_bad_rows: int = Field(100, ge=0, description="corrupt rows skipped (and counted) before a load fails; "
                                                     "also the unusable samples a run may skip when it draws them")
    max_image_pixels: int = Field(100_000_000, ge=1, description="a larger image is skipped when drawn (read "
                                                                  "from its header, never decoded)")
    image_size: int = Field(56, ge=28, description="synthetic scenes only")
    objects: tuple[int, int] | None = Field(None, description="synthetic grounding and detection scenes: the least "
                                                              "and most shapes per image (default 2-3 and 1-3)")
    distinct: Literal["pair", "attributes"] = Field(
        "pair", description="synthetic grounding scenes: 'pair', no two shapes of the same colour and kind (the "
                            "name may need both its words); 'attributes', no two of the same colour or kind")
    seed: int = 0

    @model_validator(mode="after")
    def _synthetic_scene_options(self) -> DataConfig:
        if self.distinct != "pair" and (self.source != "synthetic" or self.task != "grounding"):
            raise ValueError(f"data.distinct applies to synthetic grounding scenes, not source={self.source} "
                             f"task={self.task}")
        if self.objects is None:
            return self
        if self.source != "synthetic" or self.task not in ("grounding", "detection"):
            raise ValueError(f"data.objects applies to synthetic grounding and detection scenes, not "
                             f"source={self.source} task={self.task}")
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"data.objects must be [least, most] with 1 <= least <= most, got {list(self.objects)}")
        return self


class TrainConfig(Strict):
    """The driver loop: steps, prompts per step, evaluation, checkpoints, output directory."""
    steps: int = Field(100, ge=0)
    prompts_per_step: int = Field(14, ge=1)
    seed: int = 0
    eval_every: int = Field(0, ge=0, description="0: evaluate only before and after training")
    eval_batch: int = Field(256, ge=1, description="held-out prompts encoded and generated at a time in an evaluation "
                                                  "(bounds the driver's memory: a real image encodes to 10-20 MB)")
    output_dir: str = "outputs/run"
    export_final: bool = Field(True, description="write a from_pretrained checkpoint of the policy at the end")
    max_staleness: int = Field(0, ge=0, le=1, description="0: each step's answers come from the current weights; "
                                                           "1: the engines generate step t+1 while the learner "
                                                           "trains step t (answers one update old, corrected by "
                                                           "grpo.tis_cap)")
    checkpoint_every: int = Field(100, ge=0, description="steps between resumable checkpoints (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept; older ones are deleted")


class SFTConfig(Strict):
    """The supervised warm start (orchestration/warmstart/sft.py); `enabled` makes `train` start GRPO from it."""

    enabled: bool = False
    steps: int = Field(600, ge=1, description="supervised steps; with `target`, the most it may take")
    target: float | None = Field(
        None, description="stop once the probe set's headline metric reaches this (grounding Acc@0.5, counting "
                          "exact count, detection AP50, colour accuracy: at or above; OCR edit distance: at or "
                          "below), so the warm start's level does not hang on the CPU's float rounding; the "
                          "learning rate is then constant after warm-up")
    probe_size: int = Field(200, ge=1, description="training samples held out of the warm start to probe `target`")
    probe_every: int = Field(10, ge=1, description="steps between probes (greedy decoding of the probe set)")
    anneal: float | None = Field(None, gt=0, le=1, description="with `target`: scale the learning rate by the share "
                                                             "of the way to the target still to go (at least this "
                                                             "fraction), so the warm start arrives at its level "
                                                             "with a small step, as a cosine schedule ends")
    tolerance: float | None = Field(
        None, gt=0, description="with `target`: stop only at a probe within this of the target; a probe past it "
                                "(a jump on a steep learning curve) returns the weights and optimizer to the last "
                                "probe short of the target and halves the learning rate, so the warm start lands "
                                "in the window on every CPU; null: stop at the first probe that reaches it")
    ema: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the weights with "
                                                             "this decay; the probes and the saved checkpoint use it")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's)")
    reading_order: bool = Field(True, description="teach counting and detection boxes listed top to bottom, left to "
                                                  "right (else as annotated): one order to learn, not every permutation")
    vision_lr_scale: float = Field(1.0, ge=0, description="the vision tower's learning rate as a multiple of `lr`; "
                                                          "0 freezes it (as Qwen2-VL fine-tuning recipes often do)")
    output_dir: str = Field("outputs/sft", description="cache: one checkpoint per task and settings, reused")


class WandbConfig(Strict):
    """Weights & Biases: online with WANDB_API_KEY, offline otherwise."""
    project: str = "perception-r1"
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when WANDB_API_KEY is set, offline otherwise"
    )
    run_name: str | None = None


class RayConfig(Strict):
    """Which Ray cluster, the start-up checks and waits."""
    address: str | None = Field(None, description="None: join a running cluster if there is one, else start one")
    num_cpus: int | None = Field(None, description="logical CPUs of a local cluster (default: enough for all actors)")
    check_resources: bool = Field(True, description="fail at start when the cluster has fewer GPUs/CPUs than the "
                                                    "actors ask for (off for a cluster that autoscales)")
    setup_timeout_s: float = Field(1800.0, gt=0, description="the longest wait for actors to start, load the model "
                                                             "and join the sync group")


class RunConfig(Strict):
    """The whole run, one section per service; validated once at load (`load_config`)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    grpo: GRPOConfig = GRPOConfig()
    learner: LearnerConfig = LearnerConfig()
    train: TrainConfig = TrainConfig()
    sft: SFTConfig = SFTConfig()
    wandb: WandbConfig = WandbConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _batch_splits_evenly(self):
        answers = self.train.prompts_per_step * self.grpo.group_size
        if answers % self.learner.num_ranks:
            raise ValueError(f"train.prompts_per_step * grpo.group_size = {answers} answers must split evenly over "
                             f"learner.num_ranks = {self.learner.num_ranks}")
        return self


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`1e-3`, `true`, `[1, 2]`)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


def read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a nested dict. `base: other.yaml` (relative to the file) names a config it extends: the
    file's own sections are merged over the base's, key by key, so a per-task config states only what differs."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    base = tree.pop("base", None)
    if base is None:
        return tree
    base_path, chain = (path.parent / str(base)).resolve(), seen + (path.resolve(),)
    if base_path in chain:
        raise ConfigError(f"config file {str(path)!r}: base {str(base)!r} extends itself")
    return _merge(read_tree(base_path, chain), tree)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read YAML (or start from defaults), apply overrides, validate."""
    tree: dict[str, Any] = read_tree(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(tree, override)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"]) or "<root>"
            problems.append(f"{key}: {err['msg']}" + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden"
                                                      and not isinstance(err["input"], dict) else ""))
        raise ConfigError(f"invalid config {str(path) if path else '<defaults>'}:\n  " + "\n  ".join(problems)) from None
