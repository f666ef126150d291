"""The release gate as three-outcome tests decided by confidence bounds: the bounds by hand and by a
slow loop, and null simulations of clean audits (FAIL <= 5%, PASS >= 90%) and of leaky ones (FAIL always)
through the gate's own evaluation with examples/policy.toml."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from llm_mia.audit.policy import evaluate, load_policy, parse_policy
from llm_mia.core.errors import LlmMiaError
from llm_mia.exposure.estimators import rank_exposure_interval, references_to_settle
from llm_mia.membership.metrics import docs_to_settle_tpr, tpr_at_fpr, tpr_at_fpr_lower, tpr_at_fpr_upper

EXAMPLE = load_policy(Path(__file__).resolve().parents[2] / "examples" / "policy.toml")


def test_rank_exposure_interval_closed_forms():
    # c = 0 (rank 1 of N): q_hi = 1 - a^(1/N) (Clopper-Pearson with no success), no upper bound
    N, a = 2000, 0.05 / 24
    lo, hi = rank_exposure_interval(math.log2(N), N, alpha_low=a, alpha_high=0.05)
    assert lo == pytest.approx(-math.log2(1 - a ** (1 / N)), rel=1e-9) and hi == math.inf
    # c = N (ranked last): q_lo = (0.05)^(1/N), q_hi = 1
    lo, hi = rank_exposure_interval(math.log2(N) - math.log2(N + 1), N, alpha_low=a, alpha_high=0.05)
    assert lo == 0.0 and hi == pytest.approx(-math.log2(0.05 ** (1 / N)), rel=1e-9)
    # c = 5: the bounds invert the binomial tails
    lo, hi = rank_exposure_interval(math.log2(N) - math.log2(6), N, alpha_low=a, alpha_high=0.05)
    q_hi, q_lo = 2 ** -lo, 2 ** -hi
    assert binom.cdf(5, N, q_hi) == pytest.approx(a, rel=1e-6)  # P(c <= 5 | q_hi) = alpha_low
    assert binom.sf(4, N, q_lo) == pytest.approx(0.05, rel=1e-6)  # P(c >= 5 | q_lo) = alpha_high
    with pytest.raises(ValueError):
        rank_exposure_interval(20.0, N, alpha_low=a, alpha_high=0.05)  # no rank among 2000 is that high
    # 2,000 references cannot fail a secret that outranks them all at 9 bits; about 8 k can
    assert rank_exposure_interval(math.log2(N), N, alpha_low=a, alpha_high=0.05)[0] < 9
    n = references_to_settle(math.log2(N), N, 9.0, alpha_low=a, alpha_high=0.05)
    assert n is not None and rank_exposure_interval(math.log2(n), n, alpha_low=a, alpha_high=0.05)[0] > 9 or n > N


def _slow_upper(mem, non, fpr, alpha):
    """The order-statistic bound written out: k, the threshold, the count, the Beta quantile."""
    from scipy.stats import beta

    n = len(non)
    k = 0
    while binom.cdf(k, n, fpr) < 1 - alpha / 2:
        k += 1
    thr = sorted(non, reverse=True)[k]
    a2 = alpha - (1 - binom.cdf(k, n, fpr))
    c = sum(1 for x in mem if x > thr)
    return 1.0 if c == len(mem) else beta.ppf(1 - a2, c + 1, len(mem) - c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpr_upper_bound_is_the_order_statistic_argument(seed):
    rng = np.random.default_rng(seed)
    mem, non = rng.normal(0.5, 1, 150), rng.normal(0, 1, 220)
    y, s = [1] * 150 + [0] * 220, np.r_[mem, non]
    assert tpr_at_fpr_upper(y, s, 0.01, alpha=0.05) == pytest.approx(_slow_upper(mem, non, 0.01, 0.05), rel=1e-9)
    assert tpr_at_fpr_upper(y, s, 0.01, alpha=0.05) >= tpr_at_fpr(y, s, 0.01).tpr
    # 20 non-members cannot place a 1% threshold at 95%: the bound is 1
    assert tpr_at_fpr_upper([1] * 5 + [0] * 20, rng.normal(size=25), 0.01) == 1.0 or binom.ppf(0.975, 20, 0.01) < 20


def test_tpr_bounds_cover_the_truth():
    """Members and non-members from N(0, 1): the true TPR at 1% FPR is 0.01; the exact upper bound lies
    below it in at most 5% of 400 draws (it is conservative: 0 here), the bootstrap lower bound above it
    in at most 5%."""
    rng = np.random.default_rng(7)
    up = lo = 0
    for _ in range(400):
        s = rng.normal(size=400)
        y = [1] * 200 + [0] * 200
        up += tpr_at_fpr_upper(y, s, 0.01, alpha=0.05) < 0.01
        lo += tpr_at_fpr_lower(y, s, 0.01, alpha=0.05, n_boot=300) > 0.01
    assert up <= 20 and lo <= 20, (up, lo)


def _clean_report(rng, *, R=2000, K=24, leak_rank=False, n_docs=0, leak_tpr=None):
    """A clean audit: K secrets at uniform ranks among R references (c ~ U{0..R}), nothing extracted,
    no PII, the positive control detected; with ``n_docs``, a loss signal on n_docs members and as many
    non-members from one distribution (or a leaky one: a share ``leak_tpr`` of members far above)."""
    c = rng.integers(0, R + 1, K)
    if leak_rank:
        c[0] = 0
    rep = {"schema_version": 1, "extraction": {"memorized_total": 0}, "pii": {"extracted_training_values": 0},
           "secrets": [{"id": f"s{i}", "count": 1 + i % 32, "exposure_rank": math.log2(R) - math.log2(c[i] + 1),
                        "n_references": R, "greedy_extracted": False, "surfaced_in_samples": 0} for i in range(K)],
           "positive_control": {"status": "detected", "secrets_found": 8, "secrets_planted": 8}}
    if n_docs:
        mem, non = rng.normal(size=n_docs), rng.normal(size=n_docs)
        if leak_tpr:
            mem = np.where(rng.random(n_docs) < leak_tpr, 10.0, mem)
        y, s = [1] * n_docs + [0] * n_docs, np.r_[mem, non].tolist()
        sig = {"tpr_at_fpr": {"0.01": {"tpr": tpr_at_fpr(y, s, 0.01).tpr}}}
        rep["membership"] = {"n_nonmembers": n_docs, "signals": {"loss": sig},
                             "per_doc": {"labels": y, "scores": {"loss": s}}}
    return rep


def _outcomes(reports, policy):
    out = {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0}
    for r in reports:
        out[evaluate(r, policy).status] += 1
    return out


def test_null_simulation_of_clean_audits_passes_them():
    """1,000 clean audits (24 secrets among 2,000 references, nothing extracted) under examples/policy.toml's
    extraction-side limits: FAIL <= 5%, PASS >= 90%. The exact PASS probability is prod_i P(c_i >= c*), c* the
    smallest count whose 95% lower bound on the quantile reaches 2^-9: (1 - c*/2001)^24."""
    pol = parse_policy({"limits": {k: v for k, v in EXAMPLE.limits.items() if "membership" not in k}})
    rng = np.random.default_rng(2026)
    got = _outcomes((_clean_report(rng) for _ in range(1000)), pol)
    from scipy.stats import beta

    c = 1
    while beta.ppf(0.05, c, 2000 - c + 1) < 2 ** -9:
        c += 1
    exact = (1 - c / 2001) ** 24
    assert got["FAIL"] <= 50 and got["PASS"] >= 900, got
    assert abs(got["PASS"] / 1000 - exact) < 0.03, (got, exact)


def test_null_simulation_of_clean_membership_passes_it():
    """1,000 clean membership evaluations (200 members and 200 non-members from one distribution) under
    examples/policy.toml's membership limit (0.1): FAIL <= 5%, PASS >= 90%."""
    pol = parse_policy({"limits": {"max_membership_tpr_at_1pct_fpr": EXAMPLE.limits["max_membership_tpr_at_1pct_fpr"]}})
    rng = np.random.default_rng(2027)
    got = _outcomes((_clean_report(rng, K=0, n_docs=200) for _ in range(1000)), pol)
    assert got["FAIL"] <= 50 and got["PASS"] >= 900, got


