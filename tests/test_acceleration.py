"""Tests of diffnotes.acceleration: rectified flow, distillation, consistency models, latent diffusion with PCA."""

import math

import pytest
import torch

from diffnotes import acceleration as acc
from diffnotes.networks import ScoreMLP
from diffnotes.samplers import exponential_multistep, time_grid
from diffnotes.sde import ConstantVP, DiscreteVP
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


# -- consistency training -------------------------------------------------------------------------------------------
class _Fixed(acc.ConsistencyModel):
    """A consistency model whose f is a given function f(x, t) (no network)."""

    def __init__(self, fn, sde, t0):
        super().__init__(lambda x, t: x, sde, t0)
        self.fn = fn

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.fn(x, t.expand(x.shape[0]) if t.ndim == 0 else t)


def _gaussian_consistency_function(sde, t0, mean, cov):
    """The probability-flow map from t to t0 of N(mean, cov) data: affine, diagonal in the eigenbasis of cov,
    f(x, t) = alpha(t0) m + U diag(sqrt(c_i(t0) / c_i(t))) U^T (x - alpha(t) m), c_i(t) = alpha^2 lambda_i + h."""
    lam, U = torch.linalg.eigh(cov)
    t0_ = torch.tensor(t0, dtype=torch.float64)

    def gain(t):  # (n, D): sqrt(c_i(t0) / c_i(t))
        c = lambda s: sde.alpha(s)[:, None] ** 2 * lam + sde.h(s)[:, None]  # noqa: E731
        return torch.sqrt(c(t0_.reshape(1)) / c(t))

    def f(x, t):
        y = (x - sde.alpha(t)[:, None] * mean) @ U
        return sde.alpha(t0_) * mean + (gain(t) * y) @ U.T

    return f, gain, lam


def test_ct_loss_is_zero_for_a_point_mass():
    """For data at one point m the pair (x_{t_{n+1}}, x_{t_n}) with the same z lies on one ODE path, so the exact
    consistency function f(x, t) = alpha(t0) m + sqrt(h(t0)/h(t)) (x - alpha(t) m) has zero CT loss, for every
    metric and weighting."""
    sde = DiscreteVP.ddpm()
    t0 = 1e-3
    m = torch.tensor([1.5, -0.5], dtype=torch.float64)

    def f(x, t):
        a, h = sde.alpha(t)[:, None], sde.h(t)[:, None]
        return float(sde.alpha(t0)) * m + torch.sqrt(float(sde.h(t0)) / h) * (x - a * m)

    model = _Fixed(f, sde, t0)
    g = torch.Generator().manual_seed(6)
    grid = acc.karras_grid(sde, t0, 30)
    x0 = m.expand(400, 2).clone()
    for options in ({}, {"metric": "pseudo_huber", "weighting": "inverse_gap"}):
        per = acc.consistency_training_loss(model, x0, times=grid, generator=g, reduction="none", **options)
        assert per.shape == (400,) and float(per.max()) < 1e-20


def test_ct_loss_of_the_exact_map_of_a_gaussian_is_its_closed_form_bias():
    """For N(m, Sigma) data the exact consistency function is affine (gain mu_i(t) per eigen-direction) and its CT loss
    on the interval [t_n, t_{n+1}] is, with the shared z,

        sum_i (alpha_hi mu_hi - alpha_lo mu_lo)^2 lambda_i + (sqrt(h_hi) mu_hi - sqrt(h_lo) mu_lo)^2 > 0,

    not zero: the one-sample estimate z of E[z | y] makes the pair leave the ODE path.  Monte Carlo within 5 standard
    errors; the bias falls like the square of the interval."""
    sde = ConstantVP(T=5.0)
    t0 = 1e-3
    f, gain, lam = _gaussian_consistency_function(sde, t0, MEAN, SIGMA)
    model = _Fixed(f, sde, t0)
    target = gaussian(sde)
    g = torch.Generator().manual_seed(7)
    grid = acc.karras_grid(sde, t0, 12)
    nsamp = 100_000
    closed = []
    for j in (3, 8):  # interval [t_j, t_{j+1}]
        onehot = torch.zeros(11, dtype=torch.float64)
        onehot[j] = 1
        per = acc.consistency_training_loss(model, target.sample(nsamp, g), times=grid, interval_probabilities=onehot,
                                            generator=g, reduction="none")
        lo, hi = grid[j : j + 1], grid[j + 1 : j + 2]
        mu_lo, mu_hi = gain(lo)[0], gain(hi)[0]
        a_lo, a_hi, s_lo, s_hi = sde.alpha(lo), sde.alpha(hi), sde.sigma(lo), sde.sigma(hi)
        theory = float(((a_hi * mu_hi - a_lo * mu_lo) ** 2 * lam + (s_hi * mu_hi - s_lo * mu_lo) ** 2).sum())
        assert theory > 1e-4
        assert abs(float(per.mean()) - theory) < 5 * float(per.std()) / math.sqrt(nsamp)
        closed.append(theory)
    # the bias is of second order in the interval: halving a short one quarters it
    def bias(lo, sig_hi):
        hi = sde.inverse_integral(torch.log1p(sig_hi**2)).reshape(1)
        mu_lo, mu_hi = gain(lo)[0], gain(hi)[0]
        return float(((sde.alpha(hi) * mu_hi - sde.alpha(lo) * mu_lo) ** 2 * lam
                      + (sde.sigma(hi) * mu_hi - sde.sigma(lo) * mu_lo) ** 2).sum())

    sig8 = acc.noise_level(sde, grid[8])
    assert 0.24 < bias(grid[8:9], sig8 * 1.0005) / bias(grid[8:9], sig8 * 1.001) < 0.26


