"""Text-only membership scores: SaMIA and n-gram coverage from sampled continuations.

The sampling lives in :mod:`llm_mia.models.continuations`; the pure scores in
:mod:`llm_mia.membership.signals.text_overlap`. Used by ``llm-mia score`` for the signals
:data:`~llm_mia.membership.signals.text_overlap.TEXT_SIGNALS`, on local models and on every endpoint
API (no log-prob is read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llm_mia.membership.signals.text_overlap import TEXT_SIGNALS, ngram_coverage, samia
from llm_mia.models.continuations import sample_continuations

_FN = {"samia": samia, "ngram_coverage": ngram_coverage}


def text_signal_scores(model, texts: Sequence[str], signals: Sequence[str], *, n_samples: int = 5,
                       seed: int = 0) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Scores of ``texts`` under each of ``signals`` (a subset of TEXT_SIGNALS), and per-text flags.

    Returns ({signal: N floats, higher = member, NaN where undefined}, N lists of flags): the flag
    ``no_suffix_ngram`` marks a text whose suffix is too short for a signal, ``truncated`` one cut to
    the model's context before it was split (the suffix then ends at the context).

    Raises:
        LlmMiaError: as :func:`~llm_mia.models.continuations.sample_continuations` (before any query).
    """
    assert set(signals) <= set(TEXT_SIGNALS)
    conts = sample_continuations(model, texts, n_samples=n_samples, seed=seed)
    vals = {s: [_FN[s](c.samples, c.suffix) for c in conts] for s in signals}
    flags = [(["no_suffix_ngram"] if any(math.isnan(vals[s][i]) for s in signals) else [])
             + (["truncated"] if conts[i].truncated else []) for i in range(len(texts))]
    return vals, flags
