"""Membership signals: pure functions over per-token statistics (and the text).

Sign convention: every signal is "higher = more likely a member (training data)".
Units: nats unless the name says otherwise. A signal that is undefined for a row (no scored token)
is NaN there; the reasons are reported by :func:`row_flags`, never as a silent 0.

Adding a signal = one decorated function + one test; the pipeline and the CLI pick it up from the
registry (``needs`` says which inputs it reads, so the pipeline computes only what is asked for).
"""

from __future__ import annotations

import difflib
import math
import zlib as _zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from llm_mia.errors import LlmMiaError
from llm_mia.models.stats import TokenStats


@dataclass
class SignalInputs:
    """Everything a signal may read, for N texts.

    Attributes:
        target: TokenStats of the texts under the target model.
        texts: the N texts (decoded strings).
        lowercase: TokenStats of ``text.lower()`` under the target model, tokenized on its own
            (no 1:1 alignment with ``target`` is assumed; only whole-text NLLs are compared).
        reference: TokenStats of the texts under a reference model.
        reference_per_byte: True when the reference model's tokenizer differs from the target's;
            the reference signals then compare NLL per UTF-8 byte, never per token.
        target_all_bytes: TokenStats of the texts under the target model with every token scored
            (conditioned on BOS), for the per-byte comparison when ``target`` leaves the first token
            unscored (the GPT-2 convention); None when ``target`` already scores every token.
        recall: TokenStats of the texts conditioned on a non-member prefix (ReCaLL); only the
            text's own tokens are scored.
        token_freq: float (V,), Laplace-smoothed token frequencies in a reference corpus (DC-PDD).
        population: the same inputs (``target``, ``reference``, ...) for a population of non-member
            texts, scored once per call under both models (RMIA compares each text with them).
        shadow: the texts' statistics under K shadow models (:class:`llm_mia.signals.shadow.ShadowInputs`)
            for LiRA, RMIA with K references and the Shokri attack.
    """

    target: TokenStats
    texts: list[str]
    lowercase: TokenStats | None = None
    reference: TokenStats | None = None
    reference_per_byte: bool = False
    target_all_bytes: TokenStats | None = None
    recall: TokenStats | None = None
    token_freq: torch.Tensor | None = None
    population: "SignalInputs | None" = None
    shadow: "object | None" = None


@dataclass(frozen=True)
class Signal:
    name: str
    fn: Callable[[SignalInputs], torch.Tensor]
    needs: frozenset = field(default_factory=frozenset)
    source: str = ""
    description: str = ""


REGISTRY: dict[str, Signal] = {}


def register(name: str, *, needs: tuple[str, ...] = (), source: str, description: str):
    """Decorator adding ``fn(inputs) -> Tensor (N,)`` to :data:`REGISTRY` under ``name``.

    ``needs`` names what ``fn`` reads beyond ``inputs.target``'s log-probs: ``text``, ``lowercase``,
    ``reference``, ``recall``, ``token_freq``, ``population``, ``shadow`` (fields of :class:`SignalInputs`),
    ``moments`` (the target view's mu and sigma over the vocabulary, computed only when a chosen
    signal needs them) and ``aligned_reference`` (the reference scored the target's own token ids:
    same tokenizer, so the two models can be compared token by token).
    """

    def deco(fn):
        REGISTRY[name] = Signal(name, fn, frozenset(needs), source, description)
        return fn

    return deco


def get_signals(names: list[str] | None = None, *, available: set[str] | None = None) -> list[Signal]:
    """Signals by name (all whose needs are in ``available`` when ``names`` is None).

    Raises:
        LlmMiaError: for an unknown name, with a "did you mean" suggestion.
    """
    if names is None:
        avail = available if available is not None else set()
        return [s for s in REGISTRY.values() if s.needs <= avail]
    out = []
    for n in names:
        if n not in REGISTRY:
            close = difflib.get_close_matches(n, list(REGISTRY), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(REGISTRY)}"
            raise LlmMiaError(f"unknown signal '{n}'{hint}")
        out.append(REGISTRY[n])
    return out


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


def row_flags(inp: SignalInputs) -> list[list[str]]:
    """Per-row reasons a score may be undefined or approximate.

    ``too_short`` (no scored token: NLL-based scores are NaN), ``truncated`` (scored with a sliding
    context), ``zero_nll`` (NLL = 0: ratios are inf), ``zero_sigma`` (Min-K%++ met sigma = 0); with a
    reference of the same tokenizer ``ez_mia_no_error_zone`` (the target's top-1 is right at every
    token: EZ-MIA is NaN), ``ez_mia_no_negative`` (no negative difference: EZ-MIA is 1, the limit of
    P / N = +inf), ``ez_mia_undefined`` (P + N = 0 or both infinite: NaN), ``wbc_too_short`` (fewer
    tokens than the smallest window: NaN); with a population ``rmia_undefined`` (NaN); with shadow
    models ``shadow_no_in_model`` / ``shadow_no_out_model`` (:func:`llm_mia.signals.shadow.shadow_flags`).
    """
    from llm_mia.signals.finetuned import finetuned_flags
    from llm_mia.signals.shadow import shadow_flags

    extra = [a + b for a, b in zip(finetuned_flags(inp), shadow_flags(inp))]
    t = inp.target
    nll = mean_nll(t)
    zs = min_k_plus_plus_scores(t)[1]
    flags = []
    for i in range(len(t)):
        f = []
        if t.n_scored[i] == 0:
            f.append("too_short")
        if t.truncated[i]:
            f.append("truncated")
        if nll[i] == 0:
            f.append("zero_nll")
        if zs[i]:
            f.append("zero_sigma")
        if inp.lowercase is not None and inp.lowercase.n_scored[i] == 0 and t.n_scored[i] > 0:
            f.append("lowercase_too_short")
        if inp.reference is not None and inp.reference.n_scored[i] == 0 and t.n_scored[i] > 0:
            f.append("reference_too_short")
        flags.append(f + extra[i])
    return flags


from llm_mia.signals import finetuned as _finetuned  # noqa: E402,F401  (registers ez_mia, wbc, rmia)
from llm_mia.signals import shadow as _shadow  # noqa: E402,F401  (registers lira_*, rmia_*line, shokri)
