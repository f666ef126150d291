"""The standard signals over one model's per-token statistics (and the text): LOSS, zlib,
lowercase, reference, Min-K%, Min-K%++, window, ReCaLL, DC-PDD.

Sign: higher = more likely a member. Units: nats. Each is registered in
:mod:`llm_mia.membership.signals.registry`.
"""

from __future__ import annotations

import math
import zlib as _zlib

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.signals.registry import SignalInputs, register
from llm_mia.models.stats import TokenStats

# ---------------------------------------------------------------- building blocks (pure functions)

def mean_nll(stats: TokenStats) -> torch.Tensor:
    """Mean negative log-likelihood per scored token, nats, shape (N,); NaN where n_scored = 0."""
    lp = torch.where(stats.mask, stats.token_logprob, torch.zeros(()))
    n = stats.n_scored.to(torch.float64)
    # + 0.0 turns -0.0 (every token of probability 1) into +0.0, so ratios over it are +inf, not -inf.
    return (-lp.to(torch.float64).sum(1) / n + 0.0).to(torch.float32)  # 0/0 -> NaN for empty rows


def total_nll(stats: TokenStats) -> torch.Tensor:
    """Sum of -log p over scored tokens, nats, shape (N,); NaN where n_scored = 0."""
    lp = torch.where(stats.mask, stats.token_logprob, torch.zeros(()))
    s = -lp.to(torch.float64).sum(1) + 0.0  # never -0.0 (see mean_nll)
    return torch.where(stats.n_scored > 0, s, torch.full_like(s, float("nan"))).to(torch.float32)


def perplexity(nll: torch.Tensor) -> torch.Tensor:
    """exp(mean NLL); overflows to inf (never raises). Rank by the NLL, not by this."""
    return torch.exp(nll.to(torch.float64))


def zlib_bytes(text: str) -> int:
    """zlib entropy of a text: ``len(zlib.compress(text.encode("utf-8")))`` bytes (Carlini et al. 2021, sec. 5.2)."""
    return len(_zlib.compress(text.encode("utf-8")))


def _lowest_k_mean(values: torch.Tensor, mask: torch.Tensor, n: torch.Tensor, k: float) -> torch.Tensor:
    """Mean of the lowest max(1, floor(k n)) masked values per row; NaN for n = 0. Shape (N,).

    The mask alone marks the unscored cells (sorted last); a real -inf stays -inf (T3-01).
    """
    if not 0 < k <= 1:
        raise LlmMiaError(f"k must be in (0, 1], got {k}")
    v = torch.where(mask, values.to(torch.float64), torch.full((), math.inf, dtype=torch.float64))
    srt, _ = torch.sort(v, dim=1)
    kk = torch.clamp(torch.floor(k * n.to(torch.float64) + 1e-9), min=1).long()
    take = torch.arange(srt.shape[1])[None, :] < kk[:, None]  # the first kk sorted cells, by position
    res = torch.where(take, srt, torch.zeros((), dtype=torch.float64)).sum(1) / kk
    return torch.where(n > 0, res, torch.full_like(res, math.nan)).to(torch.float32)


def min_k_scores(stats: TokenStats, *, k: float = 0.2) -> torch.Tensor:
    """Min-K% (Shi et al. 2024, sec. 3): mean of the lowest max(1, floor(k T)) token log-probs.

    Nats, shape (N,), higher = member; NaN when no token is scored.
    """
    return _lowest_k_mean(stats.token_logprob, stats.mask, stats.n_scored, k)


