"""The circle target: quadrature scores against autograd and the closed form, convergence of the trapezoid rule,
marginals against forward Monte Carlo, the exact radial law and W1, the angular W1, a small sampler run, validation."""

import math

import numpy as np
import ot
import pytest
import torch
from scipy import stats

from diffnotes.manifold import Circle, angular_w1
from diffnotes.samplers import ddpm, time_grid
from diffnotes.sde import ConstantVP, LinearVP


def near_and_far(circle, t, gen, n=200):
    """Points of P_t (near the circle when t is small) and points spread over the disc of radius 2r."""
    x = circle.sample_marginal(n, t, gen)
    rho = 2 * circle.radius * torch.rand(n, generator=gen, dtype=torch.float64)
    phi = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.cat([x, rho[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], 1)])


@pytest.mark.parametrize("sde", [ConstantVP(), LinearVP()], ids=repr)
@pytest.mark.parametrize("radius", [0.5, 1.0])
def test_score_is_the_gradient_of_the_log_density(sde, radius):
    gen = torch.Generator().manual_seed(int(10 * radius))
    circle = Circle(radius, sde)
    t_min = float(sde.inverse_integral(-math.log1p(-1e-3)))  # the time where h(t) = 1e-3
    for t in [t_min, 0.01 * sde.T, 0.3 * sde.T, sde.T]:
        x = near_and_far(circle, t, gen).requires_grad_()
        (grad,) = torch.autograd.grad(circle.log_prob(x, t).sum(), x)
        score = circle.score(x.detach(), t)
        assert torch.allclose(score, grad, atol=1e-10, rtol=0), (t, float((score - grad).abs().max()))
    # One time per row, spread over [t_min, T].
    x = near_and_far(circle, 0.1, gen).requires_grad_()
    t = t_min + (sde.T - t_min) * torch.rand(x.shape[0], generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(circle.log_prob(x, t).sum(), x)
    assert torch.allclose(circle.score(x.detach(), t), grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("t", [1e-3, 1e-2, 0.1, 1.0, 10.0])
def test_quadrature_matches_the_closed_form_and_a_finer_rule(t):
    gen = torch.Generator().manual_seed(3)
    circle = Circle()
    x = near_and_far(circle, t, gen)
    s = circle.score(x, t)
    assert torch.allclose(s, circle.closed_form_score(x, t), atol=1e-10, rtol=0)
    assert torch.allclose(s, Circle(n_nodes=4096).score(x, t), atol=1e-10, rtol=0)
    assert torch.allclose(circle.log_prob(x, t), circle.closed_form_log_prob(x, t), atol=1e-11, rtol=0)
    # The closed form is itself the gradient of its log-density (an independent check of both formulas).
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(circle.closed_form_log_prob(xg, t).sum(), xg)
    assert torch.allclose(circle.closed_form_score(x, t), grad, atol=1e-10, rtol=0)
    # The exact score is radial: the tangential component is quadrature error only.
    normal, tangential = circle.score_components(x, t)
    assert tangential.abs().max() < 1e-10
    assert torch.allclose(normal, (s * x).sum(1) / x.norm(dim=1), atol=1e-12, rtol=0)


def test_quadrature_converges_exponentially_within_its_error_bound():
    circle = Circle()
    t = 0.01  # kappa = alpha r |x| / h is about 100 on the circle
    x = torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.0, -1.2], [0.3, 0.1]], dtype=torch.float64) @ torch.tensor(
        [[math.cos(0.01), -math.sin(0.01)], [math.sin(0.01), math.cos(0.01)]], dtype=torch.float64
    )  # off the nodes
    exact = circle.closed_form_log_prob(x, t)
    errors = []
    for n in [16, 32, 48, 64, 80, 96]:
        c = Circle(n_nodes=n)
        rel = torch.expm1(c.log_prob(x, t) - exact).abs()
        bound = c.quadrature_error(x, t)
        assert torch.all(rel <= bound * (1 + 1e-6) + 1e-14), (n, rel, bound)
        errors.append(float(rel.max()))
    # Faster than geometric (the error is about exp(-N^2 / (2 kappa))): equal steps in N gain more and more digits.
    gains = -np.diff(np.log10([e for e in errors if e > 1e-13]))
    assert len(gains) >= 3 and np.all(gains > 0.5) and np.all(np.diff(gains) > 0), errors
    assert errors[-1] < 1e-13
    # The default rule's bound at t = 1e-3 over the disc |x| <= 3 (kappa <= 3000) is negligible.
    rho = torch.linspace(0, 3, 301, dtype=torch.float64)
    pts = torch.stack([rho, torch.zeros_like(rho)], 1)
    assert float(circle.quadrature_error(pts, 1e-3).max()) < 1e-18


