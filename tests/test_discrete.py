"""Tests of diffnotes.discrete: kernels, exact ratios, time reversal, samplers, ratio losses (T25)."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from diffnotes import discrete as D

RNG = np.random.default_rng(12)
P_DATA = {3: RNG.dirichlet(np.ones(3**3) * 0.7), 2: RNG.dirichlet(np.ones(2**3) * 0.7)}


def uniform(S=3, L=3, rate=1.3):
    return D.FactorizedCTMC.uniform(S, L, rate=rate)


def absorbing(n=2, L=3, rate=0.8):
    return D.FactorizedCTMC.absorbing(n, L, rate=rate)


def custom():
    Q = np.array([[-1.0, 0.5, 0.2], [0.4, -0.9, 0.3], [0.6, 0.4, -0.5]])
    return D.FactorizedCTMC(Q, 2)


# -- kernels and marginals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [uniform, absorbing, custom])
@pytest.mark.parametrize("t", [0.05, 0.7, 3.0, -0.4])
def test_transition_closed_form_equals_expm(make, t):
    pr = make()
    np.testing.assert_allclose(pr.transition(t).numpy(), pr.transition_expm(t), rtol=1e-12, atol=1e-13)
    batch = pr.transition(torch.tensor([t, 2 * t], dtype=torch.float64))
    np.testing.assert_allclose(batch[1].numpy(), pr.transition_expm(2 * t), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("make", [uniform, absorbing])
def test_marginal_equals_expm_of_sequence_generator(make):
    pr = make()
    p0 = pr.embed(P_DATA[pr.n_data])
    Qfull = pr.generator_matrix().numpy()
    assert np.abs(Qfull.sum(0)).max() < 1e-12
    for t in [0.1, 1.0, 4.0]:
        ref = scipy.linalg.expm(t * Qfull) @ p0.numpy()
        np.testing.assert_allclose(pr.marginal(p0, t).numpy(), ref, rtol=1e-10, atol=1e-14)


def test_perturb_draws_the_kernel():
    pr = uniform(S=3, L=2)
    x0 = torch.tensor([[0, 2]]).repeat(40000, 1)
    xt = pr.perturb(x0, 0.5, generator=0)
    K = pr.transition(0.5)
    for pos, c in enumerate([0, 2]):
        freq = torch.bincount(xt[:, pos], minlength=3).double() / 40000
        # 5 standard errors of a frequency from 40000 draws
        assert torch.all((freq - K[:, c]).abs() < 5 * torch.sqrt(K[:, c] * (1 - K[:, c]) / 40000))


# -- exact ratios and the time reversal ------------------------------------------------------------------------
@pytest.mark.parametrize("make", [uniform, absorbing])
def test_exact_ratios_against_brute_force(make):
    pr = make()
    ex = D.ExactRatios(pr, P_DATA[pr.n_data])
    x = pr.states()
    t = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 + 0.05
    r = ex(x, t)
    for k in range(0, x.shape[0], 7):
        pt = ex.law(float(t[k]))
        for pos in range(pr.L):
            for a in range(pr.S):
                y = x[k].clone()
                y[pos] = a
                num, den = float(pt[pr.index(y[None])]), float(pt[pr.index(x[k:k + 1])])
                want = num / den if den > 0 else (1.0 if a == x[k, pos] else 0.0)
                assert math.isclose(float(r[k, pos, a]), want, rel_tol=1e-10, abs_tol=1e-14)


@pytest.mark.parametrize("make", [uniform, lambda: absorbing(n=2, L=2)])
def test_reverse_rates_against_brute_force_time_reversal(make):
    """The reverse chain's rates are the derivative of its transition law, computed by Bayes' rule."""
    pr = make()
    ex = D.ExactRatios(pr, np.random.default_rng(5).dirichlet(np.ones(pr.n_data ** pr.L)))
    Qfull = pr.generator_matrix().numpy()
    t = 0.6
    pt = ex.law(t).numpy()

    def backward(h):  # P(X_{t-h} = y | X_t = x), [y, x]
        return (ex.law(t - h).numpy()[:, None] * scipy.linalg.expm(h * Qfull).T) / pt[None, :]

    eye = np.eye(len(pt))
    h = 1e-4  # Richardson extrapolation of (P(h) - I)/h: error O(h^2) ~ 1e-8 times the rates' curvature
    brute = 2 * (backward(h / 2) - eye) / (h / 2) - (backward(h) - eye) / h
    formula = pr.reverse_generator(pt).numpy()
    np.testing.assert_allclose(formula, brute, atol=1e-6)
    # the per-position rates of reverse_rates are the off-diagonal entries of the same matrix
    states = pr.states()
    rates = D.reverse_rates(ex, states, t, pr)
    for k in range(states.shape[0]):
        for pos in range(pr.L):
            for a in range(pr.S):
                if a != states[k, pos]:
                    y = states[k].clone()
                    y[pos] = a
                    assert math.isclose(float(rates[k, pos, a]), formula[int(pr.index(y[None])), k],
                                        rel_tol=1e-10, abs_tol=1e-13)
    # Kolmogorov equation of the reversal: Qbar_t p_t = -Q p_t (q_tau = p_{T - tau})
    np.testing.assert_allclose(formula @ pt, -Qfull @ pt, atol=1e-13)


# -- samplers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: uniform(S=2, L=3), lambda: absorbing(n=2, L=3)])
def test_uniformization_has_the_exact_marginal(make):
    pr = make()
    ex = D.ExactRatios(pr, P_DATA[2])
    T, delta, n = 3.0, 0.02, 4000
    start = pr.sample_law(ex.law(T), n, generator=1)
    stats = {}
    for grid in [D.time_grid(T, delta, 2), D.time_grid(T, delta, 12)]:
        x = D.uniformization(ex, start, grid, process=pr, generator=2, stats=stats)
        # a correct sampler fails this at level 1e-3 once in a thousand runs (fixed seeds: deterministic)
        assert D.chi_square_pvalue(x, ex.law(delta), pr) > 1e-3
        # events per chain are Poisson with the stated mean: the mean of n draws within 5 standard errors
        mean = stats["expected_events"]
        assert abs(float(stats["events"].double().mean()) - mean) < 5 * math.sqrt(mean / n)
        assert torch.all(stats["jumps"] <= stats["events"])


def test_uniformization_events_fewer_on_finer_grids_and_logarithmic_in_delta():
    pr = uniform(S=2, L=4, rate=2.0)
    ex = D.ExactRatios(pr, RNG.dirichlet(np.ones(16)))

    def expected(grid):
        st = {}
        D.uniformization(ex, (1, 4), grid, process=pr, generator=0, stats=st)
        return st["expected_events"]

    coarse, fine = expected(D.time_grid(4.0, 1e-3, 4)), expected(D.time_grid(4.0, 1e-3, 400))
    assert fine < coarse
    # on a fine geometric grid, sum lambda_k h_k -> L int bound dt, whose delta-dependence is L (S-1) log(1/delta)
    slope = (expected(D.time_grid(4.0, 1e-4, 2000)) - expected(D.time_grid(4.0, 1e-2, 2000))) / math.log(100)
    assert slope == pytest.approx(pr.L * (pr.S - 1), rel=0.01)


@pytest.mark.parametrize("method", ["euler", "tau", "tweedie"])
def test_step_methods_are_first_order_and_samplers_draw_their_exact_law(method):
    pr = uniform(S=2, L=3)
    ex = D.ExactRatios(pr, P_DATA[2])
    T, delta = 3.0, 0.05
    errors = [D.tv(D.output_law(method, ex, pr, D.time_grid(T, delta, N), ex.law(T)), ex.law(delta))
              for N in (32, 64, 128)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.7 < q < 2.3 for q in ratios), ratios  # first order: halving the step halves the TV error
    grid = D.time_grid(T, delta, 8)
    law = D.output_law(method, ex, pr, grid, ex.law(T))
    sampler = {"euler": D.euler, "tau": D.tau_leaping, "tweedie": D.tweedie}[method]
    x, path = sampler(ex, pr.sample_law(ex.law(T), 6000, generator=4), grid, process=pr, generator=5,
                      return_trajectory=True)
    assert path.shape == (9, 6000, 3) and torch.equal(path[-1], x)
    assert D.chi_square_pvalue(x, law, pr) > 1e-3


def test_tweedie_is_exact_for_one_position():
    pr = D.FactorizedCTMC.uniform(4, 1, rate=1.0)
    ex = D.ExactRatios(pr, RNG.dirichlet(np.ones(4) * 0.3))
    law = D.output_law("tweedie", ex, pr, D.time_grid(2.0, 0.01, 3), ex.law(2.0))
    assert D.tv(law, ex.law(0.01)) < 1e-12
    pa = D.FactorizedCTMC.absorbing(3, 1, rate=1.0)
    ea = D.ExactRatios(pa, RNG.dirichlet(np.ones(3)))
    assert D.tv(D.output_law("tweedie", ea, pa, D.time_grid(2.0, 0.01, 2), ea.law(2.0)), ea.law(0.01)) < 1e-12


def test_sampler_start_from_shape_and_generator_reproducible():
    pr = absorbing()
    ex = D.ExactRatios(pr, P_DATA[2])
    grid = D.time_grid(3.0, 0.05, 5)
    a = D.euler(ex, (50, 3), grid, process=pr, generator=7)
    b = D.euler(ex, (50, 3), grid, process=pr, generator=7)
    assert torch.equal(a, b) and a.shape == (50, 3)
    c = D.uniformization(ex, (50, 3), grid, process=pr, generator=np.random.default_rng(1))
    assert c.dtype == torch.long and int(c.max()) <= pr.mask


def test_expected_tv_floor_matches_simulation():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    sims = [D.tv(torch.bincount(torch.multinomial(p, 200, True, generator=gen), minlength=4).double() / 200, p)
            for _ in range(2000)]
    # mean of 2000 simulated TVs: standard error std / sqrt(2000); 5 of them
    assert abs(np.mean(sims) - D.expected_tv_floor(p, 200)) < 5 * np.std(sims) / math.sqrt(2000)


# -- losses ----------------------------------------------------------------------------------------------------
def _pairs(pr, t):
    """Every (x0, x_t) pair with its probability p0(x0) K_t(x_t | x0), for exact expectations."""
    x0s, xts = pr.data_states(), pr.states()
    K = pr.transition(t)
    x0 = x0s.repeat_interleave(xts.shape[0], 0)
    xt = xts.repeat(x0s.shape[0], 1)
    w = K[xt, x0].prod(1)
    return x0, xt, w


@pytest.mark.parametrize("make", [uniform, absorbing])
def test_score_entropy_minimised_by_the_true_ratios(make):
    pr = make(L=2)
    p = RNG.dirichlet(np.ones(pr.n_data ** 2))
    ex = D.ExactRatios(pr, p)
    t = 0.4
    x0, xt, w = _pairs(pr, t)
    keep = w > 0
    x0, xt, w = x0[keep], xt[keep], w[keep] * torch.as_tensor(p)[_data_index(x0[keep], pr)]
    target, weight = D.denoising_targets(x0, xt, t, pr)
    true = ex(xt, t)
    gen = torch.Generator().manual_seed(1)

    def expected_dse(log_s):
        return float((w * D.score_entropy(log_s, target, weight)).sum())

    base = expected_dse(torch.log(true.clamp_min(1e-300)))
    for _ in range(5):
        noise = torch.randn(pr.S ** pr.L, pr.L, pr.S, generator=gen, dtype=torch.float64)
        log_s = torch.log(true.clamp_min(1e-300)) + 0.3 * noise[pr.index(xt)]  # a function of x_t only
        gap = expected_dse(log_s) - base
        # the gap is exactly the expected score entropy between s and the true ratios (a constant cancels)
        se = float((w * D.score_entropy(log_s, true, weight)).sum())
        assert gap > 0 and gap == pytest.approx(se, rel=1e-9)
    # pointwise: zero at s = r, positive elsewhere
    r = torch.rand(4, 2, pr.S, generator=gen, dtype=torch.float64) + 0.1
    wgt = torch.ones_like(r)
    assert float(D.score_entropy(torch.log(r), r, wgt).abs().max()) < 1e-14
    assert torch.all(D.score_entropy(torch.log(r) + 0.1, r, wgt) > 0)
    # the quadratic loss: the gap is the weighted squared error
    s = true * 1.2 + 0.01 * noise[pr.index(xt)] ** 2
    csm = float((w * (weight * (s - target) ** 2).sum((1, 2))).sum())
    csm0 = float((w * (weight * (true - target) ** 2).sum((1, 2))).sum())
    assert csm - csm0 == pytest.approx(float((w * (weight * (s - true) ** 2).sum((1, 2))).sum()), rel=1e-9)


def _data_index(x0, pr):
    powers = pr.n_data ** torch.arange(pr.L - 1, -1, -1)
    return (x0 * powers).sum(1)


def test_masked_cross_entropy_minimised_by_the_exact_denoiser_and_gives_the_ratios():
    pr = absorbing(n=3, L=2)
    p = RNG.dirichlet(np.ones(9))
    ex = D.ExactRatios(pr, p)
    t = 0.7
    x0, xt, w = _pairs(pr, t)
    keep = w > 0
    x0, xt, w = x0[keep], xt[keep], w[keep] * torch.as_tensor(p)[_data_index(x0[keep], pr)]
    mu = ex.denoiser(xt, t)
    masked = (xt == pr.mask).double()

    def expected_ce(m):
        return float((w * -(torch.log(m).gather(2, x0[:, :, None])[:, :, 0] * masked).sum(1)).sum())

    noise = torch.randn(pr.S ** pr.L, pr.L, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    other = torch.softmax(torch.log(mu) + 0.5 * noise[pr.index(xt)], 2)  # another denoiser (a function of x_t)
    assert expected_ce(other) > expected_ce(mu)
    e = math.exp(-pr.rate * t)
    r = ex(xt, t)
    at_mask = xt == pr.mask
    np.testing.assert_allclose(r[:, :, :3][at_mask].numpy(), (e / (1 - e) * mu[at_mask]).numpy(), rtol=1e-10)


def test_training_reduces_the_ratio_error_and_net_is_reproducible():
    pr = uniform(S=2, L=3, rate=1.0)
    ex = D.ExactRatios(pr, P_DATA[2])
    data = pr.sample_law(pr.embed(P_DATA[2]), 2000, generator=0)
    net = D.RatioNet(pr, hidden=32, generator=3)
    assert torch.equal(net.net[0].weight, D.RatioNet(pr, hidden=32, generator=3).net[0].weight)
    x = pr.sample_law(ex.law(0.5), 500, generator=1)

    def error():
        return float((torch.log(net.ratio(x, 0.5)) - torch.log(ex(x, 0.5))).abs().mean())

    before = error()
    losses = D.fit_ratios(net, "score_entropy", data, steps=200, batch_size=128, t_min=0.05, T=3.0, generator=4)
    assert len(losses) == 200 and error() < 0.5 * before
    dn = D.RatioNet(absorbing(), output="denoiser", generator=0)
    D.fit_ratios(dn, "mdlm", torch.zeros(10, 3, dtype=torch.long), steps=2, generator=0)
    r = dn.ratio(torch.tensor([[2, 0, 1]]), 0.3)
    assert r.shape == (1, 3, 3) and float(r[0, 1, 1]) == 0.0 and float(r[0, 0, 2]) == 1.0


# -- bad input -------------------------------------------------------------------------------------------------
def test_bad_rate_matrices():
    with pytest.raises(ValueError, match="columns of Q must sum to zero"):
        D.check_rate_matrix([[-1.0, 0.5], [0.5, -1.0]])
    with pytest.raises(ValueError, match="columns of Q must sum to zero"):
        D.FactorizedCTMC([[-1.0, 2.0], [1.0, -1.0]], 2)  # neither rows nor columns sum to zero
    with pytest.raises(ValueError, match="negative off-diagonal"):
        D.check_rate_matrix([[1.0, -1.0], [-1.0, 1.0]])
    with pytest.raises(ValueError, match="square"):
        D.check_rate_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        D.check_rate_matrix([[-np.inf, 1.0], [np.inf, -1.0]])
    with pytest.raises(ValueError, match="rate"):
        D.FactorizedCTMC.uniform(3, 2, rate=0.0)
    with pytest.raises(ValueError, match="n_tokens"):
        D.FactorizedCTMC.uniform(1, 2)
    with pytest.raises(ValueError, match="length"):
        D.FactorizedCTMC.uniform(3, 0)


def test_tokens_outside_the_vocabulary():
    pr = absorbing(n=2, L=3)
    ex = D.ExactRatios(pr, P_DATA[2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ex(torch.tensor([[0, 3, 1]]), 0.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ex(torch.tensor([[0, -1, 1]]), 0.5)
    with pytest.raises(ValueError, match="outside the vocabulary of data tokens"):
        D.score_entropy_loss(lambda x, t: torch.zeros(x.shape[0], 3, 3), torch.tensor([[0, 2, 1]]), pr,
                             t_min=0.1, T=1.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        D.euler(ex, torch.tensor([[5, 0, 0]]), D.time_grid(1.0, 0.1, 2), process=pr)
    with pytest.raises(TypeError, match="integer tensor"):
        ex(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="shape"):
        ex(torch.zeros(2, 4, dtype=torch.long), 0.5)


def test_bad_steps_times_and_outputs():
    pr = uniform()
    ex = D.ExactRatios(pr, P_DATA[3])
    for bad in [0, -3, 2.5, True]:
        with pytest.raises(ValueError, match="n_steps"):
            D.time_grid(2.0, 0.1, bad)
    with pytest.raises(ValueError, match="strictly decreasing"):
        D.tau_leaping(ex, (4, 3), torch.tensor([1.0, 1.0, 0.5]), process=pr)
    with pytest.raises(ValueError, match="at least 2 times"):
        D.tweedie(ex, (4, 3), torch.tensor([1.0]), process=pr)
    with pytest.raises(ValueError, match="> 0"):
        D.uniformization(ex, (4, 3), torch.tensor([1.0, 0.0]), process=pr)
    with pytest.raises(ValueError, match="> 0"):
        ex(pr.states()[:2], 0.0)
    with pytest.raises(ValueError, match="0 < t0 < T"):
        D.time_grid(1.0, 2.0, 4)
    with pytest.raises(ValueError, match="shape"):
        D.euler(lambda x, t: torch.ones(x.shape[0], 3), (4, 3), D.time_grid(1.0, 0.1, 2), process=pr)
    with pytest.raises(ValueError, match="negative or non-finite"):
        D.euler(lambda x, t: -torch.ones(x.shape[0], 3, 3), (4, 3), D.time_grid(1.0, 0.1, 2), process=pr)
    with pytest.raises(ValueError, match="exceeds the uniformisation bound"):
        D.uniformization(lambda x, t: 1e6 * torch.ones(x.shape[0], 3, 3), (200, 3), D.time_grid(1.0, 0.5, 1),
                         process=pr, generator=0)
    with pytest.raises(TypeError, match="FactorizedCTMC"):
        D.euler(ex, (4, 3), D.time_grid(1.0, 0.1, 2), process="uniform")
    with pytest.raises(ValueError, match="probability vector"):
        D.ExactRatios(pr, np.ones(27))
    with pytest.raises(ValueError, match="absorbing"):
        D.masked_diffusion_loss(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), pr, t_min=0.1, T=1.0)
    with pytest.raises(ValueError, match="t_min"):
        D.concrete_score_matching_loss(lambda x, t: torch.zeros(x.shape[0], 3, 3), torch.zeros(2, 3,
                                       dtype=torch.long), pr, t_min=0.0, T=1.0)


def test_product_ratios_equal_exact_ratios_on_a_product_law():
    for pr in [uniform(S=3, L=2), absorbing(n=3, L=2)]:
        q = RNG.dirichlet(np.ones(3), size=2)
        ex = D.ExactRatios(pr, np.outer(q[0], q[1]).reshape(-1))
        x = pr.states()
        t = torch.linspace(0.05, 2.0, x.shape[0], dtype=torch.float64)
        np.testing.assert_allclose(D.ProductRatios(pr, q)(x, t).numpy(), ex(x, t).numpy(), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="marginals"):
        D.ProductRatios(pr, np.ones((2, 2)))


def test_chi_square_pvalue_rejects_a_wrong_law():
    pr = uniform(S=2, L=2)
    law = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    x = pr.sample_law(law, 5000, generator=0)
    assert D.chi_square_pvalue(x, law, pr) > 1e-3
    assert D.chi_square_pvalue(x, torch.full((4,), 0.25, dtype=torch.float64), pr) < 1e-10
    assert D.chi_square_pvalue(x, torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64), pr) == 0.0


def test_uniformization_with_a_given_rate_bound_for_a_custom_kernel():
    pr = custom()  # S = 3, L = 2, no closed-form bound
    ex = D.ExactRatios(pr, np.random.default_rng(6).dirichlet(np.ones(9)))
    T, delta = 2.0, 0.05
    with pytest.raises(ValueError, match="rate_bound"):
        D.uniformization(ex, pr.sample_law(ex.law(T), 10, generator=0), D.time_grid(T, delta, 2), process=pr)
    # the largest exit rate of one position over all states, on a fine time grid, doubled: a valid bound here
    states, fine = pr.states(), torch.linspace(delta, T, 200, dtype=torch.float64)
    top = max(float(D.reverse_rates(ex, states, float(t), pr).sum(2).max()) for t in fine)
    x = D.uniformization(ex, pr.sample_law(ex.law(T), 4000, generator=1), D.time_grid(T, delta, 4),
                         process=pr, generator=2, rate_bound=lambda t: 2 * top)
    assert D.chi_square_pvalue(x, ex.law(delta), pr) > 1e-3
