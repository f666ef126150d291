"""Membership signals: pure functions over per-token statistics (and the text).

Sign convention: every signal is "higher = more likely a member (training data)".
Units: nats unless the name says otherwise. A signal that is undefined for a row (no scored token)
is NaN there; the reasons are reported by :func:`row_flags`, never as a silent 0.

Adding a signal = one decorated function + one test; the pipeline and the CLI pick it up from the
registry (``needs`` says which inputs it reads, so the pipeline computes only what is asked for).
"""

from __future__ import annotations

from llm_mia.membership.signals.finetuned import finetuned_flags
from llm_mia.membership.signals.registry import (
    REGISTRY,
    Signal,
    SignalInputs,
    get_signals,
    register,
)
from llm_mia.membership.signals.shadow import shadow_flags
from llm_mia.membership.signals.standard import (
    dc_pdd,
    dc_pdd_scores,
    loss,
    lowercase_ratio,
    mean_nll,
    min_k,
    min_k_plus_plus,
    min_k_plus_plus_scores,
    min_k_scores,
    perplexity,
    recall,
    reference_diff,
    reference_ratio,
    token_frequencies,
    total_nll,
    window,
    window_scores,
    zlib_bytes,
    zlib_ratio,
)


def row_flags(inp: SignalInputs) -> list[list[str]]:
    """Per-row reasons a score may be undefined or approximate.

    ``too_short`` (no scored token: NLL-based scores are NaN), ``truncated`` (scored with a sliding
    context), ``zero_nll`` (NLL = 0: ratios are inf), ``zero_sigma`` (Min-K%++ met sigma = 0); with a
    reference of the same tokenizer ``ez_mia_no_error_zone`` (the target's top-1 is right at every
    token: EZ-MIA is NaN), ``ez_mia_no_negative`` (no negative difference: EZ-MIA is 1, the limit of
    P / N = +inf), ``ez_mia_undefined`` (P + N = 0 or both infinite: NaN), ``wbc_too_short`` (fewer
    tokens than the smallest window: NaN); with a population ``rmia_undefined`` (NaN); with shadow
    models ``shadow_no_in_model`` / ``shadow_no_out_model`` (:func:`llm_mia.membership.signals.shadow.shadow_flags`).
    """
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


__all__ = ['REGISTRY', 'Signal', 'SignalInputs', 'get_signals', 'register', 'row_flags', 'mean_nll', 'total_nll', 'perplexity', 'zlib_bytes', 'min_k_scores', 'min_k_plus_plus_scores', 'window_scores', 'loss', 'zlib_ratio', 'lowercase_ratio', 'reference_ratio', 'reference_diff', 'min_k', 'min_k_plus_plus', 'window', 'recall', 'dc_pdd_scores', 'token_frequencies', 'dc_pdd']
