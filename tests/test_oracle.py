"""The exact Gaussian oracle: per-step laws, full covariances, the grid path KL and the 1-D total variation.

Each addition is checked three ways where possible: against Monte Carlo, against the diagonal oracle (itself checked
against Monte Carlo in test_samplers.py), and against exact identities derived by hand.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffnotes.metrics import gaussian_kl
from diffnotes.oracle import (
    gaussian_output_law,
    gaussian_output_law_full,
    gaussian_path_kl,
)
from diffnotes.samplers import (
    SAMPLERS,
    _sampler,
    ddim,
    ddpm,
    euler_maruyama,
    exponential_integrator,
    predictor_corrector,
    probability_flow_euler,
    probability_flow_heun,
    time_grid,
)
from diffnotes.sde import ConstantVP, LinearVP
from diffnotes.targets import Gaussian, GaussianMixture


def rotation(D, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))
    return q


def full_gaussian(sde, D=3, seed=0):
    Q = rotation(D, seed)
    lam = np.linspace(0.3, 2.0, D)
    mean = np.linspace(1.0, -0.5, D)
    return Gaussian(mean, Q @ np.diag(lam) @ Q.T, sde), Q, lam, mean


# -- per-step laws ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_trajectory_ends_at_the_output_law_and_starts_at_the_start(name):
    sde = ConstantVP(T=4.0)
    target = Gaussian([1.0, -0.5], [0.25, 2.0], sde)
    times = time_grid(sde, 1e-2, 12, "logsnr")
    m, v = gaussian_output_law(SAMPLERS[name], target, times, start_mean=0.3, start_var=0.7)
    ms, vs = gaussian_output_law(SAMPLERS[name], target, times, start_mean=0.3, start_var=0.7,
                                 return_trajectory=True)
    assert ms.shape == vs.shape == (13, 2)
    assert torch.allclose(ms[0], torch.full((2,), 0.3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(vs[0], torch.full((2,), 0.7, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(ms[-1], m, atol=1e-13) and torch.allclose(vs[-1], v, atol=1e-13)
    ms, vs = gaussian_output_law(SAMPLERS[name], target, times, return_trajectory=True, final_denoise=True)
    assert ms.shape == (14, 2)


@pytest.mark.parametrize("sampler", [euler_maruyama, ddpm, probability_flow_heun])
def test_trajectory_laws_agree_with_monte_carlo(sampler):
    sde = ConstantVP(T=3.0)
    target = Gaussian([1.0, -0.5], [0.25, 2.0], sde)
    times = time_grid(sde, 1e-2, 8)
    ms, vs = gaussian_output_law(sampler, target, times, return_trajectory=True)
    n = 100_000
    _, traj = sampler(target.score, (n, 2), times, sde=sde, generator=torch.Generator().manual_seed(3),
                      return_trajectory=True)
    for k in range(1, 9):
        x = traj[k]
        assert torch.all((x.mean(0) - ms[k]).abs() < 5 * torch.sqrt(vs[k] / n)), k
        assert torch.all((x.var(0) - vs[k]).abs() < 5 * vs[k] * math.sqrt(2 / n)), k


def test_exact_reverse_transitions_reproduce_the_forward_marginals_at_every_step():
    # A sampler that takes the exact reverse transition of Gaussian data: its per-step laws are those of P_t.
    sde = ConstantVP(T=5.0)
    target = Gaussian([0.8], [0.3], sde)
    exact = _exact_reverse_sampler(target)
    times = time_grid(sde, 1e-2, 15)
    mT, vT = target.moments(float(times[0]))
    ms, vs = gaussian_output_law(exact, target, times, start_mean=mT, start_var=vT[0, 0], return_trajectory=True)
    for k, t in enumerate(times):
        m, v = target.moments(float(t))
        assert abs(float(ms[k, 0] - m[0])) < 1e-13 and abs(float(vs[k, 0] - v[0, 0])) < 1e-13


# -- full covariances ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_full_oracle_on_a_diagonal_target_is_the_diagonal_oracle(name):
    sde = LinearVP()
    target = Gaussian([1.0, -0.5, 0.2], [0.25, 2.0, 1.0], sde)
    times = time_grid(sde, 1e-3, 10, "logsnr")
    m, v = gaussian_output_law(SAMPLERS[name], target, times, start_mean=[0.1, 0.2, 0.3], start_var=[0.5, 1.0, 2.0])
    mf, S = gaussian_output_law_full(SAMPLERS[name], target, times, start_mean=[0.1, 0.2, 0.3],
                                     start_cov=[0.5, 1.0, 2.0])
    assert torch.allclose(mf, m, atol=1e-13) and torch.allclose(S, torch.diag(v), atol=1e-13)


@pytest.mark.parametrize("name", ["euler_maruyama", "exponential_integrator", "ddim", "dpm_solver_pp"])
def test_full_oracle_commutes_with_rotations(name):
    # Rotating the data rotates the output law: N(Q m, Q S Q^T), with m, S from the diagonal oracle.
    sde = ConstantVP(T=6.0)
    Q = torch.as_tensor(rotation(3, 1))
    mean, lam = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64), torch.tensor([0.25, 2.0, 1.0],
                                                                                dtype=torch.float64)
    times = time_grid(sde, 1e-3, 20, "logsnr")
    m, v = gaussian_output_law(SAMPLERS[name], Gaussian(mean, lam, sde), times)
    mf, S = gaussian_output_law_full(SAMPLERS[name], Gaussian(Q @ mean, Q @ torch.diag(lam) @ Q.T, sde), times)
    assert torch.allclose(mf, Q @ m, atol=1e-12) and torch.allclose(S, Q @ torch.diag(v) @ Q.T, atol=1e-12)


@pytest.mark.parametrize("sampler", [euler_maruyama, exponential_integrator, ddim, predictor_corrector])
def test_full_oracle_agrees_with_monte_carlo(sampler):
    # Correlated data and a correlated start law; mean and every covariance entry within 5 standard errors.
    sde = ConstantVP(T=4.0)
    target, *_ = full_gaussian(sde, seed=2)
    times = time_grid(sde, 1e-2, 12)
    V0 = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, -0.1], [0.0, -0.1, 2.0]], dtype=torch.float64)
    m0 = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    m, S = gaussian_output_law_full(sampler, target, times, start_mean=m0, start_cov=V0)
    n = 200_000
    gen = torch.Generator().manual_seed(5)
    x0 = m0 + torch.randn(n, 3, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(V0).T
    x = sampler(target.score, x0, times, sde=sde, generator=gen)
    assert torch.all((x.mean(0) - m).abs() < 5 * torch.sqrt(torch.diagonal(S) / n))
    xc = x - x.mean(0)
    prod = xc[:, :, None] * xc[:, None, :]
    se = prod.std(0) / math.sqrt(n)
    assert torch.all((prod.mean(0) - S).abs() < 5 * se + 1e-12)


def test_full_oracle_trajectory_and_perturbed_score():
    sde = ConstantVP(T=4.0)
    target, Q, _, _ = full_gaussian(sde, seed=3)
    times = time_grid(sde, 1e-2, 10)
    u = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)

    def shifted(x, t):
        return target.score(x, t) + 0.1 * u

    ms, Ss = gaussian_output_law_full(exponential_integrator, target, times, score=shifted, return_trajectory=True)
    m, S = gaussian_output_law_full(exponential_integrator, target, times, score=shifted)
    assert ms.shape == (11, 3) and Ss.shape == (11, 3, 3)
    assert torch.allclose(ms[-1], m) and torch.allclose(Ss[-1], S)
    assert torch.allclose(Ss[0], torch.eye(3, dtype=torch.float64), atol=1e-14)
    # A constant score error moves the mean only; the shift is linear in its size.
    m0, S0 = gaussian_output_law_full(exponential_integrator, target, times)
    m2, S2 = gaussian_output_law_full(exponential_integrator, target, times,
                                      score=lambda x, t: target.score(x, t) + 0.2 * u)
    assert torch.allclose(S, S0, atol=1e-13) and torch.allclose(S2, S0, atol=1e-13)
    assert torch.allclose(m2 - m0, 2 * (m - m0), atol=1e-13)


def test_large_dimension_product_law_is_exact_and_additive():
    # i.i.d. coordinates: every divergence is D times the one-dimensional one.
    sde = ConstantVP(T=6.0)
    times = time_grid(sde, 1e-3, 16)
    one = gaussian_path_kl(exponential_integrator, Gaussian([0.5], [0.25], sde), times)
    D = 256
    many = gaussian_path_kl(exponential_integrator, Gaussian(np.full(D, 0.5), np.full(D, 0.25), sde), times)
    assert abs(many.total / (D * one.total) - 1) < 1e-10
    assert abs(many.marginal / (D * one.marginal) - 1) < 1e-10


# -- the grid path KL ---------------------------------------------------------------------------------------------
def _exact_reverse_sampler(target):
    """A test-only sampler taking the exact reverse transition of the Gaussian ``target`` (one coordinate)."""

    def exact_step(run, x, t, t_next):
        m, v = (float(z.reshape(-1)[0]) for z in target.moments(t))
        m1, v1 = (float(z.reshape(-1)[0]) for z in target.moments(t_next))
        rho = float(target.sde.alpha(t) / target.sde.alpha(t_next))
        beta = rho * v1 / v
        gamma = v1 * (1 - rho**2) / v
        return m1 + beta * (x - m) + math.sqrt(gamma) * run.draw(x)

    return _sampler(exact_step)


def test_path_kl_of_the_exact_reverse_chain_is_the_start_term_only():
    sde = ConstantVP(T=5.0)
    target = Gaussian([0.8], [0.3], sde)
    times = time_grid(sde, 1e-2, 15)
    p = gaussian_path_kl(_exact_reverse_sampler(target), target, times)
    mT, ST = target.moments(5.0)
    assert abs(p.start - gaussian_kl(mT.numpy(), ST.numpy(), np.zeros(1), np.eye(1))) < 1e-15
    assert float(p.steps.abs().max()) < 1e-13
    started = gaussian_path_kl(_exact_reverse_sampler(target), target, times, start_mean=mT, start_cov=ST)
    assert abs(started.total) < 1e-13 and abs(started.marginal) < 1e-13


def test_path_kl_closed_form_for_standard_normal_data():
    # Data N(0, 1): P_t = N(0, 1) at every t, the score is -x; the exponential integrator's step is
    # x' = (2 - e^{A/2}) x + sqrt(e^A - 1) xi while the exact transition is N(e^{-A/2} x, 1 - e^{-A}).
    sde = ConstantVP(T=3.0)
    times = time_grid(sde, 1e-2, 7, "log")
    p = gaussian_path_kl(exponential_integrator, Gaussian([0.0], [1.0], sde), times)
    A = (times[:-1] - times[1:]).numpy()
    expected = 0.5 * (np.exp(-A) - 1 + A) + 0.5 * (np.exp(-A / 2) + np.exp(A / 2) - 2) ** 2 / np.expm1(A)
    assert p.start == 0.0
    assert np.allclose(p.steps.numpy(), expected, rtol=1e-12, atol=0)


def _ei_coefficients(target, times):
    """The exponential integrator's transition N(c x + d, w) for 1-D Gaussian data, written out by hand."""
    sde = target.sde
    mu, lam = float(target.means[0, 0]), float(target.covs[0, 0, 0])
    out = []
    for t, t1 in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        A = float(sde.integral(t) - sde.integral(t1))
        a, h = float(sde.alpha(t)), float(sde.h(t))
        v = a * a * lam + h
        k = 2 * math.expm1(A / 2)
        out.append((math.exp(A / 2) - k / v, k * a * mu / v, math.expm1(A)))
    return out


