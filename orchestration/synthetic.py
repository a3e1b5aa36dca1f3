"""Synthetic scenes drawn with PIL, deterministic by seed, so every task trains and evaluates on a CPU."""
from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from common.records import Sample
from reward_service.colour import COLOURS

RGB = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")
COLOUR_QUESTION = "What colour is the shape? Answer with one word."


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def colour_samples(n: int, seed: int, size: int = 56, split: str = "train") -> list[Sample]:
    """`n` images of one large shape in one of four colours on a light background; truth = the colour name."""
    rng = random.Random(f"colour-{split}-{seed}")
    samples = []
    for i in range(n):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        bg = tuple(rng.randint(200, 255) for _ in range(3))
        image = Image.new("RGB", (size, size), bg)
        side = rng.randint(size // 2, size - 4)
        x1, y1 = rng.randint(0, size - side), rng.randint(0, size - side)
        draw_shape(ImageDraw.Draw(image), shape, (x1, y1, x1 + side - 1, y1 + side - 1), RGB[colour])
        samples.append(Sample(
            id=f"colour-{split}-{seed}-{i}", task="colour", image=_png(image), question=COLOUR_QUESTION,
            solution=colour, image_size=(size, size),
        ))
    return samples
