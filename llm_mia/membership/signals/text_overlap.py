"""Text-only membership signals: n-gram overlap of sampled continuations with the true text.

They read no log-prob, only the text and continuations sampled from the model (a local model, or an
``api=text`` / ``api=chat`` endpoint), so they run where no TokenStats signal can. Each text is split
into a prefix and a suffix (:mod:`llm_mia.models.continuations` samples the continuations of the
prefix); both signals compare the samples with the true suffix. Words are ``\\w+`` runs of the
lowercased text. Higher = more likely a member; NaN when the suffix has no word (or n-gram) or
no sample was drawn.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

#: Signals computed from sampled continuations (not from TokenStats).
TEXT_SIGNALS = ("samia", "ngram_coverage")


def words(text: str) -> list[str]:
    """The lowercased ``\\w+`` words of ``text``."""
    return re.findall(r"\w+", text.lower())


def _ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def rouge_n_recall(candidate: str, reference: str, n: int = 1) -> float:
    """ROUGE-N recall (Lin 2004, eq. 1): sum over the reference's n-grams g of min(count_cand(g),
    count_ref(g)) / the number of the reference's n-grams. In [0, 1]; NaN without a reference n-gram."""
    ref = Counter(_ngrams(words(reference), n))
    if not ref:
        return math.nan
    cand = Counter(_ngrams(words(candidate), n))
    return sum(min(c, cand[g]) for g, c in ref.items()) / sum(ref.values())


def samia(samples: Sequence[str], suffix: str, n: int = 1) -> float:
    """SaMIA (Kaneko et al. 2024, "Sampling-based pseudo-likelihood for membership inference attacks",
    sec. 3): the mean ROUGE-N recall of the m sampled continuations c_1..c_m of the prefix
    against the true suffix x_s, SaMIA(x) = (1/m) sum_j ROUGE-N(c_j, x_s); the paper's default N = 1.

    Returns a value in [0, 1], higher = member; NaN when the suffix has no n-gram or ``samples`` is empty.
    """
    if not samples:
        return math.nan
    vals = [rouge_n_recall(c, suffix, n) for c in samples]
    return math.nan if any(math.isnan(v) for v in vals) else sum(vals) / len(vals)


def coverage(sample: str, suffix: str, n: int = 3) -> float:
    """Fraction of the suffix's words that lie inside an n-gram (n consecutive words) of the suffix which
    also occurs in ``sample`` (Hallinan et al. 2025, sec. 3.1, Coverage_L with L = n). NaN when the
    suffix has fewer than n words."""
    ws = words(suffix)
    if len(ws) < n:
        return math.nan
    have = set(_ngrams(words(sample), n))
    covered = [False] * len(ws)
    for i, g in enumerate(_ngrams(ws, n)):
        if g in have:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(ws)


def ngram_coverage(samples: Sequence[str], suffix: str, n: int = 3) -> float:
    """N-gram coverage attack (Hallinan et al. 2025, "The surprising effectiveness of membership inference
    with simple n-gram coverage", sec. 3): max over the m sampled continuations c_j of
    Coverage_n(x_s, c_j), the fraction of the true suffix's words covered by n-grams shared with c_j.

    Returns a value in [0, 1], higher = member; NaN when the suffix has fewer than n words or no sample.
    """
    if not samples:
        return math.nan
    return max(coverage(c, suffix, n) for c in samples)
