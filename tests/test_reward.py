"""Tests of diffnotes.reward: reward models, the Fig. 9 pipeline, guidance, the exact oracle and the measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

from diffnotes import reward as R
from diffnotes.sde import ConstantVP

SDE = ConstantVP(T=10.0)


@pytest.fixture(scope="module")
def oracle():
    return R.LinearSubspaceOracle.random(6, 2, beta=[1.0, -0.5], generator=0, label_noise=0.5,
                                         pseudo_noise=0.3, sde=SDE)


# -- the exact oracle ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0, 5.0])
def test_conditional_score_is_gradient_of_log_density(oracle, t):
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta_hat = oracle.theta + 0.2 * torch.randn(6, generator=torch.Generator().manual_seed(2),
                                                 dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    lp = oracle.conditional_log_prob(xr, 1.7, t, theta_hat)
    (g,) = torch.autograd.grad(lp.sum(), xr)
    s = oracle.conditional_score(x, 1.7, t, theta_hat)
    assert torch.allclose(s, g, rtol=1e-10, atol=1e-10)


def test_conditional_log_density_is_the_gaussian_of_the_conditional_law(oracle):
    # an independent route: condition the joint Gaussian (x_t, y_hat) by the Schur complement, then scipy's pdf
    theta_hat = oracle.theta + torch.tensor([0.1, 0.0, -0.2, 0.3, 0.0, 0.1], dtype=torch.float64)
    a, t = -0.8, 0.3
    al, h = math.exp(-t / 2), -math.expm1(-t)
    P = (oracle.A @ oracle.A.T).numpy()
    th = theta_hat.numpy()
    nu2 = oracle.pseudo_noise ** 2
    s_xx = al ** 2 * P + h * np.eye(6)
    s_xy = al * P @ th
    s_yy = th @ P @ th + nu2
    mean = s_xy * a / s_yy
    cov = s_xx - np.outer(s_xy, s_xy) / s_yy
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = scipy.stats.multivariate_normal(mean, cov).logpdf(x.numpy())
    got = oracle.conditional_log_prob(x, a, t, theta_hat).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    m, C = oracle.conditional_law(a, theta_hat)
    np.testing.assert_allclose(m.numpy(), mean / al, atol=1e-12)
    np.testing.assert_allclose((al ** 2 * C + h * torch.eye(6, dtype=torch.float64)).numpy(), cov, atol=1e-12)


def test_exact_suboptimality_and_off_subspace(oracle):
    a, t0 = 2.0, 1e-2
    b = oracle.A.T @ oracle.theta
    s2 = float(b @ b) + oracle.pseudo_noise ** 2
    al = math.exp(-t0 / 2)
    assert oracle.exact_suboptimality(a, None, t0) == pytest.approx(abs(a - al * float(b @ b) * a / s2), rel=1e-12)
    assert oracle.exact_suboptimality(a, None) == pytest.approx(a * oracle.pseudo_noise ** 2 / s2, rel=1e-12)
    for k in (1, 3, 10):
        assert R.chi_mean(k) == pytest.approx(scipy.stats.chi(k).mean(), rel=1e-12)
    assert oracle.exact_off_subspace(t0) == pytest.approx(math.sqrt(-math.expm1(-t0)) * R.chi_mean(4), rel=1e-12)


def test_exact_conditional_sampler_reaches_the_exact_mean_reward(oracle):
    a, t0, n = 1.5, 1e-2, 4000
    score = oracle.conditional_score_function(a)
    x = R.sample_at_target(oracle.cond_score(), a, n, 6, sde=SDE, t0=t0, n_steps=200, generator=4)
    x2 = R._sample(score, n, 6, sde=SDE, t0=t0, n_steps=200, spacing="log", sampler="ddpm", generator=4)
    assert torch.allclose(x, x2)
    f = oracle.reward(x)
    se = float(f.std()) / math.sqrt(n)
    # 5 standard errors of the mean plus a small discretisation allowance (200 log-spaced steps)
    assert abs(float(f.mean()) - oracle.exact_mean_reward(a, None, t0)) < 5 * se + 0.02
    assert R.suboptimality(x, a, oracle.reward) == pytest.approx(abs(a - float(f.mean())))
    # DDPM's ancestral step draws the normal coordinates from their exact law: E|(I - AA^T)x| to Monte Carlo error
    dev = (x - (x @ oracle.A) @ oracle.A.T).norm(dim=1)
    assert abs(float(dev.mean()) - oracle.exact_off_subspace(t0)) < 5 * float(dev.std()) / math.sqrt(n)


# -- reward models ----------------------------------------------------------------------------------------------------
def test_ridge_matches_sklearn_and_the_closed_form():
    from sklearn.linear_model import Ridge

    gen = np.random.default_rng(0)
    x = gen.normal(size=(30, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * gen.normal(size=30)
    fit = R.ridge_regression(x, y, lam=0.7)
    ref = Ridge(alpha=0.7, fit_intercept=False).fit(x, y).coef_
    np.testing.assert_allclose(fit.theta.numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(fit.theta.numpy(), np.linalg.solve(x.T @ x + 0.7 * np.eye(4), x.T @ y), rtol=1e-10)
    assert torch.allclose(fit(torch.as_tensor(x)), torch.as_tensor(x @ ref))


def test_ridge_covariance_matches_repeated_draws():
    gen = np.random.default_rng(1)
    x = gen.normal(size=(20, 3))
    theta = np.array([0.5, 1.0, -1.0])
    draws = np.array([R.ridge_regression(x, x @ theta + 0.5 * gen.normal(size=20), lam=2.0, noise_var=0.25)
                      .theta.numpy() for _ in range(3000)])
    cov = R.ridge_regression(x, x @ theta, lam=2.0, noise_var=0.25).covariance.numpy()
    # sample covariance of 3000 draws: relative error about sqrt(2 / 3000) = 2.6% on the diagonal; allow 4 sigma
    np.testing.assert_allclose(np.diag(np.cov(draws.T)), np.diag(cov), rtol=0.11)


def test_btl_mle_matches_scipy():
    gen = np.random.default_rng(2)
    x1, x2 = gen.normal(size=(60, 3)), gen.normal(size=(60, 3))
    theta = np.array([1.0, -0.5, 0.25])
    u = (gen.random(60) < 1 / (1 + np.exp(-(x1 - x2) @ theta))).astype(float)
    lam = 0.1
    d = x1 - x2

    def nll(th):
        z = d @ th
        return float(np.sum(np.logaddexp(0, -z) * u + np.logaddexp(0, z) * (1 - u)) + lam / 2 * th @ th)

    ref = scipy.optimize.minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    got = R.btl_mle(x1, x2, u, lam=lam).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_btl_preferences_follow_the_logistic_law():
    x1 = torch.zeros(20000, 2, dtype=torch.float64)
    x2 = torch.zeros(20000, 2, dtype=torch.float64)
    x1[:, 0] = 1.0
    u = R.btl_preferences(x1, x2, R.linear_reward([1.0, 0.0]), generator=3)
    p = 1 / (1 + math.exp(-1.0))
    # binomial standard error sqrt(p (1 - p) / n) = 0.0033; allow 5 of them
    assert abs(float(u.mean()) - p) < 5 * math.sqrt(p * (1 - p) / 20000)


def test_pipeline_recovers_theta_within_its_standard_error(oracle):
    xl = oracle.sample(200, generator=5)
    yl = oracle.labels(xl, generator=6)
    xu = oracle.sample(300, generator=7)
    res = R.reward_directed_diffusion(xl, yl, xu, lam=1e-3, noise_std=0.3, latent_dim=2, sde=SDE, steps=5,
                                      generator=8)
    A = oracle.A
    err = A.T @ (res.reward.theta - oracle.theta)
    cov = A.T @ res.reward.covariance @ A
    chi2 = float(err @ torch.linalg.solve(cov, err))
    assert chi2 < scipy.stats.chi2(2).ppf(0.999)
    # the estimate lies in the span of the data (ridge on subspace data)
    assert float(torch.linalg.norm(res.reward.theta - A @ (A.T @ res.reward.theta))) < 1e-10
    # pseudo-labels: the fitted reward plus noise of standard deviation nu
    resid = res.pseudo_labels - res.reward(xu)
    assert abs(float(resid.std()) - 0.3) < 5 * 0.3 / math.sqrt(2 * 300)


def test_reward_mlp_is_seeded_and_fits_a_linear_reward():
    a, b = R.RewardMLP(3, generator=1), R.RewardMLP(3, generator=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x @ torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        before = float(((a(x) - y) ** 2).mean())
    R.fit_reward(a, x, y, steps=300, generator=2)
    with torch.no_grad():
        after = float(((a(x) - y) ** 2).mean())
    assert after < 0.05 * float(y.var()) < before


# -- the conditional network and its loss ---------------------------------------------------------------------------
def test_encoder_decoder_form_has_the_exact_off_subspace_part():
    net = R.RewardConditionedScore(5, 2, sde=SDE, generator=0).double()
    V = net.basis
    assert torch.allclose(V.T @ V, torch.eye(2, dtype=V.dtype), atol=1e-12)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = 0.2
    s = net(x, torch.tensor([0.0, 1.0, float("nan"), 2.0]), t)
    perp = x - (x @ V) @ V.T
    h = -math.expm1(-t)
    assert torch.allclose(s - (s @ V) @ V.T, -perp / h, atol=1e-12)
    same = R.RewardConditionedScore(5, 2, sde=SDE, generator=0).double()
    assert torch.equal(same(x, 1.0, t), net(x, 1.0, t))


def test_reward_dsm_loss_weights_and_dropout(oracle):
    x0 = oracle.sample(64, generator=1)
    y = oracle.reward(x0)
    s = oracle.cond_score()
    seen = []

    def model(x, yy, t):
        seen.append(yy.clone())
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(3)
    one = R.reward_dsm_loss(s, x0, y, sde=SDE, generator=torch.Generator().manual_seed(3))
    ones = R.reward_dsm_loss(s, x0, y, torch.ones(64), sde=SDE, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(one, ones)
    R.reward_dsm_loss(model, x0, y, sde=SDE, p_uncond=1.0, generator=g)
    assert torch.all(torch.isnan(seen[-1]))
    # with the zero score the loss is E||eps||^2 = D (up to Monte Carlo error)
    zero = R.reward_dsm_loss(model, oracle.sample(20000, generator=2), torch.zeros(20000), sde=SDE, generator=g)
    assert abs(float(zero) - 6) < 5 * math.sqrt(2 * 6 / 20000)


def test_ddom_weights_tilt_toward_high_reward():
    y = torch.linspace(0, 1, 1000, dtype=torch.float64)
    w = R.ddom_weights(y, n_bins=10, temperature=0.2, clip=1e9)
    # uniform data: each bin holds 100 points, so w is proportional to exp(upper edge / tau), mean 1
    edges = torch.linspace(0, 1, 11, dtype=torch.float64)[1:]
    q = torch.softmax(edges / 0.2, 0)
    ref = q.repeat_interleave(100) / 0.1
    assert torch.allclose(w, ref / ref.mean())
    clipped = R.ddom_weights(y, n_bins=10, temperature=0.05, clip=5.0)
    assert float(clipped.mean()) == pytest.approx(1.0)
    assert float(clipped.max() / clipped.min()) > 1
    assert torch.all(clipped[1:] >= clipped[:-1] - 1e-12)


# -- guidance and ascent ----------------------------------------------------------------------------------------------
def test_lookahead_gradient_lies_in_the_subspace(oracle):
    w = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    w = w + oracle.theta  # a surrogate with an off-subspace part
    guided = R.gradient_guidance(oracle.score, R.linear_reward(w), 2.0, sde=SDE)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = guided(x, 0.5) - oracle.score(x, 0.5)
    A = oracle.A
    assert float((g - (g @ A) @ A.T).abs().max()) < 1e-12
    naive = R.gradient_guidance(oracle.score, R.linear_reward(w), 2.0, sde=SDE, lookahead=False)
    assert torch.allclose(naive(x, 0.5) - oracle.score(x, 0.5), 2.0 * w.expand(5, 6))


def test_gradient_guidance_strength_schedule(oracle):
    w = R.linear_reward(oracle.theta)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 3.0, 4.0], dtype=torch.float64)
    cut = R.gradient_guidance(oracle.score, w, lambda tt: 2.0 * (tt <= 2.0).to(tt.dtype), sde=SDE,
                              lookahead=False)
    expected = oracle.score(x, t) + 2.0 * (t <= 2.0).to(x.dtype)[:, None] * oracle.theta
    assert torch.allclose(cut(x, t), expected)
    with pytest.raises(ValueError, match="non-negative"):
        R.gradient_guidance(oracle.score, w, lambda tt: -torch.ones_like(tt), sde=SDE)(x, t)


def test_projected_gradient_guidance_stays_in_the_early_stopping_band(oracle):
    w = oracle.theta + 3.0 * torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    t0, n = 1e-2, 4000
    band = oracle.exact_off_subspace(t0)
    plain = R._sample(oracle.score, n, 6, sde=SDE, t0=t0, n_steps=200, spacing="log",
                      sampler="exponential_integrator", generator=2)
    for kwargs in ({"lookahead": False, "basis": oracle.A}, {"lookahead": True}):
        guided = R.gradient_guidance(oracle.score, R.linear_reward(w), 1.0, sde=SDE, **kwargs)
        x = R._sample(guided, n, 6, sde=SDE, t0=t0, n_steps=200, spacing="log",
                      sampler="exponential_integrator", generator=2)
        r = x - (x @ oracle.A) @ oracle.A.T
        dev = r.norm(dim=1)
        # the band sqrt(h(t0)) E chi_{D-d}: 5 standard errors of the mean, plus 5% for 200 discrete steps
        assert abs(float(dev.mean()) - band) < 5 * float(dev.std()) / math.sqrt(n) + 0.05 * band
        assert float(oracle.reward(x).mean()) > float(oracle.reward(plain).mean()) + 0.5
    # the same guidance term unprojected, on a sampler that cannot pull back (gradient ascent), leaves the band
    far = R.gradient_ascent(R.linear_reward(w), oracle.sample(200, generator=3), steps=10, lr=0.1)
    assert oracle.off_subspace(far) > 10 * band


def test_gradient_ascent_on_a_linear_reward_is_a_straight_line():
    x = torch.zeros(3, 2, dtype=torch.float64)
    out = R.gradient_ascent(R.linear_reward([1.0, 2.0]), x, steps=7, lr=0.5)
    assert torch.allclose(out, torch.tensor([[3.5, 7.0]] * 3, dtype=torch.float64))
    V = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    proj = R.gradient_ascent(R.linear_reward([1.0, 2.0]), x, steps=7, lr=0.5, basis=V)
    assert torch.allclose(proj, torch.tensor([[3.5, 0.0]] * 3, dtype=torch.float64))


def test_principal_basis_recovers_the_subspace(oracle):
    V = R.principal_basis(oracle.sample(50, generator=1), 2)
    assert torch.allclose(V @ V.T, oracle.A @ oracle.A.T, atol=1e-10)


def test_design_bench_scores():
    full = np.arange(11.0)  # min 0, max 10
    vals = np.concatenate([np.full(127, 2.0), [9.0]])
    assert R.design_bench_scores(vals, full) == (pytest.approx(0.9), pytest.approx(0.2))
    with pytest.raises(ValueError, match="exactly 128"):
        R.design_bench_scores(vals[:10], full)
    with pytest.raises(ValueError, match="constant"):
        R.design_bench_scores(vals, np.ones(5))


# -- bad input --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [float("nan"), float("inf"), -float("inf")])
def test_target_must_be_finite(oracle, a):
    with pytest.raises(ValueError, match="target reward a must be finite"):
        R.sample_at_target(oracle.cond_score(), a, 10, 6, sde=SDE)
    with pytest.raises(ValueError, match="must be finite"):
        R.guided_reward_score(oracle.cond_score(), a)
    with pytest.raises(ValueError, match="must be finite"):
        oracle.conditional_score_function(a)
    with pytest.raises(ValueError, match="must be finite"):
        R.suboptimality(torch.zeros(3, 6, dtype=torch.float64), a, oracle.reward)


def test_too_few_labels():
    with pytest.raises(ValueError, match="n_label >= 2"):
        R.ridge_regression([[1.0, 2.0]], [1.0], lam=0.1)
    with pytest.raises(ValueError, match="n_label >= 2"):
        R.btl_mle([[1.0, 2.0]], [[0.0, 1.0]], [1.0])


def test_preference_labels_outside_0_1():
    x1, x2 = np.zeros((3, 2)), np.ones((3, 2))
    with pytest.raises(ValueError, match=r"preference labels u must lie in \{0, 1\}"):
        R.btl_mle(x1, x2, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        R.btl_mle(x1, x2, [0.0, 0.5, 1.0])


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"y must hold one value per row of x"):
        R.ridge_regression(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        R.btl_mle(np.zeros((4, 2)), np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match=r"y must hold one value per row of x"):
        R.fit_reward(R.RewardMLP(2, generator=0), np.zeros((4, 2)), np.zeros(5))
    with pytest.raises(ValueError, match=r"y must hold one value per row of x"):
        R.train_conditional_score(np.zeros((4, 2)), np.zeros(5), steps=1)


def test_negative_ridge_penalty():
    with pytest.raises(ValueError, match="ridge penalty"):
        R.ridge_regression(np.eye(3), np.ones(3), lam=-1.0)
    with pytest.raises(ValueError, match="lam > 0"):
        R.ridge_regression(np.ones((3, 2)), np.ones(3), lam=0.0)


def test_other_bad_inputs(oracle):
    with pytest.raises(ValueError, match="orthonormal"):
        R.LinearSubspaceOracle(np.ones((3, 2)), [1.0, 0.0])
    with pytest.raises(ValueError, match="undefined"):
        R.LinearSubspaceOracle(np.eye(3)[:, :2], [1.0, 0.0], pseudo_noise=0.0).conditional_law(
            1.0, torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="strength"):
        R.gradient_guidance(oracle.score, oracle.reward, -1.0)
    with pytest.raises(ValueError, match="noise_std"):
        R.pseudo_label(oracle.reward, oracle.sample(3, generator=0), -0.1)
    with pytest.raises(ValueError, match="t"):
        oracle.conditional_score(oracle.sample(3, generator=0), 1.0, 0.0)
