"""Tests for diffnotes.optimization (formerly gmm_learning): the DDPM objective of a symmetric mixture."""

import math

import pytest
import torch

from diffnotes import optimization as gl
from diffnotes.sde import ConstantVP, LinearVP

D = 20


def _plane(r, norm, angle_deg, d=D):
    """mu* = r e_1 and mu at the given norm and angle from mu* in the (e_1, e_2) plane."""
    ms = torch.zeros(d, dtype=torch.float64)
    ms[0] = r
    mu = torch.zeros(d, dtype=torch.float64)
    a = math.radians(angle_deg)
    mu[0], mu[1] = norm * math.cos(a), norm * math.sin(a)
    return mu, ms


@pytest.mark.parametrize("sde", [ConstantVP(), LinearVP()])
def test_parametric_score_is_exact_at_mu_star(sde):
    g = torch.Generator().manual_seed(0)
    ms = torch.randn(D, generator=g, dtype=torch.float64)
    law = gl.symmetric_mixture(ms, sde)
    for t in [0.01, 0.3, 0.9 * sde.T]:
        x = law.sample_marginal(64, t, g)
        assert torch.allclose(gl.mixture_score(ms, x, t, sde), law.score(x, t), atol=1e-12, rtol=0)


def test_population_loss_matches_monte_carlo_esm():
    g = torch.Generator().manual_seed(1)
    mu, ms = _plane(2.0, 1.0, 60)
    law = gl.symmetric_mixture(ms)
    n = 200_000
    for t in [0.05, 1.0, 4.0]:
        x = law.sample_marginal(n, t, g)
        esm = ((gl.mixture_score(mu, x, t) - law.score(x, t)) ** 2).sum(1)
        se = float(esm.std()) / math.sqrt(n)
        assert abs(float(gl.population_loss(mu, ms, t)) - float(esm.mean())) < 4 * se


def test_population_gradient_matches_dsm_gradient():
    # DSM = ESM + const, so the gradients agree in expectation; compare with a large Monte Carlo DSM gradient.
    g = torch.Generator().manual_seed(2)
    mu, ms = _plane(2.0, 1.0, 60)
    x0 = gl.symmetric_mixture(ms).sample(200_000, g)
    m = mu.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gl.mixture_dsm_loss(m, x0, 1.0, generator=g), m)
    exact = gl.population_gradient(mu, ms, 1.0)
    assert float((grad - exact).norm() / exact.norm()) < 0.05  # measured 0.006 at 4e5 samples


def test_mu_star_is_stationary():
    _, ms = _plane(2.0, 1.0, 0)
    for t in [0.01, 1.0, 5.0]:
        assert abs(float(gl.population_loss(ms, ms, t))) < 1e-12
        assert float(gl.population_gradient(ms, ms, t).abs().max()) < 1e-12


def test_em_fixed_point_is_mu_star():
    for r in [1.0, 2.0]:
        _, ms = _plane(r, 1.0, 0)
        assert float((gl.em_update(ms, ms) - ms).abs().max()) < 1e-7  # quadrature error, measured 1e-8
    # EM iterated from a random start converges to +-mu*.
    g = torch.Generator().manual_seed(3)
    _, ms = _plane(2.0, 1.0, 0)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    for _ in range(50):
        mu = gl.em_update(mu, ms)
    assert abs(gl.cosine(mu, ms)) > 1 - 1e-10
    assert abs(float(mu.norm()) - 2.0) < 1e-6
    # The empirical EM step agrees with the population one up to Monte Carlo error.
    x = gl.symmetric_mixture(ms).sample(100_000, g)
    mu0, _ = _plane(2.0, 1.0, 50)
    assert float((gl.em_update(mu0, x=x) - gl.em_update(mu0, ms)).norm()) < 0.05


def test_power_iteration_converges_to_top_eigenvector():
    g = torch.Generator().manual_seed(4)
    _, ms = _plane(2.0, 1.0, 0)
    S = torch.eye(D, dtype=torch.float64) + torch.outer(ms, ms)
    v = gl.power_iteration(S, torch.randn(D, generator=g, dtype=torch.float64), 40)
    assert v.shape == (41, D)
    assert abs(gl.cosine(v[-1], ms)) > 1 - 1e-12  # rate (lambda_2/lambda_1)^k = 5^-k
    x = gl.symmetric_mixture(ms).sample(500, g)
    S_hat = x.T @ x / x.shape[0]
    top = torch.linalg.eigh(S_hat).eigenvectors[:, -1]
    v = gl.power_iteration(S_hat, torch.randn(D, generator=g, dtype=torch.float64), 200)
    assert abs(gl.cosine(v[-1], top)) > 1 - 1e-10
    # mu* is a fixed point of the power direction with the population second moment.
    assert float(gl.power_direction(ms, S).abs().max()) < 1e-12


