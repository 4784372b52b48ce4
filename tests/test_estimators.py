"""Score estimators without a network: empirical score, kernel score, subspace score, error helpers."""

import math

import pytest
import torch

from diffnotes.estimators import EmpiricalScore, KernelScore, SubspaceScore, score_error, subspace_angle
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
    assert torch.allclose(KernelScore(data, sde, bandwidth=0.0).score(x, 0.1), emp, atol=1e-12, rtol=0)
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
    with pytest.raises(ValueError, match="bandwidth"):
        KernelScore(data, sde, bandwidth=-0.1)
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