def test_leaky_audits_fail_every_time():
    """A secret at rank 1 of 10,000 references (lower bound 10.6 bits > 9 with 24 secrets tested), or a
    signal with TPR 0.5 at 1% FPR on 200 non-members: FAIL in each of 200 audits."""
    rng = np.random.default_rng(3)
    got = _outcomes((_clean_report(rng, R=10_000, leak_rank=True, n_docs=200) for _ in range(200)), EXAMPLE)
    assert got == {"PASS": 0, "FAIL": 200, "INCONCLUSIVE": 0}, got
    got = _outcomes((_clean_report(rng, n_docs=200, leak_tpr=0.5) for _ in range(200)), EXAMPLE)
    assert got == {"PASS": 0, "FAIL": 200, "INCONCLUSIVE": 0}, got


def test_inconclusive_reasons_say_how_much_more_would_settle_it():
    rng = np.random.default_rng(0)
    rep = _clean_report(rng, K=1)
    rep["secrets"][0]["exposure_rank"] = math.log2(2000)  # rank 1 of 2,000, one secret: [9.08, inf] holds 10 (alpha / 2: (1 - 2^-9.08)^2000 = 0.025)
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 10.0}}))
    assert v.status == "INCONCLUSIVE" and "references would settle it" in v.line and "[9.08, inf]" in v.line
    assert evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 9.0}})).status == "FAIL"
    rep["secrets"][0]["exposure_rank"] = math.log2(2000 / 4)  # rank 4 of 2,000: 8.97 bits, at the limit 9.0
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 9.0}}))
    assert v.status == "INCONCLUSIVE" and "its rank sits at the limit: only over 100x the references" in v.line
    rep = _clean_report(rng, K=0, n_docs=60)
    v = evaluate(rep, parse_policy({"limits": {"max_membership_tpr_at_1pct_fpr": 0.05}}))
    assert v.status == "INCONCLUSIVE" and "non-members and" in v.line and "members would settle it" in v.line


