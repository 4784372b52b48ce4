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


# -- finite samples: the two-phase algorithm, the Fisher information and the DSM estimator's covariance ----------------
def _draw(mu_star, n, g):
    """n points of the symmetric mixture: a random sign times mu*, plus standard noise."""
    signs = 2.0 * torch.randint(0, 2, (n, 1), generator=g, dtype=torch.float64) - 1.0
    return signs * mu_star + torch.randn(n, mu_star.shape[0], generator=g, dtype=torch.float64)


def _em_fit(x, mu, tol=1e-10):
    for _ in range(1000):
        new = gl.em_update(mu, x=x)
        if float((new - mu).norm()) < tol:
            return new
        mu = new
    raise AssertionError("EM did not converge")


def test_fisher_information_matches_monte_carlo():
    g = torch.Generator().manual_seed(10)
    d = 5
    v = torch.randn(d, generator=g, dtype=torch.float64)
    for r in [1.0, 2.0]:
        ms = r * v / v.norm()
        info = gl.fisher_information(ms)
        assert info.shape == (d, d) and torch.allclose(info, info.T)
        n = 200_000
        x = _draw(ms, n, g)
        score = torch.tanh(x @ ms)[:, None] * x - ms  # the score of the likelihood in mu, at mu*
        prods = score[:, :, None] * score[:, None, :]
        mc, se = prods.mean(0), prods.std(0) / math.sqrt(n)
        assert bool(((info - mc).abs() <= 4 * se).all()), (info - mc) / se
    # Closed form along mu* and across it, for r = 2: I_par = 0.978, I_perp = 0.931 (quadrature, 200 nodes).
    _, ms = _plane(2.0, 1.0, 0, d=3)
    info = gl.fisher_information(ms)
    assert abs(float(info[0, 0]) - 0.9783445) < 1e-6 and abs(float(info[1, 1]) - 0.9314026) < 1e-6
    # Better separated components carry more information, up to the Gaussian value 1 in every direction.
    _, ms = _plane(5.0, 1.0, 0, d=3)
    assert torch.allclose(gl.fisher_information(ms), torch.eye(3, dtype=torch.float64), atol=1e-6)


def test_mle_error_matches_the_inverse_fisher_information():
    # n E||mu_hat - mu*||^2 -> tr I^{-1} for the EM fixed point (the maximum-likelihood estimator).
    g = torch.Generator().manual_seed(11)
    d, n, reps = 5, 1000, 100
    _, ms = _plane(2.0, 1.0, 0, d=d)
    tr_inv = float(torch.trace(torch.linalg.inv(gl.fisher_information(ms))))
    z = torch.tensor([n * gl.error_up_to_sign(_em_fit(_draw(ms, n, g), ms), ms) ** 2 / tr_inv for _ in range(reps)])
    assert abs(float(z.mean()) - 1) < 4 * float(z.std()) / math.sqrt(reps)  # measured 0.95 +- 0.07


def test_integrated_dsm_loss_is_the_noise_average_of_the_dsm_loss():
    g = torch.Generator().manual_seed(12)
    d = 4
    _, ms = _plane(2.0, 1.0, 0, d=d)
    x0 = _draw(ms, 30, g)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    for t in [0.05, 1.0, 4.0]:
        exact = float(gl.integrated_dsm_loss(mu, x0, t, n_nodes=64))
        draws = torch.stack([gl.mixture_dsm_loss(mu, x0, t, generator=g) for _ in range(3000)])
        assert abs(exact - float(draws.mean())) < 4 * float(draws.std()) / math.sqrt(3000)
        # The closed-form gradient of the inner loop is the autograd gradient of the loss.
        m = mu.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(gl.integrated_dsm_loss(m, x0, t, n_nodes=16), m)
        alpha, h = gl._one_time(ConstantVP(), t)
        closed = gl._dsm_gradient(mu, x0, alpha, h, *gl._gauss_hermite(16))
        assert torch.allclose(closed, auto, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError):
        gl.integrated_dsm_loss(mu, x0.tolist(), 0.5)
    with pytest.raises(ValueError):
        gl.integrated_dsm_loss(mu, x0, 0.5, n_nodes=1)


