"""dedup: cases P14 and C22, PII/secret protection, and agreement with an O(n^2) reference."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_mia.data.dedup as dedup_mod
from llm_mia.data.dedup import (
    DedupResult,
    containment,
    dedup,
    normalize_text,
    trigram_set,
)
from llm_mia.data.pii import find_pii

# ----------------------------------------------------------------------------- reference


def ref_normalize(text: str) -> str:
    chars = [" " if unicodedata.category(c).startswith("P") else c for c in text.lower()]
    return " ".join("".join(chars).split())


def ref_trigrams(text: str) -> set[tuple[str, ...]]:
    w = ref_normalize(text).split()
    return {tuple(w[j : j + 3]) for j in range(len(w) - 2)}


def ref_dedup(texts, threshold=0.5, protect=None):
    """Slow, obviously correct: each sample against every earlier kept sample, in order."""

    def values(t):
        v = {(h.type, h.normalized) for h in find_pii(t)}
        if protect is not None:
            v |= {("protected", x) for x in protect(t)}
        return v

    kept, dropped, reason = [], {}, {}
    for i, t in enumerate(texts):
        target = None
        for k in kept:
            if ref_normalize(texts[k]) == ref_normalize(t) and values(t) <= values(texts[k]):
                target = (k, "exact")
                break
        tri = ref_trigrams(t)
        if target is None and tri:
            for k in kept:
                if len(tri & ref_trigrams(texts[k])) / len(tri) >= threshold and values(t) <= values(texts[k]):
                    target = (k, "near")
                    break
        if target is None:
            kept.append(i)
        else:
            dropped[i], reason[i] = target
    return kept, dropped, reason


def as_tuple(r: DedupResult):
    return r.kept, r.dropped, r.reason


# ----------------------------------------------------------------------------- cases

P14 = [
    "the quick brown fox jumps over the lazy dog near the river bank",  # A
    "the quick brown fox jumps over",  # B
    "the quick brown fox sat quietly",  # C
    "OK.",  # D
    "Thanks!",  # E
]


def test_case_p14_containment_not_jaccard():
    r = dedup(P14)
    assert r.kept == [0, 3, 4]
    assert r.dropped == {1: 0, 2: 0}
    assert r.reason == {1: "near", 2: "near"}
    a, b, c = (ref_trigrams(t) for t in P14[:3])
    assert len(b & a) / len(b) == 1.0 and round(len(a & b) / len(a | b), 3) == 0.364
    assert len(c & a) / len(c) == 0.5
    assert containment(P14[1], P14[0]) == 1.0 and containment(P14[2], P14[0]) == 0.5
    assert trigram_set(P14[3]) == set()


def test_case_c22_pii_values_are_never_merged():
    texts = ["Call 555-0100 now.", "Call 555-0100 now. ", "call 555-0100 now.", "Call 555-0199 now."]
    r = dedup(texts)
    assert r.kept == [0, 3]
    assert r.dropped == {1: 0, 2: 0} and r.reason == {1: "exact", 2: "exact"}
    assert r.kept_texts(texts) == ["Call 555-0100 now.", "Call 555-0199 now."]


def test_near_duplicates_differing_in_pii_are_kept():
    base = "my social security number is {} and I live in springfield ohio near the lake"
    texts = [base.format("123-45-6789"), base.format("123-45-6780"), base.format("123-45-6789") + " today"]
    r = dedup(texts)
    assert r.kept == [0, 1]
    assert r.dropped == {2: 0} and r.reason == {2: "near"}
    # A sample with no PII may be merged into one that has some (its value set is a subset).
    r = dedup([base.format("123-45-6789"), "and I live in springfield ohio near the lake"])
    assert r.kept == [0] and r.dropped == {1: 0}


def test_protected_secrets_block_merges():
    secrets = ["4821", "4822", "AbC123", "abc123"]

    def protect(t):
        return {s for s in secrets if s in t}

    texts = [
        "the pin of jane roe is 4821 and she lives in ohio",
        "the pin of jane roe is 4822 and she lives in ohio",
        "the password is AbC123",
        "The password is abc123",
    ]
    assert dedup(texts).kept == [0, 2]  # without protection: a near and an exact merge
    r = dedup(texts, protect=protect)
    assert r.kept == [0, 1, 2, 3]


def test_short_samples_only_exact():
    r = dedup(["OK.", "ok", "Ok!!", "ok then", "ok now", "ok then"])
    assert r.kept == [0, 3, 4]
    assert r.dropped == {1: 0, 2: 0, 5: 3} and set(r.reason.values()) == {"exact"}


def test_drop_points_at_the_earliest_qualifying_kept_sample():
    texts = ["a b c d e f", "x y z a b c d", "a b c d"]
    r = dedup(texts)
    assert r.kept == [0, 1] and r.dropped == {2: 0}


def test_normalize_text():
    assert normalize_text("Call 555-0100 now. ") == "call 555 0100 now"
    assert normalize_text("  «Héllo»,\tWÖRLD — ok_x $5 ") == "héllo wörld ok x $5"
    assert normalize_text("") == ""


def test_threshold_and_empty_input():
    assert as_tuple(dedup([])) == ([], {}, {})
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            dedup(["a b c"], threshold=bad)
    # threshold 1: only full containment
    texts = ["a b c d e", "a b c d x"]
    assert dedup(texts, threshold=1.0).kept == [0, 1]
    assert dedup(texts, threshold=0.6).kept == [0]


# ----------------------------------------------------------------------------- vs reference

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "Call", "555-0100", "555-0199", "123-45-6789", "a@b.com"]


@st.composite
def sample_sets(draw):
    texts: list[str] = []
    for _ in range(draw(st.integers(0, 18))):
        if texts and draw(st.booleans()):
            w = draw(st.sampled_from(texts)).split()
            op = draw(st.sampled_from(["cut", "sub", "case", "punct", "same"]))
            if op == "cut" and w:
                a = draw(st.integers(0, len(w)))
                b = draw(st.integers(a, len(w)))
                w = w[a:b]
            elif op == "sub" and w:
                w[draw(st.integers(0, len(w) - 1))] = draw(st.sampled_from(WORDS))
            elif op == "case":
                w = [x.upper() for x in w]
            elif op == "punct" and w:
                w[-1] = w[-1] + draw(st.sampled_from([".", "!", ",", " ."]))
            texts.append(" ".join(w))
        else:
            texts.append(" ".join(draw(st.lists(st.sampled_from(WORDS), max_size=10))))
    return texts


@pytest.mark.parametrize("cheap", [256, 0])  # 0: every postings list "heavy", exercising verification
@settings(max_examples=120, deadline=None)
@given(texts=sample_sets(), threshold=st.sampled_from([0.3, 0.5, 0.75, 1.0]))
def test_agrees_with_bruteforce(texts, threshold, cheap):
    old = dedup_mod._CHEAP_POSTINGS
    dedup_mod._CHEAP_POSTINGS = cheap
    try:
        protect = lambda t: {w for w in ("cat", "dog") if w in t}  # noqa: E731
        assert as_tuple(dedup(texts, threshold=threshold)) == ref_dedup(texts, threshold)
        assert as_tuple(dedup(texts, threshold=threshold, protect=protect)) == ref_dedup(texts, threshold, protect)
    finally:
        dedup_mod._CHEAP_POSTINGS = old


def test_result_invariants_on_many_samples():
    import random

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    texts = []
    for _ in range(3000):
        if texts and rng.random() < 0.5:
            w = rng.choice(texts).split()
            a = rng.randrange(len(w) + 1)
            texts.append(" ".join(w[a:] + [rng.choice(vocab)]))
        else:
            texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 15))))
    r = dedup(texts)
    assert sorted(set(r.kept) | set(r.dropped)) == list(range(len(texts)))
    assert not set(r.kept) & set(r.dropped)
    kept = set(r.kept)
    for i, k in r.dropped.items():
        assert k < i and k in kept
        if r.reason[i] == "near":
            assert containment(texts[i], texts[k]) >= 0.5
        else:
            assert normalize_text(texts[i]) == normalize_text(texts[k])
