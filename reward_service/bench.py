"""`make bench`: reward throughput per task against a plain per-sample Python baseline of the same formula.

Both run in the same process on the same answers; the values must be identical, and the ratio is printed.
"""
from __future__ import annotations

import json
import math
import random
import time

from scipy.optimize import linear_sum_assignment

from reward_service.boxes import parse_boxes, to_answer_space
from reward_service.counting import DEFAULT_MAX_ITEMS, counting_reward, points_to_answer_space
from reward_service.detection import detection_reward
from reward_service.detection_reference import detection_reward_reference
from reward_service.grounding import grounding_reward, predicted_box
from reward_service.ocr import clean_text, ocr_reward

GEO = dict(scale=(0.5, 0.5), orig_size=(1280, 960))
RESIZED = (640, 480)
CATS = [f"class{i}" for i in range(80)]


# ---- plain baselines (one pair / one character at a time) ----------------------------------------------------------
def grounding_baseline(answer, gt, *, convention, scale, orig_size, iou_power=2.0):
    """Grounding reward of each answer in plain Python floats (the benchmark's baseline)."""
    box = predicted_box(answer, convention)
    if box is None:
        return {"format": 0.0, "iou": 0.0, "answer": 0.0, "total": 0.0}
    b, g = box.as_list(), to_answer_space(gt, convention, scale, orig_size)
    # One pair, written out (the library version is boxes.box_iou, the same arithmetic).
    iw = max(min(b[2], g[2]) - max(b[0], g[0]), 0.0)
    ih = max(min(b[3], g[3]) - max(b[1], g[1]), 0.0)
    union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
    iou = iw * ih / union if union > 0 else 0.0
    return {"format": 1.0, "iou": iou, "answer": iou ** iou_power, "total": 1.0 + iou ** iou_power}


