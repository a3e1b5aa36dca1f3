"""How a dataset sample becomes a prompt: the image loaded and resized, the chat template and the processor run,
and the reward's context (the truth and the geometry). Every way that can fail is a `BadSample`."""
from __future__ import annotations

from PIL import Image

from common.records import EncodedPrompt, RewardContext, Sample
from common.vision import PromptTooLongError, encode_prompt
from orchestration.config import RunConfig
from orchestration.data.prompts import THINKING_SUFFIX


class BadSample(ValueError):
    """A sample that cannot become a prompt: its image is missing, unreadable, oversized, or refused by the resize
    or the processor (e.g. an aspect ratio over 200), its prompt is over the token limit, or its row holds no
    usable answer. The message gives the cause; callers log it with the sample's origin (file:row)."""


# What a broken image file raises from PIL (UnidentifiedImageError and truncated files are OSErrors).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def encode_sample(processor, cfg: RunConfig, sample: Sample) -> tuple[EncodedPrompt, RewardContext]:
    """The prompt as both engines and learner will see it, and what the reward needs to score its answers.
    Every way a sample can fail here (decode, resize, processor, length) raises `BadSample`, which each caller
    turns into a skipped, logged and counted sample; a bug elsewhere is not caught."""
    try:
        image = sample.load_image(max_pixels=cfg.data.max_image_pixels)
    except _IMAGE_ERRORS as exc:
        raise BadSample(f"image {_image_name(sample)}: {type(exc).__name__}: {exc}") from exc
    question = sample.question + (THINKING_SUFFIX if cfg.reward.options.thinking else "")
    try:
        p = encode_prompt(processor, sample.id, image, question, min_pixels=cfg.model.min_pixels,
                          max_pixels=cfg.model.max_pixels, max_prompt_tokens=cfg.model.max_prompt_tokens)
    except PromptTooLongError as exc:  # never truncated: a multimodal prompt cut short loses image tokens
        raise BadSample(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - the resize or processor refused this image: skip the sample
        raise BadSample(f"image {_image_name(sample)} of {image.width} x {image.height} refused by the "
                        f"resize or the processor: {type(exc).__name__}: {exc}") from exc
    ctx = RewardContext(sample.id, sample.task, sample.solution, p.scale, (p.image.shape[1], p.image.shape[0]),
                        image.size)
    return p, ctx


def _image_name(sample: Sample) -> str:
    return sample.image if isinstance(sample.image, str) else "<bytes>" if isinstance(sample.image, bytes) \
        else str(sample.image)


def encode(processor, cfg: RunConfig, samples: list[Sample]) -> tuple[list[EncodedPrompt], list[RewardContext]]:
    """`encode_sample` over a list (a bad sample raises BadSample)."""
    pairs = [encode_sample(processor, cfg, s) for s in samples]
    return [p for p, _ in pairs], [c for _, c in pairs]


def draw_prompts(processor, cfg: RunConfig, sampler, n: int, skipped) -> tuple[list[Sample], list[EncodedPrompt],
                                                                                    list[RewardContext]]:
    """The next `n` usable prompts: a bad sample is reported to `skipped` (SkippedSamples), left out of later
    epochs, and the next one takes its place, so the batch keeps its size."""
    samples, prompts, contexts = [], [], []
    while len(samples) < n:
        [sample] = sampler.next(1)
        try:
            prompt, ctx = encode_sample(processor, cfg, sample)
        except BadSample as exc:
            skipped.report(sample, str(exc))
            sampler.exclude(sample.id)
            continue
        samples.append(sample)
        prompts.append(prompt)
        contexts.append(ctx)
    return samples, prompts, contexts
