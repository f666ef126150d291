"""Mechanics of the shadow-model attacks (llm_mia.membership.signals.shadow) on hand-built inputs: LiRA online and
offline (per-text and fixed variance), RMIA with K references against a slow loop over z, the
membership features and the Shokri attack classifier, and the balanced IN/OUT design."""

from __future__ import annotations

import math
import statistics
import zlib

import numpy as np
import pytest
import torch
from scipy.stats import norm

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.shadow import balanced_membership
from llm_mia.membership.signals.shadow import (
    FEATURE_NAMES,
    fit_attack_classifier,
    lira_scores,
    lira_token_scores,
    logit_confidence,
    membership_features,
    rmia_scores,
    shokri_scores,
)
from llm_mia.models.stats import TokenStats

# Two texts, 8 shadow models: text 0 IN for models 1, 2, 5, 7; text 1 IN for models 0, 3, 4, 6.
IN_VALUES = [[-1.0, -1.2, -0.9, -1.1], [-2.0, -2.4, -2.2, -2.6]]
OUT_VALUES = [[-1.6, -1.5, -1.9, -1.8], [-3.0, -2.8, -3.3, -2.9]]
IN_MODELS = [[1, 2, 5, 7], [0, 3, 4, 6]]
TARGET = [-1.05, -2.9]


def _hand_built():
    shadow = np.zeros((2, 8))
    is_in = np.zeros((2, 8), dtype=bool)
    for i in range(2):
        out_models = [k for k in range(8) if k not in IN_MODELS[i]]
        for k, v in zip(IN_MODELS[i], IN_VALUES[i]):
            shadow[i, k], is_in[i, k] = v, True
        for k, v in zip(out_models, OUT_VALUES[i]):
            shadow[i, k] = v
    return np.array(TARGET), shadow, is_in


def _pooled_sd(groups):  # sqrt(sum (n - 1) s^2 / sum (n - 1)), by hand
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / sum(len(g) - 1 for g in groups))


def test_lira_online_and_offline_match_a_hand_built_fit():
    t, shadow, is_in = _hand_built()
    online = lira_scores(t, shadow, is_in, online=True, fixed_variance=False)
    offline = lira_scores(t, shadow, is_in, online=False, fixed_variance=False)
    for i in range(2):
        mi, si = statistics.mean(IN_VALUES[i]), statistics.stdev(IN_VALUES[i])
        mo, so = statistics.mean(OUT_VALUES[i]), statistics.stdev(OUT_VALUES[i])
        assert online[i] == pytest.approx(norm.logpdf(TARGET[i], mi, si) - norm.logpdf(TARGET[i], mo, so), rel=1e-12)
        assert offline[i] == pytest.approx(norm.logcdf(TARGET[i], mo, so), rel=1e-12)
    assert online[0] > 0 > online[1]  # text 0 looks IN, text 1 looks OUT

    fixed_on = lira_scores(t, shadow, is_in, online=True, fixed_variance=True)
    fixed_off = lira_scores(t, shadow, is_in, online=False, fixed_variance=True)
    si, so = _pooled_sd(IN_VALUES), _pooled_sd(OUT_VALUES)
    for i in range(2):
        mi, mo = statistics.mean(IN_VALUES[i]), statistics.mean(OUT_VALUES[i])
        assert fixed_on[i] == pytest.approx(norm.logpdf(TARGET[i], mi, si) - norm.logpdf(TARGET[i], mo, so), rel=1e-12)
        assert fixed_off[i] == pytest.approx(norm.logcdf(TARGET[i], mo, so), rel=1e-12)
    # 8 models < 64: the fixed variance is the default
    np.testing.assert_allclose(lira_scores(t, shadow, is_in, online=True), fixed_on, rtol=1e-12)


