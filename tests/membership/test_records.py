"""Per-record calibrated membership risk (llm_mia.membership.records), values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.records import best_signal, calibrated_fpr, membership_records, record_risk


def test_calibrated_fpr_by_hand():
    ref = [0.1, 0.5, 0.5, 0.9, math.nan]  # 4 usable scores
    assert calibrated_fpr(0.5, ref) == pytest.approx(4 / 5)  # 0.5, 0.5, 0.9 >= 0.5: (1 + 3) / (1 + 4)
    assert calibrated_fpr(1.0, ref) == pytest.approx(1 / 5)  # none >= 1.0
    assert calibrated_fpr(0.0, ref) == pytest.approx(5 / 5)
    assert math.isnan(calibrated_fpr(math.nan, ref)) and math.isnan(calibrated_fpr(0.3, [math.nan]))


def test_record_risk_uses_own_out_scores_then_nonmembers_and_sorts():
    nonmembers = list(np.linspace(0.0, 0.99, 100))  # 100 scores 0.00, 0.01, ..., 0.99
    members = [0.995, 0.5, 2.0, math.nan]
    out = np.array([[math.nan] * 3,          # member 0: no OUT score -> the non-members: (1 + 0) / 101
                    [0.1, 0.2, math.nan],     # member 1: own OUT scores, none >= 0.5: (1 + 0) / 3
                    [2.5, 1.0, 3.0],          # member 2: 2.5, 3.0 >= 2.0: (1 + 2) / 4
                    [0.1, 0.1, 0.1]])
    recs = record_risk(members, nonmembers, out_scores=out, texts=["a", "b", "c", "d"])
    assert [r["member"] for r in recs] == [0, 1, 2, 3]
    assert recs[0]["fpr"] == pytest.approx(1 / 101) and recs[0]["fpr_from"] == "nonmembers"
    assert recs[0]["n_reference"] == 100 and recs[0]["flagged"] == {"0.001": False, "0.01": True}
    assert recs[1]["fpr"] == pytest.approx(1 / 3) and recs[1]["fpr_from"] == "shadow_out" and recs[1]["n_reference"] == 2
    assert recs[2]["fpr"] == pytest.approx(3 / 4) and not any(recs[2]["flagged"].values())
    assert math.isnan(recs[3]["fpr"]) and not any(recs[3]["flagged"].values())
    assert recs[0]["preview"] == "a"
    # ties in fpr: the higher score first
    tied = record_risk([1.0, 3.0], [0.0])
    assert [r["member"] for r in tied] == [1, 0] and tied[0]["fpr"] == tied[1]["fpr"] == pytest.approx(1 / 2)
    with pytest.raises(LlmMiaError, match="out_scores"):
        record_risk([1.0], [0.0], out_scores=np.zeros((2, 3)))


def test_membership_records_picks_the_best_signal_and_redacts():
    signals = {"loss": {"auc": 0.9, "tpr_at_fpr": {"0.01": {"tpr": 0.2}}},
               "min_k": {"auc": 0.8, "tpr_at_fpr": {"0.01": {"tpr": 0.3}}}, "bad": {"error": "x"}}
    assert best_signal(signals) == "min_k" and best_signal({"bad": {"error": "x"}}) is None
    per_doc = {"scores": {"loss": [0, 0, 0, 0], "min_k": [5.0, 0.2, 0.1, 0.3]}}
    got = membership_records(signals, per_doc, ["call 5551234567 now", "plain"])
    assert got["records_summary"] == {"signal": "min_k", "n_records": 2, "n_flagged": {"0.001": 0, "0.01": 0}}
    assert got["records"][0]["member"] == 0 and got["records"][0]["fpr"] == pytest.approx(1 / 3)
    assert "5551234567" not in got["records"][0]["preview"]


def test_membership_records_loss_calibrated_by_the_shadow_out_models():
    from types import SimpleNamespace

    signals = {"loss": {"auc": 0.9, "tpr_at_fpr": {"0.01": {"tpr": 0.2}}}}
    per_doc = {"scores": {"loss": [-1.0, -2.0, -3.0, -4.0]}}  # 2 members, 2 non-members
    shadow = SimpleNamespace(x_in=np.array([[True, False, False], [False, False, False], [False] * 3, [False] * 3]),
                             x_logprob=np.array([[-0.5, -1.5, -0.9], [-2.5, -1.0, -3.0], [0.0] * 3, [0.0] * 3]))
    got = membership_records(signals, per_doc, ["x", "y"], shadow=shadow)
    by = {r["member"]: r for r in got["records"]}
    assert by[0]["fpr"] == pytest.approx((1 + 1) / 3)  # OUT: -1.5, -0.9; -0.9 >= -1.0
    assert by[1]["fpr"] == pytest.approx((1 + 1) / 4)  # OUT: -2.5, -1.0, -3.0; -1.0 >= -2.0
    assert by[0]["fpr_from"] == by[1]["fpr_from"] == "shadow_out"


def test_shadow_out_scores_leave_one_out_for_lira():
    from types import SimpleNamespace

    from llm_mia.membership.records import shadow_out_scores
    from llm_mia.membership.signals.shadow import lira_scores

    rng = np.random.default_rng(3)
    x = rng.normal(-2.0, 0.3, (2, 4))
    x_in = np.array([[True, False, True, False], [False, False, True, True]])
    z, z_in = rng.normal(-2.0, 0.3, (6, 4)), np.array([[True, False] * 2, [False, True] * 2] * 3)
    sh = SimpleNamespace(x_logprob=x, x_in=x_in, z_logprob=z, z_in=z_in, x_token_logprob=None, z_token_logprob=None)
    got = shadow_out_scores("lira_offline", sh)
    assert np.isnan(got[x_in]).all()
    # record 0, model 1 as the target: LiRA offline over models 0, 2, 3 (fixed variance pooled over the population)
    want = lira_scores(x[:1, 1], x[:1, [0, 2, 3]], x_in[:1, [0, 2, 3]], online=False,
                       variance_from=(z[:, [0, 2, 3]], z_in[:, [0, 2, 3]]))
    assert got[0, 1] == pytest.approx(want[0])
    # by hand: record 0's only OUT model among 0, 2, 3 is 3; sd pooled over the population's OUT entries
    ss = dof = 0.0
    for i in range(6):
        vals = [z[i, j] for j in (0, 2, 3) if not z_in[i, j]]
        if len(vals) >= 2:
            ss += sum((v - sum(vals) / len(vals)) ** 2 for v in vals)
            dof += len(vals) - 1
    from scipy.stats import norm

    assert got[0, 1] == pytest.approx(norm.logcdf(x[0, 1], loc=x[0, 3], scale=math.sqrt(ss / dof)))
    assert shadow_out_scores("min_k", sh) is None and shadow_out_scores("lira_token_online", sh) is None