def test_dsm_asymptotic_covariance_matches_a_monte_carlo_sandwich():
    g = torch.Generator().manual_seed(13)
    d, t = 4, 0.05
    v = torch.randn(d, generator=g, dtype=torch.float64)
    ms = 2.0 * v / v.norm()
    cov = gl.dsm_asymptotic_covariance(ms, t)
    # Monte Carlo: per-point gradients F_c x + 2 F_q mu and the sample Hessian, at mu*.
    n = 100_000
    x = _draw(ms, n, g)
    alpha, h = gl._one_time(ConstantVP(), t)
    gh = gl._gauss_hermite(40)
    c = (x @ ms).requires_grad_(True)
    q = torch.full((n,), float(ms @ ms), dtype=torch.float64, requires_grad=True)
    fc, fq = torch.autograd.grad(gl._dsm_terms(c, q, alpha, h, *gh).sum(), (c, q))
    grads = fc[:, None] * x + 2 * fq[:, None] * ms
    hess = torch.autograd.functional.hessian(lambda m: gl.integrated_dsm_loss(m, x, t, n_nodes=40), ms)
    a_inv = torch.linalg.inv(hess)
    mc = a_inv @ torch.cov(grads.T) @ a_inv
    assert float(grads.mean(0).norm()) < 4 * math.sqrt(float(torch.trace(torch.cov(grads.T))) / n)  # mu* stationary
    assert abs(float(torch.trace(mc)) / float(torch.trace(cov)) - 1) < 0.03  # measured -0.5 %
    # The DDPM estimator is less efficient than maximum likelihood (Cramer-Rao), at every t.
    info_inv = torch.linalg.inv(gl.fisher_information(ms))
    for s in [0.01, 0.05, 0.5, 2.0, 6.0]:
        gap = gl.dsm_asymptotic_covariance(ms, s) - info_inv
        assert float(torch.linalg.eigvalsh(gap).min()) > 0
    # r = 2, d = 20 (the chapter): tr V_t = 23.72 at t = 0.05 against tr I^{-1} = 21.42.
    _, ms20 = _plane(2.0, 1.0, 0)
    assert abs(float(torch.trace(gl.dsm_asymptotic_covariance(ms20, 0.05))) - 23.723) < 1e-3


def test_learn_mixture_reaches_the_predicted_accuracy():
    g = torch.Generator().manual_seed(14)
    # Many small problems: n E||mu_hat - mu*||^2 against tr V_t.
    d, n, reps, t = 5, 2000, 40, 0.05
    _, ms = _plane(2.0, 1.0, 0, d=d)
    tr_v = float(torch.trace(gl.dsm_asymptotic_covariance(ms, t)))
    z = []
    for _ in range(reps):
        fit = gl.learn_mixture(_draw(ms, n, g), t_small=t, generator=g)
        assert fit.converged and fit.steps_large == 20
        z.append(n * gl.error_up_to_sign(fit.mu, ms) ** 2 / tr_v)
    z = torch.tensor(z)
    assert abs(float(z.mean()) - 1) < 4 * float(z.std()) / math.sqrt(reps)  # measured 0.89 +- 0.11
    # One large sample in d = 20 from a random start: phase 1 finds the direction, phase 2 the minimiser.
    _, ms = _plane(2.0, 1.0, 0)
    n = 20_000
    x = _draw(ms, n, g)
    fit = gl.learn_mixture(x, generator=g)
    assert abs(gl.cosine(fit.mu_large, ms)) > 0.99
    assert fit.converged
    alpha, h = gl._one_time(ConstantVP(), 0.05)
    assert float(gl._dsm_gradient(fit.mu, x, alpha, h, *gl._gauss_hermite(16)).norm()) < 1e-8  # a stationary point
    tr_v = float(torch.trace(gl.dsm_asymptotic_covariance(ms, 0.05)))
    assert gl.error_up_to_sign(fit.mu, ms) ** 2 < 3 * tr_v / n  # the ratio has mean 1 and sd about 0.3 (measured 0.66)
    assert gl.error_up_to_sign(fit.mu, ms) == gl.error_up_to_sign(-fit.mu, ms)


def test_learn_mixture_with_fixed_noise_draws_approaches_the_integrated_objective():
    g = torch.Generator().manual_seed(15)
    d, n = 5, 500
    _, ms = _plane(2.0, 1.0, 0, d=d)
    x = _draw(ms, n, g)
    mu0 = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    exact = gl.learn_mixture(x, mu0=mu0).mu
    gaps = []
    for m in [1, 100]:
        fit = gl.learn_mixture(x, mu0=mu0, noise_draws=m, generator=g, lr_small=0.2)
        assert fit.converged
        gaps.append(float((fit.mu - exact).norm()))
    assert gaps[1] < gaps[0] / 3  # the noise part of the error falls like 1 / sqrt(m): measured 0.45 -> 0.05


def test_learn_mixture_bad_inputs_raise():
    _, ms = _plane(2.0, 1.0, 0, d=3)
    x = _draw(ms, 50, torch.Generator().manual_seed(16))
    with pytest.raises(ValueError):
        gl.learn_mixture(x, t_large=0.05, t_small=0.05)
    with pytest.raises(ValueError):
        gl.learn_mixture(x, lr_small=0.0)
    with pytest.raises(ValueError):
        gl.learn_mixture(x, tol=float("nan"))
    with pytest.raises(ValueError):
        gl.learn_mixture(x, noise_draws=0)
    with pytest.raises(ValueError):
        gl.learn_mixture(x, mu0=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        gl.learn_mixture(x, mu0=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError):
        gl.learn_mixture(x, t_small=[0.05, 0.1])
    with pytest.raises(TypeError):
        gl.learn_mixture(x.numpy())
    with pytest.raises(ValueError):
        gl.error_up_to_sign(ms, ms[:2])
    with pytest.raises(ValueError):
        gl.fisher_information(torch.zeros(3))
    with pytest.raises(ValueError):
        gl.dsm_asymptotic_covariance(ms, 0.0)
