"""Privacy-audit math against slow, obviously correct computations (exact sums, numerical integration)."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.stats import norm

from llm_mia.core.errors import LlmMiaError
from llm_mia.privacy import bounds as P


def exact_p_value(m, r, v, q: Fraction, delta: Fraction) -> Fraction:
    """Steinke et al. 2023 Thm 3.1 summed term by term in exact rational arithmetic."""
    pmf = [comb(r, w) * q**w * (1 - q) ** (r - w) for w in range(r + 1)]
    tail = sum(pmf[v:], Fraction(0))
    alpha = max((sum(pmf[v - i:v], Fraction(0)) / i for i in range(1, v + 1)), default=Fraction(0))
    return min(tail + 2 * m * delta * alpha, Fraction(1))


@pytest.mark.parametrize("m,r,v,delta", [(50, 20, 15, Fraction(0)), (100, 40, 31, Fraction(1, 1000)),
                                         (1000, 60, 50, Fraction(1, 100000)), (30, 10, 0, Fraction(1, 10))])
def test_one_run_p_value_is_the_exact_binomial_sum(m, r, v, delta):
    q = Fraction(3, 4)  # eps = ln 3
    got = P.one_run_p_value(m, r, v, math.log(3), float(delta))
    assert got == pytest.approx(float(exact_p_value(m, r, v, q, delta)), rel=1e-9, abs=1e-15)


def test_one_run_epsilon_closed_form_and_root():
    # every guess right, delta = 0: p(eps) = q^r, so q = beta^(1/r) and eps = logit(q)
    q = 0.05 ** (1 / 30)
    assert P.one_run_epsilon(30, 30, 30, delta=0.0, beta=0.05) == pytest.approx(math.log(q / (1 - q)), rel=1e-8)
    e = P.one_run_epsilon(1000, 200, 170, delta=1e-5, beta=0.05)
    assert P.one_run_p_value(1000, 200, 170, e, 1e-5) == pytest.approx(0.05, rel=1e-6)
    assert P.one_run_p_value(1000, 200, 170, e + 1e-3, 1e-5) > 0.05
    assert P.one_run_epsilon(100, 20, 10, delta=1e-5, beta=0.05) == 0.0  # chance accuracy proves nothing
    with pytest.raises(LlmMiaError):
        P.one_run_p_value(10, 5, 6, 1.0, 0.0)
    with pytest.raises(LlmMiaError, match="delta"):
        P.one_run_p_value(10, 5, 3, 1.0, 1.5)


def test_one_run_bound_is_valid_for_randomized_response():
    # Randomized response at eps0 is exactly eps0-DP: each guess right with prob e^eps0 / (1 + e^eps0).
    rng = np.random.default_rng(0)
    eps0, beta, m, trials = 1.0, 0.1, 200, 300
    q = 1 / (1 + math.exp(-eps0))
    over = sum(P.one_run_epsilon(m, m, int(rng.binomial(m, q)), delta=0.0, beta=beta) > eps0 for _ in range(trials))
    assert over / trials <= beta + 3 * math.sqrt(beta * (1 - beta) / trials)


def test_one_run_bound_perfect_separation_by_hand():
    m = 100
    scores = list(range(m))
    included = [i >= 50 for i in range(m)]
    res = P.one_run_bound(scores, included, delta=0.0, beta=0.05)
    grid = P.default_k_grid(m)
    assert res["n_tests"] == len(grid) == 12 and res["beta_per_test"] == pytest.approx(0.05 / 12)
    # every guess is right, so the largest r = 50 + 50 wins: q^100 = beta / 12
    q = (0.05 / 12) ** (1 / 100)
    assert (res["k_plus"], res["k_minus"], res["correct"]) == (50, 50, 100)
    assert res["epsilon"] == pytest.approx(math.log(q / (1 - q)), rel=1e-8)
    # reversed scores: the top guesses are all wrong
    assert P.one_run_bound(scores[::-1], included, delta=1e-5)["epsilon"] == 0.0


def oracle_gdp_delta(eps, mu):
    """delta(eps) = integral of max(0, p(x) - e^eps q(x)) for P = N(mu, 1), Q = N(0, 1) (sigma = 1/mu)."""
    f = lambda x: max(0.0, norm.pdf(x - mu) - math.exp(eps) * norm.pdf(x))  # noqa: E731
    return quad(f, -40, 40, points=[eps / mu + mu / 2], limit=400, epsabs=1e-13)[0]


@pytest.mark.parametrize("eps,mu", [(0.0, 0.5), (1.0, 1.0), (3.0, 2.0), (8.0, 3.0), (0.5, 4.0)])
def test_gdp_delta_matches_numerical_integration(eps, mu):
    assert P.gdp_delta(eps, mu) == pytest.approx(oracle_gdp_delta(eps, mu), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("mu,delta", [(1.0, 1e-5), (2.5, 1e-5), (0.5, 1e-3)])
def test_gdp_epsilon_inverts_the_integral(mu, delta):
    want = brentq(lambda e: oracle_gdp_delta(e, mu) - delta, 0, 60)
    assert P.gdp_epsilon(mu, delta) == pytest.approx(want, rel=1e-5)
    assert P.gdp_epsilon(0.01, 0.5) == 0.0  # delta above delta(0) = 2 Phi(mu/2) - 1


@pytest.mark.parametrize("t,mu", [(0.0, 1.0), (1.5, 2.0), (-0.5, 0.3)])
def test_gdp_mu_recovers_the_gaussian_test(t, mu):
    fpr, tpr = 1 - norm.cdf(t), 1 - norm.cdf(t - mu)  # N(0,1) vs N(mu,1), "member iff x >= t"
    assert P.gdp_mu(tpr, fpr) == pytest.approx(mu, rel=1e-9)
    assert P.gdp_mu(fpr, tpr) == 0.0


def test_threshold_bounds_perfect_separation_by_hand():
    m, a, d = 80, 0.05, 1e-5
    scores = [float(i) for i in range(m)]
    included = [i >= 40 for i in range(m)]
    u = 1 - (a / 2) ** (1 / 20)  # 20 + 20 evaluated, no error: CP upper bound on both rates
    cp = P.threshold_bound(scores, included, kind="clopper_pearson", delta=d, seed=1)
    assert cp["counts"] == {"tp": 20, "fn": 0, "fp": 0, "tn": 20} and cp["n_eval"] == 40
    assert cp["epsilon"] == pytest.approx(math.log((1 - d - u) / u), rel=1e-9)
    g = P.threshold_bound(scores, included, kind="gaussian_dp", delta=d, seed=1)
    mu = norm.ppf(1 - u) - norm.ppf(u)  # TPR_lo = (a/2)^(1/20) = 1 - u, FPR_hi = u
    assert g["mu"] == pytest.approx(mu, rel=1e-9)
    assert g["epsilon"] == pytest.approx(brentq(lambda e: oracle_gdp_delta(e, mu) - d, 0, 60), rel=1e-5)
    # Bonferroni over the 79 cutoffs: the middle one, all 40 + 40 right, each rate at a / (2 * 79)
    b = P.threshold_bound(scores, included, kind="clopper_pearson", delta=d, strategy="bonferroni")
    ub = 1 - (a / 2 / 79) ** (1 / 40)
    assert b["n_thresholds"] == 79 and b["threshold"] == 39.5
    assert b["epsilon"] == pytest.approx(math.log((1 - d - ub) / ub), rel=1e-9)


def test_threshold_bound_bad_input():
    with pytest.raises(LlmMiaError, match="delta"):
        P.threshold_bound([0, 1, 2, 3], [0, 1, 0, 1], kind="gaussian_dp", delta=0.0)
    with pytest.raises(LlmMiaError, match="needs >= 4 included"):
        P.threshold_bound(list(range(6)), [0, 1, 0, 1, 0, 1], kind="clopper_pearson", delta=1e-5)
    with pytest.raises(LlmMiaError, match="strategy"):
        P.threshold_bound(list(range(8)), [0, 1] * 4, kind="clopper_pearson", delta=1e-5, strategy="same")
    rng = random.Random(0)
    flat = P.threshold_bound([rng.random() for _ in range(200)], [rng.random() < 0.5 for _ in range(200)],
                             kind="clopper_pearson", delta=1e-5, strategy="bonferroni")
    assert flat["epsilon"] == 0.0  # scores independent of inclusion
