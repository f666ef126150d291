"""Estimators of a planted secret's exposure, and the queries it takes to extract it: pure math on
log-perplexities and probabilities (Carlini et al. 2019, "The Secret Sharer"). The model is run
elsewhere (:mod:`llm_mia.exposure.secrets`).

All exposures are in **bits**, with one sign convention: higher = more exposed (more memorized).
Px is a sentence's log-perplexity in bits (sec. 3, "Definition 1"; see :mod:`llm_mia.exposure.secrets`).

- ``exposure_rank`` (sec. 4.1, estimated by sampling): rank among N candidates drawn uniformly from
  the secret's space R: ``log2 N - log2 rank``, ``rank = 1 + #{candidates with Px <= Px(secret)}``
  (ties count against the secret). Values may be negative and are kept.
- ``exposure_exact`` (sec. 4.1, Definition 3): when ``|R|`` is small enough, every member is
  scored: ``log2 |R| - log2 rank``, rank = 1 + #{other members with Px <= Px(secret)}.
- ``exposure_extrapolated`` (sec. 4.3, "Approximation by Distribution Modeling"): a skew-normal
  fitted to the candidates' Px; ``-log2 CDF(Px(secret))``, taken as ``-logcdf / ln 2`` so that the
  far tail does not underflow. It can exceed log2 N; +inf (flagged) where even the log-CDF underflows.
- :func:`samples_for_half` and :func:`queries_to_extract`: the queries an attacker needs to extract
  a secret (greedy generation, or top-k sampling with the secret's sample probability).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LN2 = math.log(2.0)
#: Mean rank exposure of a never-inserted secret as N grows (E[-log2 U], U uniform on (0, 1]).
CHANCE_BITS = 1.0 / LN2


def rank_exposure(secret_logppl: float | np.ndarray, candidate_logppl: Sequence[float]) -> np.ndarray:
    """Rank-based exposure in bits (Carlini et al. 2019, sec. 4.1, estimated by sampling).

    Args:
        secret_logppl: scalar or array of shape (S,), log-perplexities of the secrets (bits).
        candidate_logppl: shape (R,), log-perplexities of candidates from the same space (bits).

    Returns:
        float64 array of shape (S,) (or 0-d): ``log2(R) - log2(rank)``, ``rank = 1 + #candidates with
        log-perplexity <= the secret's`` (ties count against the secret). Higher = more exposed; at
        most log2 R, negative values kept. The order of the candidates does not matter.

    Raises:
        ValueError: if there are no candidates.
    """
    ref = np.sort(np.asarray(candidate_logppl, dtype=np.float64))
    if ref.size == 0:
        raise ValueError("rank exposure needs at least one candidate")
    s = np.asarray(secret_logppl, dtype=np.float64)
    rank = 1 + np.searchsorted(ref, s, side="right")
    return np.log2(ref.size) - np.log2(rank)


def exact_exposure(space: int, n_not_above: int) -> float:
    """Exact exposure in bits (Carlini et al. 2019, sec. 4.1, Definition 3): ``log2|R| - log2 rank``.

    Args:
        space: |R|, the number of members of the secret's space (>= 1).
        n_not_above: number of *other* members whose log-perplexity is <= the secret's (ties count
            against the secret), so ``rank = 1 + n_not_above`` is in ``[1, |R|]``.

    Returns:
        float in ``[0, log2 |R|]``; higher = more exposed.

    Raises:
        ValueError: if ``space`` < 1 or ``n_not_above`` is outside ``[0, space - 1]``.
    """
    if space < 1 or not 0 <= n_not_above <= space - 1:
        raise ValueError(f"rank {n_not_above + 1} is outside a space of {space}")
    return math.log2(space) - math.log2(1 + n_not_above)


@dataclass
class Extrapolated:
    """Skew-normal extrapolated exposure of one secret: ``bits`` (float, NaN or +inf), the fitted
    ``params`` (shape a, loc, scale) or None, ``n_dropped`` non-finite candidates and ``flags``."""

    bits: float
    params: tuple[float, float, float] | None
    n_dropped: int
    flags: list[str] = field(default_factory=list)


def skewnorm_fit(candidate_logppl: Sequence[float]) -> tuple[tuple[float, float, float] | None, int, list[str]]:
    """Fit a skew-normal (``scipy.stats.skewnorm.fit``, maximum likelihood) to candidate log-perplexities.

    Args:
        candidate_logppl: shape (R,), bits. Non-finite values (inf, NaN) are dropped and counted.

    Returns:
        ``(params, n_dropped, flags)``: params = (a, loc, scale) or None when undefined, with flag
        ``"extrapolated_degenerate"`` (fewer than 3 distinct finite values, e.g. all equal) or
        ``"extrapolated_fit_failed"``; ``"nonfinite_candidates_dropped"`` when any was dropped.
        Never raises on degenerate input. Source: Carlini et al. 2019, sec. 4.3.
    """
    from scipy import stats

    x = np.asarray(candidate_logppl, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    n_dropped = int((~finite).sum())
    x = x[finite]
    flags = ["nonfinite_candidates_dropped"] if n_dropped else []
    if np.unique(x).size < 3 or not np.std(x) > 1e-12 * max(1.0, float(np.abs(x).max())):
        return None, n_dropped, flags + ["extrapolated_degenerate"]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            a, loc, scale = stats.skewnorm.fit(x)
    except Exception:  # scipy raises several types when the optimiser leaves the valid range
        return None, n_dropped, flags + ["extrapolated_fit_failed"]
    if not all(np.isfinite([a, loc, scale])) or scale <= 0:
        return None, n_dropped, flags + ["extrapolated_fit_failed"]
    return (float(a), float(loc), float(scale)), n_dropped, flags


def extrapolated_exposure(secret_logppl: float, candidate_logppl: Sequence[float] | None = None, *,
                          fit: tuple | None = None) -> Extrapolated:
    """Exposure in bits from a skew-normal fitted to the candidates (Carlini et al. 2019, sec. 4.3).

    ``bits = -log2 CDF(secret_logppl) = -skewnorm.logcdf(x, a, loc, scale) / ln 2``: higher = more
    exposed; may exceed log2 R. Computed from the log-CDF so the far tail does not underflow.

    Args:
        secret_logppl: the secret's log-perplexity, bits.
        candidate_logppl: shape (R,), bits (fitted here unless ``fit`` is given).
        fit: a precomputed ``skewnorm_fit`` result, to fit once for several secrets of one space.

    Returns:
        :class:`Extrapolated`. ``bits`` is NaN with the fit's flag when the fit is undefined
        (degenerate candidates) or the secret's value is not finite; +inf with flag
        ``"extrapolated_far_tail"`` when the log-CDF is -inf (the secret lies below the fitted
        support's numerical range). Never raises.
    """
    from scipy import stats

    params, n_dropped, flags = fit if fit is not None else skewnorm_fit(candidate_logppl)
    flags = list(flags)
    if params is None:
        return Extrapolated(float("nan"), None, n_dropped, flags)
    if not math.isfinite(secret_logppl):
        return Extrapolated(float("nan"), params, n_dropped, flags + ["secret_logppl_nonfinite"])
    with np.errstate(all="ignore"):
        lc = float(stats.skewnorm.logcdf(secret_logppl, *params))
    if lc == -math.inf:
        return Extrapolated(math.inf, params, n_dropped, flags + ["extrapolated_far_tail"])
    if math.isnan(lc):
        return Extrapolated(float("nan"), params, n_dropped, flags + ["extrapolated_fit_failed"])
    return Extrapolated(-lc / LN2 + 0.0, params, n_dropped, flags)


def samples_for_half(p: float) -> float:
    """Independent samples needed to draw an event of probability ``p`` at least once with
    probability 0.5: ``ceil(log 0.5 / log(1 - p))`` (log1p for small p); inf if p == 0, 1 if p == 1.

    Raises ValueError for p outside [0, 1] or NaN.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p!r}")
    if p == 0.0:
        return math.inf
    if p == 1.0:
        return 1.0
    return float(max(1, math.ceil(math.log(0.5) / math.log1p(-p))))