def min_k_plus_plus_scores(stats: TokenStats, *, k: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-K%++ (Zhang et al. 2025, eq. 3-4): Min-K% over z_t = (log p(x_t) - mu_t) / sigma_t.

    Where sigma_t = 0 (a uniform next-token distribution) z_t is defined as 0 and the row is flagged;
    a token of probability 0 (log p = -inf) has z_t = -inf.
    Returns (scores (N,) dimensionless, higher = member; zero_sigma flag (N,) bool).
    """
    sigma, lp = stats.std_logprob, stats.token_logprob
    zero = (sigma <= 0) & stats.mask & (lp > -math.inf)
    z = torch.where(zero | ~stats.mask, torch.zeros(()), (lp - stats.mean_logprob) / torch.where(zero, 1.0, sigma))
    z = torch.where(stats.mask & (lp == -math.inf), torch.full((), -math.inf), z)
    return _lowest_k_mean(z, stats.mask, stats.n_scored, k), zero.any(1)


def window_scores(stats: TokenStats, *, window: int = 50) -> torch.Tensor:
    """Minus the lowest mean NLL over windows of ``window`` tokens, stride 1, last window included.

    Texts shorter than ``window`` form one window. Carlini et al. 2021, sec. 5.2 ("Window").
    A window holding a token of probability 0 has infinite NLL (it loses the minimum; T3-01).
    Nats, shape (N,), higher = member; NaN when no token is scored.
    """
    if window < 1:
        raise LlmMiaError("window must be >= 1")
    n = stats.n_scored
    lp = torch.where(stats.mask, stats.token_logprob, torch.zeros(())).to(torch.float64)
    zero_p = lp == -math.inf  # counted apart, so a cumulative sum never meets inf - inf
    nll = torch.where(zero_p, torch.zeros((), dtype=torch.float64), -lp)
    N, T = nll.shape
    cs = torch.cat([torch.zeros(N, 1, dtype=torch.float64), nll.cumsum(1)], 1)  # (N, T+1)
    ci = torch.cat([torch.zeros(N, 1, dtype=torch.long), zero_p.long().cumsum(1)], 1)  # (N, T+1)
    m = torch.clamp(torch.minimum(n, torch.tensor(window)), min=1)  # (N,)
    starts = torch.arange(T)[None, :]  # (1, T)
    ends = (starts + m[:, None]).clamp(max=T)
    means = (cs.gather(1, ends) - cs[:, :T]) / m[:, None]  # (N, T)
    means = torch.where(ci.gather(1, ends) - ci[:, :T] > 0, torch.full((), math.inf, dtype=torch.float64), means)
    valid = starts + m[:, None] <= n[:, None]
    best = torch.where(valid, means, torch.full_like(means, math.inf)).min(1).values if T else torch.full((N,), math.inf, dtype=torch.float64)
    return torch.where(n > 0, -best, torch.full_like(best, math.nan)).to(torch.float32)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with den = 0 -> +inf (num > 0), NaN stays NaN; no ZeroDivisionError."""
    return num.to(torch.float64).div(den.to(torch.float64)).to(torch.float32)


def _nll_per_byte(stats: TokenStats, texts: list[str]) -> torch.Tensor:
    nbytes = torch.tensor([max(1, len(t.encode("utf-8"))) for t in texts], dtype=torch.float64)
    return (total_nll(stats).to(torch.float64) / nbytes).to(torch.float32)


# ---------------------------------------------------------------- registered signals

@register("loss", source="Yeom et al. 2018; Carlini et al. 2021 sec. 5.2 (perplexity)",
          description="-mean NLL (nats/token)")
def loss(inp: SignalInputs) -> torch.Tensor:
    return -mean_nll(inp.target)


@register("zlib", needs=("text",), source="Carlini et al. 2021 sec. 5.2 (zlib)",
          description="zlib entropy (bytes) / mean NLL (nats/token)")
def zlib_ratio(inp: SignalInputs) -> torch.Tensor:
    z = torch.tensor([zlib_bytes(t) for t in inp.texts], dtype=torch.float32)
    return _ratio(z, mean_nll(inp.target))


@register("lowercase", needs=("lowercase",), source="Carlini et al. 2021 sec. 5.2 (lowercase)",
          description="mean NLL of the lowercased text / mean NLL of the text")
def lowercase_ratio(inp: SignalInputs) -> torch.Tensor:
    return _ratio(mean_nll(inp.lowercase), mean_nll(inp.target))


def _ref_nlls(inp: SignalInputs) -> tuple[torch.Tensor, torch.Tensor]:
    if inp.reference_per_byte:  # both NLLs must cover every byte of the text
        tgt = inp.target_all_bytes if inp.target_all_bytes is not None else inp.target
        return _nll_per_byte(inp.reference, inp.texts), _nll_per_byte(tgt, inp.texts)
    return mean_nll(inp.reference), mean_nll(inp.target)


@register("reference", needs=("reference",), source="Carlini et al. 2021 sec. 5.2 (small / medium)",
          description="reference-model NLL / target NLL (per byte when tokenizers differ)")
def reference_ratio(inp: SignalInputs) -> torch.Tensor:
    ref, tgt = _ref_nlls(inp)
    return _ratio(ref, tgt)


@register("reference_diff", needs=("reference",), source="Watson et al. 2022 (difficulty calibration); Carlini et al. 2021",
          description="reference-model NLL - target NLL (nats; per byte when tokenizers differ)")
def reference_diff(inp: SignalInputs) -> torch.Tensor:
    ref, tgt = _ref_nlls(inp)
    return ref - tgt


@register("min_k", source="Shi et al. 2024 sec. 3 (Min-K% Prob), k = 0.2",
          description="mean of the lowest 20% token log-probs")
def min_k(inp: SignalInputs) -> torch.Tensor:
    return min_k_scores(inp.target, k=0.2)


@register("min_k_plus_plus", needs=("moments",), source="Zhang et al. 2025 eq. 3-4 (Min-K%++), k = 0.2",
          description="Min-K% over (log p - mu) / sigma")
def min_k_plus_plus(inp: SignalInputs) -> torch.Tensor:
    return min_k_plus_plus_scores(inp.target, k=0.2)[0]


@register("window", source="Carlini et al. 2021 sec. 5.2 (window), 50 tokens",
          description="-(lowest mean NLL over 50-token windows)")
def window(inp: SignalInputs) -> torch.Tensor:
    return window_scores(inp.target, window=50)


@register("recall", needs=("recall",), source="Xie et al. 2024 (ReCaLL), eq. 1",
          description="mean NLL given a non-member prefix / mean NLL")
def recall(inp: SignalInputs) -> torch.Tensor:
    return _ratio(mean_nll(inp.recall), mean_nll(inp.target))


def dc_pdd_scores(stats: TokenStats, token_freq: torch.Tensor, *, a: float = 0.01) -> torch.Tensor:
    """DC-PDD (Zhang et al. 2024, EMNLP, sec. 3, eq. 4-6).

    For the first occurrence of each distinct token id in the scored tokens,
    alpha_t = min(p(x_t) * log(1 / f(x_t)), a), with f the Laplace-smoothed frequency of the token
    in a reference corpus; the score is the mean of alpha_t. Higher = member. Shape (N,);
    NaN when no token is scored.
    """
    N, T = stats.token_id.shape
    out = torch.full((N,), math.nan, dtype=torch.float32)
    p = stats.token_logprob.double().exp()
    for i in range(N):  # a first-occurrence mask needs the row's own ids; T ops per row, vectorised
        n = int(stats.n_scored[i])
        if n == 0:
            continue
        ids = stats.token_id[i, :n]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        first = torch.full((len(uniq),), n, dtype=torch.long).scatter_reduce(0, inverse, torch.arange(n), "amin")
        f = token_freq.double()[ids[first]]
        alpha = (p[i, first] * torch.log(1.0 / f)).clamp(max=a)
        out[i] = alpha.mean().float()
    return out


def token_frequencies(tokenizer, texts, vocab_size: int) -> torch.Tensor:
    """Laplace-smoothed token frequencies (1 + count) / (total + V) over ``texts``, shape (V,)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if ids:
            counts += torch.bincount(torch.as_tensor(ids), minlength=vocab_size)[:vocab_size].double()
    return (1 + counts) / (counts.sum() + vocab_size)


@register("dc_pdd", needs=("token_freq",), source="Zhang et al. 2024 (DC-PDD), eq. 4-6, a = 0.01",
          description="mean of min(p * log(1/f), 0.01) over first occurrences of tokens")
def dc_pdd(inp: SignalInputs) -> torch.Tensor:
    return dc_pdd_scores(inp.target, inp.token_freq)


