"""Records that cross Ray actor boundaries: plain dataclasses of lists and numpy arrays, cheap to pickle."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Task = Literal["grounding", "counting", "ocr", "detection", "colour"]


@dataclass
class Sample:
    """One dataset item. `solution` is task-specific ground truth in pixels of the *original* image."""

    id: str
    task: Task
    image: Any  # a path, encoded image bytes, or a reference with `read() -> bytes | path` (a parquet table's
    # image); decoded lazily by `load_image`
    question: str
    solution: Any
    image_size: tuple[int, int] | None = None  # original (width, height) when the source gives it
    origin: str | None = None  # where it came from, for messages: "file:row"

    def load_image(self, max_pixels: int | None = None):
        """Decode the image to an RGB PIL image (paths are read only here, never at dataset load). An image over
        `max_pixels` is refused from its header, before its pixels are decoded."""
        from PIL import Image

        data = self.image.read() if hasattr(self.image, "read") else self.image
        src = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
        with Image.open(src) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ValueError(f"image of {im.width} x {im.height} pixels is over data.max_image_pixels={max_pixels}")
            return im.convert("RGB")


@dataclass
class EncodedPrompt:
    """A chat-formatted prompt with its image, preprocessed once and shared by engines and learner.

    `prompt_token_ids` has the image placeholder already expanded (what a Hugging Face model consumes);
    `prompt_text` keeps one placeholder per image (what vLLM wants, it expands them itself).
    """

    sample_id: str
    prompt_text: str
    prompt_token_ids: list[int]
    pixel_values: np.ndarray  # [num_patches, 3 * temporal_patch * patch * patch] float32
    image_grid_thw: np.ndarray  # [num_images, 3] int64
    image: np.ndarray  # resized RGB image the model sees, [H, W, 3] uint8
    scale: tuple[float, float]  # (resized width / original width, resized height / original height)


@dataclass
class SamplingParams:
    """How an engine samples; the defaults are the paper's (SPEC.md). Request i of a call draws its answers from
    seeds starting at `seed + i * n`."""

    n: int = 8
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 50
    max_new_tokens: int = 768
    seed: int | None = None


@dataclass
class Rollout:
    """One sampled answer with the engine's per-token log-probs of the sampled tokens."""

    sample_id: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_text: str
    logprobs: list[float]  # len == len(response_token_ids)
    policy_version: int
    finish_reason: Literal["stop", "length"]


@dataclass
class ScoredRollout:
    """A rollout with its scalar reward, the named reward components and, when scoring failed, why."""

    rollout: Rollout
    reward: float
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class TrainItem:
    """One answer as the learner trains on it: ids, the engine's log-probs, and its advantage."""

    sample_id: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    engine_logprobs: list[float]
    advantage: float


@dataclass
class TrainShard:
    """One learner rank's part of a step's batch. Images travel once per prompt, not once per answer.

    `num_items_global` / `num_tokens_global` count the whole batch over all ranks, so every rank normalises its
    micro-batch losses to the loss of the whole batch.
    """

    items: list[TrainItem]
    prompts: dict[str, EncodedPrompt]
    num_items_global: int
    num_tokens_global: int


@dataclass
class RewardContext:
    """What a reward function needs besides the answer: the task, its truth, and the image geometry.

    `scale` maps original-image pixels to the resized image the model saw (qwen25vl answers are in those pixels).
    """

    sample_id: str
    task: Task
    solution: Any
    scale: tuple[float, float] = (1.0, 1.0)
    resized_size: tuple[int, int] = (0, 0)  # (width, height) the model saw
    orig_size: tuple[int, int] = (0, 0)  # (width, height) of the original image
