"""Stochastic localization: the time change, posterior means, the sampler, the exact DDPM identity, validation."""

import math

import numpy as np
import pytest
import torch

from diffnotes.localization import (
    localization_grid,
    mixture_posterior_mean,
    ou_path_to_sl,
    ou_time,
    ou_to_sl,
    posterior_mean_from_score,
    sl_path_to_ou,
    sl_scale,
    sl_time,
    sl_to_ou,
    stochastic_localization,
)
from diffnotes.samplers import ddpm, euler_maruyama, exponential_integrator, time_grid
from diffnotes.sde import ConstantVP, CosineVP, LinearVP
from diffnotes.targets import Gaussian, GaussianMixture

SDES = [ConstantVP(T=10.0), LinearVP(), CosineVP()]


def mixture(sde=None):
    return GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [1.5, 1.0]], [[[0.3, 0.1], [0.1, 0.5]], [[0.4, 0.0], [0.0, 0.2]]],
                           sde=sde)


def closed_form_posterior_mean(target, y, s):
    """E[x | s x + sqrt(s) g = y] for a Gaussian mixture, directly in SL coordinates (s > 0)."""
    D = target.dim
    eye = torch.eye(D, dtype=torch.float64)
    logw, means = [], []
    for w, mu, S in zip(target.weights, target.means, target.covs, strict=True):
        C = s**2 * S + s * eye
        r = y - s * mu
        logw.append(math.log(w) - 0.5 * (r @ torch.linalg.inv(C) * r).sum(1) - 0.5 * torch.logdet(C))
        means.append(mu + r @ torch.linalg.solve(s * S + eye, S).T)
    w = torch.softmax(torch.stack(logw, 1), 1)
    return torch.einsum("nk,knd->nd", w, torch.stack(means))


def shared_noise(xi):
    it = iter(xi)
    return lambda like: next(it)


# -- the time change -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_time_change_is_inverted_and_matches_the_snr(sde):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64) * sde.T
    s = sl_time(t, sde)
    assert torch.allclose(s, sde.alpha(t) ** 2 / sde.h(t), rtol=1e-12, atol=0)
    assert torch.all(torch.diff(s) < 0)  # SL time runs forward as OU time runs backward
    assert torch.allclose(ou_time(s, sde), t, rtol=1e-10, atol=0)
    assert torch.allclose(sl_scale(t, sde), torch.sqrt(s / sde.h(t)), rtol=1e-12, atol=0)


