"""Tests for diffnotes.metrics: exact Gaussian distances, sample-based distances and the noise floor."""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.spatial
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffnotes import metrics
from diffnotes.metrics import (
    Floor,
    density_tv,
    energy_distance,
    gaussian_kl,
    gaussian_tv_1d,
    gaussian_w2,
    kl_entropy,
    mmd,
    noise_floor,
    sliced_wasserstein,
    tv_histogram,
    wasserstein_1d,
    wasserstein_1d_to_cdf,
)


def random_spd(rng, dim, scale=1.0):
    a = rng.standard_normal((dim, dim))
    return scale * (a @ a.T / dim + 0.5 * np.eye(dim))


def random_rotation(rng, dim):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def exact_x_minus_log1p(x: Fraction, terms: int = 12) -> Fraction:
    """x - log(1 + x) = sum_{k>=2} (-x)^k / k in exact rational arithmetic (|x| << 1)."""
    return sum((Fraction((-1) ** k, k) * x**k for k in range(2, terms)), Fraction(0))


# -- gaussian_kl ------------------------------------------------------------------------------------------------
def test_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    dim, n = 3, 200_000
    m0, m1 = rng.standard_normal(dim), rng.standard_normal(dim)
    S0, S1 = random_spd(rng, dim), random_spd(rng, dim)
    x = rng.multivariate_normal(m0, S0, size=n)
    ratio = scipy.stats.multivariate_normal(m0, S0).logpdf(x) - scipy.stats.multivariate_normal(m1, S1).logpdf(x)
    se = ratio.std() / math.sqrt(n)
    assert abs(gaussian_kl(m0, S0, m1, S1) - ratio.mean()) < 4 * se


@pytest.mark.parametrize(("m0", "s0", "m1", "s1"), [(0.0, 1.0, 0.0, 2.0), (1.0, 0.5, -2.0, 3.0), (0.3, 2.0, 0.0, 0.1)])
def test_kl_one_dimensional_closed_form(m0, s0, m1, s1):
    expected = math.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5
    assert gaussian_kl(m0, s0**2, m1, s1**2) == pytest.approx(expected, rel=1e-13)
    assert gaussian_kl([m0], [[s0**2]], [m1], [[s1**2]]) == pytest.approx(expected, rel=1e-13)


def test_kl_zero_for_identical_laws_and_asymmetric():
    rng = np.random.default_rng(1)
    m, S = rng.standard_normal(4), random_spd(rng, 4)
    assert gaussian_kl(m, S, m, S) == 0.0
    assert gaussian_kl(0.0, 1.0, 0.0, 4.0) == pytest.approx(0.5 * (0.25 - 1 + math.log(4)), rel=1e-14)
    assert gaussian_kl(0.0, 4.0, 0.0, 1.0) == pytest.approx(0.5 * (4 - 1 - math.log(4)), rel=1e-14)


def test_kl_resolves_nearly_equal_laws_diagonal():
    """KL ~ 1e-13 against an exact rational-arithmetic series: full relative precision, no cancellation."""
    d1 = np.array([1.0, 2.5, 0.3])
    S1 = np.diag(d1)
    S0 = np.diag(d1 * (1 + np.array([1e-6, -2e-6, 5e-7])))
    m1 = np.array([0.0, 1.0, -1.0])
    m0 = m1 + np.array([3e-7, 0.0, -1e-7])
    exact = Fraction(0)
    for i in range(3):
        x = Fraction(S0[i, i]) / Fraction(S1[i, i]) - 1
        delta = Fraction(m0[i]) - Fraction(m1[i])
        exact += Fraction(1, 2) * exact_x_minus_log1p(x) + delta**2 / (2 * Fraction(S1[i, i]))
    value = gaussian_kl(m0, S0, m1, S1)
    assert 1e-13 < float(exact) < 1e-11
    assert value == pytest.approx(float(exact), rel=1e-9)


