"""Tests of diffnotes.inpainting: exact posteriors against brute force, replacement where it is exact, RePaint, DPS."""

import numpy as np
import pytest
import torch

from diffnotes import inpainting as ip
from diffnotes.oracle import gaussian_output_law_full
from diffnotes.samplers import ddpm, time_grid
from diffnotes.sde import ConstantVP
from diffnotes.targets import Gaussian, GaussianMixture

SDE = ConstantVP(T=8.0)


def _cov(D, rho=0.8):
    i = np.arange(D)
    return rho ** np.abs(i[:, None] - i[None])


def _grid(lo, hi, m):
    u = torch.linspace(lo, hi, m, dtype=torch.float64)
    a, b = torch.meshgrid(u, u, indexing="ij")
    return a.reshape(-1), b.reshape(-1), float(u[1] - u[0])


# -- exact posteriors -------------------------------------------------------------------
def test_gaussian_posterior_matches_brute_force_conditional():
    """Known x_0, missing (x_1, x_2): mean and covariance of the normalised joint density on a fine grid."""
    mean = np.array([0.3, -0.5, 1.0])
    cov = np.array([[1.0, 0.6, 0.3], [0.6, 1.5, -0.4], [0.3, -0.4, 0.8]])
    mask = torch.tensor([True, False, False])
    y = torch.tensor([1.2, 0.0, 0.0], dtype=torch.float64)
    m, C = ip.gaussian_posterior(mean, cov, mask, y)
    a, b, du = _grid(-8.0, 8.0, 801)
    x = torch.stack([torch.full_like(a, 1.2), a, b], 1)
    joint = torch.distributions.MultivariateNormal(torch.tensor(mean), torch.tensor(cov)).log_prob(x).exp()
    w = joint / joint.sum()
    z = torch.stack([a, b], 1)
    m_bf = (w[:, None] * z).sum(0)
    C_bf = ((z - m_bf).T * w) @ (z - m_bf)
    # Riemann sums of a smooth density decaying like a Gaussian on a 0.02 grid over +-8: error far below 1e-8
    assert torch.allclose(m, m_bf, atol=1e-8)
    assert torch.allclose(C, C_bf, atol=1e-8)


def test_gaussian_posterior_of_many_images():
    mean, cov = np.zeros(4), _cov(4)
    mask = torch.tensor([True, False, True, False])
    y = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m, C = ip.gaussian_posterior(mean, cov, mask, y)
    assert m.shape == (5, 2) and C.shape == (2, 2)
    m1, C1 = ip.gaussian_posterior(mean, cov, mask, y[3])
    assert torch.allclose(m[3], m1) and torch.allclose(C, C1)


def test_mixture_posterior_density_matches_brute_force():
    """p(x_U | y) = p(y, x_U) / int p(y, x_U) dx_U, the integral a Riemann sum on a fine grid."""
    target = GaussianMixture([0.5, 0.3, 0.2], [[0.0, 0.0, 0.0], [2.0, -1.0, 1.0], [-1.0, 2.0, -2.0]],
                             [np.eye(3), _cov(3, 0.7), 0.5 * np.eye(3)], sde=SDE)
    mask = torch.tensor([False, True, False])
    y = torch.tensor([0.0, 0.4, 0.0], dtype=torch.float64)
    post = ip.exact_posterior(target, mask, y)
    assert post.dim == 2 and post.n_components == 3
    a, b, du = _grid(-9.0, 9.0, 721)
    x = torch.stack([a, torch.full_like(a, 0.4), b], 1)
    log_joint = target.data_log_prob(x)
    log_norm = torch.logsumexp(log_joint, 0) + 2 * np.log(du)
    bf = log_joint - log_norm
    exact = post.data_log_prob(torch.stack([a, b], 1))
    keep = exact > -20  # compare where the density is not negligible
    assert torch.allclose(exact[keep], bf[keep], atol=1e-6)


def test_exact_posterior_of_a_gaussian_is_a_gaussian():
    g = Gaussian(np.zeros(4), _cov(4), sde=SDE)
    mask = torch.tensor([True, True, False, False])
    y = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    post = ip.exact_posterior(g, mask, y)
    m, C = ip.gaussian_posterior(np.zeros(4), _cov(4), mask, y)
    assert isinstance(post, Gaussian)
    assert torch.allclose(post.means[0], m) and torch.allclose(post.covs[0], C)


# -- replacement and RePaint -------------------------------------------------------------------
def _block_case():
    """Known block (0, 1) independent of the missing block (2, 3): the posterior is the missing block's marginal."""
    cov = np.zeros((4, 4))
    cov[:2, :2] = _cov(2, 0.6)
    cov[2:, 2:] = np.array([[1.0, 0.7], [0.7, 0.9]])
    mean = np.array([0.5, -0.5, 1.0, -1.0])
    return Gaussian(mean, cov, sde=SDE), mean, cov


