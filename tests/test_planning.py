"""Tests of diffnotes.planning: the radial point-mass environment, offline trajectories, inverse dynamics, the
return-conditioned trajectory model with classifier-free guidance, inpainted plans and the Gaussian baseline."""

import math
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from diffnotes import planning as P
from diffnotes.losses import dsm_loss
from diffnotes.parameterization import as_score
from diffnotes.sde import CosineVP


@pytest.fixture(scope="module")
def data():
    return P.offline_trajectories(200, generator=0)


def gaussian_score(x, y, t):
    """The score of N(0, I) diffused by any VP process (N(0, I) at every t); ignores the return."""
    return -x


# -- the environment -------------------------------------------------------------------------------------------
def test_gymnasium_checker_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports problems as warnings: none allowed
        check_env(P.RadialPointMassEnv(), skip_render_check=True)


def test_reset_is_reproducible_and_rewards_telescope():
    env = P.RadialPointMassEnv()
    s0, _ = env.reset(seed=3)
    assert np.array_equal(s0, P.RadialPointMassEnv().reset(seed=3)[0])
    assert np.all(np.abs(s0) <= env.start_half_width)
    total, truncated, k = 0.0, False, 0
    rng = np.random.default_rng(0)
    while not truncated:
        s, r, terminated, truncated, _ = env.step(rng.uniform(-1, 1, size=2))
        assert not terminated
        total, k = total + r, k + 1
    assert k == 16
    assert total == pytest.approx(np.hypot(*s) - np.hypot(*s0), abs=1e-12)


def test_step_rejects_bad_actions():
    env = P.RadialPointMassEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(TypeError):
        env.step("up")


# -- offline data -------------------------------------------------------------------------------------------------
def test_offline_trajectories_shapes_returns_and_spread(data):
    n = 200
    assert data.states.shape == (n, 17, 2) and data.actions.shape == (n, 16, 2) and data.returns.shape == (n,)
    assert data.horizon == 16
    ret = data.states[:, -1].norm(dim=1) - data.states[:, 0].norm(dim=1)
    assert torch.allclose(data.returns, ret, atol=1e-12)
    assert float(data.actions.abs().max()) <= 1.0  # inside the box: logged transitions are exactly linear
    steps = data.states[:, 1:] - data.states[:, :-1]
    assert torch.allclose(steps, 0.1 * data.actions, atol=1e-12)
    scripted = data.returns[~data.random]
    assert float(scripted.max()) > 1.0 and float(scripted.min()) < 0.2  # a spread of returns
    again = P.offline_trajectories(200, generator=0)
    assert torch.equal(again.states, data.states)


@pytest.mark.parametrize("kw", [dict(n_episodes=0), dict(random_fraction=1.5), dict(max_speed=1.0),
                                dict(action_noise=-0.1), dict(horizon=0)])
def test_offline_trajectories_bad_input(kw):
    args = dict(n_episodes=5) | kw
    with pytest.raises(ValueError):
        P.offline_trajectories(**args, generator=0)


# -- inverse dynamics ---------------------------------------------------------------------------------------------
def test_inverse_dynamics_is_exact_on_noiseless_trajectories(data):
    idm = P.InverseDynamics(data.states, data.actions)
    assert idm.residual < 1e-10
    W = idm.weights  # rows: s (2), s' (2), 1; the exact model is (s' - s) / dt
    expected = torch.cat([-10 * torch.eye(2), 10 * torch.eye(2), torch.zeros(1, 2)]).to(torch.float64)
    assert torch.allclose(W, expected, atol=1e-8)
    held_out = P.offline_trajectories(30, generator=1)
    assert torch.allclose(idm.on_trajectories(held_out.states), held_out.actions, atol=1e-10)


