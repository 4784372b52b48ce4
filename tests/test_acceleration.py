"""Tests of diffnotes.acceleration: rectified flow, distillation, consistency models, latent diffusion with PCA."""

import math

import pytest
import torch

from diffnotes import acceleration as acc
from diffnotes.networks import ScoreMLP
from diffnotes.samplers import exponential_multistep, time_grid
from diffnotes.sde import ConstantVP
from diffnotes.targets import Gaussian, SubspaceMixture, orthonormal_basis, ring_mixture

SIGMA = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)


def gaussian(sde=None):
    return Gaussian(MEAN, SIGMA, sde=sde)


def affine_map(fn, D):
    """Identify x = M z + d of an affine map fn from basis inputs."""
    inputs = torch.cat([torch.zeros(1, D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)])
    out = fn(inputs)
    d = out[0]
    return (out[1:] - d).T, d


def test_interpolant_end_points():
    x0, z = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(acc.interpolant(x0, z, 0.0), x0)
    assert torch.equal(acc.interpolant(x0, z, 1.0), z)


def test_rectified_flow_loss_closed_form_and_minimiser():
    """At a fixed s the loss of the exact velocity is E Var(z - x0 | x_s) = tr(I + Sigma - B C^-1 B); any perturbation
    of the velocity raises it by its mean square (common random numbers)."""
    g = torch.Generator().manual_seed(0)
    target = gaussian()
    v = acc.exact_velocity(target)
    s = 0.4
    n = 200_000
    x0 = target.sample(n, g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    per = acc.rectified_flow_loss(v, x0, z, s=s, reduction="none")
    eye = torch.eye(2, dtype=torch.float64)
    B, C = s * eye - (1 - s) * SIGMA, (1 - s) ** 2 * SIGMA + s**2 * eye
    theory = float(torch.trace(eye + SIGMA - B @ torch.linalg.solve(C, B)))
    assert abs(float(per.mean()) - theory) < 5 * float(per.std()) / math.sqrt(n)
    shift = torch.tensor([0.1, -0.05], dtype=torch.float64)
    for other in (lambda x, t: v(x, t) + shift, lambda x, t: 1.05 * v(x, t)):
        assert float(acc.rectified_flow_loss(other, x0, z, s=s)) > float(per.mean())
    diff = acc.rectified_flow_loss(lambda x, t: v(x, t) + shift, x0, z, s=s) - per.mean()
    assert abs(float(diff) - float(shift @ shift)) < 2e-3  # cross term has mean zero


def test_exact_velocity_sampler_reproduces_gaussian():
    target = gaussian()
    M, d = affine_map(lambda z: acc.flow_euler(acc.exact_velocity(target), z, 4000), 2)
    assert torch.allclose(d, MEAN, atol=2e-3)
    assert torch.allclose(M @ M.T, SIGMA, atol=2e-3)


def test_exact_velocity_at_s1_and_straight_flow_one_step():
    target = ring_mixture(4, 2.0, 0.3)
    x = torch.randn(7, 2, dtype=torch.float64)
    assert torch.allclose(acc.exact_velocity(target)(x, 1.0), x - target.mean(), atol=1e-12)
    # a point mass: v = z - x0 is constant along each path, one Euler step is exact
    point = Gaussian([1.0, 2.0], 1e-10)
    out = acc.flow_euler(acc.exact_velocity(point), x, 1)
    assert torch.allclose(out, torch.tensor([[1.0, 2.0]], dtype=torch.float64).expand(7, 2), atol=1e-4)


def test_flow_euler_trajectory_and_reflow_pairs():
    target = gaussian()
    v = acc.exact_velocity(target)
    g = torch.Generator().manual_seed(1)
    out, path = acc.flow_euler(v, (6, 2), 5, generator=g, return_trajectory=True)
    assert path.shape == (6, 6, 2) and torch.equal(path[-1], out)
    z = torch.randn(6, 2, dtype=torch.float64)
    x0, z2 = acc.reflow_pairs(v, z, 50)
    assert torch.equal(z2, z) and torch.allclose(x0, acc.flow_euler(v, z, 50))


def test_student_recovers_linear_teacher_map():
    sde = ConstantVP(T=8.0)
    target = Gaussian(MEAN, SIGMA, sde=sde)
    times = time_grid(sde, 1e-3, 60, "logsnr")
    M, d = affine_map(lambda z: exponential_multistep(target.score, z, times, sde=sde), 2)
    g = torch.Generator().manual_seed(2)
    z, x = acc.teacher_pairs(target.score, torch.randn(2000, 2, generator=g, dtype=torch.float64), times, sde=sde)
    assert torch.allclose(x, z @ M.T + d, atol=1e-10)
    student = torch.nn.Linear(2, 2).double()
    acc.fit_student(student, z, x, steps=1500, lr=2e-2, batch_size=500, generator=g, progress=False)
    assert torch.allclose(student.weight.detach(), M, atol=1e-3)
    assert torch.allclose(student.bias.detach(), d, atol=1e-3)
    assert float(acc.distillation_loss(student, z, x).detach()) < 1e-5


def test_student_mlp_shapes():
    student = acc.StudentMLP(3, hidden=8)
    z = torch.randn(4, 3, dtype=torch.float64)
    assert student(z).shape == (4, 3) and student(z).dtype == torch.float64
    with pytest.raises(ValueError):
        student(torch.randn(4, 2))


def test_consistency_boundary_condition_exact():
    sde = ConstantVP(T=5.0)
    model = acc.ConsistencyModel(ScoreMLP(2, hidden=16, depth=1), sde, t0=1e-3, sigma_data=0.7)
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.equal(model(x, 1e-3), x)
    x32 = x.float()
    assert torch.equal(model(x32, torch.full((10,), 1e-3, dtype=torch.float32)), x32)
    c_skip, c_out = model.coefficients(torch.tensor([1e-3, 0.5, 5.0], dtype=torch.float64))
    assert c_skip[0] == 1 and c_out[0] == 0 and torch.all(c_skip[1:] < 1) and torch.all(c_out[1:] > 0)
    with pytest.raises(ValueError):
        model(x, 1e-4)


def test_consistency_loss_zero_at_exact_map_and_sampling():
    """For Gaussian data the ODE map to t0 is affine; a model equal to it has zero distillation loss (up to the
    teacher's discretisation) and samples in one step."""
    sde = ConstantVP(T=5.0)
    t0 = 1e-3
    target = Gaussian([0.0], [0.25], sde=sde)

    def exact_map(x, t):  # PF-ODE from t to t0 for 1-D N(0, v): x * sqrt(v(t0)/v(t))
        var = lambda s: sde.alpha(s) ** 2 * 0.25 + sde.h(s)  # noqa: E731
        return x * torch.sqrt(var(torch.tensor(t0, dtype=torch.float64)) / var(t))[:, None]

    class Exact(acc.ConsistencyModel):
        def forward(self, x, t):
            t = torch.as_tensor(t, dtype=torch.float64)
            return exact_map(x, t.expand(x.shape[0]) if t.ndim == 0 else t)

    model = Exact(lambda x, t: x, sde, t0)
    g = torch.Generator().manual_seed(3)
    grid = time_grid(sde, t0, 10, "logsnr")
    x0 = target.sample(500, g)
    loss = acc.consistency_distillation_loss(model, x0, score=target.score, times=grid, teacher_substeps=200,
                                             generator=g)
    assert float(loss) < 1e-6
    out, path = acc.consistency_sample(model, (4, 1), grid[:3], generator=g, return_trajectory=True)
    assert out.shape == (4, 1) and path.shape == (3, 4, 1)


def test_consistency_training_step_runs():
    sde = ConstantVP(T=5.0)
    model = acc.ConsistencyModel(ScoreMLP(2, hidden=16, depth=1), sde, t0=1e-3)
    target = ring_mixture(4, 2.0, 0.3, sde=sde)
    g = torch.Generator().manual_seed(4)
    loss = acc.consistency_distillation_loss(model, target.sample(64, g), score=target.score,
                                             times=time_grid(sde, 1e-3, 8, "logsnr"), generator=g)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pca_latent_diffusion_reproduces_subspace_law():
    g = torch.Generator().manual_seed(5)
    sde = ConstantVP(T=10.0)
    A = orthonormal_basis(6, 2, g)
    target = SubspaceMixture(A, [1.0], [[0.5, -1.0]], [[[0.4, 0.1], [0.1, 0.2]]], sde=sde)
    enc = acc.fit_pca(target.sample(500, g), 2)
    x = target.sample(5, g)
    assert torch.allclose(enc.decode(enc.encode(x)), x, atol=1e-12)
    lat = acc.latent_target(enc, target)
    t0 = 1e-4
    times = time_grid(sde, t0, 200, "logsnr")
    M, d = affine_map(lambda z: acc.latent_sample(enc, lat.score, z, times, sde=sde), 2)
    mean, cov = target.mean(), target.covariance()
    assert torch.allclose(d, mean, atol=1e-3)
    assert torch.allclose(M @ M.T, cov, atol=1e-3)
    out = acc.latent_sample(enc, lat.score, (100, 2), times, sde=sde, generator=g)
    assert float(target.orthogonal(out).abs().max()) < 1e-8  # round-off of the SVD
    # mixture: Monte Carlo mean within 5 standard errors
    mix = SubspaceMixture(A, [0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.1, 0.1], sde=sde)
    enc2 = acc.fit_pca(mix.sample(500, g), 2)
    out = acc.latent_sample(enc2, acc.latent_target(enc2, mix).score, (4000, 2), times, sde=sde, generator=g)
    se = out.std(0) / math.sqrt(4000)
    assert torch.all((out.mean(0) - mix.mean()).abs() < 5 * se + 1e-3)


def test_bad_inputs_raise():
    v = acc.exact_velocity(gaussian())
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        acc.interpolant(x, x, 1.5)
    with pytest.raises(ValueError):
        acc.interpolant(x, torch.randn(3, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError):
        acc.rectified_flow_loss(v, x, s=-0.1)
    with pytest.raises(ValueError):
        acc.flow_euler(v, x, [0.0, 1.0])
    with pytest.raises(ValueError):
        acc.flow_euler(v, x, 0)
    with pytest.raises(ValueError):
        acc.flow_grid(3, s_end=1.0)
    with pytest.raises(TypeError):
        acc.exact_velocity("not a target")
    with pytest.raises(ValueError):
        acc.distillation_loss(lambda z: z, x, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError):
        acc.teacher_pairs(gaussian().score, x, [8.0, 1.0], generator=torch.Generator())
    with pytest.raises(ValueError):
        acc.ConsistencyModel(lambda x, t: x, ConstantVP(T=1.0), t0=2.0)
    with pytest.raises(ValueError):
        acc.ConsistencyModel(lambda x, t: x, sigma_data=0.0)
    cm = acc.ConsistencyModel(lambda x, t: x, ConstantVP(T=5.0), t0=1e-3)
    with pytest.raises(ValueError):
        acc.consistency_sample(cm, x, [1e-3])
    with pytest.raises(ValueError):
        acc.consistency_distillation_loss(cm, x, score=gaussian().score, times=[0.01, 1.0])
    with pytest.raises(ValueError):
        acc.fit_pca(x, 3)
    with pytest.raises(ValueError):
        acc.PCAEncoder(torch.zeros(2), torch.ones(2, 1))
    g = torch.Generator().manual_seed(0)
    target = SubspaceMixture(orthonormal_basis(4, 2, g), [1.0], [[0.0, 0.0]], [1.0])
    wrong = acc.PCAEncoder(torch.zeros(4), orthonormal_basis(4, 2, g))
    with pytest.raises(ValueError):
        acc.latent_target(wrong, target)
    with pytest.raises(ValueError):
        acc.latent_sample(wrong, lambda z, t: -z, (3, 5), time_grid(ConstantVP(), 1e-3, 5))
