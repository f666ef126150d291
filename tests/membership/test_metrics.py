"""ROC metrics (llm_mia.membership.metrics): scoring-cases.md C11 (metrics part), C13, C15.

Expected values come from a by-hand pairwise AUC and a slow ROC built threshold by threshold.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership import signals as S
from llm_mia.membership.metrics import roc_metrics, tpr_at_fpr
from llm_mia.models.stats import compute_token_stats
from tests.conftest import StepModel

# ------------------------------------------------------------------------------------ oracles

def hand_auc(pos, neg) -> float:
    """P(member score > non-member score) + 1/2 P(tie), over all pairs."""
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def hand_tpr_at_fpr(pos, neg, target: float) -> tuple[float, float]:
    """Largest TPR over thresholds t ('member if score >= t'), t in the scores or +inf, with FPR <= target."""
    best = (0.0, 0.0)
    for t in sorted(set(pos) | set(neg)) + [math.inf]:
        fpr = sum(n >= t for n in neg) / len(neg)
        tpr = sum(p >= t for p in pos) / len(pos)
        if fpr <= target + 1e-12 and (tpr > best[0] or (tpr == best[0] and fpr < best[1])):
            best = (tpr, fpr)
    return best


def labels(pos, neg):
    return [1] * len(pos) + [0] * len(neg), list(pos) + list(neg)


# ------------------------------------------------------------------------------------ C13

def test_c13_auc_orientation():
    member_loss, nonmember_loss = [1.0, 1.5, 2.0, 2.0], [2.0, 2.5, 3.0, 3.5]
    pos, neg = [-x for x in member_loss], [-x for x in nonmember_loss]
    expected = hand_auc(pos, neg)
    assert expected == 0.9375
    y, s = labels(pos, neg)
    m = roc_metrics(y, s)
    assert m["auc"] == pytest.approx(0.9375, abs=1e-12)
    assert m["auc"] != pytest.approx(0.0625)
    # no sign is flipped inside: the loss itself (lower = member) ranks members low
    assert roc_metrics(y, [-v for v in s])["auc"] == pytest.approx(0.0625, abs=1e-12)
    # input order does not matter
    perm = np.random.default_rng(0).permutation(len(y))
    assert roc_metrics([y[i] for i in perm], [s[i] for i in perm])["auc"] == pytest.approx(0.9375)


class UniformStep(StepModel):
    """A reference model for S1: every next id equally likely."""

    def __init__(self):
        super().__init__()
        self.table = torch.zeros(5, 5)


def test_c13_every_signal_ranks_a_planted_set_right():
    """Members follow S1's likely steps, non-members its unlikely ones: every runnable signal has AUC > 0.5."""
    rng = np.random.default_rng(13)
    members, nonmembers = [], []
    for _ in range(20):
        n = int(rng.integers(6, 30))
        a = [int(rng.integers(5))]
        for _ in range(n - 1):
            a.append((a[-1] + 1) % 5)
        members.append(a)
        b = [int(rng.integers(5))]
        for _ in range(n - 1):
            b.append(int((b[-1] + rng.integers(2, 6)) % 5))  # any step but the likely one
        nonmembers.append(b)
    seqs = members + nonmembers
    y = [1] * 20 + [0] * 20
    texts = ["".join("abcde"[i] for i in s) for s in seqs]
    inp = S.SignalInputs(target=compute_token_stats(StepModel(), seqs, batch_size=7),
                         texts=texts, reference=compute_token_stats(UniformStep(), seqs, batch_size=7))
    runnable = [s for s in S.REGISTRY.values() if s.needs <= {"text", "reference", "moments"}]
    assert {"loss", "zlib", "min_k", "min_k_plus_plus", "window", "reference", "reference_diff"} <= {s.name for s in runnable}
    for sig in runnable:
        values = sig.fn(inp).tolist()
        assert not any(math.isnan(v) for v in values), sig.name
        auc = hand_auc(values[:20], values[20:])
        assert auc > 0.5, (sig.name, auc)
        assert roc_metrics(y, values)["auc"] == pytest.approx(auc, abs=1e-12)


# ------------------------------------------------------------------------------------ C15

C15A_NEG = [round(i * 0.05, 2) for i in range(20)]
C15A_POS = [1.20, 1.10, 1.00, 0.97, 0.93, 0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.60, 0.55, 0.50, 0.45, 0.40,
            0.35, 0.30, 0.25, 0.20]


@pytest.mark.parametrize("target, tpr, fpr", [(0.0, 0.20, 0.0), (0.01, 0.20, 0.0), (0.05, 0.25, 0.05), (0.10, 0.30, 0.10)])
def test_c15a_tpr_at_fpr(target, tpr, fpr):
    assert hand_tpr_at_fpr(C15A_POS, C15A_NEG, target) == pytest.approx((tpr, fpr))
    y, s = labels(C15A_POS, C15A_NEG)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = tpr_at_fpr(y, s, target)
    assert r.tpr == pytest.approx(tpr, abs=1e-12)
    assert r.realized_fpr == pytest.approx(fpr, abs=1e-12)
    assert r.target_fpr == target
    if 0 < target < 1 / 20:
        assert r.below_resolution
        assert any("resolution" in str(x.message) and "20" in str(x.message) for x in w)
    else:
        assert not any("resolution" in str(x.message) for x in w)