def test_path_kl_agrees_with_monte_carlo():
    # E_P[log dP/dQ] over exact reverse paths (forward paths read backward), with the sampler's transition density
    # written out independently of the oracle.
    sde = ConstantVP(T=3.0)
    target = Gaussian([0.7], [0.4], sde)
    times = time_grid(sde, 5e-2, 5)
    p = gaussian_path_kl(exponential_integrator, target, times, start_mean=0.2, start_cov=1.5)
    gen = torch.Generator().manual_seed(11)
    n = 400_000
    x0 = target.sample(n, gen)
    path = sde.forward_path(x0, times.flip(0), gen).flip(0)[:, :, 0].numpy()  # (N + 1, n): X at t_0 = T, ..., t_N
    mT, vT = (float(z.reshape(-1)[0]) for z in target.moments(float(times[0])))
    log_ratio = stats.norm.logpdf(path[0], mT, math.sqrt(vT)) - stats.norm.logpdf(path[0], 0.2, math.sqrt(1.5))
    for k, (c, d, w) in enumerate(_ei_coefficients(target, times)):
        m, v = (float(z.reshape(-1)[0]) for z in target.moments(float(times[k])))
        m1, v1 = (float(z.reshape(-1)[0]) for z in target.moments(float(times[k + 1])))
        rho = float(sde.alpha(times[k]) / sde.alpha(times[k + 1]))
        x, y = path[k], path[k + 1]
        log_p = stats.norm.logpdf(y, m1 + rho * v1 / v * (x - m), math.sqrt(v1 * (1 - rho**2) / v))
        log_ratio += log_p - stats.norm.logpdf(y, c * x + d, math.sqrt(w))
    se = log_ratio.std() / math.sqrt(n)
    assert abs(log_ratio.mean() - p.total) < 5 * se, (log_ratio.mean(), p.total, se)