def test_constant_schedule_closed_forms():
    t = torch.tensor([1e-3, 0.5, 3.0, 20.0], dtype=torch.float64)
    assert torch.allclose(sl_time(t), 1 / torch.expm1(t), rtol=1e-13, atol=0)
    assert torch.allclose(ou_time(1 / torch.expm1(t)), t, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_coordinates_round_trip_and_paths(sde):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    t = sde.T * torch.rand(7, generator=gen, dtype=torch.float64).clamp(min=0.01)
    y, s = ou_to_sl(x, t, sde)
    x2, t2 = sl_to_ou(y, s, sde)
    assert torch.allclose(x2, x, rtol=1e-10) and torch.allclose(t2, t, rtol=1e-10)
    times = torch.linspace(sde.T, 0.01 * sde.T, 5, dtype=torch.float64)
    path = torch.randn(5, 4, 2, generator=gen, dtype=torch.float64)
    s_grid, ypath = ou_path_to_sl(path, times, sde)
    assert torch.all(torch.diff(s_grid) > 0)
    assert torch.allclose(ypath[2], ou_to_sl(path[2], times[2], sde)[0])
    times2, back = sl_path_to_ou(ypath, s_grid, sde)
    assert torch.allclose(back, path, rtol=1e-10) and torch.allclose(times2, times, rtol=1e-10)


def test_forward_marginals_map_to_the_sl_channel():
    # c(t) X_t has exactly the law of s x + sqrt(s) g: moments s E[x] and s^2 Cov(x) + s I.
    sde = ConstantVP(T=10.0)
    target = mixture(sde)
    gen = torch.Generator().manual_seed(1)
    n = 40000
    for t in [0.05, 0.7, 3.0]:
        y, s = ou_to_sl(target.sample_marginal(n, t, gen), t, sde)
        s = float(s)
        cov = s**2 * target.covariance() + s * torch.eye(2, dtype=torch.float64)
        z_mean = (y.mean(0) - s * target.mean()) / torch.sqrt(torch.diag(cov) / n)
        z_var = (y.var(0) - torch.diag(cov)) / (torch.diag(cov) * math.sqrt(3.0 / n))  # kurtosis of a mixture < 3
        assert torch.all(z_mean.abs() < 4) and torch.all(z_var.abs() < 4), (t, z_mean, z_var)


# -- posterior means ---------------------------------------------------------------------------------------------
def test_mixture_posterior_mean_matches_the_closed_form_and_tweedie_for_the_sl_channel():
    target = mixture()
    m = mixture_posterior_mean(target)
    gen = torch.Generator().manual_seed(2)
    for s in [1e-8, 1e-3, 0.3, 5.0, 1e3]:
        y = s * target.sample(64, gen) + math.sqrt(s) * torch.randn(64, 2, generator=gen, dtype=torch.float64)
        got = m(y, torch.full((64,), s, dtype=torch.float64))
        assert torch.allclose(got, closed_form_posterior_mean(target, y, s), atol=1e-9, rtol=1e-9), s
        # Tweedie for the channel with noise variance s: m_s(y) = y/s + grad log q_s(y), q_s the law of Y_s.
        eye = torch.eye(2, dtype=torch.float64)
        q = GaussianMixture(target.weights, s * target.means, s**2 * target.covs + s * eye)
        yy = y.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(q.data_log_prob(yy).sum(), yy)
        assert torch.allclose(got, y / s + grad, atol=1e-7 * max(1.0, 1 / s), rtol=1e-9), s
    # s = 0: no information, the prior mean; rows may mix SNRs.
    y = torch.zeros(3, 2, dtype=torch.float64)
    got = m(y, torch.tensor([0.0, 0.0, 1e-12], dtype=torch.float64))
    assert torch.allclose(got, target.mean().expand(3, 2), atol=1e-6)


def test_posterior_mean_from_score_uses_any_schedule():
    # The posterior mean depends on the SNR only: the same m_s from the scores of two schedules.
    a, b = mixture(ConstantVP(T=12.0)), mixture(LinearVP())
    ma, mb = posterior_mean_from_score(a.score, a.sde), posterior_mean_from_score(b.score, b.sde)
    y = torch.randn(10, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for s in [0.05, 2.0, 50.0]:
        st = torch.full((10,), s, dtype=torch.float64)
        assert torch.allclose(ma(y, st), mb(y, st), atol=1e-10)


# -- the sampler ---------------------------------------------------------------------------------------------------
def gaussian_chain_moments(mu, var, s_grid, method):
    """Exact mean and variance of the SL chain for 1-D Gaussian data N(mu, var), whose posterior mean is affine:
    m_s(y) = mu + k(s) (y - s mu), k(s) = var / (s var + 1).  Each step is Y' = A Y + B + C xi."""
    mean, v = 0.0, 0.0
    for s, s2 in zip(s_grid[:-1], s_grid[1:], strict=True):
        d, k, k2 = s2 - s, var / (s * var + 1), var / (s2 * var + 1)
        drift0 = mu - k * s * mu  # m_s(Y) = drift0 + k Y
        if method == "euler":
            A, B, C = 1 + d * k, d * drift0, math.sqrt(d)
        else:  # Heun: the corrector evaluates m at Y + d m_s(Y) + sqrt(d) xi
            A = 1 + 0.5 * d * (k + k2 * (1 + d * k))
            B = 0.5 * d * (drift0 + mu - k2 * s2 * mu + k2 * d * drift0)
            C = math.sqrt(d) * (1 + 0.5 * d * k2)
        mean, v = A * mean + B, A**2 * v + C**2
    return mean, v


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2)])
def test_sl_sampler_is_the_chain_and_converges_to_the_channel_law(method, order):
    mu, var = 1.0, 0.5
    target = Gaussian([mu], [var])
    m = mixture_posterior_mean(target)
    s_grid = localization_grid(20.0, 60, 1e-3).tolist()
    n = 40000
    y = stochastic_localization(m, (n, 1), s_grid, generator=torch.Generator().manual_seed(4), method=method)[:, 0]
    mean, v = gaussian_chain_moments(mu, var, s_grid, method)
    assert abs(float(y.mean()) - mean) < 4 * math.sqrt(v / n)
    assert abs(float(y.var()) - v) < 4 * v * math.sqrt(2 / n)
    # The chain's law converges to that of s x + sqrt(s) g, at first order (Euler) or second order (Heun).
    S = 20.0
    exact_var = S**2 * var + S
    errs = [abs(gaussian_chain_moments(mu, var, localization_grid(S, k, 1e-3).tolist(), method)[1] - exact_var)
            for k in (200, 400, 800)]
    slopes = -np.diff(np.log(errs)) / math.log(2)
    assert np.all(np.abs(slopes - order) < 0.1), slopes
    final_mean = gaussian_chain_moments(mu, var, localization_grid(S, 800, 1e-3).tolist(), method)[0]
    assert abs(final_mean - S * mu) < 1e-10