def test_kl_resolves_nearly_equal_laws_rotated():
    rng = np.random.default_rng(2)
    q = random_rotation(rng, 4)
    d = np.array([0.5, 1.0, 2.0, 3.0])
    eps = np.array([1e-6, -1e-6, 2e-6, 0.0])
    S1 = q @ np.diag(d) @ q.T
    S0 = q @ np.diag(d * (1 + eps)) @ q.T
    exact = sum(Fraction(1, 2) * exact_x_minus_log1p(Fraction(e)) for e in eps)  # ~ 1.5e-12
    assert gaussian_kl(np.zeros(4), S0, np.zeros(4), S1) == pytest.approx(float(exact), rel=1e-6)


def test_kl_accepts_torch():
    rng = np.random.default_rng(3)
    m0, m1, S0, S1 = rng.standard_normal(2), rng.standard_normal(2), random_spd(rng, 2), random_spd(rng, 2)
    expected = gaussian_kl(m0, S0, m1, S1)
    got = gaussian_kl(*(torch.tensor(a, dtype=torch.float32) for a in (m0, S0, m1, S1)))
    assert got == pytest.approx(expected, rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 5))
def test_kl_nonnegative_and_w2_symmetric(seed, dim):
    rng = np.random.default_rng(seed)
    m0, m1 = rng.standard_normal(dim), rng.standard_normal(dim)
    S0, S1 = random_spd(rng, dim), random_spd(rng, dim)
    assert gaussian_kl(m0, S0, m1, S1) >= 0
    assert gaussian_w2(m0, S0, m1, S1) == pytest.approx(gaussian_w2(m1, S1, m0, S0), rel=1e-8, abs=1e-12)


# -- gaussian_w2 ------------------------------------------------------------------------------------------------
def test_w2_one_dimensional_closed_form():
    assert gaussian_w2(1.0, 4.0, -1.0, 9.0) == pytest.approx(math.sqrt(4 + 1), rel=1e-14)
    assert gaussian_w2(0.0, 1.0, 0.0, 1.0) == 0.0


def test_w2_commuting_covariances_closed_form():
    rng = np.random.default_rng(4)
    q = random_rotation(rng, 3)
    a, b = np.array([0.5, 1.0, 4.0]), np.array([2.0, 1.0, 0.25])
    m0, m1 = rng.standard_normal(3), rng.standard_normal(3)
    expected = math.sqrt(np.sum((m0 - m1) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert gaussian_w2(m0, np.diag(a), m1, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert gaussian_w2(m0, q @ np.diag(a) @ q.T, m1, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-10)


def test_w2_non_commuting_matches_sqrtm_formula_and_allows_singular():
    rng = np.random.default_rng(5)
    S0, S1 = random_spd(rng, 3), random_spd(rng, 3)
    r1 = scipy.linalg.sqrtm(S1).real
    expected = math.sqrt(np.trace(S0 + S1 - 2 * scipy.linalg.sqrtm(r1 @ S0 @ r1).real))
    assert gaussian_w2(np.zeros(3), S0, np.zeros(3), S1) == pytest.approx(expected, rel=1e-9)
    # a point mass against N(0, s^2 I_D): W2 = s sqrt(D)
    assert gaussian_w2(np.zeros(3), np.zeros((3, 3)), np.zeros(3), 4.0 * np.eye(3)) == pytest.approx(2 * math.sqrt(3))


# -- Wasserstein from samples ----------------------------------------------------------------------------------
def test_wasserstein_1d_shift_and_exact_cdf_case():
    x = np.random.default_rng(6).standard_normal(300)
    assert wasserstein_1d(x, x + 0.4) == pytest.approx(0.4, rel=1e-12)
    grid = np.linspace(-1.0, 2.0, 301)
    assert wasserstein_1d_to_cdf([0.0], lambda t: np.clip(t, 0.0, 1.0), grid) == pytest.approx(0.5, rel=1e-12)


def test_wasserstein_1d_agrees_with_cdf_version_on_same_law():
    x = np.random.default_rng(7).standard_normal(500)
    grid = np.linspace(-8.0, 8.0, 4001)
    via_cdf = wasserstein_1d_to_cdf(x, scipy.stats.norm.cdf, grid)
    n_ref = 1_000_000  # quantile sample: its own W1 to N(0, 1) is of order 1e-5
    reference = scipy.stats.norm.ppf((np.arange(n_ref) + 0.5) / n_ref)
    assert via_cdf == pytest.approx(wasserstein_1d(x, reference), abs=1e-4)
    assert via_cdf == pytest.approx(wasserstein_1d_to_cdf(x, scipy.stats.norm.cdf, np.linspace(-8, 8, 16001)), abs=1e-6)


def test_sliced_wasserstein():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 2))
    assert sliced_wasserstein(x, x) < 1e-12
    shift = np.array([0.6, -0.8])  # |shift| = 1; E_theta (theta . shift)^2 = 1/2 on the circle
    assert sliced_wasserstein(x, x + shift, n_projections=2000, generator=0) == pytest.approx(math.sqrt(0.5), rel=0.05)
    y = rng.standard_normal((400, 2))
    assert sliced_wasserstein(x, y + 3 * shift) > 5 * sliced_wasserstein(x, y)
    assert sliced_wasserstein(x, y, generator=3) == sliced_wasserstein(x, y, generator=np.random.default_rng(3))
    x1 = x[:, 0]
    assert sliced_wasserstein(x1, x1 + 0.7, n_projections=5) == pytest.approx(0.7, rel=1e-10)
    assert sliced_wasserstein(x1, x1 - 0.7, n_projections=5, p=1) == pytest.approx(0.7, rel=1e-10)


# -- MMD and energy distance ------------------------------------------------------------------------------------
def naive_mmd(x, y, bw):
    def k(a, b):
        return np.exp(-scipy.spatial.distance.cdist(a, b, "sqeuclidean") / (2 * bw**2))

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * k(x, y).mean()
    )


