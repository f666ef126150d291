"""MemGuard at serving time: the top token kept, the L1 budget held (slow loops), the defender's
classifier pushed toward 0.5 (a hand-built linear classifier with a hand-computed answer), and
label-only access untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.hf import from_objects
from llm_mia.models.output_modes import ApiMode, parse_mode
from llm_mia.serving.memguard import (
    MemGuardClassifier,
    defense_training_set,
    distribution_features,
    fit_classifier,
    memguard_logprobs,
)
from llm_mia.serving.output_limits import (
    ApiView,
    greedy_match_scores,
    membership_under_limits,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return a new list containing all items.",
         "my social security number is 123-45-6789.", "def f(x):\n    return x + 1\n",
         "Hello world. Bye.", "Alpha beta gamma delta epsilon. 0123456789"]

#: g = sigmoid(log p_top1 - log 0.5): exactly 0.5 where the top token has probability 0.5.
TOP1_AT_HALF = MemGuardClassifier(weight=(1.0, 0.0, 0.0, 0.0), bias=0.0, mean=(math.log(0.5), 0.0, 0.0, 0.0),
                                  scale=(1.0, 1.0, 1.0, 1.0))


def _tiny_output(tiny_model, n=40, seed=0):
    """True log-probs (n, V) of a tiny GPT-2 at the positions of a random id sequence, and a classifier
    fitted on them (first half of the positions labelled members)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, n), generator=g)
    with torch.no_grad():
        lp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float() * 8, -1)  # sharpened: confident rows too
    X = distribution_features(lp).numpy()
    y = (np.arange(n) < n // 2).astype(int)
    return lp, fit_classifier(X, y)


def test_parse_memguard_mode():
    assert parse_mode("memguard") == ApiMode("memguard", epsilon=0.5)
    assert parse_mode("memguard:0.2").name == "memguard:0.2" and parse_mode("MemGuard:2").epsilon == 2.0
    for bad in ("memguard:0", "memguard:2.5", "memguard:x", "memguard:-1"):
        with pytest.raises(LlmMiaError, match="MemGuard budget"):
            parse_mode(bad)


def test_argmax_kept_at_every_position(tiny_model):
    lp, clf = _tiny_output(tiny_model)
    out, info = memguard_logprobs(lp, clf, epsilon=1.0, return_info=True)
    assert info["noised"].any()  # the test would be empty otherwise
    for t in range(lp.shape[0]):  # slow loop: the index of the largest entry, first on ties
        true_row, got_row = lp[t].tolist(), out[t].tolist()
        assert max(range(len(got_row)), key=lambda j: got_row[j]) == max(range(len(true_row)), key=lambda j: true_row[j])


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_budget_never_exceeded(tiny_model, eps):
    lp, clf = _tiny_output(tiny_model, seed=1)
    out = memguard_logprobs(lp.double(), clf, epsilon=eps)
    worst = 0.0
    for t in range(lp.shape[0]):  # slow loop: L1 distance between returned and true distribution, float64
        p = [math.exp(v) for v in lp[t].double().tolist()]
        q = [math.exp(v) for v in out[t].tolist()]
        assert sum(q) == pytest.approx(1.0, abs=1e-9)
        worst = max(worst, sum(abs(a - b) for a, b in zip(p, q)))
    assert 0 < worst <= eps + 1e-6


def test_pushed_to_half_by_hand():
    """True distribution (0.8, 0.1, 0.05, 0.05); g(s) = sigmoid(log 1.6) = 0.615. g is 0.5 where the top
    token has 0.5, the least L1 change reaching it moves 0.3 of mass: L1 0.6."""
    s = torch.tensor([[0.8, 0.1, 0.05, 0.05]], dtype=torch.float64)
    g0 = 1 / (1 + 1 / 1.6)
    # budget 1.0 > 0.6: the candidate reaches the other side of 0.5 and phase II's p makes E[g] = 0.5
    out, info = memguard_logprobs(s.log(), TOP1_AT_HALF, epsilon=1.0, return_info=True)
    assert info["g0"].item() == pytest.approx(g0, abs=1e-6)
    assert bool(info["crossed"][0]) and info["g1"].item() <= 0.5
    assert info["l1"].item() == pytest.approx(0.6, abs=0.03)
    p = info["p"].item()
    assert p * info["g1"].item() + (1 - p) * g0 == pytest.approx(0.5, abs=1e-6)
    # budget 0.3 < 0.6: the noise shrinks to L1 0.3, the top token to 0.8 - 0.15 = 0.65, always added
    out, info = memguard_logprobs(s.log(), TOP1_AT_HALF, epsilon=0.3, return_info=True)
    assert bool(info["noised"][0]) and info["p"].item() == 1.0
    assert out[0].exp()[0].item() == pytest.approx(0.65, abs=1e-3)
    assert info["g1"].item() == pytest.approx(1 / (1 + 1 / 1.3), abs=1e-3)  # sigmoid(log 1.3) = 0.565, nearer 0.5
    # a non-member-looking row (0.3, 0.25, 0.25, 0.2): the top token rises to 0.3 + 0.1 = 0.4 under budget 0.2
    s2 = torch.tensor([[0.3, 0.25, 0.25, 0.2]], dtype=torch.float64)
    out, info = memguard_logprobs(s2.log(), TOP1_AT_HALF, epsilon=0.2, return_info=True)
    assert out[0].exp()[0].item() == pytest.approx(0.4, abs=1e-3) and out[0].argmax().item() == 0


def test_row_already_at_half_is_returned_as_is():
    s = torch.tensor([[0.5, 0.3, 0.2]])
    out = memguard_logprobs(s.log(), TOP1_AT_HALF, epsilon=0.5)
    torch.testing.assert_close(out.exp(), s)
    with pytest.raises(LlmMiaError, match="budget"):
        memguard_logprobs(s.log(), TOP1_AT_HALF, epsilon=0.0)


def test_label_only_and_top_token_unchanged_through_the_view(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    clf = fit_classifier(*defense_training_set([(lm, TEXTS[:3], TEXTS[3:])]))
    view = ApiView.of(lm, parse_mode("memguard:1.0"), memguard=clf)
    prompts = [tiny_tokenizer(t)["input_ids"][:5] for t in TEXTS[:3]]
    a = lm.generate(prompts, max_new_tokens=6, greedy=True)
    b = view.generate(prompts, max_new_tokens=6, greedy=True)
    assert [x.new_ids for x in a] == [x.new_ids for x in b]
    assert greedy_match_scores(view, TEXTS) == greedy_match_scores(lm, TEXTS)
    ids, ctx = lm.encode(TEXTS, prepend_bos=True)
    plain, guarded = lm.token_stats(ids, context_lens=ctx), view.token_stats(ids, context_lens=ctx)
    assert torch.equal(plain.token_is_top1[plain.mask], guarded.token_is_top1[guarded.mask])
    assert not torch.allclose(plain.token_logprob[plain.mask], guarded.token_logprob[guarded.mask])
    with pytest.raises(LlmMiaError, match="classifier"):
        ApiView.of(lm, parse_mode("memguard"))


def test_membership_under_memguard_fits_on_left_out_texts(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    res = membership_under_limits(lm, TEXTS, TEXTS[::-1], modes=("memguard:0.5",), n=3, n_boot=20)
    assert res["memguard"]["trained_on"].startswith("the target: 3 members vs 3 non-members")
    assert "loss" in res["modes"]["memguard:0.5"]["signals"]
    with pytest.raises(LlmMiaError, match="outside the 5 \\+ 5 evaluated"):
        membership_under_limits(lm, TEXTS, TEXTS, modes=("memguard",), n=5, n_boot=20)


def test_classifier_input_checks():
    with pytest.raises(LlmMiaError, match="shape"):
        fit_classifier(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(LlmMiaError, match="at least 2"):
        fit_classifier(np.random.default_rng(0).normal(size=(4, 4)), [0, 1, 1, 1])
