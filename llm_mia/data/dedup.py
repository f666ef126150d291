"""De-duplication of generated samples before verification (Carlini et al. 2021, "Data De-Duplication").

Rules, applied to the samples in input order (earlier wins):

1. **Normalised text.** Lower-case, every Unicode punctuation character (category P*) replaced by
   a space, whitespace collapsed, ends stripped: ``"Call 555-0100 now. "`` and
   ``"call 555-0100 now."`` both become ``"call 555 0100 now"``. Words are the space-separated
   pieces of that text.
2. **Exact duplicate.** A sample whose normalised text equals that of an earlier *kept* sample.
3. **Near duplicate** (samples of three words or more). Let T(s) be the set of word trigrams of s
   (consecutive, in order; a set, where Carlini et al. write trigram multisets). Sample s is a near duplicate of an earlier kept sample k when
   ``|T(s) & T(k)| >= threshold * |T(s)|``: *containment* of s in k, not Jaccard, so a short
   sample copied out of a long one is caught (case P14: "the quick brown fox jumps over" is
   4/4 contained in a longer sentence though the Jaccard similarity is 0.36). Samples with fewer
   than three words have no trigrams and are only ever exact duplicates.
4. **Personal data is never merged away.** Before dropping s for k, the set of values V(s) --
   ``(type, normalized)`` of every :func:`llm_mia.data.pii.find_pii` hit plus ``("protected", v)`` for
   every ``v`` in ``protect(s)`` -- must be a subset of V(k). "Call 555-0100 now." and
   "Call 555-0199 now." are both kept (case C22) even when their trigrams say otherwise.

When several kept samples qualify, s points at the earliest one: first among the exact matches,
then among the near ones.

Candidate search (why not MinHash LSH)
--------------------------------------
Candidates for rule 3 come from an exact inverted index (trigram -> kept samples) with *prefix
filtering*: if k holds at least ``need = ceil(threshold * |T(s)|)`` of s's trigrams, it holds at
least one of ANY ``|T(s)| - need + 1`` of them, so only the postings of that many trigrams of s --
the ones with the shortest postings lists -- must be read; trigrams shared by very many kept
samples (a common prompt, boilerplate) are skipped. This never misses a candidate, and every
drop is confirmed with the exact overlap count. MinHash LSH (``datasketch``) was measured on
10^5 samples of 30-40 words on a 2-core machine: 5 s to build the signatures, 14 s to insert
them into ``MinHashLSH`` and 100 s to build ``MinHashLSHEnsemble``, before any query, against
about 10 s CPU for this whole function, PII checks included. And LSH on Jaccard cannot see a
short sample contained in a long one (Jaccard 0.05 for 5 of 100 trigrams), while containment
LSH (LSH Ensemble) still misses pairs near the threshold; the index above misses none.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain

from llm_mia.data.pii import pii_values

__all__ = ["DedupResult", "dedup", "normalize_text", "trigram_set", "containment"]

Trigram = tuple[str, str, str]


class _PunctToSpace(dict):
    """str.translate table: Unicode punctuation (category P*) -> space, filled lazily per code point."""

    def __missing__(self, cp: int) -> int:
        out = 32 if unicodedata.category(chr(cp)).startswith("P") else cp
        self[cp] = out
        return out


_PUNCT_TO_SPACE = _PunctToSpace()


def normalize_text(text: str) -> str:
    """Canonical form used for exact de-duplication and for word splitting.

    Lower-cased (``str.lower``), each Unicode punctuation character (category P*) replaced by a
    space, runs of whitespace collapsed to one space, leading/trailing whitespace removed.
    Symbols (``$``, ``+``, ``=``), digits and letters are kept.
    """
    return " ".join(text.lower().translate(_PUNCT_TO_SPACE).split())


def trigram_set(text: str) -> set[Trigram]:
    """Distinct word trigrams of ``normalize_text(text)``; empty for fewer than three words."""
    w = normalize_text(text).split()
    return set(zip(w, w[1:], w[2:]))


def containment(a: str, b: str) -> float:
    """Fraction of ``a``'s distinct word trigrams that also occur in ``b`` (in [0, 1]).

    Asymmetric: ``containment(short, long)`` can be 1 while the Jaccard similarity is small.
    Returns NaN when ``a`` has fewer than three words (no trigrams).
    """
    ta = trigram_set(a)
    if not ta:
        return math.nan
    return len(ta & trigram_set(b)) / len(ta)


@dataclass
class DedupResult:
    """Outcome of :func:`dedup`.

    Attributes:
        kept: indices of kept samples, ascending.
        dropped: index of each dropped sample -> index of the kept sample it duplicates (always a
            smaller index).
        reason: index of each dropped sample -> ``"exact"`` or ``"near"``.
    """

    kept: list[int] = field(default_factory=list)
    dropped: dict[int, int] = field(default_factory=dict)
    reason: dict[int, str] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return len(self.kept)

    def kept_texts(self, texts: Sequence[str]) -> list[str]:
        """The kept samples of ``texts`` (the list given to :func:`dedup`), in order."""
        return [texts[i] for i in self.kept]


def _need(threshold: float, n_trigrams: int) -> int:
    """Smallest overlap count c with c / n_trigrams >= threshold (tolerant to float rounding)."""
    return max(1, math.ceil(threshold * n_trigrams - 1e-9))


# Postings lists up to this length are always counted (C-level Counter, ~50 ns per entry); longer
# ones (trigrams of a shared prompt, boilerplate) are read only when the prefix filter needs them.
_CHEAP_POSTINGS = 256


def _near_candidates(tids: set[int], need: int, postings: dict[int, list[int]], kept_tids: dict[int, set[int]]) -> list[int]:
    """Kept samples holding at least ``need`` of the trigram ids ``tids``, ascending; exact.

    Prefix filter: such a sample holds at least one of ANY ``len(tids) - need + 1`` of the
    trigrams, so reading the postings of that many (the rarest) can miss nobody. Cheap postings
    are all read; when every trigram was read the counts are the exact overlaps, otherwise a
    sample is verified with a set intersection.
    """
    empty: list[int] = []
    plists = [postings.get(g, empty) for g in tids]
    light = [p for p in plists if len(p) <= _CHEAP_POSTINGS]
    short = len(tids) - need + 1 - len(light)
    read = light if short <= 0 else light + sorted((p for p in plists if len(p) > _CHEAP_POSTINGS), key=len)[:short]
    counts = Counter(chain.from_iterable(read))
    unread = len(tids) - len(read)
    out = sorted(k for k, c in counts.items() if c + unread >= need)
    if unread:
        out = [k for k in out if len(tids & kept_tids[k]) >= need]
    return out


def _trigram_ids(words: list[str], word_ids: dict[str, int]) -> set[int]:
    """Distinct word trigrams of ``words`` as int keys; words not yet in ``word_ids`` are numbered there
    (updated in place). A trigram is keyed by one int built from its three word ids (cheap to hash,
    unlike a tuple; word ids stay far below 2**32). Empty for fewer than three words."""
    for x in set(words).difference(word_ids):
        word_ids[x] = len(word_ids)
    w = list(map(word_ids.__getitem__, words))
    return {(a << 64) | (b << 32) | c for a, b, c in zip(w, w[1:], w[2:])}


def dedup(
    texts: Sequence[str],
    *,
    threshold: float = 0.5,
    protect: Callable[[str], Iterable[str]] | None = None,
) -> DedupResult:
    """Drop exact and near duplicates among generated samples; see the module docstring for the rules.

    Args:
        texts: the samples, in the order that decides which one is "earlier" (n,).
        threshold: containment needed for a near duplicate, in (0, 1]; Carlini et al. use 0.5
            (a sample is dropped when at least half of its trigrams occur in one earlier kept
            sample).
        protect: optional function returning the secret values present in a text (e.g. the
            planted secrets of ``secrets.json`` found in it); two samples whose protected values
            differ are never merged, exactly like differing PII values.

    Returns:
        :class:`DedupResult` (kept indices ascending; dropped index -> kept index; reason).
        Empty input gives an empty result.

    Cost: O(total words) for hashing and the inverted index, plus exact confirmation of the
    candidates the prefix filter proposes. PII detection runs only for samples involved in a
    possible drop (and is cached).

    Raises:
        ValueError: if ``threshold`` is not in (0, 1].
    """
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")

    value_cache: dict[int, frozenset] = {}

    def values(i: int) -> frozenset:
        v = value_cache.get(i)
        if v is None:
            v = set(pii_values(texts[i]))
            if protect is not None:
                v |= {("protected", str(x)) for x in protect(texts[i])}
            v = value_cache[i] = frozenset(v)
        return v

    result = DedupResult()
    exact: dict[str, list[int]] = {}  # normalised text -> kept indices (ascending)
    word_ids: dict[str, int] = {}
    postings: dict[int, list[int]] = {}  # trigram key -> kept indices holding it (ascending)
    kept_tids: dict[int, set[int]] = {}

    for i, text in enumerate(texts):
        norm = normalize_text(text)
        target, why = -1, ""
        for k in exact.get(norm, ()):
            if values(i) <= values(k):
                target, why = k, "exact"
                break
        if target >= 0:
            result.dropped[i], result.reason[i] = target, why
            continue
        tids = _trigram_ids(norm.split(), word_ids)
        if tids:
            need = _need(threshold, len(tids))
            for k in _near_candidates(tids, need, postings, kept_tids):
                if values(i) <= values(k):
                    target, why = k, "near"
                    break
        if target >= 0:
            result.dropped[i], result.reason[i] = target, why
            continue
        result.kept.append(i)
        exact.setdefault(norm, []).append(i)
        if tids:
            kept_tids[i] = tids
            for t in tids:
                postings.setdefault(t, []).append(i)
    return result