def test_mmd_and_energy_blockwise_match_naive(monkeypatch):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((23, 3)), rng.standard_normal((31, 3)) + 0.3
    monkeypatch.setattr(metrics, "_BLOCK", 7)
    assert mmd(x, y, bandwidth=1.3) == pytest.approx(naive_mmd(x, y, 1.3), rel=1e-12)
    bw = np.median(scipy.spatial.distance.pdist(np.concatenate([x, y])))
    assert mmd(x, y) == pytest.approx(naive_mmd(x, y, bw), rel=1e-12)
    d = scipy.spatial.distance.cdist
    naive_energy = 2 * d(x, y).mean() - d(x, x).mean() - d(y, y).mean()
    assert energy_distance(x, y) == pytest.approx(naive_energy, rel=1e-12)


def test_energy_distance_matches_scipy_in_1d():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal(200), rng.standard_normal(150) * 1.5
    assert energy_distance(x, y) == pytest.approx(scipy.stats.energy_distance(x, y) ** 2, rel=1e-10)
    assert energy_distance(x, x) == 0.0


def gaussian_2d(n, rng):
    return rng.standard_normal((n, 2))


@pytest.mark.parametrize("metric", [lambda a, b: mmd(a, b, bandwidth=1.0), energy_distance])
def test_two_sample_metric_within_floor_for_one_law_and_above_for_two(metric):
    n = 500
    floor = noise_floor(metric, gaussian_2d, n, repeats=20, generator=11)
    rng = np.random.default_rng(12)
    same = metric(gaussian_2d(n, rng), gaussian_2d(n, rng))
    different = metric(gaussian_2d(n, rng), gaussian_2d(n, rng) + np.array([1.0, 0.0]))
    # both statistics have a skewed (weighted chi-square) law under one law: over 200 seeds the largest
    # |same - floor.mean| / floor.std was 3.6 (MMD) and 4.9 (energy), hence 6 rather than a Gaussian 4
    assert abs(same - floor.mean) < 6 * floor.std
    assert different > floor.mean + 20 * floor.std