def queries_to_extract(row: dict, *, sampling: bool = True) -> float:
    """Queries (generation requests) an attacker needs to extract one secret, from its exposure record.

    Counting model: the attacker tries the audit's extraction contexts in order
    (``extraction_contexts``), one greedy generation each, so greedy decoding that gives the secret
    back from context i (0-based, ``greedy_context``) costs i + 1 queries; an API that samples
    (``sampling``: top-k 40 at temperature 1, the audit's ``sample_probability`` p from the prefix)
    extracts it with probability 1/2 within ``samples_for_half(p)`` queries. The count is the smaller
    of the two; inf when neither extracts it (a label-only API answers greedily: ``sampling=False``);
    NaN when the record has no sample probability (a sentence longer than the context) and greedy
    decoding did not give it back. Beam search is not counted (it reads per-step top-b log-probs).
    """
    greedy = math.inf
    if row.get("greedy_extracted"):
        tried = list(row.get("extraction_contexts") or [])
        ctx = row.get("greedy_context")
        greedy = float(tried.index(ctx) + 1) if ctx in tried else 1.0
    if not sampling:
        return greedy
    p = row.get("sample_probability")
    p = float("nan") if p is None else float(p)
    if math.isnan(p):
        return greedy if math.isfinite(greedy) else float("nan")
    return min(greedy, samples_for_half(min(max(p, 0.0), 1.0)))


