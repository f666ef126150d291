"""Attacks over K shadow (reference) models: LiRA online and offline, RMIA with K references, Shokri.

Every function here is pure: it reads per-text statistics (the mean log-likelihood of each text
under the target and under each shadow model, which shadow models trained on which text, the
per-token features of :func:`membership_features`), never a model. :mod:`llm_mia.membership.shadow` trains the
shadow models and computes these inputs once per call of :func:`llm_mia.membership.scoring.score`.

The per-text statistic is the mean log-probability per scored token, nats (the log of the
geometric-mean token probability; ``-mean_nll``). LiRA fits a Gaussian to it across shadow models:
a mean over tens of tokens is close to Gaussian across models (central limit), which is what the
paper's logit scaling buys for a classifier's one softmax probability; ``logit_confidence`` gives
the paper's logit of p = exp(mean log p) for comparison (it tends to the same value for p << 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.signals.registry import SignalInputs, register
from llm_mia.membership.signals.standard import (
    mean_nll,
    min_k_plus_plus_scores,
    min_k_scores,
    zlib_bytes,
)
from llm_mia.models.stats import TokenStats

#: LiRA uses one global variance (per IN / OUT) below this many shadow models: Carlini et al. 2022,
#: sec. VI-A / fig. 6, per-example variances need >= 64 models to beat the fixed variance.
LIRA_FIXED_VARIANCE_BELOW = 64

#: Columns of :func:`membership_features`, the Shokri attack classifier's inputs.
FEATURE_NAMES = ("loss", "min_k", "min_k_plus_plus", "zlib", "top1_rate")


@dataclass
class ShadowInputs:
    """Statistics of N texts and M population texts under K shadow models (:func:`llm_mia.membership.shadow.shadow_inputs`).

    Attributes:
        x_logprob: (N, K) float64, mean log p per scored token of each text under each shadow model
            (nats, <= 0; NaN where no token is scored).
        x_in: (N, K) bool, shadow model k trained on text n.
        z_target: (M,) float64, mean log p of the population texts under the target (RMIA's z).
        z_logprob: (M, K) float64 and z_in (M, K) bool: the same for the population texts.
        classifier: the Shokri attack classifier fitted on the shadow models' features
            (:func:`fit_attack_classifier`), or None.
        n_models: K.
        x_token_logprob: (N, K, T) float64, log p of each scored token (nats, column j = the j-th
            scored token, as in :class:`llm_mia.models.stats.TokenStats`) under each shadow model; NaN
            past a text's last scored token. None when not computed (the per-token LiRA then refuses).
        z_token_logprob: (M, K, T') float64, the same for the population texts.
    """

    x_logprob: np.ndarray
    x_in: np.ndarray
    z_target: np.ndarray
    z_logprob: np.ndarray
    z_in: np.ndarray
    classifier: Any = None
    n_models: int = 0
    x_token_logprob: np.ndarray | None = None
    z_token_logprob: np.ndarray | None = None


def logit_confidence(mean_logprob: np.ndarray) -> np.ndarray:
    """LiRA's logit scaling phi(p) = log(p / (1 - p)) of p = exp(mean log p) (Carlini et al. 2022, sec. IV-C),
    computed as l - log(-expm1(l)) for l = mean log p (nats); +inf where l = 0. Same shape as the input."""
    lp = np.asarray(mean_logprob, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return lp - np.log(-np.expm1(lp))


def _gauss_fit(values: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row over ``values[use]`` (NaN left out): (mean, sample sd with ddof 1, count, sum of squared deviations)."""
    use = use & ~np.isnan(values)
    n = use.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(use, values, 0.0).sum(1) / n
        ss = np.where(use, (values - mu[:, None]) ** 2, 0.0).sum(1)
        sd = np.where(n >= 2, np.sqrt(ss / (n - 1)), math.nan)
    return mu, sd, n, ss


def _pooled_sd(values: np.ndarray, use: np.ndarray) -> float:
    """One within-row sd for all rows: sqrt(sum_rows sum (v - mean_row)^2 / sum_rows (n_row - 1)); NaN if no row has 2 values."""
    _, _, n, ss = _gauss_fit(values, use)
    dof = np.clip(n - 1, 0, None).sum()
    return math.sqrt(ss[n >= 2].sum() / dof) if dof > 0 else math.nan


def lira_scores(target: np.ndarray, shadow: np.ndarray, is_in: np.ndarray, *, online: bool,
                fixed_variance: bool | None = None,
                variance_from: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles", S&P, sec. IV, alg. 1).

    For each text, Gaussians are fitted to the statistic over the shadow models that trained on it
    (IN: mean mu_in, sd sigma_in) and over those that did not (OUT). Online: the log-likelihood
    ratio log N(t; mu_in, sigma_in^2) - log N(t; mu_out, sigma_out^2). Offline (OUT models only): the
    one-sided test log Pr[Z < t], Z ~ N(mu_out, sigma_out^2) (the log of the paper's
    1 - Pr[Z > t]; the log keeps the order where the probability rounds to 1). Means are plain means;
    sigma is the per-text sample sd (ddof 1) or, with the fixed variance, the pooled within-text sd
    over ``variance_from`` (default: these texts), one for IN and one for OUT. The registered
    signals pool it over the shadow population, so a text's score does not depend on the other
    texts scored with it; pooling needs some text with >= 2 models on the side (K = 2: NaN).

    Args:
        target: (N,) the statistic under the target (e.g. mean log p, nats).
        shadow: (N, K) the same under each shadow model; NaN entries are left out.
        is_in: (N, K) bool, shadow model k trained on text n.
        online: the online test (needs IN models) or the offline one.
        fixed_variance: None: fixed when K < :data:`LIRA_FIXED_VARIANCE_BELOW` (the paper's advice).
        variance_from: (values (M, K), is_in (M, K)) to pool the fixed variance over.

    Returns:
        (N,) float64, higher = member; NaN where the target statistic is NaN, where too few models
        are on a side (online: >= 1 IN and >= 1 OUT with the fixed variance, >= 2 each without;
        offline: >= 1 / >= 2 OUT), or where a fitted sd is 0.

    Raises:
        LlmMiaError: shapes that do not match.
    """
    from scipy.stats import norm  # deferred: ~1 s of start-up that only the shadow signals pay

    t = np.asarray(target, dtype=np.float64)
    s = np.asarray(shadow, dtype=np.float64)
    m = np.asarray(is_in, dtype=bool)
    if s.ndim != 2 or s.shape != m.shape or s.shape[0] != t.shape[0]:
        raise LlmMiaError(f"lira needs target (N,), shadow and is_in (N, K); got {t.shape}, {s.shape}, {m.shape}")
    fixed = s.shape[1] < LIRA_FIXED_VARIANCE_BELOW if fixed_variance is None else fixed_variance
    pv, pm = (s, m) if variance_from is None else (np.asarray(variance_from[0], dtype=np.float64),
                                                   np.asarray(variance_from[1], dtype=bool))

    def fit(side: np.ndarray, pool_side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sd, n, _ = _gauss_fit(s, side)
        if fixed:
            sd = np.where(n >= 1, _pooled_sd(pv, pool_side), math.nan)
        return mu, sd

    mu_out, sd_out = fit(~m, ~pm)
    ok = lambda sd: np.isfinite(sd) & (sd > 0)  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        if not online:
            out = norm.logcdf(t, loc=mu_out, scale=np.where(ok(sd_out), sd_out, 1.0))
            return np.where(ok(sd_out) & ~np.isnan(t), out, math.nan)
        mu_in, sd_in = fit(m, pm)
        good = ok(sd_in) & ok(sd_out) & ~np.isnan(t)
        lin = norm.logpdf(t, loc=mu_in, scale=np.where(good, sd_in, 1.0))
        lout = norm.logpdf(t, loc=mu_out, scale=np.where(good, sd_out, 1.0))
        return np.where(good, lin - lout, math.nan)


#: Prior degrees of freedom of the per-token LiRA's variance shrinkage (:func:`lira_token_scores`):
#: a token's variance counts as much as this many shadow-model deviations of the pooled variance,
#: so with K < 64 models (Carlini et al. 2022, fig. 6) the pooled variance dominates.
LIRA_TOKEN_PRIOR_DOF = 64.0


def token_logprob_matrix(stats: TokenStats) -> np.ndarray:
    """(N, T) float64: the scored tokens' log p (nats), NaN where ``stats.mask`` is False."""
    lp = stats.token_logprob.double().numpy()
    return np.where(stats.mask.numpy(), lp, math.nan)


def _token_fit(values: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (text, token) over the models on ``side``: (mean, count, sum of squared deviations), each (N, T)."""
    use = side[:, :, None] & ~np.isnan(values)
    n = use.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(use, values, 0.0).sum(1) / n
        ss = np.where(use, (values - mu[:, None, :]) ** 2, 0.0).sum(1)
    return mu, n, ss


def _token_var(values, side, pool_values, pool_side, prior_dof: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, shrunk variance) per (text, token); see :func:`lira_token_scores` for the estimator."""
    mu, n, ss = _token_fit(values, side)
    _, pn, pss = _token_fit(pool_values, pool_side)
    dof = np.clip(pn - 1, 0, None).sum()
    v0 = pss[pn >= 2].sum() / dof if dof > 0 else math.nan
    d = np.clip(n - 1, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        if math.isinf(prior_dof):
            var = np.full(mu.shape, v0)
        elif prior_dof == 0 or math.isnan(v0):
            var = np.where(d >= 1, ss / d, math.nan)
        else:
            var = (ss + prior_dof * v0) / (d + prior_dof)
    return mu, np.where(n >= 1, var, math.nan)


def lira_token_scores(target: np.ndarray, shadow: np.ndarray, is_in: np.ndarray, *, online: bool,
                      prior_dof: float = LIRA_TOKEN_PRIOR_DOF,
                      variance_from: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per-token LiRA (Rossi, Aerni, Zhang, Tramer 2025, "Membership Inference Attacks on Sequence
    Models", arXiv 2506.05126, sec. 3): LiRA over the vector of per-token log-probabilities, not their mean.

    For each text and scored token j, Gaussians are fitted across the shadow models that trained on
    the text (IN: mu_in[j], var_in[j]) and those that did not (OUT); the covariance is diagonal (the
    paper's cheapest estimator; its full and low-rank ones are not built here). Each token's
    variance is shrunk toward a pooled variance v0 (the within-(text, token) variance pooled over
    every token of ``variance_from`` on the same side, like the scalar LiRA's fixed variance):
    var[j] = (SS[j] + nu v0) / (d[j] + nu), SS[j] the sum of squared deviations over the d[j] + 1
    models, nu = ``prior_dof`` (the posterior mean of a variance with an inverse-gamma prior of
    nu degrees of freedom centred at v0). nu = inf gives v0 (the scalar LiRA's fixed variance);
    nu = 0 the per-token sample variance (ddof 1).

    Online: sum_j log N(t_j; mu_in[j], var_in[j]) - log N(t_j; mu_out[j], var_out[j]), the
    log-likelihood ratio of the diagonal Gaussian (Carlini et al. 2022 alg. 1 per token).
    Offline (OUT only): log Pr[Z < sum_j z_j / sqrt(n)], Z ~ N(0, 1), z_j = (t_j - mu_out[j]) /
    sqrt(var_out[j]) over the n usable tokens: the one-sided test of the whole vector, since
    sum_j z_j / sqrt(n) ~ N(0, 1) for a non-member under the diagonal model. With one token both
    equal the scalar LiRA (:func:`lira_scores`) of that token.

    Args:
        target: (N, T) log p of each scored token under the target, nats; NaN where unscored.
        shadow: (N, K, T) the same under each shadow model.
        is_in: (N, K) bool, shadow model k trained on text n.
        online: the online test (needs IN models) or the offline one.
        prior_dof: nu >= 0 (may be inf).
        variance_from: ((M, K, T') values, (M, K) is_in) to pool v0 over (default: these texts).

    Returns:
        (N,) float64, higher = member; NaN where no token is usable (a token needs a target value
        and a positive finite variance on each side used: >= 1 model there, >= 2 when nu = 0 or no v0).

    Raises:
        LlmMiaError: shapes that do not match, or a negative ``prior_dof``.
    """
    from scipy.stats import norm  # deferred: ~1 s of start-up that only the shadow signals pay

    t, s, m = np.asarray(target, dtype=np.float64), np.asarray(shadow, dtype=np.float64), np.asarray(is_in, dtype=bool)
    if t.ndim != 2 or s.ndim != 3 or s.shape[:2] != m.shape or s.shape[0] != t.shape[0]:
        raise LlmMiaError(f"per-token lira needs target (N, T), shadow (N, K, T) and is_in (N, K); got {t.shape}, "
                          f"{s.shape}, {m.shape}")
    if not prior_dof >= 0:
        raise LlmMiaError(f"per-token lira's prior_dof must be >= 0, got {prior_dof}")
    width = max(t.shape[1], s.shape[2])
    t = np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=math.nan)
    s = np.pad(s, ((0, 0), (0, 0), (0, width - s.shape[2])), constant_values=math.nan)
    pv, pm = (s, m) if variance_from is None else (np.asarray(variance_from[0], dtype=np.float64),
                                                   np.asarray(variance_from[1], dtype=bool))
    ok = lambda v: np.isfinite(v) & (v > 0)  # noqa: E731
    mu_out, var_out = _token_var(s, ~m, pv, ~pm, prior_dof)
    good = ok(var_out) & ~np.isnan(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        if not online:
            z = np.where(good, (t - mu_out) / np.sqrt(np.where(good, var_out, 1.0)), 0.0)
            n = good.sum(1)
            out = norm.logcdf(z.sum(1) / np.sqrt(np.maximum(n, 1)))
            return np.where(n > 0, out, math.nan)
        mu_in, var_in = _token_var(s, m, pv, pm, prior_dof)
        good &= ok(var_in)
        sd_in, sd_out = np.sqrt(np.where(good, var_in, 1.0)), np.sqrt(np.where(good, var_out, 1.0))
        llr = norm.logpdf(t, loc=mu_in, scale=sd_in) - norm.logpdf(t, loc=mu_out, scale=sd_out)
        return np.where(good.any(1), np.where(good, llr, 0.0).sum(1), math.nan)


def rmia_scores(x_target: torch.Tensor, x_reference: torch.Tensor, z_target: torch.Tensor, z_reference: torch.Tensor,
                *, a: float = 0.3, gamma: float = 1.0, offline: bool = True, x_use: torch.Tensor | None = None,
                z_use: torch.Tensor | None = None) -> torch.Tensor:
    """RMIA with K reference models (Zarifzadeh et al. 2024, ICML, "Low-Cost High-Power Membership
    Inference Attacks", sec. 3, eq. 4-5; offline Pr(x) as in privacy_meter's ``run_rmia``).

    LR(x) = Pr(x | theta) / Pr(x) with Pr(x) the mean of p_k(x) over the reference models k that
    count for x. Online: every reference model (IN and OUT for x). Offline (OUT models only): the
    linear correction Pr(x) = ((1 + a) mean_k p_k(x) + (1 - a)) / 2. The score of x is the fraction
    of population texts z with LR(x) / LR(z) > gamma, Pr(z) computed the same way (offline: over the
    models that did not train on z). One reference (K = 1, offline) is the fine-tuned case, with the
    base model as the reference. Everything is in log space (log-mean-exp over the references).

    The likelihood of a text is its *mean* log-probability per scored token (per UTF-8 byte when the
    tokenizers differ), i.e. log of the geometric-mean token probability, in [0, 1] as the affine
    formula assumes and as privacy_meter computes it for language models. A summed log-probability
    would make p_ref(x) ~ e^-100, so Pr(x) would be the constant (1 - a) / 2 and RMIA would reduce
    to the LOSS attack.

    Args:
        x_target: (N,) mean log p of the texts under the target, nats (<= 0).
        x_reference: (N,) or (N, K), the same under each reference model.
        z_target: (M,), the same as ``x_target`` for the population texts.
        z_reference: (M,) or (M, K), the same as ``x_reference`` for the population texts.
        a: offline coefficient in [0, 1] (the paper's 0.3 for one reference); unused online.
        gamma: likelihood-ratio threshold > 0 (default 1).
        offline: apply the offline correction (the references given did not train on the text).
        x_use: (N, K) bool, the references that count for each text (default: all; offline: pass the
            OUT models). NaN likelihoods never count.
        z_use: (M, K) bool, the same for the population texts.

    Returns:
        (N,) float32 in [0, 1], higher = member; NaN where x's likelihood is NaN, no reference counts
        for x, or no population row is usable.

    Raises:
        LlmMiaError: a outside [0, 1], gamma <= 0, or shapes that do not match.
    """
    if not 0.0 <= a <= 1.0:
        raise LlmMiaError(f"rmia's offline coefficient a must be in [0, 1], got {a}")
    if not gamma > 0:
        raise LlmMiaError(f"rmia's gamma must be > 0, got {gamma}")

    def log_lr(tgt: torch.Tensor, ref: torch.Tensor, use: torch.Tensor | None) -> torch.Tensor:
        tgt = torch.as_tensor(tgt).double()
        ref = torch.as_tensor(ref).double()
        ref = ref[:, None] if ref.dim() == 1 else ref
        if ref.dim() != 2 or ref.shape[0] != tgt.shape[0] or (use is not None and tuple(use.shape) != tuple(ref.shape)):
            raise LlmMiaError(f"rmia needs (N,) target and (N, K) reference likelihoods; got {tuple(tgt.shape)} "
                              f"and {tuple(ref.shape)}")
        keep = ~torch.isnan(ref) & (torch.ones_like(ref, dtype=torch.bool) if use is None else torch.as_tensor(use))
        n = keep.sum(1)
        lm = torch.logsumexp(torch.where(keep, ref, torch.full_like(ref, -math.inf)), 1) - torch.log(n.double())
        if offline:
            c1 = math.log((1 + a) / 2)
            c0 = torch.full_like(lm, math.log((1 - a) / 2) if a < 1 else -math.inf)
            lm = torch.logaddexp(c1 + lm, c0)
        return torch.where(n > 0, tgt - lm, torch.full_like(tgt, math.nan))

    lx, lz = log_lr(x_target, x_reference, x_use), log_lr(z_target, z_reference, z_use)
    lz = lz[~torch.isnan(lz)]
    if lz.numel() == 0:
        return torch.full(lx.shape, math.nan, dtype=torch.float32)
    frac = (lx[:, None] > lz[None, :] + math.log(gamma)).double().mean(1)  # compare, never subtract infs
    return torch.where(torch.isnan(lx), torch.full_like(frac, math.nan), frac).to(torch.float32)


def membership_features(stats: TokenStats, texts: Sequence[str]) -> np.ndarray:
    """Per-text features of one model's per-token statistics, the columns :data:`FEATURE_NAMES`.

    ``loss`` = mean log p (nats/token, -mean NLL), ``min_k`` (Min-K%, k = 0.2), ``min_k_plus_plus``
    (Min-K%++, k = 0.2; needs the moments), ``zlib`` = log(zlib bytes / max(mean NLL, 1e-6)) (the log
    of Carlini et al. 2021's zlib ratio, finite), ``top1_rate`` = the fraction of scored tokens that
    are the model's top-1 (needs ``token_is_top1``). Every value is clipped to [-1e3, 1e3] so a
    probability-0 token stays finite for a classifier.

    Returns:
        (N, 5) float64; a row of NaN where no token is scored.

    Raises:
        LlmMiaError: stats without ``token_is_top1``, or ``texts`` of another length.
    """
    if stats.token_is_top1 is None:
        raise LlmMiaError("membership features need the top-1 flags (TokenStats.token_is_top1)")
    if len(texts) != len(stats):
        raise LlmMiaError(f"membership features: {len(texts)} texts for {len(stats)} rows of statistics")
    nll = mean_nll(stats).double().numpy()
    n = stats.n_scored.double().numpy()
    zb = np.array([zlib_bytes(t) for t in texts], dtype=np.float64)
    top1 = (stats.token_is_top1 & stats.mask).sum(1).double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = [-nll, min_k_scores(stats).double().numpy(), min_k_plus_plus_scores(stats)[0].double().numpy(),
                np.log(zb / np.maximum(nll, 1e-6)), top1 / n]
    x = np.clip(np.stack(cols, 1), -1e3, 1e3)
    x[n == 0] = math.nan
    return x


def fit_attack_classifier(X: np.ndarray, y: np.ndarray, *, seed: int = 0):
    """Shokri et al. 2017's attack model ("Membership Inference Attacks Against Machine Learning
    Models", S&P, sec. V-B/C), fitted on the shadow models' features of their own members (y = 1) and
    non-members (y = 0): scikit-learn's StandardScaler + LogisticRegression (the paper used one
    neural network per class; a language model has no class, and a linear model over five features
    needs no tuning). Rows with a NaN feature are left out.

    Raises:
        LlmMiaError: fewer than 2 usable rows of each label.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)
    keep = ~np.isnan(X).any(1)
    if min((y[keep] == 1).sum(), (y[keep] == 0).sum()) < 2:
        raise LlmMiaError("the Shokri attack classifier needs at least 2 member and 2 non-member rows with features")
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed)).fit(X[keep], y[keep])


def shokri_scores(classifier, X: np.ndarray) -> np.ndarray:
    """(N,) float64 in [0, 1]: the attack classifier's member probability for each feature row
    (:func:`membership_features` of the target), higher = member; NaN where a feature is NaN."""
    X = np.asarray(X, dtype=np.float64)
    out = np.full(len(X), math.nan)
    keep = ~np.isnan(X).any(1)
    if keep.any():
        out[keep] = classifier.predict_proba(X[keep])[:, 1]
    return out


# ---------------------------------------------------------------- registered signals

def _need(inp: SignalInputs) -> ShadowInputs:
    if inp.shadow is None:
        raise LlmMiaError("the shadow-model attacks need shadow models (--shadow DIR from `llm-mia shadow train`)")
    return inp.shadow


def _x(inp: SignalInputs) -> np.ndarray:
    return -mean_nll(inp.target).double().numpy()


@register("lira_online", needs=("shadow",), source="Carlini et al. 2022 (LiRA) alg. 1, online, fixed variance below 64 models",
          description="log N(t; IN fit) - log N(t; OUT fit), t = mean log p over shadow models")
def lira_online(inp: SignalInputs) -> torch.Tensor:
    sh = _need(inp)
    return torch.from_numpy(lira_scores(_x(inp), sh.x_logprob, sh.x_in, online=True,
                                        variance_from=(sh.z_logprob, sh.z_in)))


@register("lira_offline", needs=("shadow",), source="Carlini et al. 2022 (LiRA) alg. 1, offline, fixed variance below 64 models",
          description="log Pr[Z < t], Z ~ the OUT shadow models' Gaussian, t = mean log p")
def lira_offline(inp: SignalInputs) -> torch.Tensor:
    sh = _need(inp)
    return torch.from_numpy(lira_scores(_x(inp), sh.x_logprob, sh.x_in, online=False,
                                        variance_from=(sh.z_logprob, sh.z_in)))


def _lira_token(inp: SignalInputs, online: bool) -> torch.Tensor:
    sh = _need(inp)
    if sh.x_token_logprob is None or sh.z_token_logprob is None:
        raise LlmMiaError("the per-token LiRA needs the shadow models' per-token log-probs (ShadowInputs.x_token_logprob)")
    return torch.from_numpy(lira_token_scores(token_logprob_matrix(inp.target), sh.x_token_logprob, sh.x_in,
                                              online=online, variance_from=(sh.z_token_logprob, sh.z_in)))


@register("lira_token_online", needs=("shadow",),
          source="Rossi et al. 2025 (arXiv 2506.05126) sec. 3, diagonal Gaussian over per-token log p, online",
          description="sum over tokens of log N(t_j; IN fit) - log N(t_j; OUT fit), variances shrunk to the pooled one")
def lira_token_online(inp: SignalInputs) -> torch.Tensor:
    return _lira_token(inp, online=True)


@register("lira_token_offline", needs=("shadow",),
          source="Rossi et al. 2025 (arXiv 2506.05126) sec. 3, diagonal Gaussian over per-token log p, offline",
          description="log Pr[Z < sum_j z_j / sqrt(n)], z_j the token's standard score under the OUT fit")
def lira_token_offline(inp: SignalInputs) -> torch.Tensor:
    return _lira_token(inp, online=False)


def _rmia(inp: SignalInputs, offline: bool) -> torch.Tensor:
    sh = _need(inp)
    kw = dict(x_use=torch.from_numpy(~sh.x_in), z_use=torch.from_numpy(~sh.z_in)) if offline else {}
    return rmia_scores(torch.from_numpy(_x(inp)), torch.from_numpy(sh.x_logprob), torch.from_numpy(sh.z_target),
                       torch.from_numpy(sh.z_logprob), offline=offline, **kw)


@register("rmia_online", needs=("shadow",), source="Zarifzadeh et al. 2024 (RMIA) eq. 4-5, online, K shadow models, gamma = 1",
          description="fraction of population z with LR(x) / LR(z) > 1, Pr(x) = mean over all shadow models")
def rmia_online(inp: SignalInputs) -> torch.Tensor:
    return _rmia(inp, offline=False)


@register("rmia_offline", needs=("shadow",), source="Zarifzadeh et al. 2024 (RMIA), offline, OUT shadow models, a = 0.3, gamma = 1",
          description="fraction of population z with LR(x) / LR(z) > 1, Pr(x) from the OUT models, a-corrected")
def rmia_offline(inp: SignalInputs) -> torch.Tensor:
    return _rmia(inp, offline=True)


@register("shokri", needs=("shadow", "moments", "text"), source="Shokri et al. 2017 sec. V (shadow training), logistic attack model",
          description="member probability of an attack classifier trained on the shadow models' features")
def shokri(inp: SignalInputs) -> torch.Tensor:
    sh = _need(inp)
    if sh.classifier is None:
        raise LlmMiaError("shokri needs the attack classifier fitted on the shadow models")
    return torch.from_numpy(shokri_scores(sh.classifier, membership_features(inp.target, inp.texts)))


def shadow_flags(inp: SignalInputs) -> list[list[str]]:
    """Per-row flags: ``shadow_no_in_model`` (no shadow model trained on the text: the online attacks
    are NaN), ``shadow_no_out_model`` (every shadow model did: the offline attacks are NaN)."""
    out: list[list[str]] = [[] for _ in range(len(inp.target))]
    if inp.shadow is not None:
        for i, row in enumerate(inp.shadow.x_in):
            if not row.any():
                out[i].append("shadow_no_in_model")
            if row.all():
                out[i].append("shadow_no_out_model")
    return out
