"""Difficulty checks for a guard task: a bag-of-words logistic regression and the majority class.

The bag-of-words baseline reads the same text the guard classifies (the user prompt and, for response items, the
agent's answer), as counts of words and word bigrams, and is scikit-learn's logistic regression with its inverse
regularisation ``C`` chosen by stratified k-fold cross-validation on the training split alone. It is the strongest
simple baseline that needs no pretrained model: if it matches the guard, the task is solved by lexical cues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runner.data.moderation import ModerationExample
from runner.guard.metrics import binary_metrics

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def _text(ex: ModerationExample) -> str:
    return ex.prompt if ex.response is None else f"{ex.prompt}\n[response] {ex.response}"


def bow_baseline(train: Sequence[ModerationExample], test: Sequence[ModerationExample], seed: int,
                 ngram_max: int = 2, folds: int = 5, c_grid: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Test metrics of a word/bigram-count logistic regression whose ``C`` is tuned by CV (F1) on ``train``."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    y = [e.unsafe for e in train]
    if len(set(y)) < 2:
        raise ValueError("the bag-of-words baseline needs both classes in the training split")
    folds = max(2, min(folds, sum(y), len(y) - sum(y)))
    model = make_pipeline(CountVectorizer(ngram_range=(1, ngram_max), token_pattern=r"(?u)\b\w+\b|[?.,]"),
                          LogisticRegression(max_iter=5000))
    search = GridSearchCV(model, {"logisticregression__C": list(c_grid)}, scoring="f1",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    search.fit([_text(e) for e in train], y)
    pred = search.predict([_text(e) for e in test]).tolist()
    m = binary_metrics([e.unsafe for e in test], pred)
    return {"f1": m["f1"], "precision": m["precision"], "recall": m["recall"], "fpr": m["fpr"],
            "C": float(search.best_params_["logisticregression__C"]), "cv_f1": float(search.best_score_),
            "ngram_max": ngram_max}


def majority_baseline(train: Sequence[ModerationExample], test: Sequence[ModerationExample]) -> dict[str, Any]:
    """Test metrics of predicting the training split's majority class for every item (F1 0 when it is safe)."""
    unsafe = 2 * sum(e.unsafe for e in train) > len(train)
    m = binary_metrics([e.unsafe for e in test], [unsafe] * len(test))
    return {"f1": m["f1"], "predicts": "unsafe" if unsafe else "safe",
            "all_unsafe_f1": binary_metrics([e.unsafe for e in test], [True] * len(test))["f1"]}
