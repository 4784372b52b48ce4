"""Score estimators without a network: empirical score, kernel score, subspace score, error helpers."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from diffnotes.estimators import (
    ConditionalKernelScore,
    ConditionedScore,
    EmpiricalScore,
    KernelScore,
    SubspaceScore,
    output_law,
    score_error,
    subspace_angle,
)
from diffnotes.metrics import wasserstein_1d_to_cdf
from diffnotes.samplers import exponential_integrator, time_grid
from diffnotes.sde import ConstantVP, LinearVP
from diffnotes.targets import Gaussian, SubspaceMixture, orthonormal_basis


def empirical_log_prob(x, data, sde, t, var_extra=0.0):
    """log (1/n) sum_i N(x; alpha x_i, (alpha^2 var_extra + h) I), written directly with differences."""
    a, h = sde.alpha(t), sde.h(t)
    v = a**2 * var_extra + h
    diff = x[:, None, :] - a * data[None, :, :]
    D = x.shape[1]
    logs = -(diff**2).sum(-1) / (2 * v) - 0.5 * D * torch.log(2 * math.pi * v)
    return torch.logsumexp(logs, 1) - math.log(data.shape[0])


@pytest.mark.parametrize("sde", [ConstantVP(), LinearVP()], ids=repr)
@pytest.mark.parametrize("t", [0.01, 0.3, 1.0])
def test_empirical_score_is_the_autograd_score(sde, t):
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    est = EmpiricalScore(data, sde)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64).requires_grad_()
    tt = torch.tensor(t, dtype=torch.float64)
    (grad,) = torch.autograd.grad(empirical_log_prob(x, data, sde, tt).sum(), x)
    assert torch.allclose(est.score(x.detach(), t), grad, atol=1e-10, rtol=0)
    assert torch.allclose(est.log_prob(x.detach(), t), empirical_log_prob(x.detach(), data, sde, tt), atol=1e-10)


def test_per_row_times_and_blocking(monkeypatch):
    import diffnotes.estimators as est_mod

    gen = torch.Generator().manual_seed(1)
    sde = ConstantVP()
    data = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    t = 0.05 + torch.rand(25, generator=gen, dtype=torch.float64)
    est = KernelScore(data, sde, bandwidth=0.3)
    full = est.score(x, t)
    monkeypatch.setattr(est_mod, "_BLOCK_ENTRIES", 64)  # two rows a block
    assert torch.allclose(est.score(x, t), full, atol=1e-13, rtol=0)
    row = torch.stack([est.score(x[i : i + 1], float(t[i]))[0] for i in range(25)])
    assert torch.allclose(row, full, atol=1e-13, rtol=0)


def test_kernel_score_is_the_diffused_kde_score():
    gen = torch.Generator().manual_seed(2)
    sde = ConstantVP()
    data = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64).requires_grad_()
    t, sig = 0.2, 0.4
    logp = empirical_log_prob(x, data, sde, torch.tensor(t, dtype=torch.float64), sig**2)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.allclose(KernelScore(data, sde, bandwidth=sig).score(x.detach(), t), grad, atol=1e-10, rtol=0)


def test_kernel_score_tends_to_the_empirical_score():
    gen = torch.Generator().manual_seed(3)
    sde = ConstantVP()
    data = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    emp = EmpiricalScore(data, sde).score(x, 0.1)
    gaps = [(KernelScore(data, sde, bandwidth=b).score(x, 0.1) - emp).abs().max() for b in [1e-2, 1e-3, 1e-4]]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5
    assert gaps[1] / gaps[2] > 50  # the gap is quadratic in the bandwidth


def test_floor_regularises_where_the_density_is_small():
    gen = torch.Generator().manual_seed(4)
    sde = ConstantVP()
    data = torch.randn(100, 1, generator=gen, dtype=torch.float64)
    plain = KernelScore(data, sde, bandwidth=0.2)
    floored = KernelScore(data, sde, bandwidth=0.2, floor=1e-3)
    x = torch.tensor([[0.0], [8.0]], dtype=torch.float64)
    p = plain.log_prob(x, 0.01).exp()
    expected = plain.score(x, 0.01) * torch.clamp(p / 1e-3, max=1.0)[:, None]
    assert torch.allclose(floored.score(x, 0.01), expected, atol=1e-12, rtol=0)
    assert torch.allclose(floored.score(x, 0.01)[0], plain.score(x, 0.01)[0])  # above the floor: unchanged
    assert floored.score(x, 0.01)[1].abs() < 1e-6 * plain.score(x, 0.01)[1].abs()  # far tail: shrunk to zero


def test_kernel_error_decreases_with_n():
    sde = ConstantVP()
    target = Gaussian([0.0, 0.0], 1.0, sde=sde)
    gen = torch.Generator().manual_seed(5)
    pts = target.sample_marginal(2000, 0.05, gen)
    errs = [score_error(KernelScore(target.sample(n, gen), sde), target, 0.05, points=pts).mean for n in [64, 4096]]
    assert errs[1] < 0.5 * errs[0]


def test_subspace_score_approaches_the_exact_score():
    gen = torch.Generator().manual_seed(6)
    sde = ConstantVP()
    D, d = 10, 2
    A = orthonormal_basis(D, d, gen)
    target = SubspaceMixture(A, [0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[0.4, 0.3], [0.3, 0.4]], sde=sde)
    data = target.sample(20000, gen)
    pts = target.sample_marginal(2000, 0.3, gen)
    for basis in [None, A]:
        est = SubspaceScore(data, sde, d, latent_bandwidth=0.05, basis=basis)
        err = score_error(est, target, 0.3, points=pts)
        assert err.mean < 2e-3 * err.norm
    est = SubspaceScore(data, sde, d)
    # Exact subspace data: PCA recovers span(A) up to the round-off of the sampler (an eigendecomposition of A S A^T).
    assert subspace_angle(est.V, A) < 1e-8
    # The orthogonal part is exactly the analytic -(I - V V^T) x / h.
    off = est.score(pts, 0.3) - est.score(pts, 0.3) @ est.V @ est.V.T
    assert torch.allclose(off, target.score_decomposition(pts, 0.3)[1], atol=1e-8)
    # A huge sample and a tiny bandwidth give the exact score to high accuracy, per point.
    small = score_error(SubspaceScore(data, sde, d, latent_bandwidth=0.02, basis=A), target, 0.3, points=pts)
    assert small.mean < 1e-3 * small.norm


def test_score_error_matches_direct_monte_carlo():
    sde = ConstantVP()
    target = Gaussian([0.0], 1.0, sde=sde)
    # s_hat = 0: the error is E ||s||^2 = 1 / (alpha^2 + h) = 1 for a standard Gaussian.
    zero = type("Zero", (), {"score": staticmethod(lambda x, t: torch.zeros_like(x))})()
    err = score_error(zero, target, 0.5, n_eval=20000, generator=torch.Generator().manual_seed(7))
    assert abs(err.mean - 1.0) < 4 * err.stderr and err.mean == err.norm


def test_bad_inputs_raise():
    sde = ConstantVP()
    data = torch.randn(10, 3, dtype=torch.float64)
    for bad in (-0.1, 0.0):
        with pytest.raises(ValueError, match="bandwidth must be positive"):
            KernelScore(data, sde, bandwidth=bad)
    with pytest.raises(ValueError, match="floor"):
        KernelScore(data, sde, bandwidth=0.1, floor=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        KernelScore(data[:1], sde)
    with pytest.raises(ValueError, match="at least 1"):
        EmpiricalScore(data[:0], sde)
    with pytest.raises(ValueError, match="cannot exceed"):
        SubspaceScore(data, sde, 4)
    with pytest.raises(ValueError, match="positive integer"):
        SubspaceScore(data, sde, 0)
    with pytest.raises(ValueError, match="n >= max"):
        SubspaceScore(data[:2], sde, 3)
    with pytest.raises(ValueError, match="shaped"):
        EmpiricalScore(torch.randn(10, dtype=torch.float64), sde)
    with pytest.raises(ValueError, match="shape"):
        EmpiricalScore(data, sde).score(torch.zeros(4, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="shape"):
        SubspaceScore(data, sde, 2).score(torch.zeros(4, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="t0"):
        EmpiricalScore(data, sde).score(data, 0.0)
    with pytest.raises(ValueError, match="basis"):
        SubspaceScore(data, sde, 2, basis=torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="VPSDE"):
        EmpiricalScore(data, "vp")
    with pytest.raises(ValueError, match="same shape"):
        subspace_angle(torch.eye(3, dtype=torch.float64)[:, :2], torch.eye(4, dtype=torch.float64)[:, :2])
    with pytest.raises(ValueError, match="n_eval"):
        score_error(EmpiricalScore(data, sde), Gaussian([0.0] * 3, 1.0), 0.5, n_eval=1)


# -- conditional kernel score, output law, density TV ------------------------------------------------------------
def conditional_log_prob(x, y, data, cond, sde, t, sig, b):
    """log sum_i w_i(y) N(x; alpha x_i, (alpha^2 sig^2 + h) I), w_i(y) proportional to exp(-|y - y_i|^2 / (2 b^2))."""
    lw = -((y[:, None, :] - cond[None, :, :]) ** 2).sum(-1) / (2 * b**2)
    lw = lw - torch.logsumexp(lw, 1, keepdim=True)
    a, h = sde.alpha(t), sde.h(t)
    v = a**2 * sig**2 + h
    diff = x[:, None, :] - a * data[None, :, :]
    logs = -(diff**2).sum(-1) / (2 * v) - 0.5 * x.shape[1] * torch.log(2 * math.pi * v)
    return torch.logsumexp(lw + logs, 1)


@pytest.mark.parametrize("d_y", [1, 2])
def test_conditional_score_is_the_autograd_score(d_y):
    gen = torch.Generator().manual_seed(10)
    sde = ConstantVP()
    data = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    cond = torch.rand(40, d_y, generator=gen, dtype=torch.float64)
    est = ConditionalKernelScore(data, cond, sde, bandwidth=0.3, y_bandwidth=0.2)
    x = torch.randn(25, 2, generator=gen, dtype=torch.float64).requires_grad_()
    y = torch.rand(25, d_y, generator=gen, dtype=torch.float64)
    t = torch.tensor(0.15, dtype=torch.float64)
    logp = conditional_log_prob(x, y, data, cond, sde, t, 0.3, 0.2)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.allclose(est.score(x.detach(), y, 0.15), grad, atol=1e-10, rtol=0)
    assert torch.allclose(est.log_prob(x.detach(), y, 0.15), logp.detach(), atol=1e-10, rtol=0)
    # One fixed condition: ConditionedScore, density_table and the per-row evaluation agree.
    fixed = est.at(y[3])
    assert isinstance(fixed, ConditionedScore) and fixed.dim == 2
    rows = y[3].expand(25, d_y)
    assert torch.allclose(fixed.score(x.detach(), 0.15), est.score(x.detach(), rows, 0.15), atol=1e-12, rtol=0)
    table = est.density_table(x.detach(), y[:4], 0.15)
    assert table.shape == (4, 25)
    assert torch.allclose(table[3], est.log_prob(x.detach(), rows, 0.15).exp(), atol=1e-12, rtol=1e-10)
    assert torch.allclose(fixed.density(x.detach(), 0.15), table[3], atol=1e-14, rtol=0)
    assert abs(float(fixed.weights().sum()) - 1) < 1e-12


def test_conditional_score_reduces_to_the_kernel_score():
    gen = torch.Generator().manual_seed(11)
    sde = ConstantVP()
    data = torch.randn(30, 1, generator=gen, dtype=torch.float64)
    x = torch.randn(20, 1, generator=gen, dtype=torch.float64)
    kern = KernelScore(data, sde, bandwidth=0.25).score(x, 0.1)
    same_y = ConditionalKernelScore(data, torch.full((30,), 0.4, dtype=torch.float64), sde, 0.25, 1e-3)
    assert torch.allclose(same_y.score(x, 0.9, 0.1), kern, atol=1e-12, rtol=0)  # all y_i equal: uniform weights
    cond = torch.rand(30, generator=gen, dtype=torch.float64)
    wide = ConditionalKernelScore(data, cond, sde, 0.25, 1e4)
    assert torch.allclose(wide.score(x, 0.5, 0.1), kern, atol=1e-7, rtol=0)  # b -> infinity: uniform weights
    # b -> 0 at a data condition: the single Gaussian N(alpha x_k, alpha^2 sigma^2 + h) of that pair.
    narrow = ConditionalKernelScore(data, cond, sde, 0.25, 1e-4)
    a, h = float(sde.alpha(0.1)), float(sde.h(0.1))
    single = (a * data[7] - x) / (a**2 * 0.25**2 + h)
    assert torch.allclose(narrow.score(x, cond[7], 0.1), single, atol=1e-10, rtol=0)


def test_output_law_is_the_diffused_mixture():
    gen = torch.Generator().manual_seed(12)
    sde = ConstantVP()
    data = torch.randn(15, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    for est in (EmpiricalScore(data, sde), KernelScore(data, sde, bandwidth=0.3)):
        law = output_law(est, 0.05)
        assert torch.allclose(law.data_log_prob(x), est.log_prob(x, 0.05), atol=1e-12, rtol=0)
        assert torch.allclose(est.density(x, 0.05), est.log_prob(x, 0.05).exp(), atol=1e-14, rtol=1e-12)
    cond = ConditionalKernelScore(data, torch.rand(15, generator=gen, dtype=torch.float64), sde, 0.3, 0.2).at(0.3)
    assert torch.allclose(output_law(cond, 0.05).data_log_prob(x), cond.log_prob(x, 0.05), atol=1e-12, rtol=0)


def test_output_law_matches_the_sampler():
    gen = torch.Generator().manual_seed(13)
    sde = ConstantVP(T=10.0)
    est = KernelScore(torch.randn(20, 1, generator=gen, dtype=torch.float64) * 1.5, sde, bandwidth=0.2)
    law = output_law(est, 0.01)
    m = 20000
    x = exponential_integrator(est.score, (m, 1), time_grid(sde, 0.01, 200, spacing="logsnr"), sde=sde, generator=gen)
    cdf = lambda t: law.cdf(torch.as_tensor(t)).numpy()  # noqa: E731
    assert scipy.stats.kstest(x[:, 0].numpy(), cdf).pvalue > 0.01
    wrong = output_law(est, 0.1)  # the law of a later stopping time is told apart
    assert scipy.stats.kstest(x[:, 0].numpy(), lambda t: wrong.cdf(torch.as_tensor(t)).numpy()).pvalue < 1e-4
    # W1 of m exact draws from a law of spread ~1.5 is about 0.01; a wrong law (no t0 shrinkage, say) is far off.
    grid = np.linspace(-10, 10, 4001)
    assert wasserstein_1d_to_cdf(x, cdf, grid) < 0.02


def test_conditional_and_output_law_bad_inputs_raise():
    sde = ConstantVP()
    x = torch.randn(10, 2, dtype=torch.float64)
    y = torch.rand(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        ConditionalKernelScore(x, y, sde, bandwidth=0.0)
    with pytest.raises(ValueError, match="y_bandwidth must be positive"):
        ConditionalKernelScore(x, y, sde, y_bandwidth=-1.0)
    with pytest.raises(ValueError, match="one condition per data point"):
        ConditionalKernelScore(x, y[:9], sde)
    with pytest.raises(ValueError, match="at least 2"):
        ConditionalKernelScore(x[:1], y[:1], sde)
    with pytest.raises(ValueError, match=r"shaped \(n,\) or \(n, d_y\)"):
        ConditionalKernelScore(x, torch.rand(10, 2, 2, dtype=torch.float64), sde)
    with pytest.raises(TypeError, match="VPSDE"):
        ConditionalKernelScore(x, y, "vp")
    est = ConditionalKernelScore(x, y, sde)
    with pytest.raises(ValueError, match="one condition"):
        est.score(x[:4], torch.rand(3, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="one condition"):
        est.at(torch.rand(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        est.score(x[:4], float("nan"), 0.5)
    with pytest.raises(ValueError, match="shape"):
        est.score(torch.zeros(4, 3, dtype=torch.float64), 0.5, 0.5)
    with pytest.raises(ValueError, match="t0"):
        est.score(x[:4], 0.5, 0.0)
    with pytest.raises(ValueError, match="floor"):
        output_law(KernelScore(x, sde, 0.1, floor=1e-3), 0.1)
    with pytest.raises(TypeError, match="output_law"):
        output_law(SubspaceScore(x, sde, 1), 0.1)
    with pytest.raises(ValueError, match="t0"):
        output_law(EmpiricalScore(x, sde), 0.0)
    with pytest.raises(TypeError, match="ConditionalKernelScore"):
        ConditionedScore(KernelScore(x, sde), 0.5)
