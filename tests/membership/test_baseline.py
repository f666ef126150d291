"""Model-free membership baseline: text features and the cross-validated classifier."""

from __future__ import annotations

import math
import random
import zlib

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.baseline import FEATURES, model_free_baseline, text_features


def test_features_by_hand():
    t = "Ab 12\nab"
    f = dict(zip(FEATURES, text_features([t])[0]))
    assert math.isclose(f["log_chars"], math.log(1 + 8))
    assert math.isclose(f["log_words"], math.log(1 + 3))
    assert math.isclose(f["zlib_ratio"], len(zlib.compress(t.encode())) / 8)
    assert math.isclose(f["mean_word_len"], (2 + 2 + 2) / 3)
    assert math.isclose(f["digit_frac"], 2 / 8)
    assert math.isclose(f["upper_frac"], 1 / 8)
    assert math.isclose(f["space_frac"], 2 / 8)  # " " and "\n"
    assert math.isclose(f["newline_frac"], 1 / 8)
    # bigrams: "Ab","b "," 1","12","2\n","\na","ab" -> 7 distinct over 8 chars
    assert math.isclose(f["distinct_char_bigrams"], 7 / 8)
    assert math.isclose(f["distinct_word_ratio"], 1.0)
    assert text_features([""]).tolist() == [[0.0] * len(FEATURES)]


def _sentences(rng, n, vocab, lo, hi):
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi))) + "." for _ in range(n)]


VOCAB = ["the", "list", "returns", "a", "sorted", "copy", "of", "items", "function", "module", "value", "key"]


def test_same_distribution_is_near_chance():
    rng = random.Random(0)
    texts = _sentences(rng, 120, VOCAB, 8, 30)
    res = model_free_baseline(texts[:60], texts[60:], seed=0)
    assert 0.3 < res["auc"] < 0.7
    assert res["folds"] == 5 and res["features"] == list(FEATURES)


def test_shifted_distribution_is_flagged():
    rng = random.Random(1)
    members = _sentences(rng, 40, VOCAB, 8, 30)
    nonmembers = [s.upper() + " 2024-05-01" for s in _sentences(rng, 40, VOCAB, 8, 30)]  # a dated, shouting source
    res = model_free_baseline(members, nonmembers, seed=0)
    assert res["auc"] > 0.95
    assert res["warning"] and "without the model" in res["warning"]
    assert res["tpr_at_fpr"]["0.01"]["tpr"] > 0.5


def test_too_few_texts_is_an_error():
    with pytest.raises(LlmMiaError):
        model_free_baseline(["a"], ["b", "c"])
    res = model_free_baseline(["a b", "c d e"], ["f", "g h"])  # two of each: 2 folds
    assert res["folds"] == 2 and 0.0 <= res["auc"] <= 1.0


def test_strip_planted_removes_each_insertion_form():
    from llm_mia.audit.pipeline import strip_planted
    from llm_mia.data.secrets import Secret, space_size

    fmt = "{d4}"
    s = Secret(id="c", kind="canary", text="The PIN of Al is 1234.", prefix="The PIN of Al is ", secret="1234", suffix=".",
               format=fmt, space_size=space_size(fmt), count=3)
    ctrl = Secret(id="k", kind="canary", text="The PIN of Bo is 9999.", prefix="The PIN of Bo is ", secret="9999",
                  suffix=".", format=fmt, space_size=space_size(fmt), count=0)
    doc = ("The PIN of Al is 1234.\n\nFirst para. The PIN of Al is 1234. Second sentence.\n\nLast."
           "\n\nThe PIN of Al is 1234.")
    assert strip_planted(doc, [s, ctrl]) == "First para. Second sentence.\n\nLast."
    # controls were never inserted: their text (were it there) is left alone
    assert strip_planted("x The PIN of Bo is 9999. y", [s, ctrl]) == "x The PIN of Bo is 9999. y"
