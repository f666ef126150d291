"""Membership-inference metrics: ROC AUC and TPR at a fixed FPR (scikit-learn's roc_curve).

Conventions (scikit-learn's): ``y_true`` of shape (n_samples,) with member = 1, non-member = 0;
``y_score`` of shape (n_samples,), higher = more likely member. No sign is flipped here: a signal
that ranks members low gets an AUC below 0.5 and it is reported as such.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    from sklearn.metrics import roc_curve  # deferred: ~0.8 s of start-up for every command

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
    from sklearn.metrics import roc_auc_score  # deferred: ~0.8 s of start-up for every command

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
    n1, n0 = len(pos), len(neg)
    # each resample's AUC is its Mann-Whitney U / (n1 n0), U = sum over its members (with multiplicity)
    # of the non-members (with multiplicity) below them, ties counting 1/2: with the non-members
    # sorted once, member i's count is read at its two insertion points in the cumulative counts
    # of the resampled non-members. Exact (sums of halves), O(n) per resample, no sort per resample.
    order = np.argsort(neg, kind="stable")
    at = np.empty(n0, dtype=np.int64)
    at[order] = np.arange(n0)  # position of non-member j in sorted order
    below = np.searchsorted(neg[order], pos, side="left")
    upto = np.searchsorted(neg[order], pos, side="right")
    aucs = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (n1 + n0))
    for b0 in range(0, n_boot, chunk):
        k = min(chunk, n_boot - b0)
        draws = [(rng.integers(0, n1, n1), rng.integers(0, n0, n0)) for _ in range(k)]  # the order of a loop over b
        rows = np.arange(k)[:, None]
        w = np.bincount((rows * n1 + np.stack([i for i, _ in draws])).ravel(), minlength=k * n1).reshape(k, n1)
        v = np.bincount((rows * n0 + at[np.stack([j for _, j in draws])]).ravel(), minlength=k * n0).reshape(k, n0)
        cum = np.concatenate([np.zeros((k, 1)), np.cumsum(v, axis=1, dtype=np.float64)], axis=1)  # (k, n0 + 1)
        u = (w * (cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below]))).sum(axis=1)
        aucs[b0:b0 + k] = u / (n1 * n0)
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


def _scores_by_label(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """(members' scores, non-members' scores), NaN dropped; raises LlmMiaError if either is empty."""
    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise LlmMiaError(f"y_true and y_score must have the same shape (n_samples,), got {y.shape} and {s.shape}")
    pos, neg = s[(y == 1) & ~np.isnan(s)], s[(y == 0) & ~np.isnan(s)]
    if pos.size == 0 or neg.size == 0:
        raise LlmMiaError("a TPR bound needs at least one member and one non-member with a defined score")
    return pos, neg


def tpr_at_fpr_upper(y_true, y_score, target_fpr: float, *, alpha: float = 0.05) -> float:
    """Exact one-sided upper confidence bound on the TPR at FPR ``target_fpr`` (confidence 1 - alpha).

    An order-statistic argument that covers both the threshold's uncertainty (n non-members) and the
    TPR's (m members). Let t* be the population threshold whose FPR is at most ``target_fpr`` (the
    TPR at FPR ``target_fpr`` is TPR(t*)). The number K of non-members scoring >= t* is at most
    Binomial(n, target_fpr) stochastically; with k its (1 - alpha/2) quantile, P(K > k) = a1 <= alpha/2,
    and K <= k implies t* > y_(k+1), the (k+1)-th highest non-member score. So TPR(t*) <= P(member
    score > y_(k+1)); the members are independent of the non-members, so the Clopper-Pearson upper
    bound at a2 = alpha - a1 of the members counted above y_(k+1) bounds it; a union bound gives 1 - alpha.
    Conservative by construction (never below the truth more than alpha of the time). NaN scores
    are dropped.

    Returns:
        float in [0, 1]; 1.0 when k + 1 > n (too few non-members to place the threshold).

    Raises:
        LlmMiaError: mismatched shapes, no member or non-member, target_fpr outside [0, 1), alpha
            outside (0, 1).
    """
    from scipy.stats import beta, binom

    pos, neg = _scores_by_label(y_true, y_score)
    if not 0 <= target_fpr < 1 or not 0 < alpha < 1:
        raise LlmMiaError(f"need target_fpr in [0, 1) and alpha in (0, 1), got {target_fpr} and {alpha}")
    k = int(binom.ppf(1 - alpha / 2, neg.size, target_fpr))
    if k + 1 > neg.size:
        return 1.0
    thr = np.sort(neg)[::-1][k]  # y_(k+1)
    a2 = alpha - float(binom.sf(k, neg.size, target_fpr))  # what the threshold's step left of alpha
    c, m = int((pos > thr).sum()), pos.size
    return 1.0 if c == m else float(beta.ppf(1 - a2, c + 1, m - c))


def tpr_at_fpr_lower(y_true, y_score, target_fpr: float, *, alpha: float = 0.05, n_boot: int = 2000,
                     seed: int = 0) -> float:
    """One-sided lower confidence bound on the TPR at FPR ``target_fpr``: the alpha quantile of a
    stratified percentile bootstrap (members and non-members resampled separately, so both the
    threshold's and the TPR's uncertainty are in it; Efron and Tibshirani 1993, ch. 13).

    In each resample the threshold is the (floor(target_fpr * n) + 1)-th highest non-member score
    (:func:`calibrate_threshold`: the realized FPR never exceeds the target) and the TPR the fraction of
    members above it. An exact lower bound is not used because at 1% FPR it needs n with 0.99^n <=
    alpha (299 non-members at alpha 0.05): below that no threshold can be shown to have FPR <= 1%.
    Deterministic for a given ``seed``; NaN scores dropped.

    Returns:
        float in [0, 1].

    Raises:
        LlmMiaError: as :func:`tpr_at_fpr_upper`; n_boot < 1.
    """
    pos, neg = _scores_by_label(y_true, y_score)
    if not 0 <= target_fpr < 1 or not 0 < alpha < 1 or n_boot < 1:
        raise LlmMiaError(f"need target_fpr in [0, 1), alpha in (0, 1), n_boot >= 1; got {target_fpr}, {alpha}, "
                          f"{n_boot}")
    rng = np.random.default_rng(seed)
    k = int(np.floor(target_fpr * neg.size + 1e-9))
    j = neg.size - 1 - k  # the (k+1)-th highest of each resample: its j-th smallest (partition, no full sort)
    thr = np.partition(neg[rng.integers(0, neg.size, (n_boot, neg.size))], j, axis=1)[:, j]  # (B,)
    pb = pos[rng.integers(0, pos.size, (n_boot, pos.size))]  # (B, m)
    tpr = (pb > thr[:, None]).mean(axis=1)
    return float(np.quantile(tpr, alpha))


def docs_to_settle_tpr(limit: float, *, tpr_at: Callable[[float], float], target_fpr: float = 0.01,
                       alpha: float = 0.05, ratio: float = 1.0, most: int = 10**7) -> int | None:
    """About how many non-members n (with ``ratio * n`` members) make :func:`tpr_at_fpr_upper`'s bound
    fall within ``limit``, for a signal whose TPR at FPR q is ``tpr_at(q)``: expected counts, the
    smallest n on a grid growing by 10% from 10; None past ``most``. For a signal at chance
    (``tpr_at = lambda q: q``) this is the audit size a clean model needs to pass (the docs' table)."""
    from scipy.stats import beta, binom

    n = 10
    while n <= most:
        k = int(binom.ppf(1 - alpha / 2, n, target_fpr))
        m = max(1, int(round(ratio * n)))
        if k + 1 <= n:
            c = int(round(min(1.0, tpr_at((k + 1) / (n + 1))) * m))
            if c < m and float(beta.ppf(1 - alpha / 2, c + 1, m - c)) <= limit:
                return n
        n = int(n * 1.1) + 1
    return None