def test_mmd_is_deterministic_with_median_heuristic_on_large_samples():
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((1500, 2)), rng.standard_normal((1500, 2))
    assert mmd(x, y) == mmd(x, y)


# -- total variation --------------------------------------------------------------------------------------------
def test_tv_histogram_sample_against_its_density():
    rng = np.random.default_rng(14)
    x = rng.standard_normal(20_000)
    assert tv_histogram(x, scipy.stats.norm.pdf, bins=30) < 0.05
    x2 = rng.standard_normal((20_000, 2))
    pdf2 = scipy.stats.multivariate_normal(np.zeros(2), np.eye(2)).pdf
    assert tv_histogram(x2, pdf2, bins=20) < 0.1
    # TV(N(1, 1), N(0, 1)) = 2 Phi(1/2) - 1
    shifted = rng.standard_normal(50_000) + 1.0
    exact = 2 * scipy.stats.norm.cdf(0.5) - 1
    assert tv_histogram(shifted, scipy.stats.norm.pdf, bins=50) == pytest.approx(exact, abs=0.03)


def test_tv_histogram_disjoint_identical_and_outside_range():
    rng = np.random.default_rng(15)
    x, y = rng.uniform(0, 1, 1000), rng.uniform(2, 3, 1000)
    assert tv_histogram(x, y) == pytest.approx(1.0)
    assert tv_histogram(np.c_[x, x], np.c_[y, y], bins=10) == pytest.approx(1.0)
    assert tv_histogram(x, x) == 0.0
    assert tv_histogram(y, x, range=(0.0, 1.0)) == pytest.approx(1.0)  # y lies outside the range: counted, not dropped


# -- entropy ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2])
def test_kl_entropy_of_gaussian(dim):
    n, s = 4000, 1.5
    x = s * np.random.default_rng(16 + dim).standard_normal((n, dim))
    exact = 0.5 * dim * math.log(2 * math.pi * math.e * s**2)
    # asymptotic standard error sqrt((psi'(1) + Var log p(X)) / n) = 0.023 (D = 1), 0.026 (D = 2) for k = 1;
    # the spread over 200 seeds at this n is 0.026 for both D (k = 1) and below 0.019 for k = 4
    se = 0.026
    assert abs(kl_entropy(x) - exact) < 4 * se
    assert abs(kl_entropy(x, k=4) - exact) < 4 * se


def test_kl_entropy_refuses_duplicates():
    x = np.random.default_rng(17).standard_normal(50)
    with pytest.raises(ValueError, match="duplicate"):
        kl_entropy(np.concatenate([x, x[:3]]))


# -- noise floor ------------------------------------------------------------------------------------------------
def test_noise_floor():
    # The metric's own randomness is the metric's: fixed projections here (sliced_wasserstein's None is fresh
    # entropy, as everywhere), so the same generator gives the same floor.
    metric = functools.partial(sliced_wasserstein, generator=0)
    floor = noise_floor(metric, gaussian_2d, 200, repeats=6, generator=18)
    assert isinstance(floor, Floor)
    assert len(floor.values) == 6 and floor.mean > 0 and floor.std > 0
    assert floor == noise_floor(metric, gaussian_2d, 200, repeats=6, generator=18)
    with pytest.raises(dataclasses.FrozenInstanceError):
        floor.mean = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="NaN"):
        noise_floor(lambda a, b: float("nan"), gaussian_2d, 10, generator=0)
    with pytest.raises(ValueError, match="repeats"):
        noise_floor(mmd, gaussian_2d, 10, repeats=1)


# -- bad inputs -------------------------------------------------------------------------------------------------
X2 = np.random.default_rng(19).standard_normal((20, 2))
X3 = np.random.default_rng(20).standard_normal((20, 3))
XNAN = X2.copy()
XNAN[3, 1] = np.nan


