"""Image resizing and prompt encoding for Qwen2.5-VL, done once and shared by engines and learner.

Both sides must see identical pixels and identical prompt ids, so the driver encodes each prompt here and ships the
result (`EncodedPrompt`) to the engines and the learner alike.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from common.records import EncodedPrompt

SYSTEM_PROMPT = "You are a helpful assistant."
PATCH = 14  # Qwen2-VL / Qwen2.5-VL vision patch side, in pixels
RESIZE_FACTOR = 2 * PATCH  # patch 14 x spatial merge 2


class PromptTooLongError(ValueError):
    """A multimodal prompt does not fit: we never truncate one (it would cut image tokens)."""


class ImageGeometryError(ValueError):
    """The processor's patch grid does not cover the resized image exactly."""


def resize_for_model(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Qwen's smart_resize: sides multiples of 28, pixel count within [min_pixels, max_pixels] (a side is never
    below 28, so a very thin image can exceed max_pixels); raises ValueError past an aspect ratio of 200."""
    height, width = smart_resize(image.height, image.width, RESIZE_FACTOR, min_pixels, max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def encode_prompt(
    processor,
    sample_id: str,
    image: Image.Image,
    question: str,
    *,
    min_pixels: int,
    max_pixels: int,
    max_prompt_tokens: int,
) -> EncodedPrompt:
    """Resize the image, apply the chat template and run the processor; raise if the prompt is too long.

    The image is resized here, once (`resize_for_model`), and the processor is told not to resize it again: the
    size the model sees is the size `EncodedPrompt.image` (and the reward's `resized_size`) says, by construction.
    A processor that still produced another grid raises `ImageGeometryError`, never a silent mismatch (a
    processor's second resize with the same pixel bounds moved 640 x 480 to 1204 x 868 against 504 x 364 when
    min_pixels > max_pixels, and 20 x 2000 to 28 x 812 against 28 x 1232)."""
    resized = resize_for_model(image.convert("RGB"), min_pixels, max_pixels)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[resized], return_tensors="np", images_kwargs={"do_resize": False})
    grid = np.asarray(enc["image_grid_thw"], dtype=np.int64)
    seen = (int(grid[0, 2]) * PATCH, int(grid[0, 1]) * PATCH)
    if seen != resized.size:
        raise ImageGeometryError(f"sample {sample_id!r}: the processor made a {seen[0]} x {seen[1]} grid of an "
                                 f"image resized to {resized.width} x {resized.height}")
    ids = enc["input_ids"][0].tolist()
    if len(ids) > max_prompt_tokens:
        raise PromptTooLongError(
            f"prompt of sample {sample_id!r} has {len(ids)} tokens > max_prompt_tokens={max_prompt_tokens}; "
            "lower max_pixels or raise max_prompt_tokens"
        )
    return EncodedPrompt(
        sample_id=sample_id,
        prompt_text=text,
        prompt_token_ids=ids,
        pixel_values=np.asarray(enc["pixel_values"], dtype=np.float32),
        image_grid_thw=grid,
        image=np.asarray(resized, dtype=np.uint8),
        scale=(resized.width / image.width, resized.height / image.height),
    )


def mm_token_type_ids(input_ids: torch.Tensor, config) -> torch.Tensor:
    """1 at image placeholders, 2 at video placeholders, 0 elsewhere: what Qwen2.5-VL's 3D RoPE keys on."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == config.image_token_id] = 1
    if config.video_token_id is not None:
        types[input_ids == config.video_token_id] = 2
    return types
