"""Signals for a fine-tuned target with its base (or any) model as the reference: EZ-MIA, WBC, RMIA
(one reference: :func:`llm_mia.membership.signals.shadow.rmia_scores` with K = 1).

Each is a pure function over the TokenStats of the texts under the target and the reference (and,
for RMIA, of a population of non-member texts). Higher = more likely a member, as everywhere.
EZ-MIA and WBC compare the two models token by token, so they need the reference to have scored
the target's own token ids (same tokenizer); with another tokenizer they raise ``LlmMiaError``
instead of pairing unrelated tokens by position.
"""

from __future__ import annotations

import math

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.signals.registry import SignalInputs, register
from llm_mia.membership.signals.shadow import rmia_scores
from llm_mia.membership.signals.standard import _ref_nlls
from llm_mia.models.stats import TokenStats

WBC_WINDOWS = (2, 3, 4, 6, 9, 13, 18, 25, 32, 40)


def _aligned(target: TokenStats, reference: TokenStats | None, per_byte: bool, name: str) -> None:
    """Raise unless ``reference`` scored the same tokens as ``target``, position by position."""
    if reference is None:
        raise LlmMiaError(f"{name} needs a reference model")
    if per_byte or not torch.equal(target.n_scored, reference.n_scored):
        raise LlmMiaError(f"{name} compares the models token by token: the reference needs the target's "
                          "tokenizer (use a reference of the same family, e.g. the base model)")