def test_mixture_sl_marginal_means():
    target = mixture()
    m = mixture_posterior_mean(target)
    grid = torch.cat([localization_grid(1.0, 100, 1e-4), torch.linspace(1, 10, 101, dtype=torch.float64)[1:]])
    n = 10000
    _, path = stochastic_localization(m, (n, 2), grid, generator=torch.Generator().manual_seed(5),
                                      return_trajectory=True)
    for s in [1.0, 10.0]:
        Y = path[int(torch.argmin((grid - s).abs()))]
        cov = s**2 * target.covariance() + s * torch.eye(2, dtype=torch.float64)
        z = (Y.mean(0) - s * target.mean()) / torch.sqrt(torch.diag(cov) / n)
        assert torch.all(z.abs() < 4), (s, z)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_ddpm_ancestral_step_is_exactly_the_sl_euler_step(sde):
    # Same start, same Gaussian draws: the DDPM path mapped by Y = c(t) X is the SL Euler path, to round-off.
    target = mixture(sde)
    m = mixture_posterior_mean(target)
    gen = torch.Generator().manual_seed(6)
    n, N = 300, 150
    times = time_grid(sde, 1e-3 * sde.T, N, "logsnr")
    xi = torch.randn(N, n, 2, generator=gen, dtype=torch.float64)
    xT = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    _, path = ddpm(target.score, xT, times, sde=sde, noise=shared_noise(xi), return_trajectory=True)
    s, ypath = ou_path_to_sl(path, times, sde)
    _, sl_path = stochastic_localization(m, ypath[0], s, noise=shared_noise(xi), return_trajectory=True)
    scale = ypath.abs().amax(dim=(1, 2), keepdim=True)
    assert float(((sl_path - ypath).abs() / scale).max()) < 1e-10


@pytest.mark.parametrize("sampler", [exponential_integrator, euler_maruyama], ids=["exp-int", "euler-maruyama"])
def test_score_freezing_steps_agree_with_sl_to_first_order(sampler):
    # The typical (median) path-wise gap between the mapped OU path and the SL Euler path halves with the step.
    sde = ConstantVP(T=10.0)
    target = mixture(sde)
    m = mixture_posterior_mean(target)
    gen = torch.Generator().manual_seed(7)
    n, gaps = 400, []
    for N in (100, 200, 400):
        times = time_grid(sde, 1e-3, N, "logsnr")
        xi = torch.randn(N, n, 2, generator=gen, dtype=torch.float64)
        xT = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        x = sampler(target.score, xT, times, sde=sde, noise=shared_noise(xi))
        s = sl_time(times, sde)
        y = stochastic_localization(m, ou_to_sl(xT, times[0], sde)[0], s, noise=shared_noise(xi))
        gaps.append(float(torch.median(torch.linalg.norm(y / s[-1] - x / sde.alpha(times[-1]), dim=1))))
    slopes = -np.diff(np.log(gaps)) / math.log(2)
    assert np.all(np.abs(slopes - 1) < 0.25), (gaps, slopes)


