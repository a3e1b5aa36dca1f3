"""Writes a tiny, randomly initialised Qwen2.5-VL checkpoint directory that loads like a real one.

Tests and the CPU demo go through the same `from_pretrained(path)` code as Qwen2.5-VL-3B-Instruct: a real
config, safetensors weights, a tokenizer (built here in code, word-level so that a short answer is one or two
tokens and a random policy hits it now and then), a chat template, and the image/video processor configs.
Nothing is fetched from any hub.
"""
from __future__ import annotations

from pathlib import Path

import torch

# Qwen's special tokens, in Qwen's order, so the ids the code looks up by name exist.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<unk>",
]
COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
WORDS = [
    # chat template and system prompt
    "system", "user", "assistant", "You", "are", "a", "helpful",
    # prompts of the synthetic and the four perception tasks
    "What", "colour", "is", "the", "shape", "Output", "bounding", "box", "boxes", "of", "in", "image", "all",
    "OCR", "this", "Please", "output", "bbox", "coordinates", "and", "names", "Answer", "with", "one", "word",
    "bbox_2d", "label", "json", "think", "answer", "dot", "dots", "object", "objects", "text",
    *COLOURS, *SHAPES,
]
PUNCTUATION = list(" \n.,:;?!-_/()[]{}\"'<>=+*`#")
DIGITS = list("0123456789")
# Words, single digits, runs of white space and single punctuation marks; decoding fuses tokens back exactly.
PRETOKENIZE_PATTERN = r"\s|\d|[^\W\d]\w*|[^\w\s]"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    """A word-level fast tokenizer with Qwen's special tokens; exact round trip for in-vocabulary text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + PUNCTUATION + DIGITS + WORDS:
        vocab.setdefault(tok, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        model_max_length=4096,
        padding_side="left",
    )


def write_tiny_qwen25vl(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    initializer_range: float = 0.02,
    seed: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    vocab_size: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    rope_theta: float = 10000.0,
    mrope_section: list[int] | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a loadable tiny Qwen2.5-VL checkpoint to `out_dir` and return the path.

    `rope_theta` and `mrope_section` set how much the (temporal, height, width) positions of image tokens rotate
    the attention: with Qwen's 1e4 and a head of 32, the height/width sections get the slowest frequencies and a
    4 x 4 image grid barely rotates at all (~0.003 rad per step), so a tiny model cannot tell where an object is.
    `tie_word_embeddings`: the output layer shares the input embedding, as in Qwen2.5-VL-3B (the 7B does not)."""
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = num_heads
    head_dim = hidden_size // heads
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size or len(tokenizer),  # larger: padding rows past the tokenizer, as in Qwen's
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                             "mrope_section": list(mrope_section or _mrope_section(head_dim))},
            tie_word_embeddings=tie_word_embeddings,
            initializer_range=initializer_range,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden_size,
            intermediate_size=vision_hidden_size * 2,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
            initializer_range=initializer_range,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
    )
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=14, merge_size=2, temporal_patch_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) in Qwen's 2:3:3 proportion."""
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [t, h, half - t - h]
