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
    """A filled circle, square or triangle inside `box` (inclusive pixel bounds)."""
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


def _scene(rng: random.Random, size: int, n: int, min_side: int, max_side: int, distinct: str = "pair"):
    """`n` non-overlapping (colour, shape, box) objects on a light background; boxes are inclusive pixel bounds.
    `distinct`: "pair", no two objects of the same colour and shape; "attributes", no two of the same colour or of
    the same shape."""
    image = Image.new("RGB", (size, size), tuple(rng.randint(215, 255) for _ in range(3)))
    draw, objects = ImageDraw.Draw(image), []
    for _ in range(200):
        if len(objects) == n:
            break
        side = rng.randint(min_side, max_side)
        x1, y1 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x1, y1, x1 + side, y1 + side)
        if any(not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]) for _, _, b in objects):
            continue
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        if any((colour, shape) == (c, s) for c, s, _ in objects):
            continue
        if distinct == "attributes" and any(colour == c or shape == s for c, s, _ in objects):
            continue
        draw_shape(draw, shape, (box[0], box[1], box[2] - 1, box[3] - 1), RGB[colour])
        objects.append((colour, shape, box))
    return image, objects


def grounding_samples(n: int, seed: int, size: int = 112, split: str = "train", objects: tuple[int, int] = (2, 3),
                      distinct: str = "pair") -> list[Sample]:
    """Two or three (`objects`) shapes; the question names one by colour and shape; truth = its box, and every
    object's box and name (`scene`, for the warm start's description with the `thinking` option). `distinct`
    ("pair" or "attributes"): whether the name may need both of its words (`_scene`)."""
    from orchestration.data.prompts import grounding_prompt

    rng = random.Random(f"grounding-{split}-{seed}")
    out = []
    for i in range(n):
        image, objs = _scene(rng, size, rng.randint(*objects), size // 4, size // 2, distinct)
        colour, shape, box = rng.choice(objs)
        scene = [{"box": [float(v) for v in b], "label": f"{c} {s}"} for c, s, b in objs]
        out.append(Sample(f"grounding-{split}-{seed}-{i}", "grounding", _png(image),
                          grounding_prompt(f"{colour} {shape}"), {"box": [float(v) for v in box], "scene": scene},
                          (size, size)))
    return out


def counting_samples(n: int, seed: int, size: int = 112, split: str = "train", max_count: int = 5) -> list[Sample]:
    """One to `max_count` dots; truth = their centre points (PixMo-Count style)."""
    from orchestration.data.prompts import counting_prompt

    rng = random.Random(f"counting-{split}-{seed}")
    out = []
    for i in range(n):
        image = Image.new("RGB", (size, size), (245, 245, 245))
        draw, boxes = ImageDraw.Draw(image), []
        target = rng.randint(1, max_count)
        colour = RGB[rng.choice(COLOURS)]
        for _ in range(500):
            if len(boxes) == target:
                break
            r = size // 14
            cx, cy = rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)
            if all(abs(cx - x) > 2 * r + 1 or abs(cy - y) > 2 * r + 1 for x, y in boxes):
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
                boxes.append((cx, cy))
        out.append(Sample(f"counting-{split}-{seed}-{i}", "counting", _png(image), counting_prompt("dot"),
                          {"points": [[float(x), float(y)] for x, y in boxes], "count": len(boxes)}, (size, size)))
    return out


OCR_WORDS = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "box", "image", "text", "dot", "word")


def ocr_samples(n: int, seed: int, size: int = 112, split: str = "train") -> list[Sample]:
    """One to three words drawn in black with PIL's built-in font; truth = the text."""
    from PIL import ImageFont

    from orchestration.data.prompts import ocr_prompt

    rng = random.Random(f"ocr-{split}-{seed}")
    font = ImageFont.load_default(size=14)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(OCR_WORDS) for _ in range(rng.randint(1, 3)))
        image = Image.new("RGB", (size * 2, size // 2), (255, 255, 255))
        ImageDraw.Draw(image).text((rng.randint(2, 12), rng.randint(2, 16)), text, fill=(0, 0, 0), font=font)
        out.append(Sample(f"ocr-{split}-{seed}-{i}", "ocr", _png(image), ocr_prompt(), {"text": text},
                          image.size))
    return out


def detection_samples(n: int, seed: int, size: int = 112, split: str = "train", objects: tuple[int, int] = (1, 3)
                      ) -> list[Sample]:
    """One to three (`objects`) shapes; categories are the shape names; truth = boxes and labels (COCO style)."""
    from orchestration.data.prompts import detection_prompt

    rng = random.Random(f"detection-{split}-{seed}")
    out = []
    for i in range(n):
        image, objs = _scene(rng, size, rng.randint(*objects), size // 5, size // 2)
        out.append(Sample(f"detection-{split}-{seed}-{i}", "detection", _png(image), detection_prompt(list(SHAPES)),
                          {"boxes": [[float(v) for v in b] for _, _, b in objs], "labels": [s for _, s, _ in objs],
                           "categories": list(SHAPES), "image_id": i + 1}, (size, size)))
    return out


SYNTHETIC = {"colour": colour_samples, "grounding": grounding_samples, "counting": counting_samples,
             "ocr": ocr_samples, "detection": detection_samples}