def test_lira_fixed_variance_pooled_over_the_population():
    t, shadow, is_in = _hand_built()
    pop = np.array([[-1.0, -2.0, -1.5, -3.0], [-0.5, -0.7, -0.9, -1.4], [-2.0, -2.2, -2.1, -2.9]])
    pop_in = np.array([[True, True, False, False], [False, True, True, False], [True, False, False, True]])
    groups_in = [[-1.0, -2.0], [-0.7, -0.9], [-2.0, -2.9]]
    groups_out = [[-1.5, -3.0], [-0.5, -1.4], [-2.2, -2.1]]
    si, so = _pooled_sd(groups_in), _pooled_sd(groups_out)
    both = lira_scores(t, shadow, is_in, online=True, variance_from=(pop, pop_in))
    alone = lira_scores(t[1:], shadow[1:], is_in[1:], online=True, variance_from=(pop, pop_in))
    mi, mo = statistics.mean(IN_VALUES[1]), statistics.mean(OUT_VALUES[1])
    assert both[1] == pytest.approx(norm.logpdf(TARGET[1], mi, si) - norm.logpdf(TARGET[1], mo, so), rel=1e-12)
    assert alone[0] == pytest.approx(both[1], rel=1e-12)  # a text's score does not depend on the others scored
    off = lira_scores(t, shadow, is_in, online=False, variance_from=(pop, pop_in))
    assert off[1] == pytest.approx(norm.logcdf(TARGET[1], mo, so), rel=1e-12)
    one_each = lira_scores(t, shadow, is_in, online=True, variance_from=(pop[:, :2], np.array([[True, False]] * 3)))
    assert np.isnan(one_each).all()  # one model per side: no within-text variance to pool


def test_lira_undefined_cases_are_nan():
    t, shadow, is_in = _hand_built()
    shadow[0, 1] = math.nan  # one IN value missing: fitted on the other three
    v = lira_scores(t, shadow, is_in, online=True, fixed_variance=False)
    mi, si = statistics.mean(IN_VALUES[0][1:]), statistics.stdev(IN_VALUES[0][1:])
    mo, so = statistics.mean(OUT_VALUES[0]), statistics.stdev(OUT_VALUES[0])
    assert v[0] == pytest.approx(norm.logpdf(TARGET[0], mi, si) - norm.logpdf(TARGET[0], mo, so), rel=1e-12)
    none_in = np.zeros_like(is_in)  # a text no shadow model saw: online NaN, offline defined
    assert np.isnan(lira_scores(t, shadow, none_in, online=True)).all()
    assert np.isfinite(lira_scores(t, shadow, none_in, online=False)).all()
    flat = np.full_like(shadow, -1.0)  # zero variance: NaN, not inf
    assert np.isnan(lira_scores(t, flat, is_in, online=True)).all()
    assert np.isnan(lira_scores(np.array([math.nan, -1.0]), shadow, is_in, online=False))[0]
    with pytest.raises(LlmMiaError):
        lira_scores(t, shadow[:, :3], is_in, online=True)


def test_logit_confidence():
    assert logit_confidence(np.array([math.log(0.25)]))[0] == pytest.approx(math.log(0.25 / 0.75))
    assert logit_confidence(np.array([0.0]))[0] == math.inf


def _slow_rmia(xt, xr, xu, zt, zr, zu, a, gamma, offline):
    def lr(t, refs, use):
        ps = [math.exp(r) for r, u in zip(refs, use) if u and not math.isnan(r)]
        if not ps:
            return math.nan
        pr = sum(ps) / len(ps)
        if offline:
            pr = (1 + a) / 2 * pr + (1 - a) / 2
        return math.exp(t) / pr

    lz = [lr(t, r, u) for t, r, u in zip(zt, zr, zu)]
    lz = [v for v in lz if not math.isnan(v)]
    out = []
    for t, r, u in zip(xt, xr, xu):
        lx = lr(t, r, u)
        out.append(math.nan if math.isnan(lx) else sum(lx / v > gamma for v in lz) / len(lz))
    return out


@pytest.mark.parametrize("offline,a,gamma", [(True, 0.3, 1.0), (True, 0.6, 2.0), (False, 0.3, 1.0), (False, 0.3, 1.5)])
def test_rmia_with_k_references_matches_a_slow_loop(offline, a, gamma):
    rng = np.random.default_rng(7)
    N, M, K = 6, 9, 4
    xt, zt = -rng.uniform(0.5, 3, N), -rng.uniform(0.5, 3, M)
    xr, zr = -rng.uniform(0.5, 3, (N, K)), -rng.uniform(0.5, 3, (M, K))
    xu, zu = rng.random((N, K)) < 0.6, rng.random((M, K)) < 0.6
    xu[0] = False  # no reference counts for text 0: NaN
    zr[2, 1] = math.nan  # a missing likelihood never counts
    got = rmia_scores(torch.tensor(xt), torch.tensor(xr), torch.tensor(zt), torch.tensor(zr), a=a, gamma=gamma,
                      offline=offline, x_use=torch.tensor(xu), z_use=torch.tensor(zu)).tolist()
    want = _slow_rmia(xt, xr, xu, zt, zr, zu, a, gamma, offline)
    assert math.isnan(got[0]) and math.isnan(want[0])
    assert got[1:] == pytest.approx(want[1:], abs=1e-6)
    assert len(set(want[1:])) > 2  # the population comparison matters