def test_c15a_auc_and_roc_metrics():
    assert hand_auc(C15A_POS, C15A_NEG) == pytest.approx(0.67875, abs=1e-12)
    y, s = labels(C15A_POS, C15A_NEG)
    m = roc_metrics(y, s, fprs=(0.0, 0.01, 0.05, 0.1))
    assert m["auc"] == pytest.approx(0.67875, abs=1e-12)
    got = {k: (v["tpr"], v["realized_fpr"]) for k, v in m["tpr_at_fpr"].items()}
    assert got == {"0": pytest.approx((0.2, 0.0)), "0.01": pytest.approx((0.2, 0.0)),
                   "0.05": pytest.approx((0.25, 0.05)), "0.1": pytest.approx((0.3, 0.1))}
    assert m["tpr_at_fpr"]["0.01"]["below_resolution"] is True
    assert m["tpr_at_fpr"]["0.05"]["below_resolution"] is False
    assert (m["n_members"], m["n_nonmembers"], m["n_dropped_nan"]) == (20, 20, 0)


def test_c15b_ties_form_one_threshold():
    pos, neg = [0.9, 0.8, 0.8, 0.3], [0.8, 0.2, 0.1, 0.0]
    y, s = labels(pos, neg)
    assert hand_tpr_at_fpr(pos, neg, 0.0) == (0.25, 0.0)
    r0 = tpr_at_fpr(y, s, 0.0)
    assert (r0.tpr, r0.realized_fpr) == pytest.approx((0.25, 0.0))
    assert r0.tpr != pytest.approx(0.75)
    r25 = tpr_at_fpr(y, s, 0.25)
    assert (r25.tpr, r25.realized_fpr) == pytest.approx((1.0, 0.25))
    assert hand_auc(pos, neg) == 0.875
    assert roc_metrics(y, s)["auc"] == pytest.approx(0.875, abs=1e-12)


def test_c15c_members_all_below():
    pos, neg = [0.1, 0.2], [0.5, 0.6, 0.7]
    y, s = labels(pos, neg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = tpr_at_fpr(y, s, 0.01)
    assert (r.tpr, r.realized_fpr) == (0.0, 0.0)
    assert roc_metrics(y, s)["auc"] == 0.0
    assert hand_auc(pos, neg) == 0.0


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(st.integers(0, 8), min_size=1, max_size=12), neg=st.lists(st.integers(0, 8), min_size=1, max_size=12),
       target=st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.0]))
def test_property_against_slow_roc(pos, neg, target):
    """Integer scores force many ties; AUC and TPR@FPR against the pairwise / threshold-loop oracles."""
    y, s = labels([p / 4 for p in pos], [n / 4 for n in neg])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = tpr_at_fpr(y, s, target)
    tpr, fpr = hand_tpr_at_fpr([p / 4 for p in pos], [n / 4 for n in neg], target)
    assert r.tpr == pytest.approx(tpr, abs=1e-12)
    assert r.realized_fpr <= target + 1e-12
    assert roc_metrics(y, s)["auc"] == pytest.approx(hand_auc(pos, neg), abs=1e-12)


# ------------------------------------------------------------------------------------ C11 / degenerate input

def test_c11_nan_rows_dropped_and_counted():
    pos, neg = [0.9, 0.4, 0.7], [0.5, 0.1, 0.3, 0.6]
    y = [1, 1, 0, 1, 0, 0, 1, 0, 0]
    s = [0.9, float("nan"), 0.5, 0.4, 0.1, float("nan"), 0.7, 0.3, 0.6]
    m = roc_metrics(y, s)
    assert m["n_dropped_nan"] == 2
    assert (m["n_members"], m["n_nonmembers"]) == (3, 4)
    assert m["auc"] == pytest.approx(hand_auc(pos, neg), abs=1e-12)
    assert not math.isnan(m["auc"])


def test_c11_nan_leaving_one_class_raises_clearly():
    with pytest.raises(LlmMiaError, match="member"):
        roc_metrics([1, 1, 0, 0], [0.3, 0.5, float("nan"), float("nan")])
    with pytest.raises(LlmMiaError):
        roc_metrics([1, 0], [0.3])


def test_infinite_scores_are_ranked_not_rejected():
    """zlib / NLL is +inf for NLL = 0 (C12): metrics must rank it, not raise."""
    pos, neg = [math.inf, 2.0, 0.5], [1.0, -math.inf, 0.5, 3.0]
    y, s = labels(pos, neg)
    m = roc_metrics(y, s)
    assert m["auc"] == pytest.approx(hand_auc(pos, neg), abs=1e-12)
    r = tpr_at_fpr(y, s, 0.0)
    assert (r.tpr, r.realized_fpr) == pytest.approx(hand_tpr_at_fpr(pos, neg, 0.0))
    r = tpr_at_fpr(y, s, 0.25)
    assert (r.tpr, r.realized_fpr) == pytest.approx(hand_tpr_at_fpr(pos, neg, 0.25))
    m2 = roc_metrics([1, 0, 1, 0], [math.inf, math.inf, float("nan"), 1.0])
    assert m2["auc"] == pytest.approx(hand_auc([math.inf], [math.inf, 1.0]))
    assert m2["n_dropped_nan"] == 1
