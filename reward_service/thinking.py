"""The `thinking` option (SPEC.md): answers as `<think>...</think><answer>...</answer>`, off by default as in the
paper (its main finding: thinking hurts perception). The task reward scores what is inside <answer>; a separate
0/1 `thinking_format` component rewards the layout itself."""
from __future__ import annotations

import re

from reward_service.boxes import strip_end_tokens

_LAYOUT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.S)


def thinking_answer(text: str) -> str | None:
    """The <answer> content when the whole text is one think block then one answer block; else None."""
    text = strip_end_tokens(text)
    if text is None:
        return None
    match = _LAYOUT.fullmatch(text)
    if match is None or "<answer>" in match.group(2) or "<think>" in match.group(1):
        return None
    return match.group(2).strip()


def answer_part(text: str, thinking: bool) -> str:
    """What the task reward and the metrics read: the whole answer, or with `thinking` its <answer> content
    (nothing when the layout is wrong)."""
    if not thinking:
        return text
    inner = thinking_answer(text)
    return "" if inner is None else inner