def test_discretisation_schedules_by_hand():
    # Song et al. 2023: N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1, s0 = 2, s1 = 150
    assert acc.ct_discretisation(0, 1500) == 2
    assert acc.ct_discretisation(750, 1500) == 107  # sqrt(0.5 * 22797 + 4) = 106.78 -> ceil(105.78) + 1
    assert acc.ct_discretisation(15, 1500) == 16  # sqrt(0.01 * 22797 + 4) = 15.23 -> ceil(14.23) + 1
    assert acc.ct_discretisation(1500, 1500) == 151
    # Song & Dhariwal: K' = floor(1500 / (log2(128) + 1)) = 187; 11, 21, ..., 641, then 1281
    assert [acc.ict_discretisation(k, 1500) for k in (0, 186, 187, 374, 1308, 1309, 1499)] == [
        11, 11, 21, 41, 641, 1281, 1281]
    assert acc.ict_discretisation(49_999, 400_000) == 11 and acc.ict_discretisation(50_000, 400_000) == 21
    assert acc.ict_discretisation(3, 4) == 81  # K' is at least 1
    assert acc.ct_ema_decay(2) == pytest.approx(0.9, abs=1e-15)
    assert acc.ct_ema_decay(151) == pytest.approx(math.exp(2 * math.log(0.9) / 151), abs=1e-15)
    assert acc.ct_ema_decay(10, mu0=0.0) == 0.0
    for bad in (lambda: acc.ct_discretisation(5, 4), lambda: acc.ct_discretisation(0, 10, s0=1),
                lambda: acc.ict_discretisation(0, 10, s0=20, s1=10), lambda: acc.ct_ema_decay(2, mu0=1.0)):
        with pytest.raises(ValueError):
            bad()


def test_karras_grid_is_uniform_in_sigma_to_the_one_over_rho():
    for sde in (ConstantVP(T=5.0), DiscreteVP.ddpm()):
        t0 = 1e-3
        times = acc.karras_grid(sde, t0, 9)
        assert times[0] == t0 and times[-1] == sde.T and torch.all(times[1:] > times[:-1])
        root = acc.noise_level(sde, times) ** (1 / 7)
        assert torch.allclose(root[1:] - root[:-1], (root[-1] - root[0]).expand(8) / 8, rtol=1e-9, atol=0)
        assert torch.allclose(acc.noise_level(sde, times) ** 2, sde.h(times) / sde.alpha(times) ** 2, rtol=1e-10)
    with pytest.raises(ValueError):
        acc.karras_grid(ConstantVP(), 1e-3, 1)


def test_pseudo_huber_limits():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    d = (x - y).norm(dim=1)
    c = 0.3
    assert torch.allclose(acc.pseudo_huber(x, y, c), torch.sqrt(d**2 + c**2) - c, rtol=1e-12)
    assert torch.allclose(acc.pseudo_huber(x, y, 1e-9), d - 1e-9, rtol=1e-12)  # a norm for c -> 0
    assert torch.allclose(acc.pseudo_huber(x, y, 1e6), d**2 / 2e6, rtol=1e-9)  # a scaled square for large c
    tiny = x + 1e-12
    assert torch.allclose(acc.pseudo_huber(x, tiny, 1.0), 3e-24 / 2 * torch.ones(50, dtype=torch.float64),
                          rtol=1e-3)  # no cancellation
    assert torch.equal(acc.pseudo_huber(x, x, c), torch.zeros(50, dtype=torch.float64))
    with pytest.raises(ValueError):
        acc.pseudo_huber(x, y, 0.0)


