"""Tests of diffnotes.control: the point-mass environment, the bimodal expert, diffusion and Gaussian policies,
closed-loop rollouts and Diffusion-QL on a contextual bandit."""

import math
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from diffnotes import control as C
from diffnotes.samplers import ddpm, time_grid
from diffnotes.sde import LinearVP


@pytest.fixture(scope="module")
def data():
    return C.expert_dataset(40, chunk=4, generator=0)


# -- the environment -------------------------------------------------------------------------------------------
def test_gymnasium_checker_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports problems as warnings: none allowed
        check_env(C.PointMassObstacleEnv(), skip_render_check=True)


def test_reset_is_reproducible_and_in_the_start_square():
    env = C.PointMassObstacleEnv()
    o1, _ = env.reset(seed=3)
    o2, _ = env.reset(seed=3)
    np.testing.assert_array_equal(o1, o2)
    assert np.all(np.abs(o1) <= env.start_half_width)


def test_straight_up_collides_at_the_exact_step():
    # From (0, 0) at speed 1 the height after k steps is 0.1 k; the disc around (0, 1) of radius 0.35 is first
    # entered on the segment from 0.6 to 0.7, i.e. at step 7.
    env = C.PointMassObstacleEnv()
    env.reset(seed=0)
    env._p = np.zeros(2)
    for k in range(1, 8):
        _, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0]))
        assert terminated == (k == 7) and not truncated
    assert info["collision"] and reward == -1.0


def test_segment_geometry_against_brute_force():
    rng = np.random.default_rng(0)
    p = rng.uniform(-1, 1, (200, 2)) + np.array([0, 1])
    q = p + rng.uniform(-0.3, 0.3, (200, 2))
    u = np.linspace(0, 1, 2001)[None, :, None]
    pts = p[:, None] + u * (q - p)[:, None]
    brute = (np.linalg.norm(pts - np.array([0.0, 1.0]), axis=2) < 0.35).any(axis=1)
    exact = C.PointMassObstacleEnv.segment_hits_obstacle(p, q)
    # the grid of 2001 points misses a hit only for segments grazing the disc within ~1e-7: none here
    np.testing.assert_array_equal(exact, brute)


def test_bad_actions():
    env = C.PointMassObstacleEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="max_steps"):
        C.PointMassObstacleEnv(max_steps=0)


# -- the expert --------------------------------------------------------------------------------------------------
def test_expert_is_bimodal_by_construction(data):
    first = data.step == 0
    ax = data.actions[first, 0]
    side = data.side[first]
    assert torch.all(torch.sign(ax) == side)  # the first move goes to the episode's side ...
    assert float(ax.abs().min()) > 0.3  # ... and no first action lies near the mean of the two modes
    assert 0 < int((side > 0).sum()) < int(first.sum())  # both modes present


def test_expert_succeeds_and_chunks_are_the_next_actions(data):
    assert all(np.hypot(*(p[-1] - np.array([0.0, 2.0]))) < 0.15 for p in data.paths)
    a = data.actions.reshape(-1, data.chunk, 2)
    same = data.step[1:] == data.step[:-1] + 1  # consecutive pairs of one episode
    np.testing.assert_array_equal(a[1:][same, 0], a[:-1][same, 1])


def test_expert_dataset_bad_input():
    with pytest.raises(ValueError, match="chunk"):
        C.expert_dataset(3, chunk=0, generator=0)
    with pytest.raises(ValueError, match="action_noise"):
        C.expert_dataset(3, action_noise=0.5, generator=0)
    with pytest.raises(ValueError, match="side"):
        C.expert_action(np.zeros((2, 2)), [1, 0])
    with pytest.raises(ValueError, match="obs"):
        C.expert_action(np.zeros(2), [1])


# -- the policies ----------------------------------------------------------------------------------------------
def test_gaussian_policy_mean_equals_the_data_mean(data):
    g = C.GaussianPolicy(data.obs, data.actions)
    # least squares with a free intercept: residuals sum to zero (exact up to rounding)
    torch.testing.assert_close(g.mean(data.obs).mean(0), data.actions.mean(0), atol=1e-9, rtol=0)
    # one observation followed by two mirror-image modes: the fitted mean is their average
    obs = torch.zeros(6, 2, dtype=torch.float64)
    acts = torch.tensor([[0.5, 0.8], [-0.5, 0.8]] * 3, dtype=torch.float64)
    g0 = C.GaussianPolicy(obs, acts, n_centres=1)
    torch.testing.assert_close(g0.mean(obs[:1]), torch.tensor([[0.0, 0.8]], dtype=torch.float64))
    torch.testing.assert_close(g0.cov, torch.diag(torch.tensor([0.25, 0.0], dtype=torch.float64)), atol=1e-9,
                               rtol=0)


