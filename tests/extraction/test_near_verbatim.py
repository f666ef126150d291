"""Near-verbatim matches (llm_mia.extraction.near_verbatim) against a brute-force loop over all windows."""

from __future__ import annotations

import math
import random

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.extraction.index import CorpusIndex
from llm_mia.extraction.near_verbatim import near_match


def _edit(a: list[int], b: list[int]) -> int:
    """Plain dynamic-programming Levenshtein distance (unit costs)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _brute(docs: list[list[int]], ids: list[int], window: int) -> float:
    best = 0.0
    for j in range(len(ids) - window + 1):
        a = ids[j:j + window]
        for d in docs:
            for c in range(max(len(d) - window + 1, 1)):
                b = d[c:c + window]
                best = max(best, 1 - _edit(a, b) / max(len(a), len(b)))
    return best


def _mutate(rng: random.Random, x: list[int], n_edits: int, vocab: int) -> list[int]:
    x = list(x)
    for _ in range(n_edits):
        op, p = rng.randrange(3), rng.randrange(len(x))
        if op == 0:
            x[p] = rng.randrange(vocab)
        elif op == 1:
            del x[p]
        else:
            x.insert(p, rng.randrange(vocab))
    return x


@pytest.mark.parametrize("seed", range(6))
def test_near_match_equals_brute_force_at_or_above_threshold(seed):
    rng = random.Random(seed)
    vocab, window, thr = 30, 20, 0.8
    docs = [[rng.randrange(vocab) for _ in range(rng.randrange(10, 45))] for _ in range(4)]
    src = docs[rng.randrange(4)]
    while len(src) < window + 5:
        src = docs[rng.randrange(4)]
    start = rng.randrange(len(src) - window)
    sample = [rng.randrange(vocab) for _ in range(3)] + _mutate(rng, src[start:start + window + 3], seed % 5, vocab)
    sample += [rng.randrange(vocab) for _ in range(2)]
    index = CorpusIndex.from_token_ids(docs)
    got = near_match(index, sample, window=window, threshold=thr)
    want = _brute(docs, sample, window)
    assert (got.similarity >= thr) == (want >= thr)
    if want >= thr:
        assert got.similarity == pytest.approx(want)
        d = docs[got.doc][got.offset:got.offset + window]
        assert 1 - _edit(sample[got.start:got.start + window], d) / window == pytest.approx(want)
    else:
        assert got.similarity <= want + 1e-12


def test_near_match_verbatim_unrelated_and_short():
    rng = random.Random(7)
    docs = [[rng.randrange(1000) for _ in range(80)] for _ in range(3)]
    index = CorpusIndex.from_token_ids(docs)
    assert near_match(index, docs[1][5:60], window=50).similarity == 1.0
    assert near_match(index, [2000 + i for i in range(60)], window=50).similarity == 0.0
    assert math.isnan(near_match(index, docs[1][:10], window=50).similarity)
    # 3 substitutions in 50 tokens: similarity 47 / 50 by hand
    x = list(docs[2][10:60])
    for p in (3, 20, 40):
        x[p] = 5000 + p
    assert near_match(index, x, window=50).similarity == pytest.approx(0.94)
    with pytest.raises(LlmMiaError):
        near_match(index, x, window=0)
    with pytest.raises(LlmMiaError):
        near_match(index, x, threshold=1.5)