def test_inverse_dynamics_and_execute_realise_a_feasible_plan_exactly(data):
    idm = P.InverseDynamics(data.states, data.actions)
    start = P.reset_states(5, seed=7)
    velocity = torch.tensor([[0.3, -0.5], [1.0, 0.0], [-0.2, 0.9], [0.0, 0.0], [0.7, 0.7]], dtype=torch.float64)
    plans = start[:, None, :] + 0.1 * torch.arange(17, dtype=torch.float64)[None, :, None] * velocity[:, None, :]
    run = P.execute(idm.on_trajectories(plans), seed=7)
    assert np.allclose(run.states, plans.numpy(), atol=1e-12)
    expected = plans[:, -1].norm(dim=1) - plans[:, 0].norm(dim=1)
    assert np.allclose(run.returns, expected.numpy(), atol=1e-12)


def test_inverse_dynamics_bad_input(data):
    with pytest.raises(ValueError, match="actions must have shape"):
        P.InverseDynamics(data.states, data.actions[:, :-1])
    bad = data.states.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        P.InverseDynamics(bad, data.actions)
    with pytest.raises(TypeError):
        P.InverseDynamics(data.states.long(), data.actions)
    idm = P.InverseDynamics(data.states, data.actions)
    with pytest.raises(ValueError, match="shape"):
        idm(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="d = 2"):
        idm.on_trajectories(torch.zeros(3, 5, 3, dtype=torch.float64))