def test_rmia_one_reference_is_k_equals_one():
    xt, xr, zt, zr = (torch.tensor(v) for v in ([-1.0, -2.0], [-1.5, -1.8], [-1.2, -2.5, -0.9], [-1.1, -2.0, -1.4]))
    one = rmia_scores(xt, xr, zt, zr)
    two_d = rmia_scores(xt, xr[:, None], zt, zr[:, None])
    assert one.tolist() == pytest.approx(two_d.tolist())
    want = _slow_rmia(xt.tolist(), xr[:, None].tolist(), [[True]] * 2, zt.tolist(), zr[:, None].tolist(), [[True]] * 3,
                      0.3, 1.0, True)
    assert one.tolist() == pytest.approx(want)
    with pytest.raises(LlmMiaError):
        rmia_scores(xt, torch.zeros(3, 2), zt, zr)


def _stats(rows_lp, rows_top1, mu=None, sd=None):
    T = max(len(r) for r in rows_lp)
    n = len(rows_lp)
    lp = torch.zeros(n, T)
    top = torch.zeros(n, T, dtype=torch.bool)
    for i, (r, f) in enumerate(zip(rows_lp, rows_top1)):
        lp[i, :len(r)] = torch.tensor(r)
        top[i, :len(f)] = torch.tensor(f)
    ns = torch.tensor([len(r) for r in rows_lp])
    mask = torch.arange(T)[None, :] < ns[:, None]
    return TokenStats(token_logprob=lp, mean_logprob=torch.full((n, T), -3.0) if mu is None else mu,
                      std_logprob=torch.ones(n, T) if sd is None else sd, mask=mask, n_scored=ns,
                      truncated=torch.zeros(n, dtype=torch.bool), token_is_top1=top)


def test_membership_features_by_hand():
    lp = [-0.5, -2.0, -1.0, -0.25, -3.0]
    st = _stats([lp, []], [[True, False, True, True, False], []])
    texts = ["the text one", ""]
    x = membership_features(st, texts)
    assert x.shape == (2, len(FEATURE_NAMES))
    nll = -sum(lp) / 5
    k = 1  # floor(0.2 * 5)
    want = [-nll, sorted(lp)[0] / k, sorted((v + 3.0) / 1.0 for v in lp)[0],
            math.log(len(zlib.compress(b"the text one")) / nll), 3 / 5]
    assert x[0].tolist() == pytest.approx(want, rel=1e-6)
    assert np.isnan(x[1]).all()  # no scored token


def test_shokri_classifier_separates_and_keeps_nan():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (rng.random(200) < 0.5).astype(int)
    X[y == 1, 0] += 3.0  # members have a higher loss feature
    X[3, 2] = math.nan  # left out of training
    clf = fit_attack_classifier(X, y)
    test = np.array([[3.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0], [math.nan, 0, 0, 0, 0]])
    p = shokri_scores(clf, test)
    assert p[0] > 0.9 > 0.5 > p[1] and math.isnan(p[2])
    with pytest.raises(LlmMiaError, match="2 member"):
        fit_attack_classifier(X[:5], np.array([1, 0, 0, 0, 0]))


