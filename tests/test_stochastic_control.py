"""Tests of diffnotes.stochastic_control: the tilted optimum, the h-transform and the Girsanov path KL."""

import functools
import math

import pytest
import torch

from diffnotes.losses import dsm_loss
from diffnotes.sde import ConstantVP
from diffnotes.stochastic_control import LinearGaussianScore, TiltedGaussian, girsanov_path_kl, tilted_frontier
from diffnotes.targets import Gaussian
from diffnotes.training import train

SDE = ConstantVP(T=5.0)
TARGET = Gaussian([1.0, -0.5], [[0.5, 0.2], [0.2, 2.0]], sde=SDE)
Q = [[0.5, 0.0], [0.0, 1.0]]


def test_h_transform_score_equals_autograd_of_log_h():
    law = TiltedGaussian(TARGET, [1.0, 0.5], 0.7, Q=Q)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.01, 4.5, 8, dtype=torch.float64)
    (g,) = torch.autograd.grad(law.log_h(x, t).sum(), x)
    torch.testing.assert_close(g, law.control(x.detach(), t), rtol=1e-10, atol=1e-12)
    # at small t, h_t(x) -> exp(r(x/alpha)/beta): log h tends to r/beta
    x0 = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(law.log_h(x0, 1e-9), law.reward(x0) / 0.7, rtol=1e-5, atol=1e-5)


def test_tilted_law_by_importance_weights():
    law = TiltedGaussian(TARGET, [1.0, 0.5], 0.7, Q=Q)
    x = TARGET.sample(400000, generator=torch.Generator().manual_seed(1))
    w = torch.exp(law.reward(x) / 0.7)
    w = w / w.sum()
    torch.testing.assert_close(w @ x, law.mean, atol=5e-3, rtol=0)
    # value = beta log E exp(r / beta)
    val = 0.7 * math.log(float(torch.exp(law.reward(x) / 0.7).mean()))
    assert abs(val - law.value()) < 5e-3


def test_linear_reward_shift_and_frontier():
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    law = TiltedGaussian(TARGET, b, 2.0)
    S = TARGET.covariance()
    torch.testing.assert_close(law.mean, TARGET.mean() + S @ b / 2.0)
    torch.testing.assert_close(law.cov, S)
    assert abs(law.kl() - float(b @ S @ b) / (2 * 4.0)) < 1e-12
    kl, rew = tilted_frontier(TARGET, b, [0.5, 1.0, 2.0])
    assert kl[0] > kl[1] > kl[2] and rew[0] > rew[1] > rew[2]


def test_tilted_bad_inputs():
    with pytest.raises(ValueError, match="beta must be"):
        TiltedGaussian(TARGET, [1.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="beta must be"):
        TiltedGaussian(TARGET, [1.0, 0.0], -1.0)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        TiltedGaussian(TARGET, [1.0, 0.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        TiltedGaussian(TARGET, [1.0, 0.0], 0.1, Q=[[-1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(TypeError, match="Gaussian"):
        TiltedGaussian("N(0,1)", [1.0], 1.0)


def test_girsanov_path_kl_equals_score_matching_gap():
    target = Gaussian([1.0, -0.5], [0.5, 2.0], sde=SDE)
    model = LinearGaussianScore(2, SDE, mean=[0.3, 0.0], var=[1.0, 1.0])
    t0 = 1e-2
    kl = girsanov_path_kl(target.score, model, target, t0=t0)
    n = 200000
    gen = torch.Generator().manual_seed(3)
    x0 = target.sample(n, generator=gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    t = torch.exp(math.log(t0) + u * (math.log(SDE.T) - math.log(t0)))  # log-uniform times, importance weight t
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    weight = lambda tt: 0.5 * SDE.g(tt) * tt * (math.log(SDE.T) - math.log(t0))  # noqa: E731
    with torch.no_grad():
        a = dsm_loss(model, x0, t0, weight=weight, sde=SDE, t=t, eps=eps, reduction="none")
        b = dsm_loss(target.score, x0, t0, weight=weight, sde=SDE, t=t, eps=eps, reduction="none")
    d = a - b
    assert abs(float(d.mean()) - kl) < 4 * float(d.std()) / math.sqrt(n)
    assert girsanov_path_kl(target.score, target.score, target, t0=t0) == 0.0
    with pytest.raises(ValueError, match="affine"):
        girsanov_path_kl(target.score, lambda x, tt: x**3, target, t0=t0)


def test_linear_control_fit_recovers_exact_score():
    target = Gaussian([1.0, -0.5], [0.5, 2.0], sde=SDE)
    x0 = target.sample(4000, generator=torch.Generator().manual_seed(4))
    model = LinearGaussianScore(2, SDE)
    train(model, functools.partial(dsm_loss, t0=1e-2, sde=SDE), (x0,), steps=600, batch_size=512, lr=0.05,
          generator=torch.Generator().manual_seed(5), progress=False)
    torch.testing.assert_close(model.mu.detach(), torch.tensor([1.0, -0.5], dtype=torch.float64), atol=0.08, rtol=0)
    torch.testing.assert_close(torch.exp(model.log_var.detach()), torch.tensor([0.5, 2.0], dtype=torch.float64),
                               rtol=0.1, atol=0)