def test_gd_aligns_with_power_iteration_at_large_t():
    mu, ms = _plane(2.0, 2.0, 45)
    gaps = [1 - gl.step_alignment(mu, ms, t)["power"] for t in [2.0, 4.0, 6.0, 8.0]]
    assert all(a > b for a, b in zip(gaps[:-1], gaps[1:], strict=True))
    assert gaps[-1] < 1e-5  # measured 5.0e-7
    # 1 - cos = O(alpha^4) = O(e^{-2t}): the ratio over two time units tends to e^4 = 54.6 (measured 52 at t = 6 -> 8).
    assert 40 < gaps[-2] / gaps[-1] < 60


def test_gd_aligns_with_em_at_small_t():
    mu, ms = _plane(2.0, 2.0, 45)
    c = gl.step_alignment(mu, ms, 0.01)
    assert c["em"] > 0.997  # measured 0.9982
    assert c["em"] > c["power"] + 0.05  # measured 0.998 vs 0.923
    assert c["power_vs_em"] < 0.95  # the reference directions really differ (measured 0.944)
    # Better separated components: the small-t step is closer still to EM.
    mu, ms = _plane(3.0, 2.0, 45)
    assert gl.step_alignment(mu, ms, 0.01)["em"] > 0.9999


def test_gradient_descent_learns_mu_star():
    g = torch.Generator().manual_seed(5)
    _, ms = _plane(2.0, 1.0, 0)
    mu0 = 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    traj = gl.gradient_descent(mu0, 1.0, lr=0.5, n_steps=200, mu_star=ms)
    assert traj.shape == (201, D)
    assert abs(gl.cosine(traj[-1], ms)) > 1 - 1e-8
    assert float(torch.minimum((traj[-1] - ms).norm(), (traj[-1] + ms).norm())) < 1e-4
    # Empirical DSM with fresh noise: close to +-mu* up to sampling error.
    x0 = gl.symmetric_mixture(ms).sample(4000, g)
    traj = gl.gradient_descent(mu0, 1.0, lr=0.2, n_steps=150, x0=x0, generator=g)
    assert abs(gl.cosine(traj[-1], ms)) > 0.98


def test_bad_inputs_raise():
    mu, ms = _plane(2.0, 1.0, 30)
    x = torch.zeros(3, D, dtype=torch.float64)
    with pytest.raises(ValueError):
        gl.mixture_score(mu, torch.zeros(3, D + 1, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError):
        gl.mixture_score(mu, x, 0.0)  # t must be > 0
    with pytest.raises(ValueError):
        gl.mixture_score(mu, x, [0.5, 0.6])  # a single time
    with pytest.raises(ValueError):
        gl.population_loss(mu, torch.zeros(D, dtype=torch.float64), 0.5)  # mu* = 0
    with pytest.raises(ValueError):
        gl.population_loss(mu, ms[:5], 0.5)
    with pytest.raises(ValueError):
        gl.em_update(mu)
    with pytest.raises(ValueError):
        gl.em_update(mu, ms, x=x)
    with pytest.raises(ValueError):
        gl.power_direction(mu, torch.ones(D, D + 1))
    with pytest.raises(ValueError):
        gl.power_direction(mu, torch.triu(torch.ones(D, D)))
    with pytest.raises(ValueError):
        gl.power_iteration(torch.eye(D), torch.zeros(D), 3)
    with pytest.raises(ValueError):
        gl.gradient_descent(mu, 0.5, lr=-1.0, n_steps=3, mu_star=ms)
    with pytest.raises(ValueError):
        gl.gradient_descent(mu, 0.5, lr=0.1, n_steps=3)
    with pytest.raises(ValueError):
        gl.gradient_descent(mu, 0.5, lr=0.1, n_steps=2.5, mu_star=ms)
    with pytest.raises(ValueError):
        gl.cosine(mu, torch.zeros(D))
    with pytest.raises(TypeError):
        gl.mixture_score("abc", x, 0.5)
    with pytest.raises(TypeError):
        gl.symmetric_mixture(ms, sde="vp")
    with pytest.raises(ValueError):
        gl.mixture_score(torch.full((D,), float("nan")), x, 0.5)
