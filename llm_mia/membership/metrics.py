"""Membership-inference metrics: ROC AUC and TPR at a fixed FPR (scikit-learn's roc_curve).

Conventions (scikit-learn's): ``y_true`` of shape (n_samples,) with member = 1, non-member = 0;
``y_score`` of shape (n_samples,), higher = more likely member. No sign is flipped here: a signal
that ranks members low gets an AUC below 0.5 and it is reported as such.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from llm_mia.core.errors import LlmMiaError


def _clean(y_true, y_score) -> tuple[np.ndarray, np.ndarray, int]:
    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise LlmMiaError(f"y_true and y_score must have the same shape (n_samples,), got {y.shape} and {s.shape}")
    keep = ~np.isnan(s)
    y, s = y[keep], s[keep]
    if not np.isfinite(s).all():
        # +-inf is a valid score (e.g. zlib / NLL with NLL = 0) but scikit-learn rejects it. ROC metrics
        # depend only on the order of the scores, so use dense ranks: order and ties are kept exactly.
        s = np.unique(s, return_inverse=True)[1].reshape(-1).astype(np.float64)
    if not ((y == 0).any() and (y == 1).any()):
        raise LlmMiaError("ROC metrics need at least one member (1) and one non-member (0) with a defined score")
    return y, s, int((~keep).sum())


@dataclass
class TprAtFpr:
    """TPR at a target FPR: the largest TPR among ROC points with FPR <= target (no interpolation)."""

    target_fpr: float
    tpr: float
    realized_fpr: float
    below_resolution: bool  # target < 1 / n_nonmembers: only FPR = 0 is reachable


def tpr_at_fpr(y_true, y_score, target_fpr: float) -> TprAtFpr:
    """TPR at ``target_fpr`` (fraction in [0, 1]).

    Tied scores form one threshold (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``);
    NaN scores are dropped. Warns when the target is below the FPR resolution 1/n_nonmembers.
    """
    y, s, _ = _clean(y_true, y_score)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ok = fpr <= target_fpr + 1e-12
    j = int(np.argmax(np.where(ok, tpr, -1.0)))
    n_neg = int((y == 0).sum())
    below = target_fpr < 1.0 / n_neg
    if below and target_fpr > 0:
        warnings.warn(f"{n_neg} non-members give an FPR resolution of {1 / n_neg:.3g}; "
                      f"TPR at FPR {target_fpr:g} is the TPR at FPR 0", stacklevel=2)
    return TprAtFpr(target_fpr=target_fpr, tpr=float(tpr[j]), realized_fpr=float(fpr[j]), below_resolution=below)


def roc_metrics(y_true, y_score, *, fprs: tuple[float, ...] = (0.001, 0.01, 0.05)) -> dict:
    """AUC (ties count 1/2) and TPR at each FPR in ``fprs``, after dropping NaN scores.

    The membership game's figures (Carlini et al. 2022, "Membership Inference Attacks From First
    Principles", sec. III: report TPR at low FPR, not only AUC). Scores follow the one sign convention:
    higher = more likely a member. The TPR at an FPR is read off scikit-learn's ROC curve at the largest
    realised FPR not above the target; with fewer than ``1 / fpr`` non-members the target cannot be
    resolved and ``below_resolution`` says so.

    Args:
        y_true: labels of shape (n_samples,), 1 = member, 0 = non-member.
        y_score: membership scores of shape (n_samples,); NaN scores are dropped and counted.
        fprs: the false-positive rates to report.

    Returns:
        A dict: ``auc``, ``tpr_at_fpr`` {"0.01": {"tpr", "realized_fpr", "below_resolution"}},
        ``n_members``, ``n_nonmembers``, ``n_dropped_nan``.
    """
    y, s, dropped = _clean(y_true, y_score)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tprs = {f"{f:g}": tpr_at_fpr(y, s, f) for f in fprs}
    return {"auc": float(roc_auc_score(y, s)),
            "tpr_at_fpr": {k: {"tpr": v.tpr, "realized_fpr": v.realized_fpr, "below_resolution": v.below_resolution}
                           for k, v in tprs.items()},
            "n_members": int((y == 1).sum()), "n_nonmembers": int((y == 0).sum()), "n_dropped_nan": dropped}


def bootstrap_auc_ci(y_true, y_score, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC (resampling members and non-members separately).

    Returns (low, high); NaN scores are dropped first. Deterministic for a given ``seed``.
    """
    y, s, _ = _clean(y_true, y_score)
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, len(pos), len(pos))]
        n = neg[rng.integers(0, len(neg), len(neg))]
        r = rankdata(np.concatenate([p, n]))  # Mann-Whitney form of the AUC (ties count 1/2)
        aucs[b] = (r[: len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n))
    a = (1 - level) / 2
    return float(np.quantile(aucs, a)), float(np.quantile(aucs, 1 - a))


def calibrate_threshold(nonmember_scores, target_fpr: float) -> float:
    """Threshold t from known non-members such that "member iff score > t" has FPR <= ``target_fpr`` on them.

    t is the (floor(target_fpr * n) + 1)-th largest non-member score (ties are kept below the
    threshold, so the realized FPR never exceeds the target). NaN scores are ignored.

    Raises:
        LlmMiaError: no finite calibration score, or target_fpr outside [0, 1).
    """
    s = np.asarray(nonmember_scores, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0:
        raise LlmMiaError("calibration needs at least one non-member with a defined score")
    if not 0 <= target_fpr < 1:
        raise LlmMiaError(f"target FPR must be in [0, 1), got {target_fpr}")
    k = int(np.floor(target_fpr * s.size + 1e-9))
    return float(np.sort(s)[::-1][k])
