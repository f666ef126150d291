"""Near-verbatim (approximate) memorization of extraction samples (Ippolito et al. 2023).

Ippolito et al. 2023, "Preventing Verbatim Memorization in Language Models Gives a False Sense of
Privacy", sec. 3 (approximate memorization): a generation is approximately memorized when it is
*similar enough* to training text, not necessarily equal to it. Here the similarity of a sample to
the training corpus is the best token-level normalized edit similarity between a window of
``window`` tokens of the sample and a window of ``window`` tokens of one training document::

    similarity = max over sample windows a, corpus windows b of  1 - Levenshtein(a, b) / window

(token ids compared, unit costs for insertion, deletion and substitution; rapidfuzz's
``Levenshtein.normalized_similarity``, which divides by the longer length). A training document
shorter than ``window`` is one window (the whole document, and the division is by the longer of
the two). Similarity lies in [0, 1]; 1 means a verbatim window. A sample is near-memorized when
``similarity >= threshold`` (default 0.9: at most 5 edits in 50 tokens).

Search (exact for every pair at or above the threshold): with at most ``k = floor((1 - threshold)
* window)`` edits, one of the ``k + 1`` disjoint pieces of ``q = window // (k + 1)`` tokens of the
sample window is copied unchanged, at a corpus position shifted by at most ``k`` from the window's
diagonal (the pigeonhole filter of approximate string matching). So every q-gram of the sample is
located with the suffix array (:class:`~llm_mia.extraction.index.CorpusIndex`), and only the windows
on those diagonals, shifted by -k..k, are compared. Best similarities below the threshold are
lower bounds (the best among the seeded windows; 0.0 when no seed occurs). q-grams occurring more
than ``max_occurrences`` times (boilerplate) are not used as seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm_mia.core.errors import LlmMiaError
from llm_mia.extraction.index import CorpusIndex

__all__ = ["NearMatch", "near_match", "check_near_settings"]


@dataclass(frozen=True)
class NearMatch:
    """The best near-verbatim window of a sample.

    Attributes:
        similarity: best normalized token edit similarity in [0, 1] (1 = verbatim); NaN when the
            sample is shorter than the window (undefined).
        start: offset (tokens) of the best window in the sample; -1 when none.
        doc: training document of the best window; -1 when none.
        offset: token offset of the best window in that document; -1 when none.
    """

    similarity: float
    start: int
    doc: int
    offset: int


def check_near_settings(window: int, threshold: float) -> None:
    """Raise :class:`LlmMiaError` (one line) unless ``window >= 1`` and ``0 < threshold <= 1``."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise LlmMiaError(f"near-verbatim window must be a positive integer, got {window!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise LlmMiaError(f"near-verbatim similarity threshold must be in (0, 1], got {threshold!r}")


def _candidates(index: CorpusIndex, ids: list[int], window: int, k: int, q: int,
                max_occurrences: int) -> set[tuple[int, int, int]]:
    """(doc, sample window start, corpus window start) triples on the diagonals of the seeds."""
    m = len(ids)
    diagonals: dict[tuple[int, int], list[int]] = {}
    for i in range(m - q + 1):
        occurrences = index.locate(ids[i : i + q])
        if len(occurrences) > max_occurrences:
            continue
        for doc, p in occurrences:
            diagonals.setdefault((doc, p - i), []).append(i)
    out: set[tuple[int, int, int]] = set()
    for (doc, d), seeds in diagonals.items():
        last = max(index.doc_length(doc) - window, 0)
        for j in {j for i in seeds for j in range(max(0, i - window + q), min(i, m - window) + 1)}:
            for s in range(-k, k + 1):
                out.add((doc, j, min(max(j + d + s, 0), last)))
    return out


def near_match(index: CorpusIndex, ids: Sequence[int] | np.ndarray, *, window: int = 50, threshold: float = 0.9,
               max_occurrences: int = 1000) -> NearMatch:
    """Best near-verbatim window of the sample ``ids`` in the indexed training corpus (module docstring).

    Args:
        index: the training corpus, tokenized with the target model's tokenizer.
        ids: the sample's generated token ids, shape (m,).
        window: window length in tokens (Ippolito et al. use 50 tokens and more).
        threshold: the near-memorized similarity; the search is exact at or above it.
        max_occurrences: seeds occurring more often are skipped.

    Returns:
        :class:`NearMatch`; ``similarity`` NaN when ``m < window``.

    Raises:
        LlmMiaError: window or threshold out of range. ValueError: a bad token id.
    """
    from rapidfuzz.distance import Levenshtein

    check_near_settings(window, threshold)
    ids = [int(x) for x in np.asarray(ids).tolist()]
    if len(ids) < window:
        return NearMatch(math.nan, -1, -1, -1)
    verbatim = index.longest_match(ids)
    if verbatim.length >= window:  # a verbatim window: similarity 1, no search needed
        doc, off = index.locate(ids[verbatim.start:verbatim.start + window])[0]
        return NearMatch(1.0, verbatim.start, doc, off)
    key = index.query_key(ids)
    k = math.floor((1.0 - threshold) * window + 1e-9)
    q = max(window // (k + 1), 1)
    best = NearMatch(0.0, -1, -1, -1)
    cut = 0.0
    for doc, j, c in sorted(_candidates(index, ids, window, k, q, max_occurrences)):
        sim = Levenshtein.normalized_similarity(key[j : j + window], index.span_key(doc, c, window), score_cutoff=cut)
        if sim > best.similarity:
            best, cut = NearMatch(float(sim), j, doc, c), float(sim)
            if sim >= 1.0:
                break
    return best
