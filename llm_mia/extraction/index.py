"""Training-corpus index for verbatim-match verification (Carlini et al. 2021).

An extracted sample is "memorized" when a long span of it occurs verbatim in the training data,
and the number of training documents holding that span is its k in "k-eidetic memorization".
:class:`CorpusIndex` answers, for a sequence of token ids of the *target model's* tokenizer:

* :meth:`CorpusIndex.longest_match` -- the longest span of the query that occurs verbatim in the
  corpus, where it starts in the query, how many times it occurs (overlapping occurrences counted)
  and in how many documents;
* :meth:`CorpusIndex.count` -- how many times an exact token sequence occurs;
* :meth:`CorpusIndex.matching_lengths` -- for each query position, the longest match starting
  there (the "matching statistics");
* :meth:`CorpusIndex.locate` -- (document, token offset) of each occurrence.

Design: suffix array + binary search
------------------------------------
Each document is tokenized on its own; token id ``t`` is stored as the code point ``t + 1`` of one
Python ``str`` and every document is followed by the code point 0, a separator that no query can
contain (query ids are >= 0), so no match ever spans two documents. The suffix array of that
string is built by ``pydivsufsort`` (libdivsufsort, C, about 40 ms for 300 k tokens); the only
hand-written part is the search. A pattern's occurrences form one contiguous range of the suffix
array, found with ``bisect`` (C) whose key slices the code-point string (C slicing and comparison),
so one range search costs about 20 key calls of a few hundred ns each.

* ``longest_match`` uses the fact that a longer match must beat the best length so far: at each
  query start it only asks whether ``best + 1`` tokens occur and extends while they do, narrowing
  the previous range. That is at most ``m + best`` range searches for a query of ``m`` tokens:
  well under 10 ms for 128 tokens on a 300 k-token corpus (about 1-2 ms measured).
* ``matching_lengths`` uses ``ms[i + 1] >= ms[i] - 1`` (a suffix of a match is a match), again
  O(m) range searches.

Alternatives considered: a suffix automaton gives O(m) queries but needs ~2n Python dicts (slow to
build and hundreds of MB for large corpora); rolling hashes per length are approximate or need
one table per length; ``pydivsufsort.sa_search`` only handles byte alphabets, not token ids.

Memory: the string (4 bytes per token) plus the suffix array (4 bytes per token).
"""

from __future__ import annotations

import array
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_mia.core.errors import LlmMiaError

__all__ = ["CorpusIndex", "Match", "text_occurrences", "tokenize_documents"]

# Token id t is stored as code point t + 1; code point 0 separates documents.
_MAX_ID = 0x10FFFF - 1
_SEP = 0


@dataclass(frozen=True)
class Match:
    """The longest span of a query that occurs verbatim in the corpus.

    Attributes:
        length: length of the span in tokens (0 when no token of the query occurs, or the query
            is empty).
        start: offset in the query (tokens) of the span; the earliest one when several spans of
            the same length occur. 0 when ``length == 0``.
        count: occurrences of the span in the corpus, overlapping occurrences counted (a span
            occurring twice inside one document counts 2). 0 when ``length == 0``.
        docs: number of distinct corpus documents containing the span (the k of Carlini et al.'s
            k-eidetic memorization). 0 when ``length == 0``.
    """

    length: int
    start: int
    count: int
    docs: int

    @property
    def end(self) -> int:
        """Offset in the query just past the span (``start + length``)."""
        return self.start + self.length


