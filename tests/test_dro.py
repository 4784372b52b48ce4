"""Tests of diffnotes.dro: newsvendor closed forms against brute force, Wasserstein DRO, minimax, scenarios."""

import math

import numpy as np
import pytest
from scipy.optimize import linprog

from diffnotes import dro
from diffnotes.estimators import KernelScore, output_law
from diffnotes.metrics import wasserstein_1d
from diffnotes.sde import ConstantVP


@pytest.fixture(scope="module")
def demand():
    return np.random.default_rng(0).lognormal(math.log(50), 0.4, size=25)


def test_cost_against_a_loop(demand):
    q = [10.0, 48.0, 90.0]
    got = dro.newsvendor_cost(q, demand, 2.0, 7.0)
    want = [np.mean([2 * max(qq - d, 0) + 7 * max(d - qq, 0) for d in demand]) for qq in q]
    assert np.allclose(got, want, rtol=1e-14)
    assert isinstance(dro.newsvendor_cost(10.0, demand), float)


@pytest.mark.parametrize("h, b", [(1.0, 9.0), (3.0, 1.0), (1.0, 1.0), (1.0, 4.0)])
def test_saa_is_the_quantile_found_by_brute_force(demand, h, b):
    # the empirical cost is piecewise linear with kinks at the data: its minimum is attained at a data point
    q = dro.saa_decision(demand, h, b)
    costs = dro.newsvendor_cost(demand, demand, h, b)
    assert dro.newsvendor_cost(q, demand, h, b) == pytest.approx(costs.min(), abs=1e-12)
    assert q == pytest.approx(np.min(demand[costs <= costs.min() + 1e-12]))  # the smallest minimiser
    grid = np.linspace(0, 200, 20001)
    assert dro.newsvendor_cost(grid, demand, h, b).min() >= costs.min() - 1e-12
    assert dro.critical_ratio(h, b) == pytest.approx(b / (b + h))


def test_wasserstein_on_the_line_is_saa_plus_eps_lipschitz(demand):
    h, b, eps = 1.0, 4.0, 3.0
    q, value = dro.wasserstein_decision(demand, eps, h, b, support=(-math.inf, math.inf))
    assert q == dro.saa_decision(demand, h, b)
    assert value == pytest.approx(dro.newsvendor_cost(q, demand, h, b) + eps * b, rel=1e-12)
    # the LP with a very wide support reaches the closed form: a small mass moved far costs eps * max(h, b)
    q_lp, v_lp = dro.wasserstein_decision(demand, eps, h, b, support=(-1e5, 1e5))
    assert v_lp == pytest.approx(value, rel=1e-7)
    assert dro.newsvendor_cost(q_lp, demand, h, b) == pytest.approx(dro.newsvendor_cost(q, demand, h, b), rel=1e-7)


