"""A model-free membership baseline: can members and non-members be told apart by text alone?

A membership signal's AUC only means leakage when the member and non-member texts come from the
same distribution. When they do not (another time period, another source, other lengths), a
classifier that never sees the model separates them too, and the signal's AUC measures the split,
not the model (Duan et al. 2024, "Do Membership Inference Attacks Work on Large Language
Models?"; Das et al. 2024, "Blind Baselines Beat Membership Inference Attacks for Foundation
Models"). :func:`model_free_baseline` fits a logistic regression on text features with k-fold
cross-validation and reports the AUC of its out-of-fold scores; above ``warn_auc`` (0.6) the audit
warns that the membership numbers are not evidence of leakage.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.metrics import roc_metrics

#: Names of the columns of :func:`text_features`, in order.
FEATURES: tuple[str, ...] = (
    "log_chars", "log_words", "zlib_ratio", "mean_word_len", "digit_frac", "upper_frac", "space_frac",
    "punct_frac", "non_ascii_frac", "newline_frac", "distinct_char_bigrams", "distinct_word_ratio",
    "top_char_trigram_frac",
)


def text_features(texts: Sequence[str]) -> np.ndarray:
    """Features of each text that need no model, of shape (n_texts, len(FEATURES)).

    Lengths (log characters, log words), zlib compressed / raw bytes, mean word length, the
    fractions of digits, capitals, whitespace, punctuation, non-ASCII characters and newlines, the
    distinct character bigrams per character, distinct words per word, and the share of the most
    frequent character trigram. An empty text gives zeros (ratios are 0, not NaN).
    """
    rows = []
    for t in texts:
        n = len(t)
        raw = t.encode("utf-8")
        words = t.split()
        nw = len(words)
        tri = Counter(t[i:i + 3] for i in range(max(0, n - 2)))
        rows.append([
            np.log1p(n), np.log1p(nw),
            len(zlib.compress(raw)) / len(raw) if raw else 0.0,
            sum(map(len, words)) / nw if nw else 0.0,
            sum(c.isdigit() for c in t) / n if n else 0.0,
            sum(c.isupper() for c in t) / n if n else 0.0,
            sum(c.isspace() for c in t) / n if n else 0.0,
            sum((not c.isalnum()) and not c.isspace() for c in t) / n if n else 0.0,
            sum(ord(c) > 127 for c in t) / n if n else 0.0,
            t.count("\n") / n if n else 0.0,
            len({t[i:i + 2] for i in range(max(0, n - 1))}) / n if n else 0.0,
            len(set(words)) / nw if nw else 0.0,
            tri.most_common(1)[0][1] / sum(tri.values()) if tri else 0.0,
        ])
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), len(FEATURES))


def model_free_baseline(members: Sequence[str], nonmembers: Sequence[str], *, folds: int = 5, seed: int = 0,
                        warn_auc: float = 0.6) -> dict:
    """Cross-validated AUC of a text-only classifier separating ``members`` (1) from ``nonmembers`` (0).

    A standardized logistic regression (C = 1) on :func:`text_features`, scored out of fold with
    stratified ``folds``-fold cross-validation (fewer folds when a class has fewer texts), so every
    text is scored by a classifier that never saw it. Chance is 0.5.

    Returns:
        dict with ``auc``, ``tpr_at_fpr`` (as :func:`llm_mia.membership.metrics.roc_metrics`), ``folds``,
        ``features`` (names), ``warn_auc`` and ``warning`` (a sentence, or None when
        ``auc <= warn_auc``).

    Raises:
        LlmMiaError: fewer than 2 texts in either class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(members) < 2 or len(nonmembers) < 2:
        raise LlmMiaError("the model-free baseline needs at least 2 members and 2 non-members")
    x = text_features(list(members) + list(nonmembers))
    y = np.array([1] * len(members) + [0] * len(nonmembers))
    k = max(2, min(folds, len(members), len(nonmembers)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    m = roc_metrics(y, proba)
    warning = None
    if m["auc"] > warn_auc:
        warning = (f"members and non-members can be told apart without the model (text-only classifier AUC "
                   f"{m['auc']:.3f} > {warn_auc}): the membership AUCs measure a distribution shift as much as leakage")
    return {"auc": m["auc"], "tpr_at_fpr": m["tpr_at_fpr"], "folds": k, "features": list(FEATURES),
            "warn_auc": warn_auc, "warning": warning}