def _to_codes(ids: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    """Token ids -> uint32 code points (id + 1). Raises ValueError on a bad id or dtype."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint32)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer token ids, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > _MAX_ID:
        raise ValueError(f"{what}: token ids must lie in [0, {_MAX_ID}], got {lo if lo < 0 else hi}")
    return (arr.astype(np.int64) + 1).astype(np.uint32)


def _codes_to_str(codes: np.ndarray) -> str:
    # UTF-32 decoding with surrogatepass maps every code point, surrogates included, to one char.
    return codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


class CorpusIndex:
    """Exact index of a tokenized training corpus; see the module docstring for the design.

    Build it with :meth:`from_token_ids` or :meth:`from_texts`. Queries accept any 1-D sequence of
    non-negative integer token ids (list, tuple, numpy array, 1-D tensor converted by numpy).
    Token ids absent from the corpus simply never match. The index is immutable and picklable.
    """

    def __init__(self, docs: Iterable[Sequence[int]]):
        """Prefer :meth:`from_token_ids`; same arguments and errors."""
        try:
            from pydivsufsort import divsufsort
        except ImportError:  # pragma: no cover - a declared dependency
            raise LlmMiaError("CorpusIndex needs the pydivsufsort package: pip install pydivsufsort") from None

        parts: list[np.ndarray] = []
        starts: list[int] = []
        pos = 0
        sep = np.array([_SEP], dtype=np.uint32)
        for j, doc in enumerate(docs):
            codes = _to_codes(doc, f"document {j}")
            starts.append(pos)
            parts.append(codes)
            parts.append(sep)
            pos += len(codes) + 1
        n_tokens = pos - len(starts)
        if n_tokens == 0:
            raise LlmMiaError("cannot index an empty corpus (no documents or no tokens)")
        codes = np.concatenate(parts)
        self._text: str = _codes_to_str(codes)
        big = len(codes) >= 2**31
        sa = np.asarray(divsufsort(codes.astype(np.int32)), dtype=np.int64 if big else np.int32)
        # array.array: compact, and indexing returns Python ints (fast for bisect's key calls);
        # _positions() takes a zero-copy numpy view of the same buffer for vectorised work.
        self._sa = array.array("q" if big else "i", sa.tobytes())
        self._doc_starts = np.asarray(starts, dtype=np.int64)
        self._n_tokens = n_tokens

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_token_ids(cls, docs: Iterable[Sequence[int]]) -> CorpusIndex:
        """Index a corpus given as one token-id sequence per training document.

        Args:
            docs: iterable of 1-D integer sequences (ragged lengths, empty documents allowed).
                Ids must lie in [0, 1_114_110] (any real vocabulary does).

        Returns:
            The index. Build time is dominated by libdivsufsort: ~0.1 s for 300 k tokens.

        Raises:
            LlmMiaError: if the corpus has no tokens at all.
            ValueError: if a document holds a negative, too large or non-integer id.
        """
        return cls(docs)

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: Any) -> CorpusIndex:
        """Tokenize each training document separately with ``tokenizer`` and index the ids.

        Args:
            texts: the training documents, one string each.
            tokenizer: the target model's tokenizer: a ``transformers`` tokenizer (called with
                ``add_special_tokens=False``) or a ``tokenizers.Tokenizer`` (``encode_batch``
                without special tokens). Use the same tokenizer to encode the queries.

        Raises:
            LlmMiaError: if the texts produce no tokens at all.
        """
        return cls(tokenize_documents(list(texts), tokenizer))

    # ------------------------------------------------------------------ properties
    @property
    def n_tokens(self) -> int:
        """Number of corpus tokens (separators excluded)."""
        return self._n_tokens

    @property
    def n_docs(self) -> int:
        """Number of documents (empty ones included)."""
        return len(self._doc_starts)

    def __len__(self) -> int:
        return self._n_tokens

    def __repr__(self) -> str:
        return f"CorpusIndex(n_docs={self.n_docs}, n_tokens={self.n_tokens})"

    # ------------------------------------------------------------------ core search
    def _query(self, ids: Sequence[int] | np.ndarray) -> str:
        return _codes_to_str(_to_codes(ids, "query"))

    def _range(self, pat: str, lo: int, hi: int) -> tuple[int, int]:
        """Suffix-array range [lo, hi) of suffixes starting with ``pat``, searched inside [lo, hi)."""
        text = self._text
        k = len(pat)

        def key(p: int) -> str:
            return text[p : p + k]

        lo = bisect_left(self._sa, pat, lo, hi, key=key)
        hi = bisect_right(self._sa, pat, lo, hi, key=key)
        return lo, hi

    def _positions(self, lo: int, hi: int) -> np.ndarray:
        """Start positions (in the separator-joined string) of suffix-array entries [lo, hi)."""
        return np.frombuffer(self._sa, dtype=np.int32 if self._sa.typecode == "i" else np.int64)[lo:hi]

    def _docs_in_range(self, lo: int, hi: int) -> int:
        pos = self._positions(lo, hi)
        return int(np.unique(np.searchsorted(self._doc_starts, pos, side="right")).size)

    # ------------------------------------------------------------------ queries
    def count(self, ids: Sequence[int] | np.ndarray) -> int:
        """Occurrences of the exact token sequence ``ids`` in the corpus, overlapping counted.

        Occurrences never span two documents. The empty sequence returns 0 (by convention).

        Raises:
            ValueError: on a negative, too large or non-integer id.
        """
        pat = self._query(ids)
        if not pat:
            return 0
        lo, hi = self._range(pat, 0, len(self._sa))
        return hi - lo

    def locate(self, ids: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
        """Where ``ids`` occurs: ``(document index, token offset in that document)`` pairs.

        Sorted by document then offset; overlapping occurrences all listed; ``[]`` for the empty
        sequence or no occurrence. ``len(locate(ids)) == count(ids)``.
        """
        pat = self._query(ids)
        if not pat:
            return []
        lo, hi = self._range(pat, 0, len(self._sa))
        pos = np.sort(self._positions(lo, hi))
        doc = np.searchsorted(self._doc_starts, pos, side="right") - 1
        return [(int(d), int(p - self._doc_starts[d])) for d, p in zip(doc, pos)]

    def doc_length(self, doc: int) -> int:
        """Number of tokens of document ``doc`` (0-based, separators excluded)."""
        end = int(self._doc_starts[doc + 1]) - 1 if doc + 1 < len(self._doc_starts) else len(self._text) - 1
        return end - int(self._doc_starts[doc])

    def span_key(self, doc: int, start: int, length: int) -> str:
        """Tokens ``[start, start + length)`` of document ``doc`` (clipped at its end) as an opaque string,
        one character per token, comparable with :meth:`query_key` of the same ids (e.g. by an edit distance)."""
        base = int(self._doc_starts[doc])
        end = base + min(start + length, self.doc_length(doc))
        return self._text[base + start : end]

    def query_key(self, ids: Sequence[int] | np.ndarray) -> str:
        """The token ids ``ids`` as the opaque string :meth:`span_key` returns for the same tokens.

        Raises:
            ValueError: on a negative, too large or non-integer id.
        """
        return self._query(ids)

    def longest_match(self, ids: Sequence[int] | np.ndarray) -> Match:
        """The longest contiguous span of ``ids`` occurring verbatim in one corpus document.

        Args:
            ids: query token ids, shape (m,), same tokenizer as the corpus.

        Returns:
            :class:`Match` with ``length`` (tokens), ``start`` (earliest query offset among spans of
            that length), ``count`` (overlapping occurrences in the corpus) and ``docs`` (distinct
            documents containing it). An empty query or one whose tokens never occur gives
            ``Match(0, 0, 0, 0)``.

        Cost: at most ``m + length`` suffix-array range searches (O((m + length) log n) string
        comparisons of at most ``length + 1`` tokens).

        Raises:
            ValueError: on a negative, too large or non-integer id.
        """
        q = self._query(ids)
        m = len(q)
        n = len(self._sa)
        best, best_start, best_lo, best_hi = 0, 0, 0, 0
        i = 0
        while i + best < m:
            # Only a span longer than `best` can change the answer: test best + 1, then extend.
            lo, hi = 0, n
            k = best + 1
            while i + k <= m:
                lo2, hi2 = self._range(q[i : i + k], lo, hi)
                if lo2 == hi2:
                    break
                lo, hi = lo2, hi2
                best, best_start, best_lo, best_hi = k, i, lo, hi
                k += 1
            i += 1
        if best == 0:
            return Match(length=0, start=0, count=0, docs=0)
        return Match(length=best, start=best_start, count=best_hi - best_lo, docs=self._docs_in_range(best_lo, best_hi))

    def matching_lengths(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Matching statistics: for each query offset i, the longest ``L`` with ``ids[i:i+L]`` in the corpus.

        Returns:
            int64 array of shape (m,); ``max()`` equals ``longest_match(ids).length`` and its first
            argmax equals ``longest_match(ids).start`` (for a non-empty match). Empty query ->
            shape (0,).
        """
        q = self._query(ids)
        m = len(q)
        n = len(self._sa)
        out = np.zeros(m, dtype=np.int64)
        length = 0
        for i in range(m):
            length = max(length - 1, 0)  # ids[i:i+length] occurs: it is a suffix of the last match
            lo, hi = self._range(q[i : i + length], 0, n) if length else (0, n)
            while i + length < m:
                lo2, hi2 = self._range(q[i : i + length + 1], lo, hi)
                if lo2 == hi2:
                    break
                lo, hi = lo2, hi2
                length += 1
            out[i] = length
        return out


def tokenize_documents(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each text, encoded separately and without special tokens.

    Accepts a ``transformers`` tokenizer (anything callable returning ``input_ids``) or a
    ``tokenizers.Tokenizer`` (``encode_batch``). Returns one list of ints per text.
    """
    if not texts:
        return []
    if not hasattr(tokenizer, "batch_encode_plus") and hasattr(tokenizer, "encode_batch"):
        return [list(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    out = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [list(x) for x in out]


def text_occurrences(corpus_text: str, value: str) -> int:
    """Number of occurrences of ``value`` in ``corpus_text``, OVERLAPPING occurrences counted.

    ``text_occurrences("7777777", "777") == 5`` where ``str.count`` says 2 (case C22): use this
    for "seen k times" counts. Case-sensitive, exact code-point match. An empty ``value`` returns
    0 (by convention). Runs in C (a zero-width regex look-ahead), linear in ``len(corpus_text)``
    for ordinary values.
    """
    if not value:
        return 0
    return sum(1 for _ in re.finditer("(?=" + re.escape(value) + ")", corpus_text))