# -- execution -------------------------------------------------------------------------------------------------------
def test_execute_rejects_actions_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(n, H, 2\)"):
        P.execute(torch.zeros(4, 16, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        P.execute(torch.zeros(4, 32, dtype=torch.float64))
    a = torch.zeros(2, 16, 2, dtype=torch.float64)
    a[1, 3, 0] = math.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        P.execute(a)


# -- the network, the loss and guidance ------------------------------------------------------------------------------
def test_network_treats_nan_returns_as_the_null_condition():
    net = P.TrajectoryScoreMLP(4, 2, hidden=16, depth=2, return_scale=2.0, generator=0)
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 0.3)
    y = torch.tensor([0.5, math.nan, 1.0, math.nan, 0.0, 2.0])
    out = net(x, y, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a null row is the network on the features (0, 0); a conditioned one on (y / scale, 1)
    emb = net.embedding(t)
    manual = net.net(torch.cat([x, torch.zeros(6, 2), emb], 1))
    assert torch.allclose(out[1], manual[1]) and torch.allclose(out[3], manual[3])
    manual = net.net(torch.cat([x, torch.stack([y.nan_to_num(0) / 2, torch.ones(6)], 1), emb], 1))
    assert torch.allclose(out[0], manual[0]) and torch.allclose(out[5], manual[5])
    with pytest.raises(ValueError, match="finite"):
        net(x, torch.full((6,), math.inf), t)
    with pytest.raises(ValueError, match="one return per row"):
        net(x, torch.zeros(5), t)


def test_loss_with_and_without_dropout_matches_dsm_loss():
    net = P.TrajectoryScoreMLP(4, 2, hidden=16, depth=2, generator=0).double()
    model = as_score(net, "eps", conditional=True)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 10, generator=g, dtype=torch.float64)
    y = torch.rand(8, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) + 0.1
    eps = torch.randn(8, 10, generator=g, dtype=torch.float64)
    cond = dsm_loss(lambda x, tt: model(x, y, tt), x0, t=t, eps=eps)
    null = dsm_loss(lambda x, tt: model(x, torch.full_like(y, math.nan), tt), x0, t=t, eps=eps)
    assert torch.allclose(P.trajectory_dsm_loss(model, x0, y, p_uncond=0.0, t=t, eps=eps, generator=0), cond)
    assert torch.allclose(P.trajectory_dsm_loss(model, x0, y, p_uncond=1.0, t=t, eps=eps, generator=0), null)
    with pytest.raises(ValueError, match="finite"):
        P.trajectory_dsm_loss(model, x0, y.clone().fill_(math.nan), generator=0)
    with pytest.raises(ValueError, match="p_uncond"):
        P.trajectory_dsm_loss(model, x0, y, p_uncond=1.5, generator=0)
    with pytest.raises(ValueError, match="one number or one per row"):
        P.trajectory_dsm_loss(model, x0, y[:3], generator=0)


def test_clean_data_weight_gives_the_clean_trajectory_mse():
    sde = CosineVP()
    net = P.TrajectoryScoreMLP(4, 2, hidden=16, depth=2, generator=0).double()
    model = as_score(net, "x0", sde, conditional=True)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 10, generator=g, dtype=torch.float64)
    y = torch.rand(8, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(8, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 10, generator=g, dtype=torch.float64)
    loss = P.trajectory_dsm_loss(model, x0, y, p_uncond=0.0, weight=P.clean_data_weight(sde), sde=sde, t=t,
                                 eps=eps, reduction="none")
    xt, _ = sde.perturb(x0, t, eps)
    mse = ((net(xt, y, t) - x0) ** 2).sum(1)
    assert torch.allclose(loss, mse, rtol=1e-9, atol=1e-12)


def test_return_guidance_combines_conditional_and_null_scores():
    def cond(x, y, t):
        return torch.where(torch.isnan(y)[:, None], -x, -x + y[:, None])

    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(P.return_guidance(cond, 0.7, eta=0.0)(x, 0.5), -x + 0.7)
    assert torch.allclose(P.return_guidance(cond, 0.7, eta=2.0)(x, 0.5), 3 * (-x + 0.7) - 2 * (-x))
    per_row = torch.arange(5, dtype=torch.float64)
    assert torch.allclose(P.return_guidance(cond, per_row, eta=1.0)(x, 0.5), -x + 2 * per_row[:, None])
    for bad in (math.nan, math.inf, [0.1, math.nan]):
        with pytest.raises(ValueError, match="finite"):
            P.return_guidance(cond, bad)
    with pytest.raises(ValueError, match=">= 0"):
        P.return_guidance(cond, 0.5, eta=-1.0)
    with pytest.raises(ValueError, match="one per row"):
        P.return_guidance(cond, per_row)(x[:3], 0.5)


# -- planning by inpainting ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gaussian_planner(data):
    return P.DecisionDiffuser(gaussian_score, P.InverseDynamics(data.states, data.actions), 16, 2, scale=2.0)


@pytest.mark.parametrize("method", ["replacement", "repaint"])
def test_inpainted_plans_hit_start_and_goal(gaussian_planner, method):
    start = P.reset_states(6, seed=0)
    goal = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.5, 0.5], [0.3, -0.8], [0.0, 0.0], [1.2, 1.2]],
                        dtype=torch.float64)
    plans = gaussian_planner.plan(start, goal=goal, n_steps=10, method=method, jump_length=2, n_resample=2,
                                  generator=0)
    assert plans.shape == (6, 17, 2)
    assert torch.equal(plans[:, 0], start) and torch.equal(plans[:, -1], goal)
    plans = gaussian_planner.plan(start, 0.8, n_steps=10, method=method, generator=0)
    assert torch.equal(plans[:, 0], start) and torch.isfinite(plans).all()
    assert gaussian_planner.actions(plans).shape == (6, 16, 2)


def test_plan_bad_input(gaussian_planner):
    start = P.reset_states(3, seed=0)
    for bad in (math.nan, math.inf, [0.2, -math.inf, 0.1]):
        with pytest.raises(ValueError, match="finite"):
            gaussian_planner.plan(start, bad, n_steps=5)
    with pytest.raises(ValueError, match="one number or one per row"):
        gaussian_planner.plan(start, [0.1, 0.2], n_steps=5)
    with pytest.raises(ValueError, match="method"):
        gaussian_planner.plan(start, 0.5, n_steps=5, method="dps")
    with pytest.raises(ValueError, match="one row per start"):
        gaussian_planner.plan(start, goal=torch.zeros(2, 2, dtype=torch.float64), n_steps=5)
    with pytest.raises(ValueError, match="d = 2"):
        gaussian_planner.plan(torch.zeros(3, 3, dtype=torch.float64), 0.5, n_steps=5)
    with pytest.raises(ValueError, match="NaN"):
        gaussian_planner.plan(torch.full((3, 2), math.nan, dtype=torch.float64), 0.5, n_steps=5)
    with pytest.raises(ValueError, match=">= 0"):
        gaussian_planner.plan(start, 0.5, eta=-0.5, n_steps=5)
    with pytest.raises(ValueError, match="finite"):
        P.plan_and_execute(gaussian_planner, math.nan, 3)


