"""Answer parsing for both box conventions, and box geometry. Bounded, never `eval`: any parse failure is 'no box'.

qwen25vl: JSON in pixels of the resized image the model saw, e.g. `[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]`
          (a single object, or a bare `[x1, y1, x2, y2]`, also parse).
qwen2vl:  `<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, integers in 0-1000.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

MAX_ANSWER_CHARS = 200_000  # longer answers are not parsed at all (no reward actor may stall on one)
# No image is 100k pixels wide; beyond this a coordinate is nonsense, and squared distances would overflow to inf.
MAX_COORDINATE = 1e5
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
# A ```json fence, closed or not: the released code strips an opening fence without a closing one too.
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*(?:```)?\s*$", re.S)
_QWEN2VL_BOX = re.compile(
    r"(?:<\|object_ref_start\|>([^<]{0,200})<\|object_ref_end\|>)?"
    r"<\|box_start\|>\((\d{1,4}),(\d{1,4})\),\((\d{1,4}),(\d{1,4})\)<\|box_end\|>"
)
_QWEN2VL_ONLY = re.compile(rf"(?:{_QWEN2VL_BOX.pattern})+")


@dataclass(frozen=True)
class Box:
    """One parsed box in the answer's coordinate space, with its label when the answer gave one."""
    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @property
    def valid(self) -> bool:
        """Not inverted: x2 >= x1 and y2 >= y1."""
        return self.x2 >= self.x1 and self.y2 >= self.y1

    def as_list(self) -> list[float]:
        """[x1, y1, x2, y2]."""
        return [self.x1, self.y1, self.x2, self.y2]


def strip_end_tokens(text: str) -> str | None:
    """The answer without edge white space and trailing end-of-turn tokens; None if it is too long to parse."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    text = text.strip()
    for tok in END_TOKENS:
        while text.endswith(tok):
            text = text[: -len(tok)].rstrip()
    return text


def strip_answer(text: str) -> str | None:
    """The answer without end-of-turn tokens and a ```json fence; None if it is too long to parse."""
    text = strip_end_tokens(text)
    if text is None:
        return None
    fenced = _FENCE.match(text)
    return fenced.group(1) if fenced else text


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, int) and abs(x) > MAX_COORDINATE:  # float() of a 309-digit JSON integer overflows
        return None
    x = float(x)
    return x if math.isfinite(x) and abs(x) <= MAX_COORDINATE else None


def _box_from(obj) -> Box | None:
    """A Box from a `{"bbox_2d": [...], "label": ...}` object or a bare 4-number list; None if malformed."""
    label = None
    if isinstance(obj, dict):
        label = obj.get("label")
        label = label if isinstance(label, str) else None
        obj = obj.get("bbox_2d")
    if not isinstance(obj, list) or len(obj) != 4:
        return None
    nums = [_number(v) for v in obj]
    if any(v is None for v in nums):
        return None
    return Box(*nums, label=label)


def parse_json_answer(text: str):
    """The JSON value of a qwen25vl answer, or None (also for text around the JSON: that is a format error)."""
    body = strip_answer(text)
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def parse_boxes(text: str, convention: str) -> list[Box | None] | None:
    """Every object of the answer in answer coordinates: Box, or None for a malformed item; None if the answer
    as a whole is not in the convention."""
    if convention == "qwen25vl":
        value = parse_json_answer(text)
        if isinstance(value, dict):
            return [_box_from(value)]
        if isinstance(value, list):
            if len(value) == 4 and all(_number(v) is not None for v in value):
                return [_box_from(value)]
            return [_box_from(item) for item in value]
        return None
    if convention == "qwen2vl":
        body = strip_answer(text)
        if body is None or not _QWEN2VL_ONLY.fullmatch(body):
            return None
        return [Box(float(a), float(b), float(c), float(d), label=(lab or None))
                for lab, a, b, c, d in _QWEN2VL_BOX.findall(body)]
    raise ValueError(f"unknown box convention {convention!r}")


def to_answer_space(box_xyxy, convention: str, scale: tuple[float, float], orig_size: tuple[int, int]) -> list[float]:
    """Ground truth in original-image pixels -> the coordinates the model answers in."""
    x1, y1, x2, y2 = box_xyxy
    if convention == "qwen25vl":
        sx, sy = scale
        return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    w, h = orig_size
    return [x1 / w * 1000, y1 / h * 1000, x2 / w * 1000, y2 / h * 1000]


def to_original_space(box_xyxy, convention: str, scale: tuple[float, float], orig_size: tuple[int, int]
                      ) -> list[float]:
    """A box the model gave -> original-image pixels (the inverse of `to_answer_space`)."""
    x1, y1, x2, y2 = box_xyxy
    if convention == "qwen25vl":
        sx, sy = scale
        return [x1 / sx, y1 / sy, x2 / sx, y2 / sy]
    w, h = orig_size
    return [x1 / 1000 * w, y1 / 1000 * h, x2 / 1000 * w, y2 / 1000 * h]


def answer_space_diagonal(convention: str, resized_size: tuple[int, int]) -> float:
    """The diagonal of the answer's space: the resized image's (qwen25vl) or 1000 * sqrt(2) (qwen2vl)."""
    if convention == "qwen2vl":
        return 1000 * math.sqrt(2)
    w, h = resized_size
    return math.hypot(w, h)


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes as plain floats (for one pair, faster than building arrays)."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] with boxes b [M, 4] (xyxy) -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def giou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Generalised IoU [N, M]: IoU - (enclosing area - union) / enclosing area."""
    iou = iou_matrix(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    union = area_a[:, None] + area_b[None, :] - iw * ih
    ew = np.maximum(a[:, None, 2], b[None, :, 2]) - np.minimum(a[:, None, 0], b[None, :, 0])
    eh = np.maximum(a[:, None, 3], b[None, :, 3]) - np.minimum(a[:, None, 1], b[None, :, 1])
    enclose = ew * eh
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(enclose > 0, iou - (enclose - union) / enclose, iou)
