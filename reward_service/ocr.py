"""OCR (PageOCR): answer = 1 - Levenshtein(pred, gt) / max(len) at character level (rapidfuzz); 1 if both empty."""
from __future__ import annotations

from collections import Counter

import numpy as np
from rapidfuzz.distance import Levenshtein

from reward_service.boxes import END_TOKENS, MAX_ANSWER_CHARS


def clean_text(answer: str) -> str:
    """End-of-turn tokens and edge white space removed: applied to answer and ground truth alike."""
    text = answer[:MAX_ANSWER_CHARS]
    for tok in END_TOKENS:
        text = text.replace(tok, "")
    return text.strip()


def ocr_reward(answer: str, gt: str) -> dict[str, float]:
    pred, gt = clean_text(answer), clean_text(gt)
    # normalized_similarity = 1 - distance / max(len(a), len(b)), and 1.0 for two empty strings.
    sim = float(Levenshtein.normalized_similarity(pred, gt))
    return {"answer": sim, "total": sim}


def ocr_metrics(preds: list[str], gts: list[str]) -> dict[str, float]:
    """Normalised edit distance (lower is better), token-level precision/recall/F1 (bag of words), corpus BLEU."""
    import sacrebleu

    preds, gts = [clean_text(p) for p in preds], [clean_text(g) for g in gts]
    ned = [float(Levenshtein.normalized_distance(p, g)) for p, g in zip(preds, gts, strict=True)]
    precision, recall, f1 = [], [], []
    for p, g in zip(preds, gts):
        pt, gt = Counter(p.split()), Counter(g.split())
        common = sum((pt & gt).values())
        pr = common / max(sum(pt.values()), 1)
        rc = common / max(sum(gt.values()), 1)
        precision.append(pr if pt else float(not gt))
        recall.append(rc if gt else float(not pt))
        f1.append(0.0 if pr + rc == 0 else 2 * pr * rc / (pr + rc))
    bleu = sacrebleu.corpus_bleu(preds, [gts]).score / 100 if preds else 0.0
    return {"edit_distance": float(np.mean(ned)) if ned else 0.0, "precision": float(np.mean(precision or [0])),
            "recall": float(np.mean(recall or [0])), "f1": float(np.mean(f1 or [0])), "bleu": float(bleu)}