def test_closed_form_is_finite_at_the_origin_and_small_times():
    circle = Circle(2.0)
    origin = torch.zeros(3, 2, dtype=torch.float64)
    for t in [1e-6, 1e-3, 1.0]:
        assert torch.all(circle.closed_form_score(origin, t) == 0)
        assert torch.all(torch.isfinite(circle.closed_form_log_prob(origin, t)))
    # Near the circle at tiny t the normal component is -(|x| - alpha r)/h - 1/(2|x|) + O(h).
    t = 1e-6
    h, a = float(circle.sde.h(t)), float(circle.sde.alpha(t))
    d = torch.tensor([-2e-3, -1e-3, 0.0, 1e-3, 2e-3], dtype=torch.float64)
    x = torch.stack([a * 2.0 + d, torch.zeros_like(d)], 1)
    s = circle.closed_form_score(x, t)[:, 0]
    assert torch.allclose(s, -d / h - 1 / (2 * x[:, 0]), rtol=0, atol=1e-3)


@pytest.mark.parametrize("t", [0.01, 0.3, 3.0])
def test_marginals_match_forward_monte_carlo(t):
    gen = torch.Generator().manual_seed(5)
    circle = Circle(1.5)
    x = circle.sample_marginal(20000, t, gen)
    radii, angles = circle.polar(x)
    law = circle.radial_law(t)
    assert stats.kstest(radii.numpy(), law.cdf).pvalue > 1e-3
    assert stats.kstest(angles.numpy() / (2 * math.pi), "uniform").pvalue > 1e-3
    mean, std = circle.radial_moments(t)
    assert abs(float(radii.mean()) - mean) < 5 * std / math.sqrt(20000)
    assert math.isclose(mean, law.mean(), rel_tol=1e-10) and math.isclose(std, law.std(), rel_tol=1e-8)
    dist = circle.distance(x)
    assert abs(float(dist.mean()) - circle.w1(t)) < 5 * float(dist.std()) / math.sqrt(20000)
    # The radial density read off log_prob is the Rice density: 2 pi rho p_t(rho, 0).
    rho = torch.linspace(0.05, 4, 50, dtype=torch.float64)
    pts = torch.stack([rho, torch.zeros_like(rho)], 1)
    radial = 2 * math.pi * rho * torch.exp(circle.log_prob(pts, t))
    assert np.allclose(radial.numpy(), law.pdf(rho.numpy()), rtol=1e-9, atol=1e-300)


def test_density_integrates_to_one():
    circle = Circle()
    xs = torch.linspace(-7, 7, 561, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, xs)
    for t in [0.05, 2.0]:
        mass = torch.exp(circle.log_prob(grid, t)).sum() * (14 / 560) ** 2
        assert abs(float(mass) - 1) < 1e-6


def test_radial_closed_forms_have_the_small_time_behaviour():
    circle = Circle(2.0)
    for t in [1e-5, 1e-4, 1e-3]:
        h, a = float(circle.sde.h(t)), float(circle.sde.alpha(t))
        mean, std = circle.radial_moments(t)
        assert abs(mean - (2 * a + h / (4 * a))) < 10 * h**2
        assert abs(std / math.sqrt(h) - 1) < 5 * h
        # W1(P_t, U) = E| |X_t| - r |, and |X_t| - r ~ N(-(1 - a) r, h) to leading order.
        shift = (1 - a) * 2.0
        folded = math.sqrt(h) * math.sqrt(2 / math.pi) * math.exp(-(shift**2) / (2 * h)) + shift * math.erf(
            shift / math.sqrt(2 * h)
        )
        assert abs(circle.w1(t) / folded - 1) < 5 * math.sqrt(h)
    assert circle.w1(1e-3) < circle.w1(1e-2) < circle.w1(1e-1)
    # Radius shrinks by alpha(t): at large t the radial law is Rayleigh.
    mean, _ = Circle(2.0, ConstantVP(T=20.0)).radial_moments(20.0)
    assert abs(mean - math.sqrt(math.pi / 2)) < 1e-4


