"""The synthetic 'name the colour of the shape' task: small enough for a tiny model to learn on a CPU.

Answers are one word, one or two tokens with the end of turn, so a random policy scores now and then.
Reward in [0, 1] = 0.2 * format + 0.8 * accuracy, with partial format credit for a correct-looking start.
"""
from __future__ import annotations

import re

COLOURS = ("red", "green", "blue", "yellow")
FORMAT_WEIGHT, ACCURACY_WEIGHT = 0.2, 0.8
MAX_ANSWER_CHARS = 256  # a longer answer cannot be one word: look no further
_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")


def colour_reward(answer: str, truth: str) -> dict[str, float]:
    """Components: format 1 if the answer is exactly one colour word, 0.5 if it only starts with one; accuracy
    1 if its first word is the true colour. `total` is the weighted sum."""
    if truth not in COLOURS:
        raise ValueError(f"ground-truth colour {truth!r} is not one of {COLOURS}")
    head = answer[:MAX_ANSWER_CHARS]
    match = _FIRST_WORD.match(head)
    first = match.group(1).lower() if match else ""
    exact = len(answer) <= MAX_ANSWER_CHARS and head.strip().lower() in COLOURS
    fmt = 1.0 if exact else 0.5 if first in COLOURS else 0.0
    acc = 1.0 if first == truth else 0.0
    return {"format": fmt, "accuracy": acc, "total": FORMAT_WEIGHT * fmt + ACCURACY_WEIGHT * acc}
