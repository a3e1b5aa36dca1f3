"""OCR (PageOCR): answer = 1 - Levenshtein(pred, gt) / max(len) at character level (rapidfuzz); 1 if both empty."""
from __future__ import annotations

import logging
import re
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
    """`answer` = `total` = 1 - normalised character Levenshtein distance of the cleaned texts, in [0, 1] (1 for two
    empty texts)."""
    pred, gt = clean_text(answer), clean_text(gt)
    # normalized_similarity = 1 - distance / max(len(a), len(b)), and 1.0 for two empty strings.
    sim = float(Levenshtein.normalized_similarity(pred, gt))
    return {"answer": sim, "total": sim}


# Han characters (CJK Unified Ideographs, Extension A, Compatibility Ideographs): text holding any is segmented
# into words by jieba rather than split on spaces, which Chinese does not use.
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def words(text: str) -> list[str]:
    """The words of a page for precision/recall/F1: split on white space, or, where the text holds Chinese,
    segmented by jieba (the word segmenter the paper's released OCR evaluation uses), white space dropped."""
    if not HAN.search(text):
        return text.split()
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs its dictionary load at INFO
    return [w for w in jieba.lcut(text) if w.strip()]


def ocr_metrics(preds: list[str], gts: list[str]) -> dict[str, float]:
    """Normalised edit distance (lower is better), word-level precision/recall/F1 (bag of `words`), corpus BLEU in
    [0, 1] (sacrebleu; its Chinese tokenizer where any text holds Chinese, else its default 13a)."""
    import sacrebleu

    preds, gts = [clean_text(p) for p in preds], [clean_text(g) for g in gts]
    ned = [float(Levenshtein.normalized_distance(p, g)) for p, g in zip(preds, gts, strict=True)]
    precision, recall, f1 = [], [], []
    for p, g in zip(preds, gts):
        pt, gt = Counter(words(p)), Counter(words(g))
        common = sum((pt & gt).values())
        pr = common / max(sum(pt.values()), 1)
        rc = common / max(sum(gt.values()), 1)
        precision.append(pr if pt else float(not gt))
        recall.append(rc if gt else float(not pt))
        f1.append(0.0 if pr + rc == 0 else 2 * pr * rc / (pr + rc))
    chinese = any(HAN.search(t) for t in preds + gts)
    bleu = sacrebleu.corpus_bleu(preds, [gts], tokenize="zh" if chinese else "13a").score / 100 if preds else 0.0
    return {"edit_distance": float(np.mean(ned)) if ned else 0.0, "precision": float(np.mean(precision or [0])),
            "recall": float(np.mean(recall or [0])), "f1": float(np.mean(f1 or [0])), "bleu": float(bleu)}
