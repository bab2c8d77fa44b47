"""Binary and per-category moderation metrics: precision, recall, F1, false-positive rate, AUPRC, threshold curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def binary_metrics(y_true: Sequence[bool], y_pred: Sequence[bool]) -> dict[str, float]:
    """Precision, recall, F1 and FPR of hard predictions (0/0 counts as 0), with the confusion counts."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fpr, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def average_precision(y_true: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the precision-recall curve as scikit-learn's average precision; 0 when there is no positive."""
    from sklearn.metrics import average_precision_score

    t = np.asarray(y_true, dtype=bool)
    return float(average_precision_score(t, np.asarray(scores, dtype=float))) if t.any() else 0.0


def threshold_curves(y_true: Sequence[bool], scores: Sequence[float], thresholds: Sequence[float]
                     ) -> dict[str, list[float]]:
    """Precision, recall, F1 and FPR of ``score >= τ`` for every τ in ``thresholds``."""
    curves: dict[str, list[float]] = {"threshold": [float(x) for x in thresholds], "precision": [], "recall": [],
                                      "f1": [], "fpr": []}
    s = np.asarray(scores, dtype=float)
    for tau in thresholds:
        m = binary_metrics(y_true, s >= tau)
        for k in ("precision", "recall", "f1", "fpr"):
            curves[k].append(m[k])
    return curves


def per_category(true_cats: Sequence[Sequence[str]], pred_cats: Sequence[Sequence[str]], codes: Sequence[str]
                 ) -> dict[str, dict[str, float]]:
    """One-vs-rest metrics per hazard code: an item is positive for ``c`` if ``c`` is among its codes."""
    out = {}
    for c in codes:
        y = [c in t for t in true_cats]
        if not any(y):
            continue
        m = binary_metrics(y, [c in p for p in pred_cats])
        out[c] = {k: m[k] for k in ("precision", "recall", "f1", "fpr")} | {"support": int(sum(y))}
    return out