def counting_baseline(answer, gt_points, *, convention, scale, orig_size, resized_size, max_items=DEFAULT_MAX_ITEMS):
    """Counting reward per answer with per-sample Python loops (the baseline)."""
    boxes = parse_boxes(answer, convention)
    if not boxes or any(b is None for b in boxes):
        return {"format": 0.0, "answer": 0.0, "count_error": float(len(gt_points)), "total": 0.0}
    pred = [((b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2) for b in boxes[:max_items]]
    gt = points_to_answer_space(gt_points, convention, scale, orig_size).tolist()
    dist = [[math.sqrt((p[0] - g[0]) * (p[0] - g[0]) + (p[1] - g[1]) * (p[1] - g[1])) for g in gt] for p in pred]
    rows, cols = linear_sum_assignment(dist)
    mean = sum(dist[r][c] for r, c in zip(rows, cols)) / len(rows)
    diag = math.hypot(*resized_size)
    n, m = len(boxes), len(gt)
    ans = min(n, m) / max(n, m) * max(0.0, 1.0 - mean / diag)
    return {"format": 1.0, "answer": ans, "count_error": float(abs(n - m)), "total": 1.0 + ans}


def levenshtein(a: str, b: str) -> int:
    """Character edit distance by the textbook dynamic program (the baseline of rapidfuzz)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_baseline(answer, gt):
    """OCR reward per answer with `levenshtein` (the baseline)."""
    pred, gt = clean_text(answer), clean_text(gt)
    longest = max(len(pred), len(gt))
    sim = 1.0 if longest == 0 else 1.0 - levenshtein(pred, gt) / longest
    return {"answer": sim, "total": sim}


# ---- workloads -----------------------------------------------------------------------------------------------------
def _box(rng, w=1280, h=960):
    x, y = rng.uniform(0, w - 100), rng.uniform(0, h - 100)
    return [x, y, x + rng.uniform(20, 100), y + rng.uniform(20, 100)]


def _jitter(rng, b, s=0.5, k=8.0):
    return [round(v * s + rng.uniform(-k, k), 1) for v in b]


def workloads(n: int, seed: int = 0):
    """The benchmark's answers and truths per task, deterministic by seed."""
    rng = random.Random(seed)
    out = {}
    gts = [_box(rng) for _ in range(n)]
    out["grounding"] = ([json.dumps({"bbox_2d": _jitter(rng, g), "label": "x"}) for g in gts], gts)
    pts = [[[rng.uniform(0, 1280), rng.uniform(0, 960)] for _ in range(rng.randint(1, 20))] for _ in range(n)]
    out["counting"] = ([json.dumps([{"bbox_2d": _jitter(rng, [p[0] - 5, p[1] - 5, p[0] + 5, p[1] + 5]), "label": "x"}
                                    for p in ps[: max(1, len(ps) - rng.randint(0, 2))]]) for ps in pts], pts)
    words = "the quick brown fox jumps over a lazy dog while perception policies read every page".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(n)]
    out["ocr"] = ([t.replace("o", "0", rng.randint(0, 3)) + rng.choice(["", " extra"]) for t in texts], texts)
    for k in (10, 50):
        det = []
        for _ in range(max(1, n // (k // 5))):
            boxes = [_box(rng) for _ in range(k)]
            labels = [rng.choice(CATS) for _ in range(k)]
            items = [{"bbox_2d": _jitter(rng, b, k=15.0), "label": lab if rng.random() < 0.8 else rng.choice(CATS)}
                     for b, lab in zip(boxes, labels) if rng.random() < 0.9]
            det.append((json.dumps(items), boxes, labels))
        out[f"detection@{k}"] = det
    return out


def _time(fn, reps: int = 1):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        values = fn()
        best = min(best, time.perf_counter() - t0)
    return best, values


def run(n: int = 400) -> list[dict]:
    """Each task's reward over `n` samples, fast and baseline, asserting identical values; rows of samples/s."""
    loads = workloads(n)
    cases = {
        "grounding": (lambda: [grounding_reward(a, g, convention="qwen25vl", **GEO) for a, g in zip(*loads["grounding"])],
                      lambda: [grounding_baseline(a, g, convention="qwen25vl", **GEO) for a, g in zip(*loads["grounding"])]),
        "counting": (lambda: [counting_reward(a, p, convention="qwen25vl", resized_size=RESIZED, **GEO)
                              for a, p in zip(*loads["counting"])],
                     lambda: [counting_baseline(a, p, convention="qwen25vl", resized_size=RESIZED, **GEO)
                              for a, p in zip(*loads["counting"])]),
        "ocr": (lambda: [ocr_reward(a, t) for a, t in zip(*loads["ocr"])],
                lambda: [ocr_baseline(a, t) for a, t in zip(*loads["ocr"])]),
    }
    for k in (10, 50):
        det = loads[f"detection@{k}"]
        cases[f"detection@{k}"] = (
            lambda det=det: [detection_reward(a, b, lab, CATS, convention="qwen25vl", resized_size=RESIZED, **GEO)
                             for a, b, lab in det],
            lambda det=det: [detection_reward_reference(a, b, lab, CATS, convention="qwen25vl",
                                                        resized_size=RESIZED, **GEO) for a, b, lab in det])
    rows = []
    for name, (fast, plain) in cases.items():
        t_fast, v_fast = _time(fast, 3)
        t_plain, v_plain = _time(plain, 3)
        if v_fast != v_plain:
            bad = next(i for i, (a, b) in enumerate(zip(v_fast, v_plain)) if a != b)
            raise AssertionError(f"{name}: values differ at answer {bad}: {v_fast[bad]} vs {v_plain[bad]}")
        count = len(v_fast)
        rows.append({"task": name, "answers": count, "samples_per_s": count / t_fast,
                     "baseline_samples_per_s": count / t_plain, "speedup": t_plain / t_fast,
                     "mean_reward": sum(v["total"] for v in v_fast) / count})
    return rows


def worst_cases() -> list[tuple[str, str, float]]:
    """The slowest answers that fit under the parse limit (MAX_ANSWER_CHARS, far more than any configured
    max_new_tokens can produce), against as much ground truth as a real image carries and more."""
    from reward_service.boxes import MAX_ANSWER_CHARS

    def flood(make_item, limit=MAX_ANSWER_CHARS - 2):
        """The slowest answer within the response cap for each task (thousands of boxes, huge text)."""
        items, size = [], 0
        while True:
            item = json.dumps(make_item(len(items)), separators=(",", ":"))
            if size + len(item) + 1 > limit:
                return "[" + ",".join(items) + "]", len(items)
            items.append(item)
            size += len(item) + 1

    box = lambda i: [i % 9, i // 9 % 9, i % 9 + 1, i // 9 % 9 + 1]  # noqa: E731
    points = [[i % 640, (i * 7) % 480] for i in range(2000)]
    gt_boxes = [[x, y, x + 20, y + 20] for x, y in ((i % 40 * 30, i // 40 * 30) for i in range(1000))]
    counting, n_count = flood(box)
    detection, n_det = flood(lambda i: {"bbox_2d": box(i), "label": CATS[i % 80]})
    page = " ".join(["perception"] * 2000)
    cases = [
        ("grounding", f"{n_count:,} boxes (not one box)",
         lambda: grounding_reward(counting, [0, 0, 10, 10], convention="qwen25vl", **GEO)),
        ("counting", f"{n_count:,} boxes vs 2,000 points",
         lambda: counting_reward(counting, points, convention="qwen25vl", resized_size=RESIZED, **GEO)),
        ("ocr", f"{MAX_ANSWER_CHARS:,} chars vs a {len(page):,}-char page",
         lambda: ocr_reward("x" * MAX_ANSWER_CHARS, page)),
        ("detection", f"{n_det:,} boxes vs 1,000 objects",
         lambda: detection_reward(detection, gt_boxes, [CATS[i % 80] for i in range(1000)], CATS,
                                  convention="qwen25vl", resized_size=RESIZED, **GEO)),
    ]
    return [(task, what, _time(fn, 3)[0]) for task, what, fn in cases]


def main() -> int:
    """`make bench`: the throughput table, then the worst-case scoring time per task."""
    rows = run()
    print(f"{'reward':<14}{'answers':>8}{'samples/s':>12}{'baseline/s':>12}{'ratio':>10}{'mean reward':>13}")
    for r in rows:
        print(f"{r['task']:<14}{r['answers']:>8}{r['samples_per_s']:>12.0f}{r['baseline_samples_per_s']:>12.0f}"
              f"{r['speedup']:>9.2f}x{r['mean_reward']:>13.3f}")
    print("baseline: the same formula in plain per-sample Python, same answers, same run; values identical")
    print(f"\n{'worst case':<14}{'answer':<42}{'seconds':>9}")
    for task, what, seconds in worst_cases():
        print(f"{task:<14}{what:<42}{seconds:>9.3f}")
    print("worst case: the slowest answer under the 200k-character parse limit; each must score in under 1 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
