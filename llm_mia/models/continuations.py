"""Sampled continuations of text prefixes, for the text-only membership signals (SaMIA, n-gram coverage).

Each text is split by tokens: the prefix is its first ``floor(prefix_fraction * T)`` tokens (at least
one), the suffix the rest. A text longer than a local model's (or ``api=completions`` / ``api=text``
endpoint's known) context is first cut to its first ``context - 1`` tokens (what [start] + text can
fit, as the TokenStats scoring truncates; ``truncated`` marks it), so T is then ``context - 1``. ``n_samples`` continuations of the prefix are sampled per text (top-k,
temperature 1, one seed per sample from (seed, text index, sample index)). A local model and an
``api=completions`` / ``api=text`` endpoint continue [start id] + prefix ids; an ``api=chat``
endpoint gets one user turn asking to continue the prefix text. Every endpoint sample is one
counted query; the number needed is checked against ``--max-queries`` before the first one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.tokenizer import text_ids

#: The user turn sent to an ``api=chat`` endpoint.
CHAT_CONTINUE = "Continue this text, word for word, with no comment:\n\n{prefix}"


@dataclass
class Continuations:
    """One text's ``prefix`` and true ``suffix`` (strings) and its sampled continuations ``samples`` (m
    strings); ``truncated``: the text was cut to the context first (the suffix ends there)."""

    prefix: str
    suffix: str
    samples: list[str]
    truncated: bool = False


def _seed(seed: int, i: int, j: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(i), int(j), 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_continuations(model, texts: Sequence[str], *, n_samples: int = 5, prefix_fraction: float = 0.5,
                         max_new_tokens: int | None = None, seed: int = 0, top_k: int = 40) -> list[Continuations]:
    """Continuations of each text's prefix (module docstring), in input order.

    ``max_new_tokens`` defaults to the suffix's own length in tokens (at least 1), cut to what fits the context.

    Raises:
        LlmMiaError: ``n_samples`` < 1, ``prefix_fraction`` outside (0, 1), a text of fewer than two
            tokens, more queries than ``model.max_queries`` leaves (before any query).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise LlmMiaError(f"samples per text must be an integer >= 1, got {n_samples!r}")
    if not 0 < prefix_fraction < 1:
        raise LlmMiaError(f"prefix fraction must be in (0, 1), got {prefix_fraction!r}")
    ids = [text_ids(model.tokenizer, t) for t in texts]
    ctx = getattr(model, "max_context", None) if getattr(model, "api", None) != "chat" else None
    cut = [ctx is not None and len(x) > ctx - 1 for x in ids]
    ids = [x[:ctx - 1] if c else x for x, c in zip(ids, cut)]  # [start] + prefix + continuation fit the context
    short = [i for i, x in enumerate(ids) if len(x) < 2]
    if short:
        raise LlmMiaError(f"text {short[0]} has {len(ids[short[0]])} token(s): SaMIA and n-gram coverage need at least "
                          f"2 (a prefix and a suffix)")
    budget = getattr(model, "max_queries", None)
    if budget is not None:
        need, left = len(texts) * n_samples, budget - model.usage.queries
        if need > left:
            raise LlmMiaError(f"SaMIA / n-gram coverage need {need} queries ({len(texts)} texts x {n_samples} samples) "
                              f"but --max-queries leaves {left}: raise it or score fewer texts")
    if getattr(model, "server", "vllm") != "vllm":
        top_k = 0  # plain sampling: top-k needs vLLM's extensions over an API
    out = []
    for i, x in enumerate(ids):
        k = max(1, int(prefix_fraction * len(x)))
        prefix, suffix = model.decode(x[:k]), model.decode_continuation(x[:k], x[k:])
        new = max_new_tokens or max(1, len(x) - k)
        if ctx is not None:
            new = max(1, min(new, ctx - 1 - k))  # what fits after [start] + prefix
        seeds = [_seed(seed, i, j) for j in range(n_samples)]
        if getattr(model, "api", None) == "chat":
            samples = model.chat_generate([CHAT_CONTINUE.format(prefix=prefix)] * n_samples, max_new_tokens=new,
                                          seeds=seeds, top_k=top_k)
        else:
            p = [model.bos_id] + x[:k]
            gens = model.generate([p] * n_samples, max_new_tokens=new, seeds=seeds, top_k=top_k)
            samples = [model.decode_continuation(p[1:], g.new_ids) for g in gens]
        out.append(Continuations(prefix=prefix, suffix=suffix, samples=samples, truncated=cut[i]))
    return out