@pytest.mark.parametrize("name,options", [("euler_maruyama", {}), ("exponential_integrator", {}), ("ddpm", {}),
                                          ("predictor_corrector", {"n_corrector": 3}), ("ddim", {"eta": 0.5})])
def test_path_kl_bounds_the_marginal_kl(name, options):
    sde = ConstantVP(T=6.0)
    target, *_ = full_gaussian(sde, seed=4)
    for n in [8, 32, 128]:
        p = gaussian_path_kl(SAMPLERS[name], target, time_grid(sde, 1e-3, n), **options)
        m, S = gaussian_output_law_full(SAMPLERS[name], target, time_grid(sde, 1e-3, n), **options)
        mt, St = target.moments(1e-3)
        assert abs(p.marginal - gaussian_kl(mt.numpy(), St.numpy(), m.numpy(), S.numpy())) < 1e-12
        assert torch.allclose(p.mean, m, atol=1e-13) and torch.allclose(p.cov, S, atol=1e-13)
        assert 0 <= p.marginal <= p.total
        assert abs(p.total - p.start - float(p.steps.sum())) < 1e-12 * p.total


def test_path_kl_first_order_and_constant_score_error():
    # Exponential integrator: the discretisation part of the path KL is O(h); a constant score error delta*u adds
    # exactly delta^2 |u|^2 sum_k 2 tanh(A_k / 4) (the cross term vanishes: E[score] = 0 under P_t and the
    # integrator maps the mean exactly), which is delta^2 |u|^2 (T - t0) / 2 up to O(h^2).
    sde = ConstantVP(T=8.0)
    target, *_ = full_gaussian(sde, seed=5)
    u = torch.tensor([0.6, 0.0, -0.8], dtype=torch.float64)
    kls = []
    for n in [256, 512]:
        times = time_grid(sde, 1e-3, n)
        base = gaussian_path_kl(exponential_integrator, target, times)
        kls.append(base.total - base.start)
        shifted = gaussian_path_kl(exponential_integrator, target, times,
                                   score=lambda x, t: target.score(x, t) + 0.3 * u)
        A = (times[:-1] - times[1:]).numpy()
        expected = 0.09 * float(u @ u) * np.sum(2 * np.tanh(A / 4))
        assert abs((shifted.total - base.total) / expected - 1) < 1e-9
        assert abs(expected / (0.09 * (8.0 - 1e-3) / 2) - 1) < (8.0 / n) ** 2 / 24
    assert abs(math.log2(kls[0] / kls[1]) - 1) < 0.02