@pytest.mark.parametrize("k", [2, 3, 8])
def test_balanced_design_each_text_in_for_half_the_models(k):
    keep = balanced_membership(40, k, seed=3)
    assert keep.shape == (k, 40)
    per_text = keep.sum(0)
    if k % 2 == 0:
        assert (per_text == k // 2).all()
    else:
        assert sorted(set(per_text.tolist())) == [k // 2, k // 2 + 1] and (per_text == k // 2).sum() == 20
    assert (balanced_membership(40, k, seed=3) == keep).all() and not (balanced_membership(40, k, seed=4) == keep).all()
    assert (keep.sum(1) > 0).all() and ((~keep).sum(1) > 0).all()


def test_balanced_design_refuses_a_small_population():
    with pytest.raises(LlmMiaError, match="at least 16"):
        balanced_membership(15, 8, seed=0)
    with pytest.raises(LlmMiaError, match="at least 8"):
        balanced_membership(7, 2, seed=0)
    with pytest.raises(LlmMiaError, match="at least 2 models"):
        balanced_membership(40, 1, seed=0)


# ---------------------------------------------------------------- per-token LiRA

def _slow_token_lira(t, s, m, pool, pool_in, *, online, nu):
    """Per-token LiRA by explicit loops: pooled variance per side, shrinkage (SS + nu v0) / (d + nu)."""

    def pooled(side):
        ss = dof = 0.0
        for i in range(pool.shape[0]):
            for j in range(pool.shape[2]):
                vals = [pool[i, k, j] for k in range(pool.shape[1]) if pool_in[i, k] == side and not math.isnan(pool[i, k, j])]
                if len(vals) >= 2:
                    mean = sum(vals) / len(vals)
                    ss += sum((v - mean) ** 2 for v in vals)
                    dof += len(vals) - 1
        return ss / dof

    v0 = {True: pooled(True), False: pooled(False)}
    out = []
    for i in range(t.shape[0]):
        total, zs = 0.0, []
        for j in range(t.shape[1]):
            if math.isnan(t[i, j]):
                continue
            fit = {}
            for side in (True, False):
                vals = [s[i, k, j] for k in range(s.shape[1]) if m[i, k] == side]
                mean = sum(vals) / len(vals)
                ss = sum((v - mean) ** 2 for v in vals)
                var = v0[side] if math.isinf(nu) else (ss + nu * v0[side]) / (len(vals) - 1 + nu)
                fit[side] = (mean, math.sqrt(var))
            if online:
                total += norm.logpdf(t[i, j], *fit[True]) - norm.logpdf(t[i, j], *fit[False])
            else:
                zs.append((t[i, j] - fit[False][0]) / fit[False][1])
        out.append(total if online else norm.logcdf(sum(zs) / math.sqrt(len(zs))))
    return np.array(out)


def _token_case(seed=0):
    rng = np.random.default_rng(seed)
    n, k, width = 3, 6, 5
    m = np.zeros((n, k), dtype=bool)
    for i in range(n):
        m[i, rng.permutation(k)[:3]] = True
    s = rng.normal(-2.0, 0.5, (n, k, width)) + 0.4 * m[:, :, None]
    t = rng.normal(-1.8, 0.5, (n, width))
    t[1, 3:] = math.nan  # text 1 has 3 scored tokens
    s[1, :, 3:] = math.nan
    pool = rng.normal(-2.0, 0.6, (4, k, width))
    pool_in = rng.random((4, k)) < 0.5
    return t, s, m, pool, pool_in


@pytest.mark.parametrize("nu", [0.0, 3.0, 64.0, math.inf])
@pytest.mark.parametrize("online", [True, False])
def test_lira_token_matches_a_slow_loop(nu, online):
    t, s, m, pool, pool_in = _token_case()
    got = lira_token_scores(t, s, m, online=online, prior_dof=nu, variance_from=(pool, pool_in))
    want = _slow_token_lira(t, s, m, pool, pool_in, online=online, nu=nu)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_lira_token_with_one_token_is_the_scalar_lira():
    t, shadow, is_in = _hand_built()
    pop = np.array([[-1.0, -1.4, -2.0, -1.1, -0.7, -1.3], [-2.2, -2.0, -2.9, -2.5, -2.1, -3.0]])
    pop_in = np.array([[True, False, True, False, True, False], [False, True, False, True, False, True]])
    pop8 = np.concatenate([pop, pop[:, :2]], 1)
    pin8 = np.concatenate([pop_in, pop_in[:, :2]], 1)
    for online in (True, False):
        fixed = lira_scores(t, shadow, is_in, online=online, fixed_variance=True, variance_from=(pop8, pin8))
        tok = lira_token_scores(t[:, None], shadow[:, :, None], is_in, online=online, prior_dof=math.inf,
                                variance_from=(pop8[:, :, None], pin8))
        np.testing.assert_allclose(tok, fixed, rtol=1e-12)
        per_text = lira_scores(t, shadow, is_in, online=online, fixed_variance=False)
        tok0 = lira_token_scores(t[:, None], shadow[:, :, None], is_in, online=online, prior_dof=0.0)
        np.testing.assert_allclose(tok0, per_text, rtol=1e-12)


def test_lira_token_undefined_cases_and_bad_input():
    t, s, m, pool, pool_in = _token_case()
    t2 = t.copy()
    t2[0] = math.nan
    none_in = np.zeros_like(m)
    assert np.isnan(lira_token_scores(t2, s, m, online=True, variance_from=(pool, pool_in))[0])
    assert np.isnan(lira_token_scores(t, s, none_in, online=True, variance_from=(pool, pool_in))).all()
    assert np.isfinite(lira_token_scores(t, s, none_in, online=False, variance_from=(pool, pool_in))).all()
    with pytest.raises(LlmMiaError, match="per-token lira needs"):
        lira_token_scores(t, s[:, :2], m, online=True)
    with pytest.raises(LlmMiaError, match="prior_dof"):
        lira_token_scores(t, s, m, online=True, prior_dof=-1.0)