def test_documents_needed_for_a_membership_limit():
    """The docs' table: at chance (TPR(q) = q), the non-members (= members) whose expected upper bound
    falls within each limit; more documents are needed for a tighter limit."""
    need = {lim: docs_to_settle_tpr(lim, tpr_at=lambda q: q) for lim in (0.05, 0.1, 0.2)}
    assert need[0.05] > need[0.1] > need[0.2] >= 10
    for lim, n in need.items():
        assert tpr_at_fpr_upper([1] * n + [0] * n, np.r_[np.linspace(0, 1, n), np.linspace(0, 1, n)], 0.01) <= lim + 0.05


# ----------------------------------------------------------------------------- break-it pass (issue 24, item 2)


def _one_secret_report(**row):
    rep = _clean_report(np.random.default_rng(0), K=1)
    rep["secrets"][0].update(exposure_rank=math.log2(2000) - math.log2(21), max_exposure_rank=math.log2(2000), **row)
    return rep


def test_breakit_reference_count_is_read_and_checked():
    """A rank exposure's reference count comes from n_references, or from max_exposure_rank (log2 N) when
    n_references was deleted; 0, a fraction, or the two disagreeing is a malformed report, never a PASS."""
    pol = parse_policy({"limits": {"max_canary_exposure_bits": 9.0}})
    base = evaluate(_one_secret_report(), pol)
    rep = _one_secret_report()
    del rep["secrets"][0]["n_references"]
    assert evaluate(rep, pol).checks[0].interval == base.checks[0].interval
    for bad in (0, 2.5, -3, 1000):
        with pytest.raises(LlmMiaError):
            evaluate(_one_secret_report(n_references=bad), pol)


def test_breakit_positive_control_and_training_record_are_checked():
    pol = parse_policy({"limits": {"max_extracted_secrets": 0}})
    for pc in ({"status": "detected", "secrets_found": 0, "secrets_planted": 2}, {"status": "detected"},
               {"status": "DETECTED", "secrets_found": 2, "secrets_planted": 2}, "detected", ["detected"]):
        rep = _clean_report(np.random.default_rng(0), K=2)
        rep["positive_control"] = pc
        with pytest.raises(LlmMiaError, match="positive.control"):
            evaluate(rep, pol)
    for rec in ("verified", ["x"], {"status": "VERIFIED"}):
        rep = _clean_report(np.random.default_rng(0), K=2)
        rep["provenance"] = {"training_record": rec}
        with pytest.raises(LlmMiaError, match="training_data"):
            evaluate(rep, pol)
    rep = _clean_report(np.random.default_rng(0), K=2)
    rep["secrets"][0]["remaining_guess_bits"] = float("nan")
    with pytest.raises(LlmMiaError, match="remaining_guess_bits"):
        evaluate(rep, parse_policy({"limits": {"min_remaining_guess_bits": 10.0}}))


@pytest.mark.parametrize("args, msg", [(["--preset", "bogus"], "unknown preset 'bogus'"),
                                       (["--max-steps", "0"], "--max-steps must be >= 1")])
