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
    bandit = C.BimodalBandit(sigma_b=0.15, sigma_r=0.1)
    s, a, r = bandit.dataset(40000, generator=0)
    resid = r - bandit.q(s, a)
    # the residual is the reward noise: mean 0 within 5 standard errors, standard deviation sigma_r
    assert abs(float(resid.mean())) < 5 * 0.1 / math.sqrt(40000)
    assert float(resid.std()) == pytest.approx(0.1, rel=0.02)
    assert float(bandit.in_support(a).double().mean()) > 0.99  # 3 sigma_b holds 99.7 % of each mode
    with pytest.raises(ValueError, match="sigma_b"):
        C.BimodalBandit(sigma_b=0.0)
    with pytest.raises(ValueError, match="s and a"):
        bandit.q(s[:3], a)
