"""Samplers: orders on the Gaussian oracle, the DDPM grid, reproducibility, the exact oracle, validation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffnotes.oracle import gaussian_output_law
from diffnotes.samplers import (
    DETERMINISTIC,
    SAMPLERS,
    ddim,
    ddpm,
    dpm_solver_pp,
    euler_maruyama,
    exponential_integrator,
    probability_flow_euler,
    probability_flow_heun,
    time_grid,
)
from diffnotes.sde import ConstantVP, DiscreteVP, LinearVP
from diffnotes.targets import Gaussian, GaussianMixture

STEPS = [32, 64, 128, 256]


def slope(ns, errs):
    return np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.parametrize("sde", [ConstantVP(T=10.0), LinearVP()], ids=repr)
@pytest.mark.parametrize(
    "sampler,order",
    [(probability_flow_euler, 1), (ddim, 1), (probability_flow_heun, 2), (dpm_solver_pp, 2)],
    ids=["pf-euler", "ddim", "pf-heun", "dpm-solver++"],
)
def test_deterministic_orders_on_the_gaussian_oracle(sde, sampler, order):
    # Gaussian data and the exact score: the sampler is linear, its output variance exact. The exact flow maps
    # N(0, 1) at T to variance v(t0)/v(T), v(t) = alpha^2 sigma^2 + h.
    target = Gaussian([0.0], [0.25], sde)
    t0 = 1e-3
    exact = float(target.moments(t0)[1] / target.moments(sde.T)[1])
    errs = [abs(float(gaussian_output_law(sampler, target, time_grid(sde, t0, n, "logsnr"))[1]) - exact)
            for n in STEPS]
    assert abs(slope(STEPS, errs) + order) < 0.15, errs


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n not in DETERMINISTIC])
def test_stochastic_samplers_converge_to_the_target_law(name):
    sde = ConstantVP(T=10.0)
    target = Gaussian([1.0], [0.25], sde)
    m_true, v_true = target.moments(1e-3)
    errs = []
    for n in STEPS:
        m, v = gaussian_output_law(SAMPLERS[name], target, time_grid(sde, 1e-3, n, "logsnr"))
        errs.append(abs(float(v) - float(v_true[0, 0])) + abs(float(m) - float(m_true[0])))
    assert errs[-1] < 0.01 and slope(STEPS, errs) < -0.8, errs


def test_oracle_agrees_with_monte_carlo():
    sde = ConstantVP(T=5.0)
    target = Gaussian([1.0, -0.5], [0.25, 2.0], sde)
    times = time_grid(sde, 1e-2, 50)
    gen = torch.Generator().manual_seed(0)
    n = 200000
    for sampler in [euler_maruyama, ddpm]:
        m, v = gaussian_output_law(sampler, target, times)
        x = sampler(target.score, (n, 2), times, sde=sde, generator=gen)
        assert torch.all((x.mean(0) - m).abs() < 5 * torch.sqrt(v / n))
        assert torch.all((x.var(0) - v).abs() < 5 * v * math.sqrt(2 / n))


def test_ddpm_on_the_discrete_grid_is_ho_et_al_algorithm_2():
    sde = DiscreteVP.ddpm()
    target = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1], sde)
    k = 500  # one step from node k to node k - 1
    times = torch.tensor([k / 1000, (k - 1) / 1000], dtype=torch.float64)
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    z = torch.randn(7, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = ddpm(target.score, x, times, sde=sde, noise=lambda like: z)
    beta, abar = sde.betas[k - 1], sde.alphas_cumprod
    eps = -torch.sqrt(1 - abar[k - 1]) * target.score(x, k / 1000)
    mean = (x - beta / torch.sqrt(1 - abar[k - 1]) * eps) / torch.sqrt(1 - beta)
    var = (1 - abar[k - 2]) / (1 - abar[k - 1]) * beta
    assert torch.allclose(out, mean + torch.sqrt(var) * z, atol=1e-12)


def test_dpm_solver_pp_first_order_is_ddim():
    sde = ConstantVP(T=3.0)
    target = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1], sde)
    times = time_grid(sde, 1e-2, 20, "logsnr")
    start = torch.randn(50, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = dpm_solver_pp(target.score, start, times, sde=sde, order=1)
    assert torch.allclose(a, ddim(target.score, start, times, sde=sde), atol=1e-12)
    with pytest.raises(ValueError, match="order"):
        dpm_solver_pp(target.score, start, times, sde=sde, order=3)


def test_final_denoise_is_the_ddpm_step_to_time_zero():
    # DDPM's step to alpha' = 1 is Tweedie's estimate; final_denoise appends exactly that step.
    sde = ConstantVP(T=3.0)
    target = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1], sde)
    times = time_grid(sde, 1e-2, 10)
    start = torch.randn(20, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x, traj = ddim(target.score, start, times, sde=sde, final_denoise=True, return_trajectory=True)
    before = traj[-2]
    expected = (before + sde.h(1e-2) * target.score(before, 1e-2)) / sde.alpha(1e-2)
    assert traj.shape == (12, 20, 1) and torch.allclose(x, expected, atol=1e-12)


def test_ddim_with_eta_one_is_ddpm():
    sde = ConstantVP(T=3.0)
    target = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1], sde)
    times = time_grid(sde, 1e-2, 20)
    a = ddim(target.score, (100, 1), times, sde=sde, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = ddpm(target.score, (100, 1), times, sde=sde, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-12)


def test_backward_sde_from_the_exact_prior_reproduces_the_marginals():
    # T1 at small size: start at exact draws of P_T, run Euler-Maruyama with the exact score, compare with P_t.
    sde = ConstantVP(T=2.0)
    target = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [0.1, 0.2], sde)
    gen = torch.Generator().manual_seed(4)
    x_T = target.sample_marginal(4000, sde.T, gen)
    times = time_grid(sde, 0.1, 400)
    x = euler_maruyama(target.score, x_T, times, sde=sde, generator=gen)
    grid = np.linspace(-6, 6, 3001)
    cdf = np.cumsum(np.exp(target.log_prob(torch.as_tensor(grid)[:, None], 0.1).numpy())) * (grid[1] - grid[0])
    assert stats.kstest(x.numpy().ravel(), lambda q: np.interp(q, grid, cdf)).pvalue > 1e-3


def test_trajectories_generators_and_noise_hooks():
    sde = ConstantVP(T=3.0)
    target = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1], sde)
    times = time_grid(sde, 1e-2, 10)
    for name, sampler in SAMPLERS.items():
        a, traj = sampler(target.score, (5, 2), times, sde=sde, generator=torch.Generator().manual_seed(0),
                          return_trajectory=True)
        b = sampler(target.score, (5, 2), times, sde=sde, generator=torch.Generator().manual_seed(0))
        assert traj.shape == (11, 5, 2) and torch.equal(traj[-1], a) and torch.equal(a, b), name
    # A noise hook that replays the generator's draws gives the same result.
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    replay = torch.Generator().manual_seed(8)
    hooked = exponential_integrator(target.score, x0, times, sde=sde,
                                    noise=lambda like: torch.randn(like.shape, generator=replay, dtype=like.dtype))
    plain = exponential_integrator(target.score, x0, times, sde=sde, generator=torch.Generator().manual_seed(8))
    assert torch.equal(hooked, plain)


def test_time_grids():
    sde = ConstantVP(T=10.0)
    for spacing in ["uniform", "quadratic", "log", "logsnr"]:
        g = time_grid(sde, 1e-3, 17, spacing)
        assert g.shape == (18,) and g[0] == 10.0 and g[-1] == 1e-3 and torch.all(torch.diff(g) < 0)
    lam = sde.log_snr(time_grid(sde, 1e-3, 8, "logsnr"))
    assert torch.allclose(torch.diff(lam), torch.diff(lam)[0].expand(8))


def test_bad_inputs_are_refused():
    sde = ConstantVP(T=1.0)
    target = Gaussian([0.0], [1.0], sde)
    with pytest.raises(ValueError, match="0 < t0 < T"):
        time_grid(sde, 1.0, 10)
    with pytest.raises(ValueError, match="0 < t0 < T"):
        time_grid(sde, 0.0, 10)
    for bad in [0, -3, 2.5, True]:
        with pytest.raises(ValueError, match="n_steps"):
            time_grid(sde, 0.1, bad)
    with pytest.raises(ValueError, match="spacing"):
        time_grid(sde, 0.1, 10, "cubic")
    with pytest.raises(ValueError, match="decreasing"):
        euler_maruyama(target.score, (3, 1), torch.tensor([0.1, 0.5, 1.0]), sde=sde)
    with pytest.raises(ValueError, match="horizon"):
        euler_maruyama(target.score, (3, 1), torch.tensor([2.0, 0.1]), sde=sde)
    with pytest.raises(ValueError, match="t0"):
        euler_maruyama(target.score, (3, 1), torch.tensor([1.0, 0.0]), sde=sde)
    with pytest.raises(ValueError, match="at least 2"):
        euler_maruyama(target.score, (3, 1), torch.tensor([1.0]), sde=sde)
    with pytest.raises(ValueError, match=r"shape \(n, 1\)"):
        euler_maruyama(target.score, (3, 2), torch.tensor([1.0, 0.1]), sde=sde)
    with pytest.raises(ValueError, match="shaped like x"):
        euler_maruyama(lambda x, t: x[:, :1], (3, 2), torch.tensor([1.0, 0.1]), sde=sde)
    with pytest.raises(ValueError, match="eta"):
        ddim(target.score, (3, 1), torch.tensor([1.0, 0.1]), sde=sde, eta=-0.5)
    with pytest.raises(TypeError, match="callable"):
        euler_maruyama(None, (3, 1), torch.tensor([1.0, 0.1]), sde=sde)
    with pytest.raises(FloatingPointError, match="non-finite"):
        euler_maruyama(lambda x, t: x * 1e300, (3, 1), torch.tensor([1.0, 0.5, 0.1]), sde=sde)
