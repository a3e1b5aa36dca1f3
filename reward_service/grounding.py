"""Visual grounding (RefCOCO/+/g): one box for a referring expression.

format = 1 if the whole answer is one box in the model's convention, else 0; answer = IoU(pred, gt)^p (p = 2 in
the released code, 1 in the paper's text; no threshold). total = format + answer, in [0, 2].
"""
from __future__ import annotations

import numpy as np

from reward_service.boxes import box_iou, parse_boxes, to_answer_space

ACC_THRESHOLDS = (0.1, 0.3, 0.5, 0.75, 0.95)


def predicted_box(answer: str, convention: str):
    """The answer's box if the answer is exactly one well-formed box, else None."""
    boxes = parse_boxes(answer, convention)
    if not boxes or len(boxes) != 1 or boxes[0] is None or not boxes[0].valid:
        return None
    return boxes[0]


def grounding_reward(answer: str, gt_xyxy, *, convention: str, scale, orig_size, iou_power: float = 2.0
                     ) -> dict[str, float]:
    """Components `format`, `iou` (raw IoU, logged), `answer` (IoU^p) and `total`."""
    box = predicted_box(answer, convention)
    if box is None:
        return {"format": 0.0, "iou": 0.0, "answer": 0.0, "total": 0.0}
    iou = box_iou(box.as_list(), to_answer_space(gt_xyxy, convention, scale, orig_size))
    ans = iou ** iou_power
    return {"format": 1.0, "iou": iou, "answer": ans, "total": 1.0 + ans}


def grounding_metrics(ious: list[float]) -> dict[str, float]:
    """Acc@{0.1,0.3,0.5,0.75,0.95} (IoU >= t) and mean IoU; a failed parse counts as IoU 0."""
    arr = np.asarray(ious, dtype=np.float64)
    out = {f"acc@{t}": float((arr >= t).mean()) if arr.size else 0.0 for t in ACC_THRESHOLDS}
    out["miou"] = float(arr.mean()) if arr.size else 0.0
    return out
