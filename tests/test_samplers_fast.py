"""Fast samplers: the exponential multistep solver (predictor orders 1-3, with and without its corrector)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from diffnotes.oracle import gaussian_output_law
from diffnotes.samplers import (
    _exponential_moments,
    _exponential_weights,
    ddim,
    exponential_multistep,
    time_grid,
)
from diffnotes.sde import ConstantVP, DiscreteVP, LinearVP
from diffnotes.targets import Gaussian, GaussianMixture, ring_mixture


def mixture(sde):
    return GaussianMixture([0.3, 0.7], [[-2.0, 0.5], [1.5, -1.0]], [[0.3, 0.2], [0.5, 0.1]], sde=sde)


def start(n=32, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("h", [1e-4, 0.1, 0.49, 0.51, 2.0, 12.0])
def test_exponential_moments_match_quadrature(h):
    J = _exponential_moments(h, 4)
    for m, value in enumerate(J):
        exact = integrate.quad(lambda u, m=m: math.exp(h * (u - 1)) * u**m, 0, 1, epsabs=0, epsrel=1e-13)[0]
        assert value == pytest.approx(exact, rel=1e-12)


def test_exponential_weights_integrate_polynomials_exactly():
    # A batch of node sets of different sizes (padded), each step h in units of which the nodes are given.
    rng = np.random.default_rng(0)
    u = np.array([[0.0, -0.7, -1.5, -2.1], [1.0, 0.0, -0.4, 0.0], [0.0, -1.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    h = np.array([0.3, 1.7, 0.05, 6.0])
    p = np.array([4, 3, 2, 1])
    w = _exponential_weights(u, h, p)
    assert np.all(w[np.arange(4)[None, :] >= p[:, None]] == 0)  # padding gets no weight
    for b in range(4):
        c = rng.standard_normal(p[b])  # a random polynomial of degree p - 1 in s

        def poly(s, c=c):
            return sum(ci * s**i for i, ci in enumerate(c))

        exact = integrate.quad(lambda s, hb=h[b]: math.exp(s - hb) * poly(s), 0, h[b], epsabs=0, epsrel=1e-13)[0]
        approx = sum(w[b, j] * poly(h[b] * u[b, j]) for j in range(p[b]))
        assert approx == pytest.approx(exact, rel=1e-11)


def test_first_order_without_corrector_is_ddim():
    sde = LinearVP()
    target = mixture(sde)
    times = time_grid(sde, 1e-3, 12, "logsnr")
    ours = exponential_multistep(target.score, start(), times, sde=sde, order=1, corrector=False)
    assert torch.allclose(ours, ddim(target.score, start(), times, sde=sde), atol=1e-12, rtol=0)


def test_second_order_predictor_is_dpm_solver_pp_2m_with_the_exact_linear_integral():
    # DPM-Solver++ 2M, second update of Lu et al. in the variant that integrates the linear interpolant exactly:
    # x' = (s'/s) x - a' (e^{-h} - 1) D0 + a' ((e^{-h} - 1)/h + 1) D1, D1 = (D0 - D_prev) h / h_prev.
    sde = DiscreteVP.ddpm()
    target = ring_mixture(8, radius=4.0, std=0.3, sde=sde)
    times = time_grid(sde, 1e-3, 9, "quadratic")
    x = start()
    a, s = sde.alpha(times).tolist(), torch.sqrt(sde.h(times)).tolist()
    lam = [math.log(ai / si) for ai, si in zip(a, s, strict=True)]
    prev = None
    for k in range(len(times) - 1):
        D0 = (x + s[k] ** 2 * target.score(x, float(times[k]))) / a[k]
        h = lam[k + 1] - lam[k]
        x_new = (s[k + 1] / s[k]) * x - a[k + 1] * math.expm1(-h) * D0
        if prev is not None and k < len(times) - 2:  # lower order at the last step
            D1 = (D0 - prev[0]) * h / prev[1]
            x_new = x_new + a[k + 1] * (math.expm1(-h) / h + 1) * D1
        prev, x = (D0, h), x_new
    ours = exponential_multistep(target.score, start(), times, sde=sde, order=2, corrector=False)
    assert torch.allclose(ours, x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sde", [ConstantVP(T=10.0), LinearVP()], ids=repr)
@pytest.mark.parametrize(
    "order,corrector,expected,steps",
    [(1, False, 1, [128, 256]), (1, True, 2, [128, 256]), (2, False, 2, [128, 256]), (2, True, 3, [128, 256]),
     (3, True, 4, [256, 512])],
    ids=["AB1", "AB1+AM", "AB2", "AB2+AM", "AB3+AM"],
)
def test_orders_on_the_gaussian_oracle(sde, order, corrector, expected, steps):
    # Gaussian data: the exact flow maps N(0, 1) at T to variance v(t0)/v(T); the sampler's output variance is exact.
    # Without lower_order_final the order is p (predictor) or p + 1 (with the corrector).  Local slope between two
    # step counts; its deviation from the order is of relative size 1/N (a few hundredths here).
    target = Gaussian([0.0], [0.25], sde)
    exact = float(target.moments(1e-3)[1] / target.moments(sde.T)[1])
    errs = [abs(float(gaussian_output_law(exponential_multistep, target, time_grid(sde, 1e-3, n, "logsnr"),
                                          order=order, corrector=corrector, lower_order_final=False)[1]) - exact)
            for n in steps]
    slope = -math.log(errs[1] / errs[0]) / math.log(steps[1] / steps[0])
    assert abs(slope - expected) < 0.1, (errs, slope)


@pytest.mark.parametrize("sde", [ConstantVP(T=10.0), LinearVP()], ids=repr)
def test_third_order_predictor_is_at_least_third_order(sde):
    # Without the corrector the third-order predictor's variance error falls faster than N^-3 over this range
    # (its leading term is small on Gaussian data), never slower.
    target = Gaussian([0.0], [0.25], sde)
    exact = float(target.moments(1e-3)[1] / target.moments(sde.T)[1])
    steps = [128, 256]
    errs = [abs(float(gaussian_output_law(exponential_multistep, target, time_grid(sde, 1e-3, n, "logsnr"),
                                          order=3, corrector=False, lower_order_final=False)[1]) - exact)
            for n in steps]
    assert -math.log(errs[1] / errs[0]) / math.log(2) > 2.9, errs


def test_converges_to_the_probability_flow_on_a_mixture():
    # A precise solve of dx/dt = -1/2 g (x + score) from T = 1 to t0 on the linear schedule is the reference.
    sde = LinearVP()
    target = mixture(sde)
    x = start(16)

    def rhs(t, y):
        xt = torch.from_numpy(y.reshape(16, 2))
        return (-0.5 * float(sde.g(t)) * (xt + target.score(xt, t))).reshape(-1).numpy()

    sol = integrate.solve_ivp(rhs, (1.0, 1e-3), x.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-11)
    ref = torch.from_numpy(sol.y[:, -1].reshape(16, 2))
    errs = {}
    for order in (1, 2, 3):
        errs[order] = [float((exponential_multistep(target.score, x, time_grid(sde, 1e-3, n, "logsnr"), sde=sde,
                                                    order=order) - ref).abs().max()) for n in (40, 80)]
    # Halving the step divides the error by about 2^3 (order 2 + corrector) and 2^4 (order 3 + corrector); the
    # asymptotic ratios are not reached at 40 steps, so the bounds are loose, but well above first order's 2.
    assert errs[3][1] < 1e-3 and errs[2][1] < 5e-3, errs
    assert errs[3][1] < errs[2][1] < errs[1][1], errs
    assert errs[2][0] / errs[2][1] > 5 and errs[3][0] / errs[3][1] > 10, errs


def test_lower_order_final_trajectory_and_corrector():
    sde = LinearVP()
    target = mixture(sde)
    one = time_grid(sde, 1e-2, 1, "logsnr")
    # One step with lower_order_final is a DDIM step, whatever the order.
    assert torch.allclose(exponential_multistep(target.score, start(), one, sde=sde, order=3),
                          ddim(target.score, start(), one, sde=sde), atol=1e-13, rtol=0)
    times = time_grid(sde, 1e-3, 10, "logsnr")
    out, path = exponential_multistep(target.score, start(), times, sde=sde, return_trajectory=True)
    assert path.shape == (11, 32, 2) and torch.equal(path[-1], out) and torch.equal(path[0], start())
    plain, plain_path = exponential_multistep(target.score, start(), times, sde=sde, corrector=False,
                                              return_trajectory=True)
    # The trajectory records the corrected states: from the second node on they differ from the predictor's.
    assert not torch.allclose(path[1], plain_path[1])
    # Deterministic, and final_denoise adds one Tweedie step.
    assert torch.equal(out, exponential_multistep(target.score, start(), times, sde=sde))
    denoised = exponential_multistep(target.score, start(), times, sde=sde, final_denoise=True)
    rows = torch.full((32,), 1e-3, dtype=torch.float64)
    assert torch.allclose(denoised, sde.denoise(out, target.score(out, rows), 1e-3), atol=1e-12, rtol=0)


def test_one_score_call_per_step():
    sde = LinearVP()
    target = mixture(sde)
    calls = []

    def score(x, t):
        calls.append(float(t[0]))
        return target.score(x, t)

    times = time_grid(sde, 1e-3, 7, "quadratic")
    exponential_multistep(score, start(), times, sde=sde, order=3)
    assert calls == pytest.approx(times[:-1].tolist(), abs=0)


def test_bad_options_are_refused():
    sde = LinearVP()
    target = mixture(sde)
    times = time_grid(sde, 1e-3, 5)
    for bad in [0, 4, 2.5, True, "2"]:
        with pytest.raises(ValueError, match="order"):
            exponential_multistep(target.score, start(), times, sde=sde, order=bad)
    with pytest.raises(TypeError, match="corrector"):
        exponential_multistep(target.score, start(), times, sde=sde, corrector="yes")
    with pytest.raises(TypeError, match="lower_order_final"):
        exponential_multistep(target.score, start(), times, sde=sde, lower_order_final=1)
    with pytest.raises(ValueError, match="decreasing"):
        exponential_multistep(target.score, start(), times.flip(0), sde=sde)
