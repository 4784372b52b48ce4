"""The forward process: schedules, transition kernel, discrete grid, input validation."""

import math

import numpy as np
import pytest
import torch

from diffnotes.sde import ConstantVP, CosineVP, DiscreteVP, LinearVP

SDES = [ConstantVP(), ConstantVP(T=3.0, g0=2.0), LinearVP(), CosineVP(), DiscreteVP.ddpm()]


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_alpha_h_and_integral(sde):
    t = torch.linspace(1e-3, sde.T, 50, dtype=torch.float64)
    G = sde.integral(t)
    # G is the integral of g: compare with the trapezoid rule on a fine grid.
    fine = torch.linspace(0, sde.T, 200001, dtype=torch.float64)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64),
                     torch.cumsum(0.5 * (sde.g(fine)[1:] + sde.g(fine)[:-1]) * torch.diff(fine), 0)])
    ref = torch.as_tensor(np.interp(t.numpy(), fine.numpy(), cum.numpy()))
    tol = 1e-5 if not isinstance(sde, DiscreteVP) else 5e-3  # g jumps on the DDPM grid
    assert torch.allclose(G, ref, rtol=tol, atol=tol)
    assert torch.allclose(sde.alpha(t) ** 2 + sde.h(t), torch.ones_like(t), atol=1e-14)
    assert torch.allclose(sde.inverse_integral(G), t, atol=1e-10)
    assert torch.allclose(sde.time_of_log_snr(sde.log_snr(t)), t, atol=1e-9)


def test_constant_schedule_is_the_review_ou():
    sde = ConstantVP()
    t = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    assert torch.allclose(sde.alpha(t), torch.exp(-t / 2))
    assert torch.allclose(sde.h(t), 1 - torch.exp(-t))


def test_discrete_grid_matches_cumulative_products():
    betas = np.linspace(1e-4, 0.02, 1000)
    sde = DiscreteVP(betas)
    k = torch.arange(1, 1001, dtype=torch.float64)
    assert torch.allclose(sde.alpha(k / 1000) ** 2, torch.as_tensor(np.cumprod(1 - betas)), rtol=1e-12)
    # The linear VP SDE is the continuous limit of this grid: the integrals of g differ by the half-step offset of
    # the betas (about 0.01) plus sum(beta^2)/2 (about 0.07) from -log(1 - beta) = beta + beta^2/2 + ...
    gap = (sde.integral(k / 1000) - LinearVP().integral(k / 1000)).abs().max()
    assert 0.03 < float(gap) < 0.1


def test_discrete_timesteps_follow_diffusers_spacings():
    sde = DiscreteVP.ddpm()
    trailing = sde.timesteps(10, "trailing") * 1000 - 1
    assert trailing.round().long().tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    leading = sde.timesteps(10, "leading") * 1000 - 1
    assert leading.round().long().tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    with pytest.raises(ValueError, match="spacing"):
        sde.timesteps(10, "linspace")
    with pytest.raises(ValueError, match="n_steps"):
        sde.timesteps(0)


def test_marginal_sample_has_the_kernel_moments():
    sde = ConstantVP()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200000, 1), 2.0, dtype=torch.float64)
    xt, eps = sde.marginal_sample(x0, 0.7, gen)
    a, h = math.exp(-0.35), 1 - math.exp(-0.7)
    se = math.sqrt(h / 200000)
    assert abs(float(xt.mean()) - 2 * a) < 5 * se
    assert abs(float(xt.var()) - h) < 5 * h * math.sqrt(2 / 200000)
    assert torch.allclose(xt, a * x0 + math.sqrt(h) * eps)


@pytest.mark.parametrize("t", [0.0, -1.0, 10.5, float("nan")])
def test_times_outside_the_horizon_are_refused(t):
    with pytest.raises(ValueError, match=r"t must|finite"):
        ConstantVP(T=10.0).check_time(t)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="horizon"):
        ConstantVP(T=0.0)
    with pytest.raises(ValueError, match="T < 1"):
        CosineVP(T=1.0)
    with pytest.raises(ValueError, match="beta"):
        DiscreteVP([0.1, 1.0])
    with pytest.raises(ValueError, match="beta_min"):
        LinearVP(beta_min=0.0)
    with pytest.raises(ValueError, match="shape"):
        ConstantVP().marginal_sample(torch.zeros(3), 0.5)


def test_forward_paths_have_the_exact_marginals():
    sde = ConstantVP(T=4.0)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.full((100000, 1), 3.0, dtype=torch.float64)
    times = torch.tensor([0.0, 0.1, 1.0, 4.0], dtype=torch.float64)
    paths = sde.forward_path(x0, times, gen)
    assert paths.shape == (4, 100000, 1) and torch.equal(paths[0], x0)
    for k in range(1, 4):
        a, h = float(sde.alpha(times[k])), float(sde.h(times[k]))
        assert abs(float(paths[k].mean()) - 3 * a) < 5 * math.sqrt(h / 1e5)
        assert abs(float(paths[k].var()) - h) < 5 * h * math.sqrt(2e-5)
    with pytest.raises(ValueError, match="increasing"):
        sde.forward_path(x0, torch.tensor([1.0, 0.5]))
