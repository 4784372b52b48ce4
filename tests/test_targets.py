"""Exact targets: scores against autograd, marginals against forward Monte Carlo, classes, validation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffnotes.sde import ConstantVP, LinearVP
from diffnotes.targets import Gaussian, GaussianMixture, SubspaceMixture, orthonormal_basis, ring_mixture


def random_mixture(gen, K=3, D=3, sde=None, labels=None):
    w = torch.rand(K, generator=gen, dtype=torch.float64) + 0.2
    means = 3 * torch.randn(K, D, generator=gen, dtype=torch.float64)
    B = torch.randn(K, D, D, generator=gen, dtype=torch.float64)
    covs = B @ B.transpose(1, 2) / D + 0.05 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture(w / w.sum(), means, covs, sde, labels)


@pytest.mark.parametrize("sde", [ConstantVP(), LinearVP()], ids=repr)
@pytest.mark.parametrize("K,D", [(1, 1), (3, 2), (5, 4)])
def test_score_is_the_gradient_of_the_log_density(sde, K, D):
    gen = torch.Generator().manual_seed(K * 10 + D)
    target = random_mixture(gen, K, D, sde)
    x = (4 * torch.randn(64, D, generator=gen, dtype=torch.float64)).requires_grad_()
    t = sde.T * (0.001 + 0.999 * torch.rand(64, generator=gen, dtype=torch.float64))
    (grad,) = torch.autograd.grad(target.log_prob(x, t).sum(), x)
    assert torch.allclose(target.score(x, t), grad, atol=1e-10, rtol=0)
    # Conditional scores are gradients of the component log-densities, and the class posterior is Bayes' rule.
    for y in range(target.n_classes):
        lc = target.class_log_posterior(x, t)[:, y]
        (g_cls,) = torch.autograd.grad(lc.sum(), x)
        assert torch.allclose(target.conditional_score(x, y, t), grad + g_cls, atol=1e-9, rtol=0)


def test_subspace_score_is_the_gradient_and_splits():
    gen = torch.Generator().manual_seed(1)
    A = orthonormal_basis(10, 2, gen)
    target = SubspaceMixture(A, [0.4, 0.6], [[1.0, -1.0], [-2.0, 0.5]], [[0.3, 0.1], [0.5, 0.2]])
    x = torch.randn(32, 10, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.rand(32, generator=gen, dtype=torch.float64) + 0.01
    (grad,) = torch.autograd.grad(target.log_prob(x, t).sum(), x)
    s = target.score(x, t)
    assert torch.allclose(s, grad, atol=1e-10, rtol=0)
    on, off = target.score_decomposition(x.detach(), t)
    assert torch.allclose(on + off, s, atol=1e-11, rtol=0)
    assert torch.allclose(off @ A, torch.zeros(32, 2, dtype=torch.float64), atol=1e-10)
    # The orthogonal part is exactly -(I - AA^T) x / h(t): it blows up like 1/h as t -> 0.
    small = target.score_decomposition(x.detach(), 1e-4)[1].norm(dim=1)
    assert torch.allclose(small * target.sde.h(1e-4), target.orthogonal(x.detach()).norm(dim=1))


def test_diffused_marginal_matches_forward_monte_carlo():
    gen = torch.Generator().manual_seed(2)
    target = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [[[0.25]], [[0.5]]])
    n = 20000
    for t in [0.05, 0.5, 2.0]:
        xt = target.sample_marginal(n, t, gen).numpy().ravel()
        grid = np.linspace(-8, 8, 4001)
        cdf = np.cumsum(np.exp(target.log_prob(torch.as_tensor(grid)[:, None], t).numpy())) * (grid[1] - grid[0])
        ks = stats.kstest(xt, lambda q, grid=grid, cdf=cdf: np.interp(q, grid, cdf))
        assert ks.pvalue > 1e-3, (t, ks)
        # Mean and variance of P_t in closed form.
        law = target.diffused(t)
        assert abs(xt.mean() - float(law.mean())) < 5 * math.sqrt(float(law.covariance()) / n)


def test_density_integrates_to_one_and_posteriors_sum_to_one():
    target = ring_mixture(8, 4.0, 0.3)
    xs = torch.linspace(-8, 8, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, xs)
    for t in [0.01, 1.0]:
        mass = torch.exp(target.log_prob(grid, t)).sum() * (16 / 400) ** 2
        assert abs(float(mass) - 1) < 1e-6
        assert torch.allclose(target.class_posterior(grid[:50], t).sum(1), torch.ones(50, dtype=torch.float64))


def test_labels_group_components_into_classes():
    target = GaussianMixture([0.25] * 4, [[-3.0], [-1.0], [1.0], [3.0]], [0.1] * 4, labels=[0, 0, 1, 1])
    assert target.n_classes == 2
    assert torch.allclose(target.class_weights(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    gen = torch.Generator().manual_seed(3)
    x, k = target.sample(1000, gen, y=1, return_labels=True)
    assert set(k.tolist()) <= {2, 3} and x.min() > -0.5


def test_gaussian_moments():
    g = Gaussian([1.0, -1.0], [0.5, 2.0])
    m, S = g.moments(1.0)
    a2 = math.exp(-1.0)
    assert torch.allclose(m, math.sqrt(a2) * torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(S, torch.diag(torch.tensor([0.5 * a2 + 1 - a2, 2 * a2 + 1 - a2], dtype=torch.float64)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(weights=[0.5, 0.6], means=[[0.0], [1.0]], covs=[1.0, 1.0]), "sum to 1"),
        (dict(weights=[1.5, -0.5], means=[[0.0], [1.0]], covs=[1.0, 1.0]), "non-negative"),
        (dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], covs=[1.0, 0.0]), "positive definite"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], covs=[1.0, 1.0, 1.0]), "covs must have shape"),
        (dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], covs=[1.0, 1.0], labels=[0, 2]), "labels"),
    ],
)
def test_bad_mixtures_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_bad_calls_are_refused():
    target = ring_mixture(3, 2.0, 0.5)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        target.score(x, 0.0)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        target.score(x, 11.0)
    with pytest.raises(ValueError, match="shape"):
        target.score(torch.zeros(4, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="class ids"):
        target.conditional_score(x, 3, 1.0)
    with pytest.raises(TypeError, match="integers"):
        target.conditional_score(x, 1.0, 1.0)
    with pytest.raises(ValueError, match="orthonormal"):
        SubspaceMixture(torch.ones(3, 1), [1.0], [[0.0]], [1.0])
    with pytest.raises(ValueError, match="cannot exceed"):
        orthonormal_basis(2, 3)


def test_cdf_of_a_one_dimensional_mixture():
    target = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [0.25, 0.5])
    grid = torch.linspace(-9, 9, 20001, dtype=torch.float64)
    for t in [0.0, 0.3, 3.0]:
        dens = torch.exp(target.log_prob(grid[:, None], t)) if t > 0 else torch.exp(target.data_log_prob(grid[:, None]))
        numeric = torch.cumulative_trapezoid(dens, grid)
        assert torch.allclose(target.cdf(grid[1:], t), numeric, atol=1e-7)
    with pytest.raises(ValueError, match="one-dimensional"):
        ring_mixture(3).cdf(torch.zeros(3), 1.0)