def expected_control_bits(n_references: int) -> float:
    """Exact mean rank exposure (bits) of a never-inserted secret against ``n_references`` candidates:
    rank is uniform on 1 .. N+1, so E = log2 N - log2((N+1)!) / (N+1); tends to 1/ln 2 = 1.4427."""
    n = int(n_references)
    return math.log2(n) - math.lgamma(n + 2) / LN2 / (n + 1)


def rank_exposure_interval(exposure_rank_bits: float, n_references: int, *, alpha_low: float,
                           alpha_high: float) -> tuple[float, float]:
    """One-sided confidence bounds (bits) on a secret's exposure from its rank among N references.

    The rank estimator (:func:`rank_exposure`) counts ``c = rank - 1`` references at or below the
    secret's log-perplexity; c is Binomial(N, q), q the secret's quantile in its space, whose exposure
    is ``-log2 q`` (Carlini et al. 2019, sec. 4.1, as N grows). Exact (Clopper-Pearson) bounds on q
    give the exposure's: ``low = -log2 q_hi`` (confidence 1 - alpha_low) and ``high = -log2 q_lo``
    (confidence 1 - alpha_high); ``high`` is +inf when c = 0 (the secret outranks every reference:
    N references cannot show how far).

    Raises:
        ValueError: n_references < 1, a rank outside [1, N + 1], an alpha outside (0, 1).
    """
    from scipy.stats import beta

    N = int(n_references)
    if N < 1 or not (0 < alpha_low < 1 and 0 < alpha_high < 1):
        raise ValueError(f"need n_references >= 1 and alphas in (0, 1); got {n_references}, {alpha_low}, {alpha_high}")
    c = int(round(N * 2.0 ** -float(exposure_rank_bits))) - 1
    if not 0 <= c <= N:
        raise ValueError(f"exposure {exposure_rank_bits} bits is no rank among {N} references")
    q_hi = 1.0 if c == N else float(beta.ppf(1 - alpha_low, c + 1, N - c))
    q_lo = 0.0 if c == 0 else float(beta.ppf(alpha_high, c, N - c + 1))
    return -math.log2(q_hi), (math.inf if q_lo <= 0 else -math.log2(q_lo))


def references_to_settle(exposure_rank_bits: float, n_references: int, limit_bits: float, *, alpha_low: float,
                         alpha_high: float, most: int = 10**8) -> int | None:
    """About how many references would settle whether the exposure exceeds ``limit_bits``: the
    smallest N' (on a grid growing by 25%) at which the secret's observed quantile ``rank / (N + 1)``
    gives an interval (:func:`rank_exposure_interval`) wholly on one side of the limit; None past ``most``."""
    N = int(n_references)
    q = (N * 2.0 ** -float(exposure_rank_bits)) / (N + 1)  # rank / (N + 1)
    n = N
    while n <= most:
        n = int(n * 1.25) + 1
        c = max(0, min(n, int(round(q * (n + 1))) - 1))  # the rank this quantile takes among n, less one
        lo, hi = rank_exposure_interval(math.log2(n) - math.log2(c + 1), n, alpha_low=alpha_low,
                                        alpha_high=alpha_high)
        if lo > limit_bits or hi <= limit_bits:
            return n
    return None
