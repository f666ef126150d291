"""Privacy auditing math: epsilon lower bounds from membership tests on canaries (pure functions).

Three bounds, each at confidence ``1 - beta`` (``alpha`` for the two-rate bounds) and a given delta:

- **One run** (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run",
  NeurIPS, Theorem 3.1 / Algorithm 2): m canaries, each included independently with probability
  1/2, ONE training run. The attacker guesses "in" on its k+ highest-scored canaries and "out" on
  its k- lowest and abstains on the rest; r = k+ + k- guesses, v correct. The bound holds for any
  (epsilon, delta)-DP training algorithm; it is the only one here with a proof for one run.
- **Gaussian DP** (Dong, Roth, Su 2022, "Gaussian Differential Privacy", JRSS-B, eq. (2.3) and
  Corollary 2.13; used for auditing by Nasr et al. 2023, "Tight Auditing of Differentially Private
  Machine Learning", USENIX Security, sec. 4): a test's (FPR, TPR), with Clopper-Pearson bounds,
  gives a lower bound on mu, turned into epsilon at delta. Valid only under the assumption that the
  mechanism's trade-off curve is Gaussian (as for DP-SGD with many steps, by the central limit
  theorem of Dong et al. sec. 3.3); not a worst-case bound.
- **Clopper-Pearson** (Jagielski, Ullman, Oprea 2020, "Auditing Differentially Private Machine
  Learning", sec. 3): ``FPR + e^eps FNR >= 1 - delta`` with one-sided Clopper-Pearson upper bounds
  on both rates.

The two threshold bounds never choose the threshold on the canaries they evaluate: either half the
canaries choose it and the other half evaluate it (``"split"``), or every cutoff between sorted
scores is tried with a Bonferroni correction over the cutoffs (``"bonferroni"``). Both treat each
canary as an independent trial of the membership test, the assumption of the classic many-run
audit, which holds only approximately within one training run (Steinke et al. sec. 1).

Sign convention: higher score = more likely included (member). Units: epsilon in nats.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np

from llm_mia.core.errors import LlmMiaError

__all__ = ["clopper_pearson_upper", "clopper_pearson_lower", "epsilon_lower_bound",
           "one_run_p_value", "one_run_epsilon", "one_run_bound", "default_k_grid", "gdp_mu", "gdp_delta",
           "gdp_epsilon", "threshold_bound"]


# ----------------------------------------------------------------------------------------------
# Clopper-Pearson and the two-rate (Jagielski et al. 2020) bound


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate: P(rate <= bound) >= 1 - alpha.

    ``k`` successes in ``n`` trials (0 <= k <= n, n >= 1). Returns ``Beta.ppf(1 - alpha; k + 1, n - k)``,
    and 1 when k = n (Clopper, Pearson 1934). Raises LlmMiaError on bad counts or alpha outside (0, 1).
    """
    _check_counts(k, n, alpha)
    if k == n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1 - alpha, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound: ``Beta.ppf(alpha; k, n - k + 1)``, and 0 when k = 0."""
    _check_counts(k, n, alpha)
    if k == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(alpha, k, n - k + 1))


def _check_counts(k: int, n: int, alpha: float) -> None:
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer)) and n >= 1 and 0 <= k <= n):
        raise LlmMiaError(f"need integer counts 0 <= k <= n, n >= 1; got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise LlmMiaError(f"alpha must be in (0, 1), got {alpha}")


def epsilon_lower_bound(*, tp: int, fn: int, fp: int, tn: int, delta: float, alpha: float = 0.05) -> float:
    """Empirical epsilon lower bound of one membership test (Jagielski et al. 2020, sec. 3).

    An (eps, delta)-DP mechanism has ``FPR + e^eps FNR >= 1 - delta`` and ``FNR + e^eps FPR >= 1 - delta``,
    so ``eps >= max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR))``, here with one-sided
    Clopper-Pearson upper bounds on FPR and FNR at ``alpha / 2`` each (union bound).

    Args:
        tp: members called member.
        fn: members called non-member.
        fp: non-members called member.
        tn: non-members called non-member.
        delta: the mechanism's delta, in [0, 1).
        alpha: 1 - confidence of the bound.

    Returns:
        epsilon lower bound in nats (>= 0; 0 when the test does no better than chance at this confidence).
    Raises:
        LlmMiaError: empty classes, negative counts, delta or alpha out of range.
    """
    if not 0 <= delta < 1:
        raise LlmMiaError(f"delta must be in [0, 1), got {delta}")
    fpr_ub = clopper_pearson_upper(fp, fp + tn, alpha / 2)
    fnr_ub = clopper_pearson_upper(fn, tp + fn, alpha / 2)
    best = 0.0
    for num, den in ((1 - delta - fpr_ub, fnr_ub), (1 - delta - fnr_ub, fpr_ub)):
        if num > 0:
            best = max(best, math.inf if den <= 0 else math.log(num / den))
    return best


def _counts(y: np.ndarray, pred: np.ndarray) -> dict:
    return {"tp": int((pred & (y == 1)).sum()), "fn": int((~pred & (y == 1)).sum()),
            "fp": int((pred & (y == 0)).sum()), "tn": int((~pred & (y == 0)).sum())}


def _best_threshold(y: np.ndarray, s: np.ndarray, bound: Callable[[dict], float]) -> tuple[float, float, int]:
    """(threshold, bound, number of cutoffs) maximising ``bound(counts)`` of "member iff score >= t".

    Thresholds are the midpoints between consecutive distinct scores (a threshold at an observed
    score would sit on the edge of the selection half's range, and the evaluation half falls on
    either side of it by chance); the first (lowest) of equally good thresholds wins.
    """
    best_t, best_e = math.inf, 0.0
    u = np.unique(s)
    cuts = (u[:-1] + u[1:]) / 2
    for t in cuts:
        e = bound(_counts(y, s >= t))
        if e > best_e:
            best_t, best_e = float(t), e
    return best_t, best_e, len(cuts)


def _halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Selection and evaluation indices: members and non-members each split in two at random."""
    rng = random.Random(seed)
    pos, neg = [i for i in range(len(y)) if y[i] == 1], [i for i in range(len(y)) if y[i] == 0]
    if len(pos) < 2 or len(neg) < 2:
        raise LlmMiaError("a split needs at least 2 members and 2 non-members")
    rng.shuffle(pos)
    rng.shuffle(neg)
    return (np.array(pos[: len(pos) // 2] + neg[: len(neg) // 2]),
            np.array(pos[len(pos) // 2:] + neg[len(neg) // 2:]))


# ----------------------------------------------------------------------------------------------
# One run (Steinke, Nasr, Jagielski 2023)


def _check_unit(name: str, v: float, *, closed_low: bool = False) -> None:
    ok = (0 <= v < 1) if closed_low else (0 < v < 1)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok or math.isnan(v):
        raise LlmMiaError(f"{name} must be in {'[0' if closed_low else '(0'}, 1), got {v!r}")


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P-value of ``v`` correct guesses out of ``r`` under "the training run is (eps, delta)-DP".

    Steinke, Nasr, Jagielski 2023, Theorem 3.1 (Algorithm 2 evaluates it): with q = e^eps / (1 + e^eps)
    and W ~ Binomial(r, q),

        p = P[W >= v] + 2 m delta max_{i = 1..v} P[v - i <= W < v] / i      (capped at 1),

    where ``m`` is the number of canaries (each included with probability 1/2, guessed or not).
    With delta = 0 it is the binomial tail alone (their Proposition for pure eps-DP).

    Raises:
        LlmMiaError: not 0 <= v <= r <= m, eps < 0, delta outside [0, 1).
    """
    from scipy.stats import binom

    if not (0 <= v <= r <= m) or m < 1:
        raise LlmMiaError(f"need 0 <= v <= r <= m and m >= 1; got m={m}, r={r}, v={v}")
    if not eps >= 0:
        raise LlmMiaError(f"eps must be >= 0, got {eps}")
    _check_unit("delta", delta, closed_low=True)
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    w = np.arange(v - 1, -1, -1)  # v-1, v-2, ..., 0
    band = np.cumsum(binom.pmf(w, r, q))  # band[i-1] = P[v - i <= W < v]
    alpha = float(np.max(band / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * alpha, 1.0)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """The largest eps at which "(eps, delta)-DP" is rejected at level ``beta``: sup{eps : p(eps) <= beta}
    with p from :func:`one_run_p_value` (Steinke et al. 2023, Algorithm 2; p grows with eps). Holds
    with probability >= 1 - beta. Returns 0 when even eps = 0 is not rejected. Nats.
    """
    from scipy.optimize import brentq

    _check_unit("beta", beta)

    def f(e: float) -> float:
        return beta - one_run_p_value(m, r, v, e, delta)

    if f(0.0) <= 0:
        return 0.0
    hi = 1.0
    while f(hi) > 0:
        hi *= 2
        if hi > 1e4:  # v = r with delta = 0 and huge r: effectively unbounded
            return math.inf
    return float(brentq(f, hi / 2 if hi > 1 else 0.0, hi, xtol=1e-9, rtol=1e-12))


def default_k_grid(m: int) -> list[tuple[int, int]]:
    """(k+, k-) pairs tried by :func:`one_run_bound`: k+ = ceil(f m) for f in 1, 2, 5, 10, 20, 50 %,
    each with k- = 0 (guess "in" only) and k- = k+ (as many "out" guesses), k+ + k- <= m."""
    ks = sorted({max(1, math.ceil(f * m)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)})
    return [(k, k2) for k in ks for k2 in (0, k) if k + k2 <= m]


def one_run_bound(scores: Sequence[float], included: Sequence[bool], *, delta: float, beta: float = 0.05,
                  k_grid: Sequence[tuple[int, int]] | None = None) -> dict:
    """One-run epsilon lower bound (Steinke et al. 2023), maximised over a grid of (k+, k-).

    Args:
        scores: (m,) one score per canary, higher = more likely included; NaN = abstain always.
        included: (m,) whether each canary was planted (independently with probability 1/2).
        delta: in [0, 1); beta: 1 - confidence, in (0, 1).
        k_grid: (k+, k-) pairs; default :func:`default_k_grid`. The grid is fixed before looking at
            the scores and each pair is tested at ``beta / len(k_grid)`` (Bonferroni), so the maximum
            holds with probability >= 1 - beta.

    Returns:
        {"epsilon", "k_plus", "k_minus", "guesses", "correct", "m", "beta", "beta_per_test", "delta",
        "n_tests", "correction": "bonferroni", "grid": [[k+, k-], ...]}. Ties in score are broken by
        canary order (stable sort), which does not depend on inclusion.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(included, dtype=bool)
    m = int(len(s))
    if m < 2 or y.shape != s.shape:
        raise LlmMiaError(f"the one-run bound needs >= 2 canaries with one inclusion flag each, got {m}")
    ok = np.flatnonzero(~np.isnan(s))
    grid = [tuple(map(int, k)) for k in (k_grid if k_grid is not None else default_k_grid(m))]
    grid = [(a, b) for a, b in grid if a >= 0 and b >= 0 and 0 < a + b <= len(ok)]
    if not grid:
        raise LlmMiaError("the one-run bound has no (k+, k-) with 0 < k+ + k- <= the canaries with a score")
    order = ok[np.argsort(-s[ok], kind="stable")]  # highest score first
    b = beta / len(grid)
    best = {"epsilon": 0.0, "k_plus": None, "k_minus": None, "guesses": 0, "correct": 0}
    for kp, km in grid:
        v = int(y[order[:kp]].sum() + (~y[order[len(order) - km:]]).sum()) if km else int(y[order[:kp]].sum())
        e = one_run_epsilon(m, kp + km, v, delta=delta, beta=b)
        if e > best["epsilon"] or best["k_plus"] is None:
            best = {"epsilon": e, "k_plus": kp, "k_minus": km, "guesses": kp + km, "correct": v}
    return {**best, "m": m, "beta": beta, "beta_per_test": b, "delta": delta, "n_tests": len(grid),
            "correction": "bonferroni", "grid": [list(k) for k in grid]}


def one_run_max_epsilon(m: int, *, delta: float, beta: float = 0.05, n_scored: int | None = None,
                        k_grid: Sequence[tuple[int, int]] | None = None) -> dict:
    """The largest epsilon :func:`one_run_bound` could ever report with ``m`` canaries: its bound when
    every guess is correct (Steinke, Nasr, Jagielski 2023, Theorem 3.1 with v = r), maximised over the
    same (k+, k-) grid at the same Bonferroni level ``beta / len(grid)``. An audit whose bound is
    near this value is limited by its number of canaries, not by the model. Nats.

    Args:
        m: number of canaries (>= 2); n_scored: how many have a score (default m; guesses r <= it).
        delta: in [0, 1); beta: 1 - confidence, in (0, 1); k_grid: as in :func:`one_run_bound`.

    Returns:
        {"epsilon", "k_plus", "k_minus", "guesses", "m", "beta_per_test", "delta"}; epsilon may be inf
        (delta = 0 and many guesses).

    Raises:
        LlmMiaError: m < 2, or no (k+, k-) pair fits.
    """
    n_ok = m if n_scored is None else int(n_scored)
    if m < 2:
        raise LlmMiaError(f"the one-run bound needs >= 2 canaries, got {m}")
    grid = [tuple(map(int, k)) for k in (k_grid if k_grid is not None else default_k_grid(m))]
    grid = [(a, b) for a, b in grid if a >= 0 and b >= 0 and 0 < a + b <= n_ok]
    if not grid:
        raise LlmMiaError("the one-run bound has no (k+, k-) with 0 < k+ + k- <= the canaries with a score")
    b = beta / len(grid)
    best = max(((one_run_epsilon(m, kp + km, kp + km, delta=delta, beta=b), kp, km) for kp, km in grid),
               key=lambda t: t[0])
    return {"epsilon": best[0], "k_plus": best[1], "k_minus": best[2], "guesses": best[1] + best[2], "m": m,
            "beta_per_test": b, "delta": delta}


# ----------------------------------------------------------------------------------------------
# Gaussian differential privacy (Dong, Roth, Su 2022)


def gdp_mu(tpr: float, fpr: float) -> float:
    """mu of the Gaussian trade-off curve through (FPR, TPR): ``Phi^-1(TPR) - Phi^-1(FPR)``, floored at 0.

    A mu-GDP mechanism has FNR >= G_mu(FPR) = Phi(Phi^-1(1 - FPR) - mu) (Dong et al. 2022, eq. (2.3)),
    i.e. TPR <= Phi(Phi^-1(FPR) + mu). With a lower bound on TPR and an upper bound on FPR this is a
    lower bound on mu (Nasr et al. 2023, sec. 4). 0 when TPR <= FPR or TPR = 0; inf when FPR = 0 < TPR.
    """
    from scipy.stats import norm

    if not (0 <= tpr <= 1 and 0 <= fpr <= 1):
        raise LlmMiaError(f"rates must be in [0, 1], got TPR {tpr}, FPR {fpr}")
    if tpr <= fpr:
        return 0.0
    return max(0.0, float(norm.ppf(tpr) - norm.ppf(fpr)))


def gdp_delta(eps: float, mu: float) -> float:
    """delta(eps) of a mu-GDP mechanism: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``
    (Dong et al. 2022, Corollary 2.13). Computed as a difference of logs for large eps."""
    from scipy.stats import norm

    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    a, b = norm.logcdf(-eps / mu + mu / 2), eps + norm.logcdf(-eps / mu - mu / 2)
    return float(math.exp(a) * -math.expm1(b - a)) if b < a else 0.0


def gdp_epsilon(mu: float, delta: float) -> float:
    """The eps with ``gdp_delta(eps, mu) = delta`` (delta(eps) falls with eps): the smallest eps for which
    mu-GDP implies (eps, delta)-DP, so a lower bound on mu gives a lower bound on eps. 0 when
    ``delta >= delta(0) = 2 Phi(mu/2) - 1``; inf for mu = inf. Nats."""
    from scipy.optimize import brentq

    _check_unit("delta", delta)
    if math.isinf(mu):
        return math.inf
    if mu <= 0 or gdp_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu)
    while gdp_delta(hi, mu) > delta:
        hi *= 2
    return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-10, rtol=1e-12))


def _gdp_bound(c: dict, delta: float, alpha: float) -> float:
    """eps at delta from counts: mu from Clopper-Pearson TPR_lo and FPR_hi (alpha / 2 each)."""
    tpr_lo = clopper_pearson_lower(c["tp"], c["tp"] + c["fn"], alpha / 2)
    fpr_hi = clopper_pearson_upper(c["fp"], c["fp"] + c["tn"], alpha / 2)
    return gdp_epsilon(gdp_mu(tpr_lo, fpr_hi), delta)


# ----------------------------------------------------------------------------------------------
# Threshold bounds with an honest threshold choice


def threshold_bound(scores: Sequence[float], included: Sequence[bool], *, kind: str, delta: float,
                    alpha: float = 0.05, strategy: str = "split", seed: int = 0) -> dict:
    """Clopper-Pearson (``kind="clopper_pearson"``) or Gaussian-DP (``kind="gaussian_dp"``) epsilon of
    "included iff score >= threshold", the threshold never chosen on the canaries it is evaluated on.

    Args:
        scores: (m,) higher = included; NaN scores are dropped. included: (m,) bools.
        delta: in (0, 1); alpha: 1 - confidence.
        strategy: ``"split"``: a seeded half of the included and of the excluded canaries choose the
            threshold with the largest bound, the other half evaluate it; ``"bonferroni"``: every
            midpoint between distinct scores is evaluated at ``alpha / n_thresholds`` and the largest
            bound is kept.

    Returns:
        {"epsilon", "threshold", "strategy", "alpha", "alpha_per_test", "delta", "counts" {tp, fn, fp, tn}
        of the evaluated canaries, "n_eval", "n_thresholds"; for gaussian_dp also "mu"}.
    Raises:
        LlmMiaError: unknown kind or strategy, delta outside (0, 1), fewer than 2 included or 2
            excluded canaries with a score (4 each for ``split``).
    """
    if kind not in ("clopper_pearson", "gaussian_dp"):
        raise LlmMiaError(f"unknown bound '{kind}' (clopper_pearson, gaussian_dp)")
    if strategy not in ("split", "bonferroni"):
        raise LlmMiaError(f"unknown threshold strategy '{strategy}' (split, bonferroni)")
    _check_unit("delta", delta)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(included, dtype=bool).astype(np.int64)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    need = 4 if strategy == "split" else 2
    if (y == 1).sum() < need or (y == 0).sum() < need:
        raise LlmMiaError(f"the {kind} bound ({strategy}) needs >= {need} included and {need} excluded canaries "
                          f"with a score, got {int((y == 1).sum())} and {int((y == 0).sum())}")

    def make(a: float) -> Callable[[dict], float]:
        if kind == "clopper_pearson":
            return lambda c: epsilon_lower_bound(**c, delta=delta, alpha=a)
        return lambda c: _gdp_bound(c, delta, a)

    if strategy == "split":
        sel, ev = _halves(y, seed)
        t, _, n_t = _best_threshold(y[sel], s[sel], make(alpha))
        c = _counts(y[ev], s[ev] >= t)
        a, n_eval, eps = alpha, len(ev), make(alpha)(c) if math.isfinite(t) else 0.0
    else:
        n_t = max(1, len(np.unique(s)) - 1)
        a = alpha / n_t
        t, eps, _ = _best_threshold(y, s, make(a))
        c = _counts(y, s >= t)
        n_eval = len(y)
    out = {"epsilon": eps, "threshold": t, "strategy": strategy, "alpha": alpha, "alpha_per_test": a,
           "delta": delta, "counts": c, "n_eval": int(n_eval), "n_thresholds": int(n_t)}
    if kind == "gaussian_dp":
        out["mu"] = gdp_mu(clopper_pearson_lower(c["tp"], c["tp"] + c["fn"], a / 2),
                           clopper_pearson_upper(c["fp"], c["fp"] + c["tn"], a / 2))
    return out