def test_angular_w1_known_values_and_against_pot():
    assert math.isclose(angular_w1([1.0]), math.pi / 2, rel_tol=1e-12)
    for n in [2, 7, 50]:
        pts = 2 * math.pi * np.arange(n) / n + 0.3
        assert math.isclose(angular_w1(pts), math.pi / (2 * n), rel_tol=1e-9)
    rng = np.random.default_rng(0)
    theta = rng.uniform(0, 2 * np.pi, 40)
    # Invariant under rotation and under adding multiples of 2 pi.
    assert math.isclose(angular_w1(theta + 1.234), angular_w1(theta), rel_tol=1e-9)
    assert math.isclose(angular_w1(theta + 6 * np.pi), angular_w1(theta), rel_tol=1e-9)
    # Against exact optimal transport with the geodesic cost to a fine grid (within the grid's resolution).
    m = 4000
    grid = 2 * np.pi * (np.arange(m) + 0.5) / m
    diff = np.abs(theta[:, None] - grid[None, :])
    cost = np.minimum(diff, 2 * np.pi - diff)
    pot = ot.emd2(np.full(40, 1 / 40), np.full(m, 1 / m), cost, numItermax=10_000_000)
    assert abs(angular_w1(theta) - pot) <= np.pi / (2 * m) + 1e-9
    # Uniform draws: about 1.5 / sqrt(n) radians.
    values = [angular_w1(rng.uniform(0, 2 * np.pi, 400)) for _ in range(50)]
    assert 1.2 < np.mean(values) * math.sqrt(400) < 1.8


def test_w1_of_samples_lies_between_its_bounds():
    gen = torch.Generator().manual_seed(7)
    circle = Circle(2.0)
    for t in [1e-3, 0.05]:
        x = circle.sample_marginal(500, t, gen)
        lower, upper = circle.w1_bounds(x)
        m = 2048
        w1 = circle.w1_samples(x, n_grid=m)
        slack = math.pi * circle.radius / (2 * m)
        assert lower - slack <= w1 <= upper + slack
        assert lower == pytest.approx(float(circle.distance(x).mean()))
    # Exact draws of the data law: only the angular (Monte Carlo) part is left.
    x0 = circle.sample(500, gen)
    lower, upper = circle.w1_bounds(x0)
    assert lower < 1e-12 and upper == pytest.approx(2.0 * angular_w1(circle.polar(x0)[1]))


def test_ddpm_with_the_exact_score_ends_at_p_t0():
    """The chapter's experiment at small size: the radial spread of the output is that of P_t0."""
    gen = torch.Generator().manual_seed(11)
    sde = ConstantVP(T=6.0)
    circle = Circle(sde=sde)
    n, t0 = 3000, 1e-2
    x = ddpm(circle.score, (n, 2), time_grid(sde, t0, 50, "logsnr"), sde=sde, generator=gen)
    radii, angles = circle.polar(x)
    mean, std = circle.radial_moments(t0)
    r = radii.numpy()
    kurt = np.mean((r - r.mean()) ** 4) / np.var(r) ** 2
    assert abs(r.std(ddof=1) / std - 1) < 4 * math.sqrt((kurt - 1) / (4 * n))
    d = circle.distance(x).numpy()
    assert abs(d.mean() - circle.w1(t0)) < 4 * d.std() / math.sqrt(n)
    assert stats.kstest(angles.numpy() / (2 * math.pi), "uniform").pvalue > 1e-3


def test_validation():
    with pytest.raises(ValueError, match="radius"):
        Circle(0.0)
    with pytest.raises(ValueError, match="radius"):
        Circle(-1.0)
    with pytest.raises(ValueError, match="radius"):
        Circle(float("nan"))
    with pytest.raises(TypeError, match="radius"):
        Circle("one")
    with pytest.raises(ValueError, match="n_nodes"):
        Circle(n_nodes=4)
    with pytest.raises(ValueError, match="n_nodes"):
        Circle(n_nodes=100.5)
    with pytest.raises(TypeError, match="VPSDE"):
        Circle(sde="ou")
    circle = Circle()
    x = torch.zeros(4, 2, dtype=torch.float64) + 0.5
    for bad_t in [0.0, -1.0, circle.sde.T * 1.01, float("nan")]:
        with pytest.raises(ValueError, match=r"t must"):
            circle.score(x, bad_t)
        with pytest.raises(ValueError, match=r"t must"):
            circle.log_prob(x, bad_t)
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        circle.sample_marginal(10, 0.0)
    with pytest.raises(ValueError, match="one entry per row"):
        circle.score(x, torch.full((5,), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        circle.score(torch.zeros(4, 3, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        circle.log_prob(torch.zeros(4, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        circle.score(torch.full((2, 2), float("nan"), dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="one time"):
        circle.radial_moments(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"\(0, T\]"):
        circle.w1(0.0)
    with pytest.raises(ValueError, match="n must"):
        circle.sample(0)
    with pytest.raises(ValueError, match="at least one"):
        angular_w1([])
    with pytest.raises(ValueError, match="NaN"):
        angular_w1([0.1, float("inf")])
    with pytest.raises(ValueError, match="n_grid"):
        circle.w1_samples(x, n_grid=2)