def test_path_kl_refuses_what_it_cannot_represent():
    sde = ConstantVP(T=3.0)
    target = Gaussian([0.0], [0.5], sde)
    times = time_grid(sde, 1e-2, 5)
    for sampler in [ddim, probability_flow_euler]:
        with pytest.raises(ValueError, match="deterministic"):
            gaussian_path_kl(sampler, target, times)
    with pytest.raises(ValueError, match="final_denoise"):
        gaussian_path_kl(euler_maruyama, target, times, final_denoise=True)
    with pytest.raises(TypeError, match="Gaussian"):
        gaussian_path_kl(euler_maruyama, GaussianMixture([1.0], [[0.0]], [1.0], sde), times)


# -- verification of the affine, coordinate-wise, Markov structure --------------------------------------------------
def test_non_affine_scores_are_detected():
    sde = ConstantVP(T=3.0)
    target = Gaussian([0.0], [0.5], sde)
    mixture = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1], sde)
    times = time_grid(sde, 1e-2, 6)
    for sampler in [euler_maruyama, ddim]:
        with pytest.raises(ValueError, match="affine"):
            gaussian_output_law(sampler, target, times, score=mixture.score)


def test_scores_that_couple_eigen_coordinates_are_detected():
    sde = ConstantVP(T=3.0)
    times = time_grid(sde, 1e-2, 6)
    diagonal = Gaussian([0.0, 0.0], [0.5, 2.0], sde)
    correlated = Gaussian([0.0, 0.0], [[1.0, 0.6], [0.6, 1.0]], sde)
    with pytest.raises(ValueError, match="coordinate"):
        gaussian_output_law(exponential_integrator, diagonal, times, score=correlated.score)
    with pytest.raises(ValueError, match="coordinate"):
        gaussian_output_law_full(exponential_integrator, diagonal, times, score=correlated.score)
    with pytest.raises(ValueError, match="diagonal"):
        gaussian_output_law(exponential_integrator, correlated, times)


