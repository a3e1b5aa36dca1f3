"""The user-turn prompts of SPEC.md (system prompt: 'You are a helpful assistant.')."""
from __future__ import annotations

import re


def grounding_prompt(expression: str) -> str:
    """SPEC's grounding prompt for a referring expression."""
    return f"Output the bounding box of the {expression} in the image."


def grounding_expression(question: str) -> str | None:
    """The referring expression of a grounding prompt (None for another prompt)."""
    m = re.fullmatch(r"Output the bounding box of the (.+) in the image\.", question)
    return m.group(1) if m else None


def counting_prompt(label: str) -> str:
    """SPEC's counting prompt for an object label."""
    return f"Output all the bounding boxes of the {label}"


def counting_label(question: str) -> str | None:
    """The object label of a counting prompt (None for another prompt)."""
    m = re.fullmatch(r"Output all the bounding boxes of the (.+)", question)
    return m.group(1) if m else None


def ocr_prompt() -> str:
    """SPEC's OCR prompt."""
    return "OCR this image."


def detection_prompt(categories: list[str]) -> str:
    """SPEC's detection training prompt for a category list."""
    return f"Please output bbox coordinates and names of {', '.join(categories)}."


def detection_eval_prompt(categories: list[str]) -> str:
    """SPEC's alternative detection prompt for evaluation."""
    return ("Locate every item from the category list in the image and output the coordinates in JSON format. "
            f"The category set includes {', '.join(categories)}.")


# The `thinking` option (off by default, as in the paper: thinking hurts perception), in R1-style tags.
THINKING_SUFFIX = (" First output the thinking process in <think> </think> tags and then output the final answer in "
                   "<answer> </answer> tags.")
