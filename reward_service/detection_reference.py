"""The detection reward's matching and scoring written plainly, one box pair at a time: the baseline of
`make bench` and a test oracle.

Same formula and operation order as reward_service/detection.py, so the two agree exactly.
"""
from __future__ import annotations

import math

from scipy.optimize import linear_sum_assignment

from reward_service.boxes import box_iou, to_answer_space
from reward_service.detection import DEFAULT_MAX_ITEMS, MAX_REWARD, format_stage, size_weight


def _giou(a, b) -> float:
    iou = box_iou(a, b)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    union = area_a + area_b - iw * ih
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iou - (enclose - union) / enclose if enclose > 0 else iou


def detection_reward_reference(answer, gt_boxes, gt_labels, categories, *, convention, scale, orig_size,
                               resized_size, l1_normalized=False, size_weights=False, missing_penalty=True,
                               max_items=DEFAULT_MAX_ITEMS):
    """The detection reward written out step by step in plain Python, as SPEC.md words it: tests compare the fast one
    with it."""
    out, valid = format_stage(answer, len(gt_boxes), categories, convention)  # parsing is shared
    if not valid or len(gt_boxes) == 0:
        return out
    fmt = out["format"]
    n_pred = len(valid)  # every valid prediction counts; only the first max_items are matched
    valid = valid[:max_items]
    gts = [to_answer_space(b, convention, scale, orig_size) for b in gt_boxes]
    if convention == "qwen2vl":
        w, h = 1000.0, 1000.0
    else:
        w, h = float(resized_size[0]), float(resized_size[1])

    def cxcywh(b):
        """[x1, y1, x2, y2] -> [cx, cy, w, h]."""
        c = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]]
        return [c[0] / w, c[1] / h, c[2] / w, c[3] / h] if l1_normalized else c

    cost = []
    for pb in valid:
        p = pb.as_list()
        pc = cxcywh(p)
        row = []
        for g, glabel in zip(gts, gt_labels):
            gc = cxcywh(g)
            l1 = abs(pc[0] - gc[0]) + abs(pc[1] - gc[1]) + abs(pc[2] - gc[2]) + abs(pc[3] - gc[3])
            row.append(5.0 * l1 - 1.0 * (1.0 if pb.label == glabel else 0.0) - 2.0 * _giou(p, g))
        cost.append(row)
    rows, cols = linear_sum_assignment(cost)
    kept = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        iou = box_iou(valid[r].as_list(), gts[c])
        if iou > 0.5:
            kept.append((r, c, iou))
    if not kept:
        return out
    g, k = len(gt_boxes), len(kept)
    precision, recall = k / n_pred, k / g
    number = 0.75 * (2 * precision * recall / (precision + recall))
    label = sum(1.0 if valid[r].label == gt_labels[c] else 0.0 for r, c, _ in kept) / k
    if size_weights:
        ws = [size_weight((gt_boxes[c][2] - gt_boxes[c][0]) * (gt_boxes[c][3] - gt_boxes[c][1])) for _, c, _ in kept]
        iou = math.fsum(wt * i for wt, (_, _, i) in zip(ws, kept)) / math.fsum(ws)
    else:
        iou = math.fsum(i for _, _, i in kept) / k
    penalty = 0.5 * ((n_pred - k) / n_pred + (g - k) / g) if missing_penalty else 0.0
    total = min(MAX_REWARD, max(0.0, 0.25 * fmt + number + label + iou - penalty))
    return {"format": fmt, "number": number, "label": label, "iou": iou, "penalty": penalty, "total": total}