@pytest.mark.parametrize("fn", [mmd, energy_distance, sliced_wasserstein, tv_histogram])
def test_mismatched_dimensions_raise(fn):
    with pytest.raises(ValueError, match="same dimension"):
        fn(X2, X3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: mmd(XNAN, X2),
        lambda: energy_distance(X2, XNAN),
        lambda: sliced_wasserstein(XNAN, X2),
        lambda: tv_histogram(XNAN, X2),
        lambda: kl_entropy(XNAN),
        lambda: wasserstein_1d(XNAN[:, 1], X2[:, 0]),
        lambda: gaussian_kl([0.0, np.nan], np.eye(2), [0.0, 0.0], np.eye(2)),
    ],
)
def test_nan_input_raises(call):
    with pytest.raises(ValueError, match="NaN"):
        call()


@pytest.mark.parametrize("fn", [gaussian_kl, gaussian_w2])
def test_bad_covariances_raise(fn):
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="positive"):
        fn(np.zeros(2), indefinite, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="positive"):
        fn(0.0, -1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="symmetric"):
        fn(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="dimension"):
        fn(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="same dimension"):
        fn(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_kl_refuses_singular_covariance():
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_kl(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.eye(2))


def test_other_bad_inputs_raise():
    with pytest.raises(ValueError, match="dimension 1 or 2"):
        tv_histogram(X3, X3)
    with pytest.raises(ValueError, match="at least 2"):
        mmd(X2[:1], X2)
    with pytest.raises(ValueError, match="at least 2"):
        kl_entropy(X2[:1])
    with pytest.raises(ValueError, match="bins"):
        tv_histogram(X2, X2, bins=0)
    with pytest.raises(ValueError, match="empty"):
        tv_histogram(np.ones(10), np.ones(10))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(X2, X2, bandwidth=0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(X2, X2, bandwidth=float("nan"))
    with pytest.raises(ValueError, match="dimension 1"):
        wasserstein_1d(X2, X2)
    with pytest.raises(TypeError, match="real numbers"):
        mmd(np.array(["a", "b"]), X2[:, 0])
    with pytest.raises(ValueError, match="p must"):
        sliced_wasserstein(X2, X2, p=0.5)


def test_cdf_grid_requirements_raise():
    x = np.random.default_rng(21).standard_normal(100)
    with pytest.raises(ValueError, match="cover the sample"):
        wasserstein_1d_to_cdf(x, scipy.stats.norm.cdf, np.linspace(-1, 1, 100))
    with pytest.raises(ValueError, match="widen"):
        wasserstein_1d_to_cdf(x, scipy.stats.norm.cdf, np.linspace(-4, 4, 100))
    with pytest.raises(ValueError, match="increasing"):
        wasserstein_1d_to_cdf(x, scipy.stats.norm.cdf, np.linspace(8, -8, 100))


def test_energy_permutation_test():
    from diffnotes.metrics import energy_distance, energy_permutation_test

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    same = energy_permutation_test(a, b, 200, generator=1)
    assert math.isclose(same.statistic, energy_distance(a, b), rel_tol=1e-9)
    assert same.null.shape == (200,) and 0 < same.pvalue <= 1 and same.pvalue > 0.01
    shifted = energy_permutation_test(a, b + 0.5, 200, generator=1)
    assert shifted.pvalue == 1 / 201
    # Under the null the p-value is uniform: over many pairs, about 10% fall below 0.1.
    ps = [energy_permutation_test(rng.normal(size=(40, 1)), rng.normal(size=(40, 1)), 99, generator=k).pvalue
          for k in range(200)]
    assert 0.04 < np.mean(np.array(ps) <= 0.1) < 0.17
    with pytest.raises(ValueError):
        energy_permutation_test(a, b[:, :1])


# -- total variation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m0,v0,m1,v1", [(0.0, 1.0, 0.0, 1.5), (0.3, 1.0, -0.2, 1.0), (1.0, 0.25, 0.0, 2.0),
                                         (0.0, 1.0, 1e-4, 1.0 + 1e-4), (5.0, 0.1, -5.0, 0.1)])