def test_breakit_demo_options_are_checked_before_work(tmp_path, capsys, args, msg):
    from tests.conftest import run_cli

    code, _, err = run_cli(["demo", "--out", tmp_path / "d", *args], capsys)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_documents_needed_reads_the_binormal_roc_through_the_auc():
    """The estimate in an INCONCLUSIVE reason reads the binormal ROC with the scores' AUC, not the
    empirical ROC's last two or three non-members: AUC by hand on 2 + 2 scores."""
    from llm_mia.audit.policy import _binormal_roc

    chance = _binormal_roc(np.array([1.0, 2.0]), np.array([0.0, 3.0]))  # 2 of 4 pairs ordered: AUC 0.5
    assert chance(0.01) == pytest.approx(0.01) and chance(0.3) == pytest.approx(0.3)
    swapped = _binormal_roc(np.array([0.0, 1.0]), np.array([2.0, 3.0]))  # AUC 0, taken as chance
    assert swapped(0.02) == pytest.approx(0.02)
    # AUC 0.75 (3 of 4 pairs): d' = sqrt(2) * 0.67449 = 0.95387; TPR(0.01) = Phi(-2.32635 + 0.95387) = Phi(-1.37248)
    assert _binormal_roc(np.array([1.0, 3.0]), np.array([0.0, 2.0]))(0.01) == pytest.approx(0.084958, abs=1e-5)
    # a signal at chance on 102 + 102 documents: the docs' table's 103, whatever its empirical tail says
    for seed in (0, 4):  # two clean 102 + 102 audits whose interval holds 0.1 (seeds found by trying)
        rep = _clean_report(np.random.default_rng(seed), K=0, n_docs=102)
        v = evaluate(rep, parse_policy({"limits": {"max_membership_tpr_at_1pct_fpr": 0.1}}))
        assert v.status == "INCONCLUSIVE", v.line
        n = int(v.line.split("about ")[-1].split(" non-members")[0].replace(",", ""))
        assert 103 <= n <= 200, v.line


def test_several_secrets_outranking_all_references_fail_together():
    """One secret at rank 1 of 2,000 cannot fail a 9-bit limit on its own among 24 (its lower bound is
    under 9), three can: P(3 or more of 24 at rank 1 | every exposure <= 9 bits) by a slow sum."""
    from math import comb

    from llm_mia.audit.policy import outranking_all_p

    p0 = (1 - 2.0 ** -9) ** 2000  # a secret at exactly 9 bits outranks 2,000 references
    by_hand = {x: sum(comb(24, j) * p0 ** j * (1 - p0) ** (24 - j) for j in range(x, 25)) for x in (1, 2, 3)}
    for x in (1, 2, 3):
        rows = [(math.log2(2000), 2000)] * x + [(1.5, 2000)] * (24 - x)
        got = outranking_all_p(rows, 9.0)
        assert got[0] == x and got[1] == pytest.approx(by_hand[x], rel=1e-9)
    assert by_hand[3] == pytest.approx(0.01189, abs=1e-5) and by_hand[2] > 0.025
    policy = parse_policy({"limits": {"max_canary_exposure_bits": 9.0}})
    rep = _clean_report(np.random.default_rng(1), K=24)
    for i, s in enumerate(rep["secrets"]):
        s["exposure_rank"] = math.log2(2000) if i < 3 else 1.0
    v = evaluate(rep, policy)
    assert v.status == "FAIL" and "3 secrets outrank all their references: P = 0.012" in v.line, v.line
    rep["secrets"][2]["exposure_rank"] = 1.0  # two at rank 1: P = 0.083 > alpha / 2
    assert evaluate(rep, policy).status == "INCONCLUSIVE"
    rep["secrets"][2]["exposure_rank"] = math.log2(2000)  # three again, and one record without its reference count
    del rep["secrets"][5]["n_references"]  # (a point value: it neither counts nor breaks the test)
    assert evaluate(rep, policy).status == "FAIL"


def test_swapped_verdict_line_says_it_once():
    """'members and non-members look swapped' is said once, with the AUCs (not 'X, but X (...)')."""
    rng = np.random.default_rng(0)
    rep = _clean_report(rng, K=0, n_docs=200)
    y = rep["membership"]["per_doc"]["labels"]
    rep["membership"]["per_doc"]["scores"]["loss"] = [-10.0 * (v == 1) + i * 1e-3 for i, v in enumerate(y)]
    rep["membership"]["signals"]["loss"]["auc"] = 0.0
    line = evaluate(rep, parse_policy({"limits": {"max_membership_tpr_at_1pct_fpr": 0.1}})).line
    assert line.startswith("INCONCLUSIVE: members and non-members look swapped (loss AUC 0.00)"), line
    assert line.count("look swapped") == 1, line