def test_lognormal_interval_probabilities():
    sde = DiscreteVP.ddpm()
    times = acc.karras_grid(sde, 1e-3, 41)
    p = acc.lognormal_interval_probabilities(times, sde)
    assert p.shape == (40,) and abs(float(p.sum()) - 1) < 1e-12 and torch.all(p >= 0)
    sig = acc.noise_level(sde, times)
    Phi = lambda s: 0.5 * (1 + torch.erf((torch.log(s) + 1.1) / (2.0 * math.sqrt(2))))  # noqa: E731
    raw = Phi(sig[1:]) - Phi(sig[:-1])
    assert torch.allclose(p, raw / raw.sum(), rtol=1e-10, atol=1e-15)
    mode = int(torch.argmax(p / (torch.log(sig[1:]) - torch.log(sig[:-1]))))  # density in log sigma peaks at P_mean
    assert abs(float(torch.log(sig[mode])) + 1.1) < 0.5


def test_fit_consistency_target_ema_and_schedules():
    sde = ConstantVP(T=5.0)
    target = ring_mixture(4, 2.0, 0.3, sde=sde)
    g = torch.Generator().manual_seed(9)
    x0 = target.sample(256, g)
    model = acc.ConsistencyModel(ScoreMLP(2, hidden=16, depth=1, generator=g), sde, t0=1e-3)
    start = [p.detach().clone() for p in model.parameters()]
    fit = acc.fit_consistency(model, x0, steps=1, method="ct", lr=1e-2, batch_size=64, generator=g, progress=False)
    mu = acc.ct_ema_decay(2)  # N(0) = 2
    for p0, p1, pt in zip(start, model.parameters(), fit.target_model.parameters(), strict=True):
        assert not torch.equal(p0, p1)
        assert torch.allclose(pt, mu * p0 + (1 - mu) * p1.detach(), rtol=1e-6, atol=1e-7)
    assert list(fit.discretisation) == [2]
    losses, model2, ema = fit  # unpacks as a TrainResult
    assert model2 is model and ema is None and losses.shape == (1,)
    steps = []
    fit = acc.fit_consistency(model, x0, steps=40, method="ict", lr=1e-3, batch_size=64, generator=g, progress=False,
                              callback=lambda k, m, v: steps.append(k))
    assert fit.target_model is None and steps == list(range(1, 41))
    assert list(fit.discretisation) == [acc.ict_discretisation(k, 40) for k in range(40)]
    fit = acc.fit_consistency(model, x0, steps=30, method="ct", batch_size=64, generator=g, progress=False)
    assert list(fit.discretisation) == [acc.ct_discretisation(k, 30) for k in range(30)]


def test_consistency_training_bad_inputs():
    sde = ConstantVP(T=5.0)
    model = acc.ConsistencyModel(ScoreMLP(2, hidden=8, depth=1), sde, t0=1e-3)
    x = torch.randn(8, 2, dtype=torch.float64)
    grid = acc.karras_grid(sde, 1e-3, 5)
    for kwargs in ({"metric": "lpips"}, {"weighting": "snr"}, {"c": 0.1},
                   {"interval_probabilities": torch.ones(3)}, {"interval_probabilities": -torch.ones(4)}):
        with pytest.raises(ValueError):
            acc.consistency_training_loss(model, x, times=grid, **kwargs)
    with pytest.raises(ValueError):
        acc.consistency_training_loss(model, x, times=grid[1:])  # does not start at t0
    with pytest.raises(TypeError):
        acc.consistency_training_loss(lambda x, t: x, x, times=grid)
    with pytest.raises(ValueError):
        acc.fit_consistency(model, x, steps=2, method="lcm")
    with pytest.raises(ValueError):
        acc.fit_consistency(model, x, steps=2, method="ict", mu0=0.5)
    with pytest.raises(ValueError):
        acc.fit_consistency(model, x, steps=2, method="ct", c=0.1)
    with pytest.raises(TypeError):
        acc.fit_consistency(model, x, steps=2, distributed=True)
    with pytest.raises(ValueError):
        acc.lognormal_interval_probabilities(torch.flip(grid, [0]), sde)
