"""Object detection (COCO): Perception-R1's detection reward, maximum 3.0, and COCO AP through pycocotools.

1. Parse the JSON list. An item is valid with `bbox_2d` (4 numbers, x2 >= x1, y2 >= y1) and a `label` in the
   category list; format = valid / items, worth 0.25 * format. No valid item -> 0. (The released code zeroes the
   whole answer when one box is inverted, from an assertion inside GIoU; here that item is just invalid.)
2. Hungarian matching with DETR's cost 5 * L1(cxcywh) - 1 * class_term - 2 * GIoU. L1 is in answer-space pixels
   as released (`l1_normalized` divides by the image size). class_term = 1 for the right label, 0 otherwise: the
   released code used a softmax over a one-hot 90-way vector (~0.030 vs ~0.011), so labels barely steered matching,
   and its 90 slots made category id 90 crash and shifted the lookup by one.
3. Keep matched pairs with IoU > 0.5; none kept -> the total is the format part.
4. + 0.75 * F1(kept / predicted, kept / ground truth)
5. + 1.0 * fraction of kept pairs with the right label + 1.0 * mean IoU of kept pairs (optionally weighted 3/2/1
   for small/medium/large ground truth, a weighted mean, not the released division by the IoU sum).
6. - 0.5 * (fp_rate + fn_rate) with fp_rate = (pred - kept) / pred, fn_rate = (gt - kept) / gt (paper Table 6;
   the released script has it off). Total clamped to [0, 3].
An image without objects answered with `[]` scores 3.0. Only the first `max_items` valid boxes take part in the
matching; the rest still count as predictions (in precision and fp_rate), so listing thousands of boxes costs
reward, and scoring time stays bounded.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from reward_service.boxes import Box, giou_matrix, iou_matrix, parse_boxes, to_answer_space, to_original_space

MAX_REWARD = 3.0
DEFAULT_MAX_ITEMS = 256
SMALL, MEDIUM = 32**2, 96**2


def valid_items(answer: str, categories, convention: str) -> tuple[list[Box], int] | None:
    """(valid boxes, number of items) or None when the answer is not a list in the convention."""
    items = parse_boxes(answer, convention)
    if items is None:
        return None
    cats = set(categories)
    valid = [b for b in items if b is not None and b.valid and b.label in cats]
    return valid, len(items)


def size_weight(area: float) -> float:
    """COCO size weight of a box's area in pixels: 3 small (< 32^2), 2 medium (< 96^2), 1 large."""
    return 3.0 if area < SMALL else 2.0 if area < MEDIUM else 1.0


def _cxcywh(b: np.ndarray) -> tuple[np.ndarray, ...]:
    return (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]


ZERO = {"format": 0.0, "number": 0.0, "label": 0.0, "iou": 0.0, "penalty": 0.0, "total": 0.0}


def format_stage(answer: str, num_gt: int, categories, convention: str) -> tuple[dict[str, float], list[Box]]:
    """Step 1: (components so far, valid boxes). Matching goes on only when the valid boxes and num_gt are both
    non-empty; otherwise the components returned are final."""
    parsed = valid_items(answer, categories, convention)
    if parsed is None:
        return ZERO, []
    valid, n_items = parsed
    if n_items == 0:
        return ({**ZERO, "format": 1.0, "total": MAX_REWARD} if num_gt == 0 else ZERO), []
    if not valid:
        return ZERO, []
    fmt = len(valid) / n_items
    return {**ZERO, "format": fmt, "total": 0.25 * fmt}, valid