def ez_mia_scores(target: TokenStats, reference: TokenStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EZ-MIA, the error-zone score (arXiv 2601.12104, sec. 3; code JetBrains-Research/ez-mia).

    Over the scored tokens where the target's top-1 prediction is not the true token (the error
    zone), d_t = log p_target(x_t) - log p_ref(x_t) (nats; d_t = 0 where both are equal, -inf
    included, never inf - inf). With P = sum of the positive d_t and N = sum of |negative d_t|, the
    paper's score is the ratio P / N. We return P / (P + N) in [0, 1]: a strictly increasing
    function of P / N (x / (1 + x)), so every finite ratio keeps its order, while the limit N = 0
    (the target never less confident than the reference: the most member-like case, which the
    reference code scores 0, i.e. lowest) gets its right place, the top value 1, and stays finite
    for thresholds, ROC curves and JSON.

    Args:
        target: TokenStats of the target model; ``target.token_is_top1`` is required (filled by
            ``compute_token_stats``).
        reference: TokenStats of the same token ids (same tokenizer) under the reference model.

    Returns:
        (scores (N,) float32 in [0, 1], higher = member, NaN where undefined;
        no_error_zone (N,) bool: no scored token outside the target's top-1 (score NaN);
        no_negative (N,) bool: N = 0 < P (score 1, the limit P / N -> +inf)).
        P + N = 0, or P = N = inf, is NaN without a flag of its own (counted by ``ez_mia_undefined``
        in :func:`llm_mia.membership.signals.row_flags`).

    Raises:
        LlmMiaError: reference rows of other lengths, or stats without ``token_is_top1``.
    """
    _aligned(target, reference, False, "ez_mia")
    if target.token_is_top1 is None:
        raise LlmMiaError("ez_mia needs the target's top-1 flags (TokenStats.token_is_top1)")
    zone = target.mask & ~target.token_is_top1
    lt, lr = target.token_logprob.double(), reference.token_logprob.double()
    d = torch.where(zone & (lt != lr), lt - lr, torch.zeros((), dtype=torch.float64))
    pos, neg = d.clamp(min=0).sum(1), (-d).clamp(min=0).sum(1)
    s = pos / (pos + neg)  # 0/0 -> NaN; N = 0 < P -> 1
    s = torch.where(torch.isinf(pos) & ~torch.isinf(neg), torch.ones((), dtype=torch.float64), s)
    s = torch.where(torch.isinf(neg) & ~torch.isinf(pos), torch.zeros((), dtype=torch.float64), s)  # inf/inf: NaN
    no_zone = zone.sum(1) == 0
    s = torch.where(no_zone, torch.full_like(s, math.nan), s)
    return s.to(torch.float32), no_zone, (neg == 0) & (pos > 0)


def wbc_scores(target: TokenStats, reference: TokenStats, *,
               sizes: tuple[int, ...] = WBC_WINDOWS) -> tuple[torch.Tensor, torch.Tensor]:
    """WBC, window-based comparison (arXiv 2601.02751, USENIX Security 2026).

    For each window size w in ``sizes`` with w <= n (the row's scored tokens), over the n - w + 1
    windows of w consecutive tokens (stride 1), the fraction where the reference's summed NLL
    exceeds the target's; the score is the mean of these fractions over the sizes used. A window's
    NLL under a model is +inf when it holds a token of probability 0 under that model: then it
    exceeds iff only the reference's is infinite. Ties (e.g. reference = target) do not exceed.

    Args:
        target: TokenStats of the target model.
        reference: TokenStats of the same token ids (same tokenizer) under the reference model.
        sizes: window lengths in tokens.

    Returns:
        (scores (N,) float32 in [0, 1], higher = member; too_short (N,) bool: n < min(sizes), score NaN).

    Raises:
        LlmMiaError: reference rows of other lengths (another tokenizer), or a size < 1.
    """
    _aligned(target, reference, False, "wbc")
    if not sizes or min(sizes) < 1:
        raise LlmMiaError("wbc window sizes must be >= 1")
    mask, n = target.mask, target.n_scored
    lt, lr = target.token_logprob.double(), reference.token_logprob.double()
    inf_t, inf_r = mask & (lt == -math.inf), mask & (lr == -math.inf)
    d = torch.where(mask & ~inf_t & ~inf_r, lt - lr, torch.zeros((), dtype=torch.float64))  # ref NLL - target NLL
    N, T = d.shape
    total = torch.zeros(N, dtype=torch.float64)
    used = torch.zeros(N, dtype=torch.long)
    for w in sorted(set(sizes)):
        if w > T:
            break
        gain = d.unfold(1, w, 1).sum(-1)  # (N, T - w + 1): each window summed on its own, no cumsum
        wt, wr = inf_t.unfold(1, w, 1).any(-1), inf_r.unfold(1, w, 1).any(-1)
        exceeds = (wr & ~wt) | (~wr & ~wt & (gain > 0))
        valid = torch.arange(T - w + 1)[None, :] + w <= n[:, None]
        nv = valid.sum(1)
        frac = (exceeds & valid).sum(1).double() / nv.clamp(min=1)
        total += torch.where(nv > 0, frac, torch.zeros((), dtype=torch.float64))
        used += (nv > 0).long()
    s = torch.where(used > 0, total / used.clamp(min=1), torch.full_like(total, math.nan))
    return s.to(torch.float32), used == 0


@register("ez_mia", needs=("reference", "aligned_reference"),
          source="EZ-MIA, arXiv 2601.12104 sec. 3 (error zone); P/(P+N), order-preserving",
          description="error-zone positive / (positive + negative) log-prob differences vs the reference")
def ez_mia(inp: SignalInputs) -> torch.Tensor:
    """(N,) in [0, 1], higher = member: :func:`ez_mia_scores` of the target against the reference."""
    _aligned(inp.target, inp.reference, inp.reference_per_byte, "ez_mia")
    return ez_mia_scores(inp.target, inp.reference)[0]


@register("wbc", needs=("reference", "aligned_reference"),
          source="WBC, arXiv 2601.02751 (USENIX Security 2026), windows 2-40",
          description="fraction of windows where the reference's loss exceeds the target's, mean over sizes")
def wbc(inp: SignalInputs) -> torch.Tensor:
    """(N,) in [0, 1], higher = member: :func:`wbc_scores` with the paper's window sizes."""
    _aligned(inp.target, inp.reference, inp.reference_per_byte, "wbc")
    return wbc_scores(inp.target, inp.reference)[0]


def rmia_from_inputs(inp: SignalInputs, *, a: float = 0.3, gamma: float = 1.0) -> torch.Tensor:
    """:func:`rmia_scores` of ``inp``'s texts against ``inp.population`` (both scored by ``score``)."""
    if inp.reference is None or inp.population is None or inp.population.reference is None:
        raise LlmMiaError("rmia needs a reference model and a population of non-member texts")
    xr, xt = _ref_nlls(inp)
    zr, zt = _ref_nlls(inp.population)
    return rmia_scores(-xt, -xr, -zt, -zr, a=a, gamma=gamma)


@register("rmia", needs=("reference", "population"),
          source="Zarifzadeh et al. 2024 (RMIA), offline, one reference, a = 0.3, gamma = 1",
          description="fraction of population texts z with LR(x) / LR(z) > 1, LR = p_target / Pr(x)")
def rmia(inp: SignalInputs) -> torch.Tensor:
    """(N,) in [0, 1], higher = member: :func:`rmia_scores` with a = 0.3, gamma = 1."""
    return rmia_from_inputs(inp)


def finetuned_flags(inp: SignalInputs) -> list[list[str]]:
    """Per-row flags of the signals above, for the inputs that exist (see ``row_flags``)."""
    out: list[list[str]] = [[] for _ in range(len(inp.target))]
    ref = inp.reference
    if ref is not None and not inp.reference_per_byte and inp.target.token_is_top1 is not None \
            and torch.equal(inp.target.n_scored, ref.n_scored):
        ez, no_zone, no_neg = ez_mia_scores(inp.target, ref)
        _, short = wbc_scores(inp.target, ref)
        for i in range(len(out)):
            if no_zone[i]:
                out[i].append("ez_mia_no_error_zone")
            elif no_neg[i]:
                out[i].append("ez_mia_no_negative")
            elif math.isnan(float(ez[i])):
                out[i].append("ez_mia_undefined")
            if short[i]:
                out[i].append("wbc_too_short")
    if inp.population is not None and ref is not None:
        r = rmia_from_inputs(inp)
        for i in range(len(out)):
            if math.isnan(float(r[i])):
                out[i].append("rmia_undefined")
    return out