def test_gaussian_policy_bad_input(data):
    with pytest.raises(ValueError, match="mode"):
        C.GaussianPolicy(data.obs, data.actions, mode="max")
    with pytest.raises(ValueError, match="one row per action"):
        C.GaussianPolicy(data.obs[:3], data.actions)
    g = C.GaussianPolicy(data.obs, data.actions)
    with pytest.raises(ValueError, match="obs"):
        g(torch.zeros(3, 5, dtype=torch.float64))


def test_diffusion_policy_shape_range_and_reproducibility(data):
    pol = C.fit_diffusion_policy(data.obs, data.actions, sde=LinearVP(T=0.6), steps=5, hidden=16, depth=1,
                                 n_steps=4, generator=0)
    obs = torch.zeros(7, 2, dtype=torch.float64)
    a = pol(obs, generator=1)
    assert a.shape == (7, 8) and a.dtype == torch.float64
    assert float(a.abs().max()) <= 1.0
    torch.testing.assert_close(a, pol(obs, generator=1), atol=0, rtol=0)
    with pytest.raises(ValueError, match="obs"):
        pol(torch.zeros(7, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        pol(torch.full((2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="obs"):
        pol(np.zeros((2, 2)))


def test_policy_dsm_loss_prefers_the_true_conditional_score():
    # a | s ~ N(A s, v I): the diffused law is N(alpha A s, alpha^2 v + h); with common random numbers the exact
    # score has the smaller DSM loss than a 20 %-scaled one (the gap, of order 0.04 E||s||^2, is far above the
    # Monte Carlo error at n = 20000).
    sde = LinearVP(T=0.6)
    g = torch.Generator().manual_seed(0)
    n, v = 20000, 0.05
    s = torch.rand(n, 2, generator=g, dtype=torch.float64)
    A = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=torch.float64)
    a = s @ A.T + math.sqrt(v) * torch.randn(n, 2, generator=g, dtype=torch.float64)

    def exact(x, obs, t):
        al, h = sde.alpha(t)[:, None], sde.h(t)[:, None]
        return -(x - al * obs @ A.T) / (al**2 * v + h)

    t = 0.01 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    good = C.policy_dsm_loss(exact, a, s, sde=sde, t=t, eps=eps)
    bad = C.policy_dsm_loss(lambda x, o, tt: 1.2 * exact(x, o, tt), a, s, sde=sde, t=t, eps=eps)
    assert float(good) < float(bad)
    with pytest.raises(ValueError, match="one row per action"):
        C.policy_dsm_loss(exact, a, s[:5], sde=sde)


def test_network_bad_input():
    net = C.ObservationScoreMLP(4, 2, hidden=8, depth=1, generator=0)
    with pytest.raises(ValueError, match="s must have shape"):
        net(torch.zeros(3, 4), torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="one row per action"):
        net(torch.zeros(3, 4), torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="action_dim"):
        C.ObservationScoreMLP(0, 2)
    w1 = C.ObservationScoreMLP(4, 2, hidden=8, depth=1, generator=5).net[0].weight
    w2 = C.ObservationScoreMLP(4, 2, hidden=8, depth=1, generator=5).net[0].weight
    torch.testing.assert_close(w1, w2, atol=0, rtol=0)


# -- rollouts --------------------------------------------------------------------------------------------------
def test_rollout_of_the_expert_and_of_the_straight_policy():
    def expert(obs, gen):  # closed-loop expert, alternating sides by row
        side = np.where(np.arange(obs.shape[0]) % 2 == 0, 1.0, -1.0)
        return torch.as_tensor(C.expert_action(obs.numpy(), side))

    r = C.rollout(expert, 10, chunk=1)
    assert r.success_rate == 1.0 and r.collision_rate == 0.0
    straight = C.rollout(lambda obs, gen: torch.tensor([[0.0, 1.0] * 3] * obs.shape[0]), 5, chunk=3, execute=2)
    assert straight.collision_rate == 1.0 and np.all(straight.length == 7)
    assert straight.success_se == 0.0


def test_rollout_bad_input():
    with pytest.raises(ValueError, match="execute"):
        C.rollout(lambda o, g: torch.zeros(o.shape[0], 4), 2, chunk=2, execute=3)
    with pytest.raises(ValueError, match="shape"):
        C.rollout(lambda o, g: torch.zeros(o.shape[0], 3), 2, chunk=2)
    with pytest.raises(ValueError, match="finite"):
        C.rollout(lambda o, g: torch.full((o.shape[0], 2), float("inf")), 2)
    with pytest.raises(ValueError, match="chunk"):
        C.rollout(lambda o, g: torch.zeros(o.shape[0], 2), 2, chunk=0)


def test_binomial_se():
    assert C.binomial_se(0.3, 100) == pytest.approx(math.sqrt(0.21 / 100))
    with pytest.raises(ValueError, match="n"):
        C.binomial_se(0.3, 0)


# -- Diffusion-QL ----------------------------------------------------------------------------------------------
def test_ddpm_chain_equals_the_package_sampler():
    sde = LinearVP(T=0.6)
    times = time_grid(sde, 1e-3, 5, spacing="logsnr")

    def score(x, t):
        return -x / (0.1 * sde.alpha(t)[:, None] ** 2 + sde.h(t)[:, None])

    start = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ours = C.ddpm_chain(score, start, times, sde=sde, noise=lambda like: torch.randn(like.shape, generator=g1,
                                                                                        dtype=like.dtype))
    ref = ddpm(score, start, times, sde=sde, final_denoise=True,
               noise=lambda like: torch.randn(like.shape, generator=g2, dtype=like.dtype))
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="times"):
        C.ddpm_chain(score, start, times.flip(0), sde=sde)


def test_diffusion_ql_loss_reduces_to_dsm_and_is_differentiable():
    bandit = C.BimodalBandit()
    s, a, _ = bandit.dataset(64, generator=0)
    sde = LinearVP(T=0.6)
    from diffnotes.networks import as_score

    model = as_score(C.ObservationScoreMLP(1, 1, hidden=8, depth=1, generator=0), "eps", sde, conditional=True)
    times = time_grid(sde, 1e-3, 3, spacing="logsnr")
    bc = C.diffusion_ql_loss(model, a, s, q=bandit.q, eta=0.0, times=times, sde=sde, generator=3)
    dsm = C.policy_dsm_loss(model, a, s, sde=sde, generator=3)
    assert float(bc.detach()) == float(dsm.detach())
    ql = C.diffusion_ql_loss(model, a, s, q=bandit.q, eta=1.0, times=times, sde=sde, generator=3)
    ql.backward()
    assert all(p.grad is not None and torch.all(torch.isfinite(p.grad)) for p in model.parameters())
    with pytest.raises(ValueError, match="eta"):
        C.diffusion_ql_loss(model, a, s, q=bandit.q, eta=-1.0, times=times, sde=sde)
    with pytest.raises(TypeError, match="q"):
        C.diffusion_ql_loss(model, a, s, q=None, eta=1.0, times=times, sde=sde)


def test_bandit_q_is_the_conditional_mean_reward():
    bandit = C.BimodalBandit(sigma_r=0.1)
    s, a, r = bandit.dataset(40000, generator=0)
    resid = r - bandit.q(s, a)
    # the residual is the reward noise: mean 0 within 5 standard errors, standard deviation sigma_r
    assert abs(float(resid.mean())) < 5 * 0.1 / math.sqrt(40000)
    assert float(resid.std()) == pytest.approx(0.1, rel=0.02)
    assert float(bandit.in_support(a).double().mean()) > 0.99  # 3 sigma_b holds 99.7 % of each mode
    with pytest.raises(ValueError, match="sigma_b"):
        C.BimodalBandit(sigma_b=0.0)
    with pytest.raises(ValueError, match="mode"):
        C.BimodalBandit(mode=1.0, bound=1.0)
    with pytest.raises(ValueError, match="s and a"):
        bandit.q(s[:3], a)


def test_bandit_behaviour_law_is_the_truncated_mixture():
    from scipy import stats

    bandit = C.BimodalBandit()  # modes +-0.7, width 0.1, box [-1, 1]
    a = bandit.behaviour_sample(100000, generator=1)
    assert a.shape == (100000, 1) and a.dtype == torch.float64
    assert float(a.abs().max()) <= bandit.bound  # the logged law lies inside the box
    assert stats.kstest(a[:, 0].numpy(), bandit.behaviour_cdf).pvalue > 1e-3
    se = float(a.abs().std()) / math.sqrt(a.shape[0])
    assert abs(float(a.abs().mean()) - bandit.mode_mean) < 5 * se
    x = np.linspace(-1.2, 1.2, 24001)
    F = bandit.behaviour_cdf(x)
    assert F[0] == 0.0 and F[-1] == 1.0
    np.testing.assert_allclose(bandit.behaviour_cdf(-x), 1 - F, atol=1e-12)
    inner = np.abs(x) < 0.99  # the density jumps to 0 at the box edge
    np.testing.assert_allclose(np.gradient(F, x)[inner], bandit.behaviour_pdf(x)[inner], atol=2e-3)
    # a box far away from the modes: the plain two-normal mixture
    wide = C.BimodalBandit(mode=0.7, sigma_b=0.1, bound=10.0)
    ref = 0.5 * stats.norm.cdf(x, -0.7, 0.1) + 0.5 * stats.norm.cdf(x, 0.7, 0.1)
    np.testing.assert_allclose(wide.behaviour_cdf(x), ref, atol=1e-12)
    assert wide.mode_mean == pytest.approx(0.7, abs=1e-12)


def test_bandit_in_support_includes_the_box_edge():
    bandit = C.BimodalBandit()  # the box edge is exactly 3 sigma_b from the mode
    a = torch.tensor([[1.0], [-1.0], [0.4], [0.39], [1.01], [0.0]], dtype=torch.float64)
    assert bandit.in_support(a).tolist() == [True, True, True, False, False, False]


def test_bandit_wasserstein_is_exact_and_its_floor_shrinks():
    bandit = C.BimodalBandit()
    # W1 between a point mass at 0 and the law is E|a|, the mean of a mode
    assert bandit.wasserstein(torch.zeros(7, 1)) == pytest.approx(bandit.mode_mean, abs=1e-6)
    # and it agrees with the sample-to-sample distance to a large exact sample
    from diffnotes.metrics import wasserstein_1d

    x = bandit.behaviour_sample(500, generator=2)
    big = bandit.behaviour_sample(400000, generator=3)
    assert bandit.wasserstein(x) == pytest.approx(wasserstein_1d(x, big), abs=3e-3)
    f1, f4 = bandit.wasserstein_floor(250, 40, generator=4), bandit.wasserstein_floor(1000, 40, generator=5)
    assert f1.shape == (40,) and np.all(f1 > 0)
    assert f4.mean() < 0.75 * f1.mean()  # about n^(-1/2): a factor 1/2 for four times the draws
    with pytest.raises(ValueError, match="finite"):
        bandit.wasserstein(torch.tensor([[float("nan")]]))


def test_bandit_noised_score_matches_quadrature():
    bandit = C.BimodalBandit()
    sde = LinearVP(0.1, 10.0, 1.0)
    score = bandit.noised_score(sde)
    g = np.linspace(-1, 1, 200001)
    dens = bandit.behaviour_pdf(g)
    x = np.linspace(-1.3, 1.3, 9)
    for t in (0.005, 0.05, 0.5):
        alpha, h = float(sde.alpha(t)), float(sde.h(t))

        def logp(y, alpha=alpha, h=h):
            k = np.exp(-((y[:, None] - alpha * g[None, :]) ** 2) / (2 * h)) / math.sqrt(2 * math.pi * h)
            return np.log(np.trapezoid(dens[None, :] * k, g, axis=1))

        fd = (logp(x + 1e-5) - logp(x - 1e-5)) / 2e-5
        ours = score(torch.as_tensor(x)[:, None], t)[:, 0].numpy()
        np.testing.assert_allclose(ours, fd, rtol=1e-4, atol=1e-3)
    with pytest.raises(TypeError, match="sde"):
        bandit.noised_score(None)


def test_ddpm_chain_clip():
    sde = LinearVP(0.1, 10.0, 1.0)
    times = time_grid(sde, 1e-2, 6, spacing="logsnr")

    def score(x, t):
        return -x / (4.0 * sde.alpha(t)[:, None] ** 2 + sde.h(t)[:, None])  # N(0, 4) data: leaves the box

    start = torch.randn(400, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = C.ddpm_chain(score, start, times, sde=sde, generator=1)
    loose = C.ddpm_chain(score, start, times, sde=sde, generator=1, clip=1e6)
    torch.testing.assert_close(loose, plain, atol=1e-10, rtol=0)
    boxed = C.ddpm_chain(score, start, times, sde=sde, generator=1, clip=0.5)
    assert float(plain.abs().max()) > 0.5 and float(boxed.abs().max()) <= 0.5
    with pytest.raises(ValueError, match="clip"):
        C.ddpm_chain(score, start, times, sde=sde, clip=0.0)


def test_exact_score_chain_needs_more_than_five_steps():
    bandit = C.BimodalBandit()
    sde = LinearVP(0.1, 10.0, 1.0)
    score = bandit.noised_score(sde)
    tol = float(np.quantile(bandit.wasserstein_floor(4000, 100, generator=6), 0.975))
    w1 = {}
    for name, times in {"N = 5": time_grid(sde, 0.2, 4, spacing="uniform"),
                        "20": time_grid(sde, 1e-2, 19, spacing="logsnr")}.items():
        start = torch.randn(4000, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        w1[name] = bandit.wasserstein(C.ddpm_chain(score, start, times, sde=sde, generator=8, clip=1.0))
    assert w1["20"] <= tol < 0.1 < w1["N = 5"]


def test_diffusion_ql_loss_with_the_chain_times():
    from diffnotes.networks import as_score

    bandit = C.BimodalBandit()
    s, a, _ = bandit.dataset(64, generator=0)
    sde = LinearVP(0.1, 10.0, 1.0)
    model = as_score(C.ObservationScoreMLP(1, 1, hidden=8, depth=1, generator=0), "eps", sde, conditional=True)
    times = time_grid(sde, 1e-2, 3, spacing="logsnr")
    ours = C.diffusion_ql_loss(model, a, s, q=bandit.q, eta=0.0, times=times, sde=sde, dsm_times="chain",
                               generator=3)
    gen = torch.Generator().manual_seed(3)
    t = times[torch.randint(0, times.numel(), (64,), generator=gen)]
    ref = C.policy_dsm_loss(model, a, s, 5e-3, sde=sde, generator=gen, t=t)
    assert float(ours.detach()) == float(ref.detach())
    ql = C.diffusion_ql_loss(model, a, s, q=bandit.q, eta=1.0, times=times, sde=sde, dsm_times="chain", clip=1.0,
                             generator=3)
    ql.backward()
    assert all(p.grad is not None and torch.all(torch.isfinite(p.grad)) for p in model.parameters())
    with pytest.raises(ValueError, match="dsm_times"):
        C.diffusion_ql_loss(model, a, s, q=bandit.q, eta=0.0, times=times, sde=sde, dsm_times="grid")


def test_fit_diffusion_ql_returns_the_training_chain_and_warm_starts():
    bandit = C.BimodalBandit()
    s, a, _ = bandit.dataset(200, generator=0)
    kw = dict(q=bandit.q, n_steps=3, clip=1.0, steps=3, batch_size=32, hidden=8, depth=1)
    bc = C.fit_diffusion_ql(s, a, eta=0.0, generator=1, **kw)
    assert isinstance(bc, C.DiffusionQLPolicy) and bc.losses.shape == (3,)
    assert bc.times.numel() == 4 and isinstance(bc.sde, LinearVP) and bc.sde.beta_max == 10.0
    obs = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
    act = bc(obs, generator=2)
    assert act.shape == (50, 1) and float(act.abs().max()) <= 1.0
    torch.testing.assert_close(act, bc(obs, generator=2))  # one generator, one draw
    # the policy is the chain of ddpm_chain with the same draws
    g = torch.Generator().manual_seed(2)
    start = torch.randn(50, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = C.ddpm_chain(lambda x, t: bc.score(x, obs, t), start, bc.times, sde=bc.sde, generator=g, clip=1.0)
    torch.testing.assert_close(act, ref)
    before = [p.clone() for p in bc.score.parameters()]
    ql = C.fit_diffusion_ql(s, a, eta=1.0, init=bc, generator=3, **kw)
    assert all(torch.equal(p, q) for p, q in zip(before, bc.score.parameters(), strict=True))  # init untouched
    assert any(not torch.equal(p, q) for p, q in zip(before, ql.score.parameters(), strict=True))
    with pytest.raises(TypeError, match="init"):
        C.fit_diffusion_ql(s, a, eta=1.0, init=object(), generator=3, **kw)
    with pytest.raises(ValueError, match="dimensions"):
        C.fit_diffusion_ql(s, torch.cat([a, a], 1), eta=1.0, init=bc, generator=3, **kw)
