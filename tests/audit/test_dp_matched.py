"""The dp-matched search (Aerni, Zhang, Tramèr 2024): run with a stand-in trainer whose held-out
perplexity is a known function of the noise multiplier and clipping norm, so each expected choice
is worked out by hand."""

from __future__ import annotations

import math

import pytest

import llm_mia.audit.dp_matched as M
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError


def fake_trainer(ppl_of, calls):
    """train_model stand-in: writes recipe.json with heldout_loss = log(ppl_of(sigma, C)) and an epsilon 1/sigma."""
    def train(corpus, out, *, defense, noise_multiplier, max_grad_norm, **kw):
        assert defense == "dp"
        calls.append((noise_multiplier, max_grad_norm))
        io.write_json(out / "recipe.json", {"heldout_loss": math.log(ppl_of(noise_multiplier, max_grad_norm)),
                                            "dp": {"epsilon": 1 / noise_multiplier}})
    return train


def test_search_tries_clips_then_bisects_sigma(tmp_path, monkeypatch):
    calls = []
    # perplexity 100 * (1 + sigma), clip 0.1 a little worse: target 130 is reached at sigma 0.3
    monkeypatch.setattr(M, "train_model", fake_trainer(lambda s, c: 100 * (1 + s) * (1.0 if c == 1.0 else 1.1), calls))
    m = M.match_dp_utility(tmp_path / "corpus", tmp_path / "dp-matched", target_name="selena", target_perplexity=130.0,
                           max_runs=6)
    # by hand: (1, 1.0) -> 200, (1, 0.1) -> 220; keep C = 1.0; sigma -> sqrt(0.01 * 1) = 0.1 -> 110 (15% off,
    # too good: raise sigma) -> sqrt(0.1 * 1) = 0.316 -> 131.6 (within 10%)
    assert calls[:2] == [(1.0, 1.0), (1.0, 0.1)]
    assert [c for _, c in calls[2:]] == [1.0, 1.0] and [s for s, _ in calls[2:]] == pytest.approx([0.1, math.sqrt(0.1)])
    assert len(calls) == 4 and m.within_tolerance and m.note is None
    assert m.perplexity == pytest.approx(100 * (1 + math.sqrt(0.1))) and m.epsilon == pytest.approx(1 / math.sqrt(0.1))
    assert io.read_json(tmp_path / "dp-matched" / "recipe.json")["dp"]["epsilon"] == pytest.approx(m.epsilon)
    assert not (tmp_path / "dp-matched-search").exists()


def test_search_is_bounded_and_reports_the_closest_with_a_note(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(M, "train_model", fake_trainer(lambda s, c: 1000 + 100 * s, calls))  # never below 1000
    m = M.match_dp_utility(tmp_path / "c", tmp_path / "dp", target_name="dedup", target_perplexity=100.0, max_runs=4)
    # sigmas by hand: 1, 1, sqrt(0.01 * 1) = 0.1, sqrt(0.01 * 0.1) = 0.1 ** 1.5: the last is the closest
    assert [s for s, _ in calls] == pytest.approx([1.0, 1.0, 0.1, 0.1 ** 1.5])
    assert not m.within_tolerance and "no DP run within 1.25x of dedup" in m.note
    assert m.noise_multiplier == pytest.approx(0.1 ** 1.5) and len(m.tries) == 4


def test_search_bad_inputs(tmp_path):
    with pytest.raises(LlmMiaError, match="max_runs"):
        M.match_dp_utility(tmp_path, tmp_path / "x", target_name="a", target_perplexity=10.0, max_runs=0)
    with pytest.raises(LlmMiaError, match="held-out loss"):
        io.write_json(tmp_path / "recipe.json", {"heldout_loss": None})
        M.heldout_ppl_of(tmp_path)