# -- the Gaussian baseline ---------------------------------------------------------------------------------------------
def test_gaussian_planner_conditions_exactly_and_averages_the_ring(data):
    g = P.GaussianTrajectoryPlanner(data)
    start = P.reset_states(4, seed=0)
    goal = torch.tensor([[0.5, 0.5], [-1.0, 0.0], [0.0, 0.2], [0.8, -0.3]], dtype=torch.float64)
    plans = g.plan(start, 1.0, goal=goal)
    assert torch.equal(plans[:, 0], start) and torch.equal(plans[:, -1], goal)
    # the mean trajectory of return 1 given the start: every direction is averaged, the end stays near the start
    mean_end = g.plan(start, 1.0)[:, -1]
    assert float((mean_end - start).norm(dim=1).max()) < 0.3
    draws = P.GaussianTrajectoryPlanner(data, mode="sample").plan(start, 1.0, generator=0)
    assert torch.equal(draws[:, 0], start) and not torch.allclose(draws, g.plan(start, 1.0))
    with pytest.raises(ValueError, match="mode"):
        P.GaussianTrajectoryPlanner(data, mode="median")
    with pytest.raises(ValueError, match="finite"):
        g.plan(start, math.nan)


# -- end to end --------------------------------------------------------------------------------------------------------
def test_fit_and_plan_and_execute_end_to_end(data):
    planner = P.fit_decision_diffuser(data, sde=CosineVP(), steps=60, hidden=32, depth=2, batch_size=64,
                                      generator=0)
    assert planner.losses.shape == (60,) and np.isfinite(planner.losses).all()
    r = P.plan_and_execute(planner, [0.2, 0.6, 1.0], 3, seed=5, generator=0, n_steps=8)
    assert r.plans.shape == (3, 17, 2) and r.actions.shape == (3, 16, 2) and r.executed.shape == (3, 17, 2)
    assert np.array_equal(r.plans[:, 0], r.start) and np.array_equal(r.executed[:, 0], r.start)
    assert np.allclose(r.returns, np.linalg.norm(r.executed[:, -1], axis=1) - np.linalg.norm(r.start, axis=1))
    with pytest.raises(TypeError, match="TrajectoryData"):
        P.fit_decision_diffuser(data.states, steps=1)
    with pytest.raises(ValueError, match="prediction"):
        P.fit_decision_diffuser(data, steps=1, prediction="v")


# -- the trajectory normalisation ------------------------------------------------------------------------------------
def test_rms_normalization_gives_the_data_unit_second_moment(data):
    planner = P.fit_decision_diffuser(data, steps=3, hidden=16, depth=1, batch_size=32, normalization="rms",
                                      generator=0)
    assert isinstance(planner.scale, float)
    assert float((data.states / planner.scale).pow(2).mean()) == pytest.approx(1.0, rel=1e-12)
    r = P.plan_and_execute(planner, [0.3, 0.9], 2, seed=1, generator=0, n_steps=4)
    assert np.array_equal(r.plans[:, 0], r.start) and np.isfinite(r.plans).all()
    default = P.fit_decision_diffuser(data, steps=1, hidden=8, depth=1, generator=0)
    assert default.scale == float(data.states.abs().max())
    with pytest.raises(ValueError, match="normalization"):
        P.fit_decision_diffuser(data, steps=1, normalization="minmax")
