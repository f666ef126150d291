"""CorpusIndex against a slow, obviously correct brute force; text_occurrences (case C22)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_mia.core.errors import LlmMiaError
from llm_mia.extraction.index import CorpusIndex, Match, text_occurrences

# ----------------------------------------------------------------------------- brute force


def brute_count(docs: list[list[int]], pat: list[int]) -> tuple[int, int]:
    """(occurrences, documents containing) of pat: every start position of every document."""
    if not pat:
        return 0, 0
    occ, ndocs = 0, 0
    for d in docs:
        here = sum(1 for p in range(len(d) - len(pat) + 1) if d[p : p + len(pat)] == pat)
        occ += here
        ndocs += here > 0
    return occ, ndocs


def brute_longest(docs: list[list[int]], q: list[int]) -> Match:
    """Longest span of q found in a document; earliest start among the longest."""
    for length in range(len(q), 0, -1):
        for s in range(len(q) - length + 1):
            occ, nd = brute_count(docs, q[s : s + length])
            if occ:
                return Match(length=length, start=s, count=occ, docs=nd)
    return Match(length=0, start=0, count=0, docs=0)


def brute_matching_lengths(docs: list[list[int]], q: list[int]) -> list[int]:
    out = []
    for i in range(len(q)):
        length = 0
        while i + length < len(q) and brute_count(docs, q[i : i + length + 1])[0]:
            length += 1
        out.append(length)
    return out


def brute_locate(docs: list[list[int]], pat: list[int]) -> list[tuple[int, int]]:
    return [(j, p) for j, d in enumerate(docs) for p in range(len(d) - len(pat) + 1) if pat and d[p : p + len(pat)] == pat]


# ----------------------------------------------------------------------------- strategies


@st.composite
def corpus_and_query(draw):
    vocab = draw(st.sampled_from([1, 2, 3, 5]))
    docs = draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=25), min_size=1, max_size=6))
    if not any(docs):
        docs[0] = [0]
    if draw(st.booleans()):
        # A query built around a real corpus slice, so long matches happen.
        d = draw(st.sampled_from([d for d in docs if d]))
        a = draw(st.integers(0, len(d) - 1))
        b = draw(st.integers(a + 1, len(d)))
        pre = draw(st.lists(st.integers(0, vocab + 1), max_size=4))
        post = draw(st.lists(st.integers(0, vocab + 1), max_size=4))
        q = pre + d[a:b] + post
    else:
        q = draw(st.lists(st.integers(0, vocab + 1), max_size=15))  # ids >= vocab never occur
    return docs, q


@settings(max_examples=200, deadline=None)
@given(corpus_and_query())
def test_matches_brute_force(cq):
    docs, q = cq
    index = CorpusIndex.from_token_ids(docs)
    assert index.longest_match(q) == brute_longest(docs, q)
    assert index.matching_lengths(q).tolist() == brute_matching_lengths(docs, q)
    for a in range(len(q)):
        for b in range(a + 1, min(len(q), a + 6) + 1):
            assert index.count(q[a:b]) == brute_count(docs, q[a:b])[0]
    assert index.locate(q[:3]) == brute_locate(docs, q[:3])


# ----------------------------------------------------------------------------- hand cases


def test_empty_query():
    index = CorpusIndex.from_token_ids([[1, 2, 3]])
    assert index.longest_match([]) == Match(0, 0, 0, 0)
    assert index.count([]) == 0
    assert index.locate([]) == []
    assert index.matching_lengths([]).shape == (0,)


def test_no_match_has_length_zero():
    index = CorpusIndex.from_token_ids([[1, 2, 3], [4]])
    m = index.longest_match([9, 8, 7])
    assert (m.length, m.start, m.count, m.docs) == (0, 0, 0, 0)
    assert index.matching_lengths([9, 1, 8]).tolist() == [0, 1, 0]


def test_match_never_spans_a_document_boundary():
    index = CorpusIndex.from_token_ids([[5, 1, 2], [3, 4, 6]])
    assert index.count([2, 3]) == 0
    assert index.count([1, 2, 3, 4]) == 0
    m = index.longest_match([1, 2, 3, 4])
    assert (m.length, m.start, m.count) == (2, 0, 1)  # [1, 2] and [3, 4] tie: earliest wins
    assert index.matching_lengths([1, 2, 3, 4]).tolist() == [2, 1, 2, 1]


def test_empty_documents_are_separators_too():
    index = CorpusIndex.from_token_ids([[1], [], [2]])
    assert index.n_docs == 3 and index.n_tokens == 2
    assert index.count([1, 2]) == 0
    assert index.locate([2]) == [(2, 0)]


def test_overlapping_occurrences_are_counted():
    # C22 in token form: "777" occurs 5 times in "7777777".
    index = CorpusIndex.from_token_ids([[7] * 7])
    assert index.count([7, 7, 7]) == 5
    m = index.longest_match([7, 7, 7])
    assert (m.length, m.start, m.count, m.docs) == (3, 0, 5, 1)
    assert index.locate([7, 7, 7]) == [(0, p) for p in range(5)]


def test_count_and_docs_of_the_longest_match():
    index = CorpusIndex.from_token_ids([[1, 2, 1, 2], [0, 1, 2], [3]])
    m = index.longest_match([9, 1, 2, 9])
    assert (m.length, m.start, m.end, m.count, m.docs) == (2, 1, 3, 3, 2)


def test_large_and_surrogate_range_ids():
    # ids are stored as code points id + 1: the UTF-16 surrogate block and the top must work.
    big = [0, 0xD7FE, 0xD7FF, 0xD800, 0xDFFF, 0xE000, 200_000, 0x10FFFE]
    index = CorpusIndex.from_token_ids([big, big[::-1]])
    assert index.count(big) == 1
    assert index.count(big[2:5]) == 1
    assert index.count([0xD800]) == 2
    assert index.longest_match([1] + big[3:6] + [1]) == Match(3, 1, 1, 1)


def test_accepts_numpy_and_torch_inputs():
    torch = pytest.importorskip("torch")
    docs = [np.array([1, 2, 3], dtype=np.int64), torch.tensor([2, 3, 4])]
    index = CorpusIndex.from_token_ids(docs)
    assert index.count(np.array([2, 3], dtype=np.int32)) == 2
    assert index.longest_match(torch.tensor([0, 2, 3, 4])).length == 3


@pytest.mark.parametrize(
    "bad, exc",
    [([-1], ValueError), ([0x10FFFF], ValueError), ([1.5], ValueError), ([[1, 2]], ValueError)],
)
def test_bad_query_ids_raise(bad, exc):
    index = CorpusIndex.from_token_ids([[1, 2]])
    with pytest.raises(exc):
        index.count(bad)


def test_bad_corpora_raise():
    with pytest.raises(LlmMiaError):
        CorpusIndex.from_token_ids([])
    with pytest.raises(LlmMiaError):
        CorpusIndex.from_token_ids([[], []])
    with pytest.raises(ValueError, match="document 1"):
        CorpusIndex.from_token_ids([[1], [-3]])


def test_from_texts_tokenizes_each_document(tiny_tokenizer):
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world. Bye."]
    index = CorpusIndex.from_texts(texts, tiny_tokenizer)
    ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert index.n_tokens == sum(map(len, ids))
    assert index.longest_match(ids[0]).length == len(ids[0])
    assert index.count(ids[0][-1:] + ids[1][:1]) == brute_count(ids, ids[0][-1:] + ids[1][:1])[0]
    # The `tokenizers` library object gives the same index.
    index2 = CorpusIndex.from_texts(texts, tiny_tokenizer.backend_tokenizer)
    assert index2.n_tokens == index.n_tokens and index2.count(ids[1]) == 1


def test_planted_spans_found_in_a_300k_token_corpus():
    """Correctness at the demo's scale (speed lives in benchmarks/index_bench.py, not in tests)."""
    rng = np.random.default_rng(0)
    docs, total = [], 0
    while total < 300_000:
        n = int(rng.integers(50, 2000))
        docs.append(rng.integers(0, 4096, n))
        total += n
    index = CorpusIndex.from_token_ids(docs)
    assert index.n_tokens == total
    for i in range(20):
        q = np.concatenate([rng.integers(0, 4096, 40), docs[i][:48], rng.integers(0, 4096, 40)])
        m = index.longest_match(q)
        # a random 4096-vocab corpus of 300k tokens cannot hold a 48-token span twice by chance
        assert m.length >= 48 and 0 <= m.start <= 40 and m.count >= 1


# ----------------------------------------------------------------------------- text_occurrences


def test_text_occurrences_overlap_c22():
    assert text_occurrences("7777777", "777") == 5
    assert "7777777".count("777") == 2  # the wrong count this helper exists to avoid
    assert text_occurrences("aaaa", "aa") == 3
    assert text_occurrences("abc", "") == 0
    assert text_occurrences("a.b axb", "a.b") == 1  # no regex meaning
    assert text_occurrences("héllo 😀😀😀", "😀😀") == 2


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab.*", max_size=30), st.text(alphabet="ab.*", min_size=1, max_size=4))
def test_text_occurrences_brute_force(text, value):
    expected = sum(1 for i in range(len(text) - len(value) + 1) if text[i : i + len(value)] == value)
    assert text_occurrences(text, value) == expected  # '.' and '*' are taken literally