def _primal_worst_case(q, d, eps, h, b, grid):
    """Brute force: the primal LP over laws pi_ij moving atom i to grid point j with mean transport <= eps."""
    n, J = d.size, grid.size
    cost = h * np.maximum(q - grid, 0) + b * np.maximum(grid - q, 0)
    c = -np.tile(cost, n)  # maximise sum_ij pi_ij c(q, g_j)
    A_eq = np.kron(np.eye(n), np.ones(J))
    A_ub = np.abs(grid[None, :] - d[:, None]).reshape(1, -1)
    res = linprog(c, A_ub=A_ub, b_ub=[eps], A_eq=A_eq, b_eq=np.full(n, 1.0 / n), bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("h, b", [(4.0, 1.0), (1.0, 3.0)])
def test_wasserstein_dual_against_primal_brute_force(demand, h, b):
    d = demand[:8]
    eps, support = 4.0, (0.0, 150.0)
    # grid: the data, the ends and a fine mesh; the worst case moves atoms to data points or to the ends
    grid = np.unique(np.concatenate([np.linspace(0, 150, 301), d]))
    for q in [20.0, 45.0, 70.0]:
        dual = dro.wasserstein_worst_case(q, d, eps, h, b, support=support)
        assert dual == pytest.approx(_primal_worst_case(q, d, eps, h, b, grid), rel=1e-7)
    # the decision: brute-force search over q of the worst case; the value function is convex piecewise linear
    q_star, v_star = dro.wasserstein_decision(d, eps, h, b, support=support)
    qs = np.linspace(0, 150, 151)
    values = np.array([dro.wasserstein_worst_case(q, d, eps, h, b, support=support) for q in qs])
    assert v_star <= values.min() + 1e-7
    assert v_star >= values.min() - max(h, b) * (qs[1] - qs[0])  # grid spacing times the largest slope
    assert dro.wasserstein_worst_case(q_star, d, eps, h, b, support=support) == pytest.approx(v_star, rel=1e-7)


def test_radius_zero_is_saa(demand):
    q, v = dro.wasserstein_decision(demand, 0.0, 1.0, 3.0)
    assert v == pytest.approx(dro.newsvendor_cost(dro.saa_decision(demand, 1.0, 3.0), demand, 1.0, 3.0), rel=1e-9)
    assert dro.newsvendor_cost(q, demand, 1.0, 3.0) == pytest.approx(v, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minimax_exact_against_lp_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    sets = rng.normal(50, 10, size=(4, 15)) + rng.normal(0, 5, size=(4, 1))
    h, b = 1.0, 5.0
    q_e, v_e = dro.minimax_decision(sets, h, b)
    q_l, v_l = dro.minimax_decision(sets, h, b, method="lp")
    assert v_e == pytest.approx(v_l, rel=1e-9)
    worst = lambda q: max(dro.newsvendor_cost(q, s, h, b) for s in sets)  # noqa: E731
    assert worst(q_e) == pytest.approx(v_e, rel=1e-12)
    grid = np.linspace(0, 120, 24001)
    assert min(worst(q) for q in grid[::20]) >= v_e - 1e-12
    # one set: SAA on it
    q1, _ = dro.minimax_decision(sets[:1], h, b)
    assert dro.newsvendor_cost(q1, sets[0], h, b) == pytest.approx(
        dro.newsvendor_cost(dro.saa_decision(sets[0], h, b), sets[0], h, b), rel=1e-12)


def test_diffusion_scenarios_follow_the_kernel_output_law(demand):
    sde = ConstantVP(T=8.0)
    t0s = [0.01, 0.1, 0.5]
    out = dro.diffusion_scenarios(demand, t0s, 10, 800, bandwidth=0.2, sde=sde, n_steps=100, lower=None,
                                  generator=3)
    assert set(out) == set(t0s) and all(v.shape == (10, 800) for v in out.values())
    mean, scale = demand.mean(), demand.std()
    est = KernelScore(((demand - mean) / scale)[:, None], sde, bandwidth=0.2)
    w1 = []
    for t in t0s:
        law = output_law(est, t)
        m_exact = mean + scale * float(law.mean()[0])
        v_exact = scale**2 * float(law.covariance()[0, 0])
        x = out[t].ravel()
        # Monte Carlo over 8000 draws: se(mean) = sqrt(v / n), se(var) ~ 1.5 v sqrt(2 / n) (2.4%, 1.5 for the excess
        # kurtosis of the mixture); DDPM's first-order bias on 100 log-SNR steps lowers the variance by about 4%
        # (measured with 20000 draws: -3 to -4% at 100 steps, -1% at 400, shrinking like 1/N); tolerance 5 se + bias
        assert abs(x.mean() - m_exact) < 5 * math.sqrt(v_exact / x.size)
        assert abs(x.var() / v_exact - 1) < 5 * 1.5 * math.sqrt(2 / x.size) + 0.04
        w1.append(wasserstein_1d(x, demand))
    # nested neighbourhoods: the distance to the empirical law grows with t0
    assert w1[0] < w1[1] < w1[2]
    clipped = dro.diffusion_scenarios(demand, [0.5], 2, 500, generator=3)[0.5]
    assert clipped.min() >= 0.0


def test_bad_inputs(demand):
    with pytest.raises(ValueError, match="holding"):
        dro.newsvendor_cost(1.0, demand, -1.0, 1.0)
    with pytest.raises(ValueError, match="backorder"):
        dro.saa_decision(demand, 1.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        dro.wasserstein_decision(demand, -0.5)
    with pytest.raises(ValueError, match="support"):
        dro.wasserstein_decision(demand, 1.0, support=(5.0, 1.0))
    with pytest.raises(ValueError, match="support"):
        dro.wasserstein_decision(demand, 1.0, support=(60.0, math.inf))
    with pytest.raises(ValueError, match="demand"):
        dro.saa_decision([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="demand"):
        dro.saa_decision([1.0, float("nan")])
    with pytest.raises(ValueError, match="early-stopping"):
        dro.diffusion_scenarios(demand, [0.0], 2, 5)
    with pytest.raises(ValueError, match="early-stopping"):
        dro.diffusion_scenarios(demand, [9.0], 2, 5)
    with pytest.raises(ValueError, match="n_sets"):
        dro.diffusion_scenarios(demand, [0.1], 0, 5)
    with pytest.raises(ValueError, match="method"):
        dro.minimax_decision(np.ones((2, 3)), method="simplex")
    with pytest.raises(ValueError, match="scenario_sets"):
        dro.minimax_decision(np.ones(3))