def test_total_variation_of_two_normals(m0, v0, m1, v1):
    tv = gaussian_tv_1d(m0, v0, m1, v1)
    # Reference: the trapezoid rule on a fine grid (its error at the kinks of |p - q| is O(dx^2) ~ 1e-10).
    lo, hi = min(m0, m1) - 12 * math.sqrt(max(v0, v1)), max(m0, m1) + 12 * math.sqrt(max(v0, v1))
    x = np.linspace(lo, hi, 2_000_001)
    diff = np.abs(scipy.stats.norm.pdf(x, m0, math.sqrt(v0)) - scipy.stats.norm.pdf(x, m1, math.sqrt(v1)))
    reference = 0.5 * scipy.integrate.trapezoid(diff, x)
    assert abs(tv - reference) < 1e-9 + 1e-7 * reference
    assert abs(tv - gaussian_tv_1d(m1, v1, m0, v0)) < 1e-15
    kl = gaussian_kl(np.array([m0]), np.array([[v0]]), np.array([m1]), np.array([[v1]]))
    assert tv <= math.sqrt(kl / 2) + 1e-15  # Pinsker


def test_total_variation_edge_cases():
    assert gaussian_tv_1d(0.3, 2.0, 0.3, 2.0) == 0.0
    # Equal variances: TV = 2 Phi(|dm| / (2 sigma)) - 1.
    assert abs(gaussian_tv_1d(0.0, 4.0, 1.0, 4.0) - (2 * scipy.stats.norm.cdf(0.25) - 1)) < 1e-15
    # Small differences: TV ~ |dm| / (sigma sqrt(2 pi)) for a mean shift.
    assert abs(gaussian_tv_1d(0.0, 1.0, 1e-6, 1.0) / (1e-6 / math.sqrt(2 * math.pi)) - 1) < 1e-6
    with pytest.raises(ValueError, match="positive"):
        gaussian_tv_1d(0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        gaussian_tv_1d(float("nan"), 1.0, 0.0, 1.0)


def test_density_tv_against_exact_values():
    edges = np.linspace(-12, 12, 4001)
    p = lambda m: scipy.stats.norm.pdf(m, 0.3, 1.0)  # noqa: E731
    q = lambda m: scipy.stats.norm.pdf(m, -0.2, 1.5)  # noqa: E731
    assert abs(density_tv(p, q, edges) - gaussian_tv_1d(0.3, 1.0, -0.2, 2.25)) < 1e-6
    # Densities with jumps on the edges: U[0, 1] against U[0, 2] has TV 1/2, exactly.
    box = np.linspace(-1, 3, 401)
    u1 = lambda m: ((m > 0) & (m < 1)).astype(float)  # noqa: E731
    u2 = lambda m: 0.5 * ((m > 0) & (m < 2))  # noqa: E731
    assert abs(density_tv(u1, u2, box) - 0.5) < 1e-12
    assert density_tv(p(0.5 * (edges[1:] + edges[:-1])), p, edges) == 0.0  # arrays are accepted too
    with pytest.raises(ValueError, match="mass"):
        density_tv(p, q, np.linspace(-1, 1, 101))
    with pytest.raises(ValueError, match="increasing"):
        density_tv(p, q, edges[::-1])
    with pytest.raises(ValueError, match="one density per cell"):
        density_tv(np.ones(3), q, edges)
    with pytest.raises(ValueError, match="non-negative"):
        density_tv(lambda m: -p(m), q, edges)


def test_marginal_sampler_draws_the_exact_marginal_reproducibly():
    import torch

    from diffnotes.metrics import marginal_sampler
    from diffnotes.targets import Gaussian

    target = Gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.0], [0.0, 4.0]])
    sample = marginal_sampler(target, 0.5)
    a, b = sample(4000, np.random.default_rng(0)), sample(4000, np.random.default_rng(0))
    assert a.shape == (4000, 2) and np.array_equal(a, b)
    expected = target.sample_marginal(4000, 0.5, torch.Generator().manual_seed(
        int(np.random.default_rng(0).integers(2**31)))).numpy()
    assert np.array_equal(a, expected)
    with pytest.raises(TypeError, match="sample_marginal"):
        marginal_sampler(object(), 0.5)