def test_stochastic_samplers_with_memory_are_detected():
    def echo_step(run, x, t, t_next):
        dt = t - t_next
        xi = run.draw(x)
        previous = run.memory.get("xi", torch.zeros_like(x))
        run.memory["xi"] = xi
        return x + dt * (0.5 * x + run.score(x, t)) + math.sqrt(dt) * (xi + 0.5 * previous)

    echo = _sampler(echo_step)
    sde = ConstantVP(T=3.0)
    target = Gaussian([0.0], [0.5], sde)
    with pytest.raises(ValueError, match="Markov"):
        gaussian_output_law(echo, target, time_grid(sde, 1e-2, 6))


def test_oracle_inputs_are_validated():
    sde = ConstantVP(T=3.0)
    target = Gaussian([0.0, 1.0], [0.5, 1.0], sde)
    times = time_grid(sde, 1e-2, 4)
    with pytest.raises(TypeError, match="sets"):
        gaussian_output_law(euler_maruyama, target, times, noise=None)
    with pytest.raises(ValueError, match="start_mean"):
        gaussian_output_law_full(euler_maruyama, target, times, start_mean=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="start_cov"):
        gaussian_output_law_full(euler_maruyama, target, times, start_cov=np.ones((3, 3)))
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_output_law_full(euler_maruyama, target, times, start_cov=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="semi-definite"):
        gaussian_output_law_full(euler_maruyama, target, times, start_cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="non-negative"):
        gaussian_output_law(euler_maruyama, target, times, start_var=-1.0)
    with pytest.raises(TypeError, match="callable"):
        gaussian_output_law_full(euler_maruyama, target, times, score=3.0)
    with pytest.raises(ValueError, match="decreasing"):
        gaussian_path_kl(euler_maruyama, target, times.flip(0))


def test_standard_normal_step_kl_is_the_oracles_per_step_term():
    """On N(0, I) data every per-step term of the grid path KL of the exponential integrator is the closed form."""
    from diffnotes.oracle import standard_normal_step_kl
    from diffnotes.samplers import exponential_integrator, time_grid
    from diffnotes.sde import ConstantVP
    from diffnotes.targets import Gaussian

    sde = ConstantVP(T=12.0)
    for D, n, spacing in [(1, 16, "uniform"), (3, 64, "log")]:
        grid = time_grid(sde, 1e-3, n, spacing)
        run = gaussian_path_kl(exponential_integrator, Gaussian(np.zeros(D), np.eye(D), sde=sde), grid)
        steps = (grid[:-1] - grid[1:]).numpy()
        # round-off of either side ~ eps / A for the smallest step A ~ 1e-4
        np.testing.assert_allclose(run.steps.numpy(), standard_normal_step_kl(steps, D), rtol=1e-10)
    # small steps: D A^2 / 4 to leading order
    assert standard_normal_step_kl(1e-3, 2) == pytest.approx(2 * 1e-6 / 4, rel=2e-3)
    with pytest.raises(ValueError, match="positive"):
        standard_normal_step_kl([0.1, 0.0])
    with pytest.raises(ValueError):
        standard_normal_step_kl(0.1, 0)
