"""Binary and per-category moderation metrics: precision, recall, F1, false-positive rate, AUPRC, threshold curves.

A metric whose denominator is empty is undefined and returned as NaN (``results.json`` writes it as ``null``),
never as 0: precision without a predicted positive, recall and AUPRC without a positive, FPR without a negative,
and F1 = 2·TP / (2·TP + FP + FN) when there is neither a positive nor a predicted positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def _ratio(num: int, den: int) -> float:
    return num / den if den else NAN


def binary_metrics(y_true: Sequence[bool], y_pred: Sequence[bool]) -> dict[str, float]:
    """Precision, recall, F1 and FPR of hard predictions (NaN where undefined), with the confusion counts."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "fpr": _ratio(fp, fp + tn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def average_precision(y_true: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the precision-recall curve as scikit-learn's average precision; NaN when there is no positive."""
    from sklearn.metrics import average_precision_score

    t = np.asarray(y_true, dtype=bool)
    return float(average_precision_score(t, np.asarray(scores, dtype=float))) if t.any() else NAN


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
    """One-vs-rest metrics for every hazard code in ``codes``: an item is positive for ``c`` if ``c`` is among
    its codes. A code without support in these items is still reported (``support`` 0, recall NaN)."""
    out = {}
    for c in codes:
        y = [c in t for t in true_cats]
        m = binary_metrics(y, [c in p for p in pred_cats])
        out[c] = {k: m[k] for k in ("precision", "recall", "f1", "fpr")} | {"support": int(sum(y))}
    return out
