"""Discoverable memorization (Carlini et al. 2023; Hayes et al. 2024) against a slow, obviously-correct oracle."""

from __future__ import annotations

import math

import pytest
import torch

from llm_mia.extraction.discoverable import discoverable_memorization, p_extract
from llm_mia.models.hf import from_objects
from tests.conftest import _fit

DOCS = ["The quick brown fox jumps over the lazy dog and returns a sorted list of items.",
        "Return a new list containing all items from the iterable in ascending order, please.",
        "Alpha beta gamma delta epsilon, then the function returns x plus one for every x.",
        "Hello world. Bye now, my security number is private and nobody calls me at all.",
        "def f(x): return the ABCDEF digits 0123456789 of the lazy dog in reverse order.",
        "Istanbul, hello, the world of delta and gamma keeps its items sorted by number."]


@pytest.fixture(scope="module")
def fitted(tiny_tokenizer):
    model, _ = _fit(DOCS[:3], tiny_tokenizer, steps=150, seed=3)  # memorizes the first three documents
    return from_objects(model, tiny_tokenizer)


def _oracle(loaded, text, k, L, top_k):
    """Greedy loop one token at a time with a full forward pass, and the top-k probability of the true suffix."""
    tok = loaded.tokenizer
    ids = [loaded.bos_id] + tok(text, add_special_tokens=False)["input_ids"]
    prompt, true = ids[:1 + k], ids[1 + k:1 + k + L]
    cur = list(prompt)
    with torch.no_grad():
        for _ in range(L):
            cur.append(int(loaded.model(input_ids=torch.tensor([cur])).logits[0, -1].argmax()))
        logits = loaded.model(input_ids=torch.tensor([prompt + true])).logits[0].double()
    lp = 0.0
    for j, t in enumerate(true):
        row = logits[len(prompt) - 1 + j]
        kth = torch.topk(row, top_k).values[-1]
        kept = torch.where(row >= kth, row, torch.tensor(-math.inf, dtype=torch.float64))
        lp += float(kept[t] - torch.logsumexp(kept, 0))
    return cur[len(prompt):] == true, lp


def test_discoverable_matches_a_slow_greedy_loop(fitted):
    res = discoverable_memorization(fitted, DOCS, n_examples=6, prefix_len=6, suffix_len=8, seed=0, top_k=5,
                                    n=10, p=0.5, batch_size=4)
    assert res["n_eligible"] == 6 and res["n_examples"] == 6
    greedy, logs = [], []
    for ex in res["examples"]:
        g, lp = _oracle(fitted, DOCS[ex["index"]], 6, 8, 5)
        assert ex["greedy"] == g
        greedy.append(g)
        logs.append(lp)
        assert ex["log_p_suffix"] == pytest.approx(lp, abs=1e-3) if lp > -math.inf else ex["log_p_suffix"] == -math.inf
    assert any(greedy) and not all(greedy)  # the fitted documents come back, the others do not
    assert res["greedy_rate"] == pytest.approx(sum(greedy) / 6)
    want = sum(1 - (1 - math.exp(lp)) ** 10 >= 0.5 for lp in logs) / 6
    assert res["np_discoverable_rate"] == pytest.approx(want)


def test_p_extract_is_one_minus_miss_probability():
    assert p_extract(math.log(0.1), 3) == pytest.approx(1 - 0.9 ** 3)
    assert p_extract(-math.inf, 10) == 0.0
    assert p_extract(math.log(1e-12), 10) == pytest.approx(1e-11, rel=1e-6)  # no cancellation


def test_short_documents_are_skipped_not_errors(fitted):
    res = discoverable_memorization(fitted, ["too short"], prefix_len=50, suffix_len=50)
    assert res["n_eligible"] == 0 and res["greedy_rate"] is None and "skipped" in res


def _exact_p_near(loaded, text, k, top_k):
    """P(a top-k, T = 1 sample of 2 tokens is within 1 token edit of the true 2-token suffix), by
    enumerating the top_k x top_k continuations with a full forward pass each."""
    tok = loaded.tokenizer
    ids = [loaded.bos_id] + tok(text, add_special_tokens=False)["input_ids"]
    prompt, true = ids[:1 + k], ids[1 + k:1 + k + 2]

    def topk_probs(seq):
        with torch.no_grad():
            row = loaded.model(input_ids=torch.tensor([seq])).logits[0, -1].double()
        v, i = torch.topk(row, top_k)
        return list(zip(i.tolist(), torch.softmax(v, 0).tolist()))

    total = 0.0
    for a, pa in topk_probs(prompt):
        for b, pb in topk_probs(prompt + [a]):
            total += pa * pb * (int(a != true[0]) + int(b != true[1]) <= 1)  # Levenshtein <= 1 for 2 tokens
    return total


def test_near_verbatim_risk_matches_enumerated_probability(fitted):
    n_s = 300
    res = discoverable_memorization(fitted, DOCS, n_examples=6, prefix_len=6, suffix_len=2, seed=1, top_k=5,
                                    n=10, p=0.5, batch_size=64, near_similarity=0.5, near_samples=n_s, near_p=0.5,
                                    confidence=0.999)
    exact = []
    for ex in res["examples"]:
        pe = _exact_p_near(fitted, DOCS[ex["index"]], 6, 5)
        exact.append(pe)
        assert abs(ex["p_near"] - pe) <= 4 * math.sqrt(pe * (1 - pe) / n_s) + 2 / n_s
        assert ex["p_near_upper"] >= pe - 1e-12 and ex["p_near_upper"] >= ex["p_near"]
    assert any(pe > 0.9 for pe in exact) and any(pe < 0.9 for pe in exact)  # both kinds of prefix present
    risk = res["near_risk"]
    assert risk["mean_p_near"] == pytest.approx(sum(ex["p_near"] for ex in res["examples"]) / 6)
    assert risk["n_at_least_near_p"] == sum(ex["p_near"] >= 0.5 for ex in res["examples"])
    # greedy near-verbatim: similarity 1 - edits / 2 of the greedy suffix, by hand from greedy_match_tokens bounds
    for ex in res["examples"]:
        assert ex["greedy_similarity"] in (0.0, 0.5, 1.0) and (ex["greedy_similarity"] == 1.0) == ex["greedy"]
    assert res["greedy_near_rate"] >= res["greedy_rate"]


def test_clopper_pearson_upper_by_hand():
    from llm_mia.extraction.discoverable import clopper_pearson_upper

    assert clopper_pearson_upper(0, 20, 0.95) == pytest.approx(1 - 0.05 ** (1 / 20))  # (1 - u)^20 = 0.05
    assert clopper_pearson_upper(20, 20, 0.95) == 1.0
    assert clopper_pearson_upper(19, 20, 0.95) == pytest.approx(0.95 ** (1 / 20))  # P(X <= 19) = 1 - u^20 = 0.05