def test_replacement_is_exact_when_missing_coordinates_are_independent():
    """The missing block evolves by DDPM on its own marginal: its exact output law (oracle) must be reproduced."""
    target, mean, cov = _block_case()
    mask = torch.tensor([True, True, False, False])
    times = time_grid(SDE, 1e-3, 40, "quadratic")
    n = 20000
    y = torch.tensor([3.0, -2.0, 0.0, 0.0], dtype=torch.float64).expand(n, 4).clone()
    x = ip.replacement(target.score, y, mask, times, sde=SDE, generator=1)
    assert torch.equal(x[:, mask], y[:, mask])
    marginal = Gaussian(mean[2:], cov[2:, 2:], sde=SDE)
    m_exact, C_exact = gaussian_output_law_full(ddpm, marginal, times)
    v_exact = torch.diagonal(C_exact)
    z = x[:, ~mask]
    # sample mean: standard error sqrt(v / n) ~ 0.007; 5 standard errors
    assert torch.allclose(z.mean(0), m_exact.to(z), atol=5 * float(v_exact.max().sqrt()) / n**0.5)
    # sample variance of a Gaussian: standard error v sqrt(2 / n) ~ 0.01; 5 standard errors
    assert torch.allclose(z.var(0), v_exact.to(z), atol=5 * float(v_exact.max()) * (2 / n) ** 0.5)
    # sample covariance entry: standard error at most sqrt(v1 v2 (1 + rho^2) / n) <= v sqrt(2 / n); 5 of them
    assert abs(float(torch.cov(z.T)[0, 1] - C_exact[0, 1])) < 5 * float(v_exact.max()) * (2 / n) ** 0.5
    # and the output law is the posterior up to the sampler's discretisation (the posterior is the marginal here)
    post = ip.exact_posterior(target, mask, y[0])
    assert torch.allclose(post.means[0], torch.tensor(mean[2:]))


def test_replacement_is_biased_when_coordinates_are_correlated():
    """Negative control: with strong correlations the replacement output is far from the posterior."""
    D = 6
    target = Gaussian(np.zeros(D), _cov(D, 0.9), sde=SDE)
    mask = torch.tensor([True, True, True, False, False, False])
    n = 2000
    y = torch.tensor([1.5, 1.0, 1.5, 0, 0, 0], dtype=torch.float64).expand(n, D).clone()
    post = ip.exact_posterior(target, mask, y[0])
    floor = ip.posterior_error(post.sample(n, generator=torch.Generator().manual_seed(3)), post)
    times = time_grid(SDE, 1e-3, 50, "quadratic")
    err = ip.posterior_error(ip.replacement(target.score, y, mask, times, sde=SDE, generator=2)[:, ~mask], post)
    assert err > 5 * floor
    # RePaint's resampling removes most of that bias at the same grid
    err_rp = ip.posterior_error(ip.repaint(target.score, y, mask, times, sde=SDE, generator=2, jump_length=10,
                                           n_resample=10)[:, ~mask], post)
    assert err_rp < 0.5 * err


def test_repaint_schedule():
    path = ip.repaint_schedule(7, jump_length=3, n_resample=2)
    steps = np.diff(path)
    assert path[0] == 0 and path[-1] == 7 and set(steps.tolist()) <= {-1, 1}
    assert int((steps == 1).sum()) == 7 * 2
    assert ip.repaint_schedule(5) == [0, 1, 2, 3, 4, 5]


def test_repaint_with_one_pass_is_replacement_and_shapes():
    target = Gaussian(np.zeros(4), _cov(4), sde=SDE)
    mask = torch.tensor([True, False, True, False])
    y = torch.ones(7, 4, dtype=torch.float64)
    times = time_grid(SDE, 1e-2, 10)
    a = ip.replacement(target.score, y, mask, times, sde=SDE, generator=5)
    b = ip.repaint(target.score, y, mask, times, sde=SDE, generator=5, n_resample=1)
    assert a.shape == (7, 4) and torch.equal(a, b)
    c, traj = ip.repaint(target.score, y, mask, times, sde=SDE, generator=5, jump_length=2, n_resample=3,
                         return_trajectory=True)
    assert traj.shape == (len(ip.repaint_schedule(10, 2, 3)), 7, 4)


