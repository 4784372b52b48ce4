"""Tests for diffnotes.ising: exact Ising posterior means, message passing, and the ResNet that unrolls it."""

import itertools
import math

import pytest
import torch

from diffnotes.ising import CORRECTIONS, IsingModel, MessagePassingResNet, random_couplings
from diffnotes.sde import ConstantVP, LinearVP


def _model(D, op, seed=0, sde=None):
    g = torch.Generator().manual_seed(seed)
    return IsingModel(random_couplings(D, op, g), sde), g


def _brute_force(A, x, alpha, h):
    """Posterior mean E[sigma | x] from the joint p(sigma) N(x; alpha sigma, h I), by explicit loops."""
    D = A.shape[0]
    out = []
    for row in x:
        num, den = torch.zeros(D, dtype=torch.float64), 0.0
        for s in itertools.product([-1.0, 1.0], repeat=D):
            s = torch.tensor(s, dtype=torch.float64)
            w = math.exp(float(s @ A @ s) - float(((row - alpha * s) ** 2).sum()) / (2 * h))
            num, den = num + w * s, den + w
        out.append(num / den)
    return torch.stack(out)


@pytest.mark.parametrize("sde", [ConstantVP(), LinearVP()])
def test_enumeration_against_brute_force(sde):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = 0.3 * (A + A.T)  # a diagonal too: it must not matter
    model = IsingModel(A, sde)
    # probabilities
    configs = model.configurations()
    logits = torch.einsum("ni,ij,nj->n", configs, A, configs)
    assert torch.allclose(model.probabilities(), torch.softmax(logits, 0), atol=1e-14, rtol=0)
    # posterior mean
    t = 0.4 * sde.T
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    alpha, h = float(sde.alpha(t)), float(sde.h(t))
    assert torch.allclose(model.denoiser(x, t), _brute_force(A, x, alpha, h), atol=1e-12, rtol=0)


def test_exact_score_is_gradient_of_log_density():
    model, g = _model(6, 0.3)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    for t in [0.05, 0.7, 3.0]:
        (grad,) = torch.autograd.grad(model.marginal_log_prob(x, t).sum(), x)
        assert torch.allclose(model.exact_score(x.detach(), t), grad, atol=1e-10, rtol=0)


def test_conditionals_match_enumeration():
    model, g = _model(4, 0.4)
    sigma = model.configurations()
    p = model.probabilities().reshape(-1)
    for i in range(4):
        flip = sigma.clone()
        flip[:, i] = -flip[:, i]
        idx = ((flip + 1) / 2 * 2 ** torch.arange(4)).sum(1).long()
        odds = torch.log(p / p[idx]) * sigma[:, i]  # log p(+1 | rest) / p(-1 | rest)
        assert torch.allclose(model.flip_log_odds(sigma, i), odds, atol=1e-12)


def _errors(model, g, t, n_iter, correction, n=400):
    x = model.sde.marginal_sample(model.sample(n, g), t, g)[0]
    exact = model.denoiser(x, t)
    its = model.message_passing(x, t, n_iter, correction, return_all=True)
    return ((its - exact) ** 2).sum(-1).mean(-1).sqrt()


def test_message_passing_error_falls_with_depth_and_temperature():
    floors = {}
    for op in [0.05, 0.1, 0.2]:
        model, g = _model(12, op)
        for corr in ("naive", "tap"):
            err = _errors(model, g, 1.0, 12, corr)
            assert err[4] < 0.1 * err[1]  # measured ratios 0.02-0.07
            floors[op, corr] = float(err[-1])
    for corr in ("naive", "tap"):  # bias floor grows with ||A||_op (measured x3-x10 per doubling)
        assert floors[0.05, corr] < floors[0.1, corr] < floors[0.2, corr]
    for op in [0.05, 0.1, 0.2]:  # the Onsager correction removes most of the naive bias (measured x15-x60)
        assert floors[op, "tap"] < 0.25 * floors[op, "naive"]


def test_message_passing_fixed_point_solves_tap_equations():
    model, g = _model(12, 0.2)
    x = torch.randn(8, 12, generator=g, dtype=torch.float64)
    m = model.message_passing(x, 0.5, 200, "tap")
    y = model.field_scale(0.5) * x
    resid = m - torch.tanh(m @ model.J + y - m * ((1 - m**2) @ model.J**2))
    assert float(resid.abs().max()) < 1e-12
    assert torch.allclose(model.mean_field(y, tap=True), m, atol=1e-10)


@pytest.mark.parametrize("correction", ["naive", "tap_linear"])
def test_resnet_with_constructed_weights_is_the_iteration(correction):
    model, g = _model(12, 0.2)
    L = 6
    net = MessagePassingResNet.from_model(model, L, correction)
    assert net.n_parameters() == L * (12 * 12**2 + 3 * 12)
    x = 2 * torch.randn(50, 12, generator=g, dtype=torch.float64)
    for t in [0.1, 1.0, 4.0]:
        m = model.message_passing(x, t, L, correction)
        assert torch.allclose(net.magnetisation(x, t), m, atol=1e-13, rtol=0)
        score = model.message_passing_score(L, correction)(x, t)
        assert torch.allclose(net(x, t), score, atol=1e-10 * (1 + float(score.abs().max())), rtol=0)


def test_message_passing_score_approaches_exact_score():
    model, g = _model(12, 0.1)
    x = model.sde.marginal_sample(model.sample(200, g), 1.0, g)[0]
    exact = model.exact_score(x, 1.0)
    approx = model.message_passing_score(20, "tap")(x, 1.0)
    rel = float((approx - exact).norm() / exact.norm())
    assert rel < 1e-3


def test_bad_inputs_raise():
    A = torch.zeros(4, 4, dtype=torch.float64)
    A[0, 1] = 0.3
    with pytest.raises(ValueError, match="symmetric"):
        IsingModel(A)
    with pytest.raises(ValueError):
        IsingModel(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        IsingModel(torch.full((3, 3), float("nan")))
    with pytest.raises(TypeError):
        IsingModel([["a"]])
    with pytest.raises(TypeError):
        IsingModel(torch.zeros(3, 3), sde="vp")
    big = IsingModel(torch.zeros(17, 17))
    with pytest.raises(ValueError, match="enumeration"):
        big.probabilities()
    model, _ = _model(5, 0.2)
    x = torch.zeros(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError):
        model.denoiser(torch.zeros(2, 4, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError):
        model.denoiser(x, 0.0)
    with pytest.raises(ValueError):
        model.message_passing(x, 0.5, -1)
    with pytest.raises(ValueError):
        model.message_passing(x, 0.5, 3, "bethe")
    with pytest.raises(ValueError):
        model.message_passing_score(2.5)
    with pytest.raises(ValueError):
        MessagePassingResNet.from_model(model, 3, "tap")
    with pytest.raises(ValueError):
        MessagePassingResNet(5, 0)
    with pytest.raises(TypeError):
        MessagePassingResNet.from_model("model", 3)
    with pytest.raises(ValueError):
        random_couplings(1, 0.2)
    with pytest.raises(ValueError):
        random_couplings(4, -0.2)
    assert set(CORRECTIONS) == {"naive", "tap", "tap_linear"}
