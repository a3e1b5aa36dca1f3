"""Visual counting (PixMo-Count): the answer lists one box per object; ground truth is one point per object.

Gate: the answer must be one or more boxes in the convention, else the reward is 0. Predicted points are box centres,
matched to the true points by the Hungarian algorithm on L2 distance (pairs = min(N, M)).
answer = min(N, M) / max(N, M) * (1 - mean matched distance / D), D the answer space's diagonal. total = format +
answer, in [0, 2]. Only the first `max_items` boxes are matched (N still counts every box), which bounds the cost of
an answer listing thousands of boxes; no real image holds that many objects.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from reward_service.boxes import answer_space_diagonal, parse_boxes


def count_boxes(answer: str, convention: str) -> int | None:
    """Number of boxes the answer gives, or None when the answer is not in the convention."""
    boxes = parse_boxes(answer, convention)
    if not boxes or any(b is None for b in boxes):
        return None
    return len(boxes)


def points_to_answer_space(points, convention: str, scale, orig_size) -> np.ndarray:
    """Points [N, 2] in original pixels -> the answer's space: resized-image pixels (qwen25vl) or 0-1000 (qwen2vl)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if convention == "qwen25vl":
        return pts * np.asarray(scale, dtype=np.float64)
    return pts / np.asarray(orig_size, dtype=np.float64) * 1000.0


DEFAULT_MAX_ITEMS = 256


def counting_reward(answer: str, gt_points, *, convention: str, scale, orig_size, resized_size,
                    max_items: int = DEFAULT_MAX_ITEMS, count: int | None = None) -> dict[str, float]:
    """Components `format`, `answer`, `count_error` and `total` of one answer. `gt_points` [M, 2] in original
    pixels; None for a count-only row (PixMo-Count's validation and test splits), whose `answer` is the count ratio
    min(N, M) / max(N, M) alone, with no distance term. A true count of 0 is answered by an empty list (SPEC: the
    maximum); any box there is a false positive."""
    m = len(gt_points) if gt_points is not None else int(count)
    boxes = parse_boxes(answer, convention)
    if boxes == [] and m == 0:
        return {"format": 1.0, "answer": 1.0, "count_error": 0.0, "total": 2.0}
    if not boxes or any(b is None for b in boxes):
        return {"format": 0.0, "answer": 0.0, "count_error": float(m), "total": 0.0}
    n = len(boxes)
    if m == 0:
        return {"format": 1.0, "answer": 0.0, "count_error": float(n), "total": 1.0}
    ratio = min(n, m) / max(n, m)
    if gt_points is None:
        return {"format": 1.0, "answer": ratio, "count_error": float(abs(n - m)), "total": 1.0 + ratio}
    pred = np.array([[(b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2] for b in boxes[:max_items]], dtype=np.float64)
    gt = points_to_answer_space(gt_points, convention, scale, orig_size)
    dist = np.linalg.norm(pred[:, None, :] - gt[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    mean_dist = float(dist[rows, cols].mean())
    diag = answer_space_diagonal(convention, resized_size)
    ans = ratio * max(0.0, 1.0 - mean_dist / diag)
    return {"format": 1.0, "answer": ans, "count_error": float(abs(n - m)), "total": 1.0 + ans}


def counting_metrics(pred_counts: list[int | None], gt_counts: list[int]) -> dict[str, float]:
    """Exact-match accuracy of the number of boxes (an unparsable answer is wrong)."""
    hits = [p is not None and p == g for p, g in zip(pred_counts, gt_counts, strict=True)]
    return {"count_acc": float(np.mean(hits)) if hits else 0.0}
