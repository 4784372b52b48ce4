"""Tests of diffnotes.finetune: prompts and images, the sampler as a policy, and the fine-tuning methods."""

import math

import numpy as np
import pytest
import torch

from diffnotes import finetune as ft
from diffnotes.oracle import gaussian_output_law_full
from diffnotes.samplers import ddim, time_grid
from diffnotes.sde import ConstantVP
from diffnotes.targets import Gaussian

SDE = ConstantVP(T=5.0)


@pytest.fixture
def gauss():
    target = Gaussian([1.0, -0.5], [0.5, 2.0], sde=SDE)
    times = time_grid(SDE, 1e-2, 8, "logsnr")
    return target, times


def test_prompts_and_images_roundtrip():
    assert ft.N_PROMPTS == 12
    assert ft.prompt_index(("cross", "bright", "right")) == ft.PROMPTS.index(("cross", "bright", "right"))
    assert ft.prompt_index({"shape": "bar", "intensity": "dim", "position": "left"}) == ft.PROMPTS.index(
        ("bar", "dim", "left"))
    x, y = ft.make_images(200, generator=0)
    assert x.shape == (200, 64) and x.dtype == torch.float64
    assert torch.equal(ft.read_prompt(x), y)
    x2, y2 = ft.make_images(200, generator=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_prompt_outside_attribute_set():
    with pytest.raises(ValueError, match="shape must be one of"):
        ft.prompt_index(("circle", "dim", "left"))
    with pytest.raises(ValueError, match="position must be one of"):
        ft.prompt_index(("bar", "dim", "top"))
    with pytest.raises(ValueError, match="attributes"):
        ft.prompt_index({"shape": "bar"})
    with pytest.raises(ValueError, match="prompt labels must lie"):
        ft.make_images(3, prompts=[0, 1, 12])
    with pytest.raises(ValueError, match="prompt labels must lie"):
        ft.prompt_score(lambda x, y, t: x, 13)


def test_prompt_network_null_prompt_and_training():
    net = ft.PromptScoreMLP(hidden=16, depth=1, generator=0)
    x = torch.randn(5, 64)
    out = net(x, torch.tensor([0, 3, 12, 5, 11]), torch.full((5,), 0.5))
    assert out.shape == (5, 64)
    x, y = ft.make_images(256, generator=1)
    res = ft.train_prompt_score(x, y, steps=30, hidden=32, generator=2)
    assert res.losses[-5:].mean() < res.losses[:5].mean()
    s = ft.prompt_score(res.ema_model, 4, guidance=1.0)
    assert s(torch.randn(3, 64), 1.0).shape == (3, 64)


def test_step_coefficients_reproduce_ddim(gauss):
    target, times = gauss
    start = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for eta in (0.3, 1.0):
        chain = ft.sample_chain(target.score, start, times, sde=SDE, eta=eta, generator=5)
        ref = ddim(target.score, start, times, sde=SDE, eta=eta, generator=5)
        torch.testing.assert_close(chain.final, ref, rtol=0, atol=1e-12)


def test_log_probs_match_direct_gaussian_density(gauss):
    target, times = gauss
    start = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    chain = ft.sample_chain(target.score, start, times, sde=SDE, eta=0.8, generator=3)
    for k in range(times.numel() - 1):
        t, tn = float(times[k]), float(times[k + 1])
        c, d, sigma = ft.step_coefficients(SDE, t, tn, 0.8)
        x = chain.states[k]
        mean = c * x + d * target.score(x, torch.full((6,), t, dtype=torch.float64))
        direct = torch.distributions.MultivariateNormal(mean, sigma**2 * torch.eye(2, dtype=torch.float64))
        torch.testing.assert_close(chain.log_probs[k], direct.log_prob(chain.states[k + 1]))
        lp = ft.transition_log_prob(target.score, x, chain.states[k + 1], t, tn, sde=SDE, eta=0.8)
        torch.testing.assert_close(lp, direct.log_prob(chain.states[k + 1]))


def test_chain_output_law_matches_oracle(gauss):
    target, times = gauss
    m, S = gaussian_output_law_full(ddim, target, times, eta=1.0)
    chain = ft.sample_chain(target.score, torch.randn(20000, 2, generator=torch.Generator().manual_seed(2),
                                                      dtype=torch.float64), times, sde=SDE, generator=4)
    x = chain.final
    se = torch.sqrt(torch.diag(S) / x.shape[0])
    assert torch.all((x.mean(0) - m).abs() < 4 * se)


def test_reinforce_gradient_unbiased_closed_form(gauss):
    """E[r(x_K) sum_k grad log pi_k] equals the exact gradient of E r(x_K) w.r.t. a common score offset."""
    target, times = gauss
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def score(x, t):
        return target.score(x, t) + theta

    # exact gradient: the chain is affine, so E x_K is the chain of means with zero noise from the start mean 0
    mean_chain = ft.sample_chain(score, torch.zeros(1, 2, dtype=torch.float64), times, sde=SDE,
                                 grad_steps=None, noise=torch.zeros_like)
    (exact,) = torch.autograd.grad(mean_chain.final[0] @ b, theta)
    n = 20000
    chain = ft.sample_chain(score, torch.randn(n, 2, generator=torch.Generator().manual_seed(7),
                                               dtype=torch.float64), times, sde=SDE, generator=8)
    r = chain.final @ b
    per = torch.zeros(n, 2, dtype=torch.float64)
    for k in range(times.numel() - 1):
        t, tn = float(times[k]), float(times[k + 1])
        x = chain.states[k].clone()
        th = theta.detach().clone().requires_grad_(True)
        lp = ft.transition_log_prob(lambda z, tt, th=th: target.score(z, tt) + th, x, chain.states[k + 1], t, tn,
                                    sde=SDE)
        (g,) = torch.autograd.grad(lp.sum(), th, is_grads_batched=False)
        # per-sample gradient of log pi: d (x' - mean) / sigma^2, the sum over rows is g
        c, d, sigma = ft.step_coefficients(SDE, t, tn)
        mean = c * x + d * target.score(x, torch.full((n,), t, dtype=torch.float64))
        per_k = d * (chain.states[k + 1] - mean) / sigma**2
        torch.testing.assert_close(per_k.sum(0), g)
        per = per + per_k
    est = (r[:, None] * per)
    z = (est.mean(0) - exact) / (est.std(0) / math.sqrt(n))
    assert torch.all(z.abs() < 4), z


def test_backprop_through_sampler_matches_finite_differences(gauss):
    target, times = gauss
    ctrl = ft.StepControl(2, times)
    with torch.no_grad():
        ctrl.offsets.copy_(0.1 * torch.randn(ctrl.offsets.shape, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64))
    model = ft.ControlledScore(target.score, ctrl)
    start = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(grad_steps=None, final=True):
        chain = ft.sample_chain(model, start, times, sde=SDE, generator=9, grad_steps=grad_steps,
                                final_denoise=final)
        return (torch.sin(chain.final) ** 2).sum()

    L = loss()
    L.backward()
    g = ctrl.offsets.grad.clone()
    eps = 1e-6
    for k, j in [(0, 0), (3, 1), (7, 0), (8, 1)]:
        with torch.no_grad():
            ctrl.offsets[k, j] += eps
            up = float(loss())
            ctrl.offsets[k, j] -= 2 * eps
            down = float(loss())
            ctrl.offsets[k, j] += eps
        assert abs((up - down) / (2 * eps) - float(g[k, j])) < 1e-6 * (1 + abs(float(g[k, j])))
    # truncation: only the last step's offset (and none before) gets a gradient from the last step
    ctrl.offsets.grad = None
    loss(grad_steps=1, final=False).backward()
    grad = ctrl.offsets.grad
    assert torch.all(grad[:-2] == 0) and torch.all(grad[-1] == 0) and torch.all(grad[-2] != 0)


def test_chain_kl_exact_for_constant_offsets(gauss):
    target, times = gauss
    ctrl = ft.StepControl(2, times)
    with torch.no_grad():
        ctrl.offsets.fill_(0.3)
    model = ft.ControlledScore(target.score, ctrl)
    chain = ft.sample_chain(model, torch.randn(4, 2, dtype=torch.float64), times, sde=SDE, generator=0)
    kl = ft.chain_kl(model, target.score, chain, sde=SDE)
    expect = sum(ft.step_coefficients(SDE, float(times[k]), float(times[k + 1]))[1] ** 2 * 2 * 0.09
                 / (2 * ft.step_coefficients(SDE, float(times[k]), float(times[k + 1]))[2] ** 2)
                 for k in range(times.numel() - 1))
    torch.testing.assert_close(kl, torch.full((4,), expect, dtype=torch.float64))


@pytest.mark.parametrize("method", ["ddpo", "dpok", "backprop", "guidance"])
def test_methods_raise_reward(method, gauss):
    target, times = gauss
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    model = ft.ControlledScore(target.score, ft.StepControl(2, times))
    res = ft.finetune(method, model, target.score, lambda x: x @ b, times=times, dim=2, beta=1.0, sde=SDE,
                      n_iters=40, batch_size=64, lr=0.2, grad_steps=None, generator=0)
    assert res.reward.shape == (40,) and np.all(np.isfinite(res.kl))
    if method == "guidance":
        assert res.reward.mean() > float(target.mean() @ b) + 0.2
    else:
        assert res.reward[-10:].mean() > res.reward[0] + 0.2  # iteration 0 is the pretrained chain


def test_finetune_bad_inputs(gauss):
    target, times = gauss
    model = ft.ControlledScore(target.score, ft.StepControl(2, times))
    kw = dict(times=times, dim=2, sde=SDE, n_iters=1, batch_size=4)
    with pytest.raises(ValueError, match="beta must be"):
        ft.finetune("ddpo", model, target.score, lambda x: x[:, 0], beta=-1.0, **kw)
    with pytest.raises(ValueError, match="DPOK.*beta must be > 0"):
        ft.finetune("dpok", model, target.score, lambda x: x[:, 0], beta=0.0, **kw)
    with pytest.raises(ValueError, match="clipping range"):
        ft.finetune("ddpo", model, target.score, lambda x: x[:, 0], clip=0.0, **kw)
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        ft.finetune("ddpo", model, target.score, lambda x: x, **kw)
    with pytest.raises(ValueError, match="method"):
        ft.finetune("ppo", model, target.score, lambda x: x[:, 0], **kw)
    with pytest.raises(ValueError, match="eta"):
        ft.step_coefficients(SDE, 1.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="grid times"):
        ft.StepControl(2, times)(torch.zeros(1, 2, dtype=torch.float64), 0.123456)
    with pytest.raises(ValueError, match="prompt labels"):
        ft.finetune("ddpo", model, target.score, lambda x: x[:, 0], prompts=[20], **kw)


def test_stacked_log_probs_equal_stepwise(gauss):
    target, times = gauss
    chain = ft.sample_chain(target.score, torch.randn(5, 2, dtype=torch.float64), times, sde=SDE, eta=0.6,
                            generator=1)
    lp = ft.chain_log_probs(target.score, chain, sde=SDE, eta=0.6)
    torch.testing.assert_close(lp, chain.log_probs)


@pytest.mark.parametrize("method", ["ddpo", "dpok", "backprop", "guidance"])
def test_methods_with_prompts_run(method):
    from diffnotes.networks import as_score

    net = as_score(ft.PromptScoreMLP(hidden=8, depth=1, generator=0), "eps", SDE, conditional=True)
    ref = as_score(ft.PromptScoreMLP(hidden=8, depth=1, generator=0), "eps", SDE, conditional=True)
    ref.requires_grad_(False)
    times = time_grid(SDE, 1e-3, 3, "logsnr")
    res = ft.finetune(method, net, ref, ft.brightness, times=times, dim=64, beta=0.1, sde=SDE, n_iters=2,
                      batch_size=4, prompts=[0, 5, 11], guidance=1.0, final_denoise=True, generator=0)
    assert res.reward.shape == (2,) and np.all(np.isfinite(res.kl)) and np.all(res.kl >= 0)
    assert abs(res.kl[0]) < 1e-12 or method == "guidance"  # the copy starts at the reference