def detection_reward(answer: str, gt_boxes, gt_labels, categories, *, convention: str, scale, orig_size,
                     resized_size, l1_normalized: bool = False, size_weights: bool = False,
                     missing_penalty: bool = True, max_items: int = DEFAULT_MAX_ITEMS) -> dict[str, float]:
    """Components format, number, label, iou, penalty and total; ground truth boxes are xyxy original pixels."""
    out, valid = format_stage(answer, len(gt_boxes), categories, convention)
    if not valid or len(gt_boxes) == 0:
        return out
    fmt = out["format"]
    n_pred = len(valid)  # every valid prediction counts; only the first max_items are matched
    valid = valid[:max_items]
    pred = np.array([b.as_list() for b in valid], dtype=np.float64)
    gt = np.array([to_answer_space(b, convention, scale, orig_size) for b in gt_boxes], dtype=np.float64)
    pcx, pcy, pw, ph = _cxcywh(pred)
    gcx, gcy, gw, gh = _cxcywh(gt)
    if l1_normalized:
        w, h = (1000.0, 1000.0) if convention == "qwen2vl" else (float(resized_size[0]), float(resized_size[1]))
        pcx, pw, gcx, gw = pcx / w, pw / w, gcx / w, gw / w
        pcy, ph, gcy, gh = pcy / h, ph / h, gcy / h, gh / h
    l1 = (np.abs(pcx[:, None] - gcx[None, :]) + np.abs(pcy[:, None] - gcy[None, :])
          + np.abs(pw[:, None] - gw[None, :]) + np.abs(ph[:, None] - gh[None, :]))
    same = np.array([[1.0 if b.label == g else 0.0 for g in gt_labels] for b in valid])
    cost = 5.0 * l1 - 1.0 * same - 2.0 * giou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(cost)
    ious = iou_matrix(pred, gt)[rows, cols]
    keep = ious > 0.5
    kept = int(keep.sum())
    if kept == 0:
        return out
    rows, cols, ious = rows[keep], cols[keep], ious[keep]
    g = len(gt_boxes)
    precision, recall = kept / n_pred, kept / g
    number = 0.75 * (2 * precision * recall / (precision + recall))
    label = float(same[rows, cols].mean())
    # math.fsum: exact, so the value does not depend on summation order (the reference agrees to the last bit).
    if size_weights:
        areas = [(gt_boxes[c][2] - gt_boxes[c][0]) * (gt_boxes[c][3] - gt_boxes[c][1]) for c in cols]
        weights = [size_weight(a) for a in areas]
        iou = math.fsum(w * i for w, i in zip(weights, ious.tolist())) / math.fsum(weights)
    else:
        iou = math.fsum(ious.tolist()) / kept
    penalty = 0.5 * ((n_pred - kept) / n_pred + (g - kept) / g) if missing_penalty else 0.0
    total = min(MAX_REWARD, max(0.0, 0.25 * fmt + number + label + iou - penalty))
    return {"format": fmt, "number": number, "label": label, "iou": iou, "penalty": penalty, "total": total}


def answer_to_coco(answer: str, categories, category_ids: dict[str, int], *, convention: str, scale, orig_size,
                   image_id: int, score: float = 1.0) -> list[dict]:
    """Valid predicted boxes as COCO results ([x, y, w, h] in original pixels); every score 1.0 as in the paper."""
    parsed = valid_items(answer, categories, convention)
    if parsed is None:
        return []
    results = []
    for b in parsed[0]:
        x1, y1, x2, y2 = to_original_space(b.as_list(), convention, scale, orig_size)
        results.append({"image_id": image_id, "category_id": category_ids[b.label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_ap(gt: dict, results: list[dict]) -> dict[str, float | None]:
    """COCOeval (bbox) on a COCO-format ground-truth dict and a results list: AP, AP50, AP75, APs/m/l, each in
    [0, 1], or None where COCOeval finds it undefined (its -1: no ground-truth object of that size, or none at all),
    never a made-up 0. `gt` gets the `info` and `licenses` keys that pycocotools 2.0.9-2.0.10 index unconditionally
    (`KeyError: 'info'`)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"info": {}, "licenses": [], **gt}
    if not gt.get("annotations"):
        return dict.fromkeys(COCO_STATS)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not results:  # objects, and no prediction: AP 0 wherever it is defined
            sizes = _size_counts(gt["annotations"])
            return {n: (0.0 if n not in sizes or sizes[n] else None) for n in COCO_STATS}
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {n: (float(v) if v >= 0 else None) for n, v in zip(COCO_STATS, ev.stats[:6])}


def _size_counts(annotations: list[dict]) -> dict[str, int]:
    """Non-crowd objects per COCO size range (small < 32², medium < 96², large), as COCOeval's areaRng."""
    areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in annotations if not a.get("iscrowd", 0)]
    return {"APs": sum(a < 32**2 for a in areas), "APm": sum(32**2 <= a < 96**2 for a in areas),
            "APl": sum(a >= 96**2 for a in areas)}