def test_sampler_options_and_reproducibility():
    target = mixture()
    m = mixture_posterior_mean(target)
    grid = localization_grid(100.0, 30, 1e-3)
    a = stochastic_localization(m, (50, 2), grid, generator=torch.Generator().manual_seed(8))
    b, path = stochastic_localization(m, (50, 2), grid, generator=torch.Generator().manual_seed(8),
                                      return_trajectory=True)
    assert torch.equal(a, b) and path.shape == (31, 50, 2) and torch.equal(path[0], torch.zeros(50, 2).double())
    c, path = stochastic_localization(m, (50, 2), grid, generator=torch.Generator().manual_seed(8),
                                      return_trajectory=True, final_denoise=True)
    assert path.shape == (32, 50, 2) and torch.allclose(c, m(a, torch.full((50,), 100.0, dtype=torch.float64)))
    calls = []

    def noise(like):
        calls.append(1)
        return torch.zeros_like(like)

    stochastic_localization(m, (5, 2), grid, noise=noise)
    assert len(calls) == 30
    stochastic_localization(m, (5, 2), grid, noise=noise, method="heun")  # one draw a step, shared by both stages
    assert len(calls) == 60


# -- validation -------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    target = mixture()
    m = mixture_posterior_mean(target)
    grid = localization_grid(10.0, 5)
    with pytest.raises(ValueError, match="strictly increasing"):
        stochastic_localization(m, (4, 2), grid.flip(0))
    with pytest.raises(ValueError, match="s >= 0"):
        stochastic_localization(m, torch.zeros(4, 2, dtype=torch.float64), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        stochastic_localization(m, (4, 2), torch.tensor([0.0, math.inf]))
    with pytest.raises(ValueError, match="at least 2"):
        stochastic_localization(m, (4, 2), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="Y_0 = 0"):
        stochastic_localization(m, torch.ones(4, 2, dtype=torch.float64), grid)
    with pytest.raises(ValueError, match="s_grid\\[0\\] == 0"):
        stochastic_localization(m, (4, 2), grid[1:])
    with pytest.raises(ValueError, match="shape"):
        stochastic_localization(m, (4, 2, 1), grid)
    with pytest.raises(ValueError, match="shaped like"):
        stochastic_localization(lambda y, s: y[:, :1], (4, 2), grid)
    with pytest.raises(ValueError, match="shaped like"):
        stochastic_localization(m, (4, 2), grid, noise=lambda like: torch.zeros(1))
    with pytest.raises(TypeError):
        stochastic_localization("m", (4, 2), grid)
    with pytest.raises(ValueError, match="method"):
        stochastic_localization(m, (4, 2), grid, method="rk4")
    with pytest.raises(ValueError, match="> 0"):
        sl_time(0.0)
    with pytest.raises(ValueError, match="> 0"):
        ou_time(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one time per state"):
        ou_path_to_sl(torch.zeros(3, 2, 2, dtype=torch.float64), [3.0, 2.0])
    with pytest.raises(ValueError, match=r"\(K, n, D\)"):
        ou_path_to_sl(torch.zeros(3, 2, dtype=torch.float64), [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="s_min"):
        localization_grid(1.0, 10, s_min=2.0)
    with pytest.raises(ValueError, match="n_steps"):
        localization_grid(1.0, 0)
    with pytest.raises(ValueError, match="prior mean"):
        posterior_mean_from_score(target.score, target.sde)(torch.zeros(2, 2, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="horizon"):
        posterior_mean_from_score(target.score, target.sde)(torch.zeros(2, 2, dtype=torch.float64), 1e-9)
    with pytest.raises(ValueError, match=">= 0"):
        m(torch.zeros(2, 2, dtype=torch.float64), -1.0)
    with pytest.raises(TypeError):
        mixture_posterior_mean("not a mixture")