# -- DPS -------------------------------------------------------------------
def test_dps_without_guidance_is_ddpm():
    target = Gaussian(np.zeros(4), _cov(4), sde=SDE)
    mask = torch.tensor([True, True, False, False])
    y = torch.ones(9, 4, dtype=torch.float64)
    times = time_grid(SDE, 1e-2, 12)
    x = ip.dps(target.score, y, mask, times, zeta=0.0, sde=SDE, generator=4)
    ref = ddpm(target.score, (9, 4), times, sde=SDE, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(x, ref, atol=1e-12)


def test_dps_moves_the_known_coordinates_to_the_observation():
    target = Gaussian(np.zeros(4), _cov(4), sde=SDE)
    mask = torch.tensor([True, True, False, False])
    y = torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64).expand(500, 4).clone()
    times = time_grid(SDE, 1e-3, 50, "quadratic")
    free = ip.dps(target.score, y, mask, times, zeta=0.0, sde=SDE, generator=6)
    for normalise in ("paper", "code", None):
        x, traj = ip.dps(target.score, y, mask, times, zeta=0.2, normalise=normalise, sde=SDE, generator=6,
                         return_trajectory=True)
        assert traj.shape == (51, 500, 4)
        fit = (x[:, mask] - y[:, mask]).norm(dim=1).mean()
        assert fit < 0.5 * (free[:, mask] - y[:, mask]).norm(dim=1).mean()


# -- errors -------------------------------------------------------------------
def test_posterior_error_on_exact_draws_is_at_the_monte_carlo_floor():
    g = Gaussian(np.zeros(3), _cov(3), sde=SDE)
    gen = torch.Generator().manual_seed(0)
    x = g.sample(4000, generator=gen)
    # W2 of plug-in moments: of order sqrt(D^2 / n) ~ 0.05 for D = 3, n = 4000
    assert ip.posterior_error(x, g) < 0.1
    mix = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [1.0, 1.0], sde=SDE)
    xm = mix.sample(2000, generator=gen)
    far = xm + torch.tensor([1.0, 0.0], dtype=torch.float64)
    near = ip.posterior_error(xm, mix, kind="sliced", generator=1)
    assert near < 0.15 < ip.posterior_error(far, mix, kind="sliced", generator=1)


def test_bad_inputs():
    g = Gaussian(np.zeros(4), _cov(4), sde=SDE)
    mask = torch.tensor([True, True, False, False])
    y = torch.zeros(3, 4, dtype=torch.float64)
    times = time_grid(SDE, 1e-2, 5)
    with pytest.raises(ValueError, match="mask must have shape"):
        ip.exact_posterior(g, torch.tensor([True, False, True]), y[0])
    with pytest.raises(ValueError, match=r"y must have shape \(n, 3\) like the mask"):
        ip.replacement(g.score, y, torch.tensor([True, False, True]), times, sde=SDE)
    with pytest.raises(TypeError, match="boolean"):
        ip.replacement(g.score, y, torch.tensor([1, 1, 0, 0]), times, sde=SDE)
    with pytest.raises(TypeError, match="mask"):
        ip.repaint(g.score, y, [True, True, False, False], times, sde=SDE)
    with pytest.raises(ValueError, match="known .* missing"):
        ip.dps(g.score, y, torch.ones(4, dtype=torch.bool), times, sde=SDE)
    with pytest.raises(ValueError, match="empty batch"):
        ip.replacement(g.score, torch.zeros(0, 4, dtype=torch.float64), mask, times, sde=SDE)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        ip.dps(g.score, torch.zeros(3, 5, dtype=torch.float64), mask, times, sde=SDE)
    with pytest.raises(ValueError, match="NaN"):
        ip.replacement(g.score, torch.full((3, 4), float("nan"), dtype=torch.float64), mask, times, sde=SDE)
    with pytest.raises(ValueError, match="zeta"):
        ip.dps(g.score, y, mask, times, zeta=-1.0, sde=SDE)
    with pytest.raises(ValueError, match="normalise"):
        ip.dps(g.score, y, mask, times, normalise="batch", sde=SDE)
    with pytest.raises(ValueError, match="n_resample"):
        ip.repaint(g.score, y, mask, times, n_resample=0, sde=SDE)
    with pytest.raises(ValueError, match="shape"):
        ip.exact_posterior(g, mask, y)  # one image, not a batch
    with pytest.raises(TypeError, match="GaussianMixture"):
        ip.exact_posterior("gaussian", mask, y[0])
    with pytest.raises(ValueError, match="sliced"):
        mix = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [1.0, 1.0])
        ip.posterior_error(torch.zeros(5, 1, dtype=torch.float64), mix)
    with pytest.raises(ValueError, match="kind"):
        ip.posterior_error(torch.zeros(5, 4, dtype=torch.float64), g, kind="w1")
