"""Per-seed log-log slopes and their spread (diffnotes.rates.seed_slopes)."""

import math

import numpy as np
import pytest

from diffnotes.rates import SeedSlopes, seed_slopes


def test_exact_power_laws_give_each_column_its_exponent():
    x = np.array([8.0, 16.0, 32.0, 64.0])
    exponents = np.array([-0.5, -1.0 / 3.0, -2.0])
    y = 3.0 * x[:, None] ** exponents[None, :]
    fit = seed_slopes(x, y)
    assert isinstance(fit, SeedSlopes)
    np.testing.assert_allclose(fit.slopes, exponents, atol=1e-12)
    assert abs(fit.mean - exponents.mean()) < 1e-12
    assert abs(fit.sd - exponents.std(ddof=1)) < 1e-12
    assert abs(fit.se - fit.sd / math.sqrt(3)) < 1e-15


def test_the_mean_is_the_slope_of_the_mean_log_and_scale_does_not_matter():
    rng = np.random.default_rng(3)
    x = 2.0 ** np.arange(6, 12)
    y = np.exp(rng.standard_normal((x.size, 5)))
    fit = seed_slopes(x, y)
    b = np.polyfit(np.log(x), np.log(y).mean(1), 1)[0]
    assert abs(fit.mean - b) < 1e-12
    # a constant factor per column moves the intercepts, not the slopes
    np.testing.assert_allclose(seed_slopes(x, y * [1, 2, 3, 4, 5]).slopes, fit.slopes, atol=1e-12)


def test_the_spread_measures_the_noise_of_independent_repeats():
    rng = np.random.default_rng(4)
    x = 2.0 ** np.arange(6, 14)
    lxc = np.log(x) - np.log(x).mean()
    sigma = 0.1
    want = sigma / math.sqrt(lxc @ lxc)  # standard deviation of one least-squares slope
    y = (x**-0.5)[:, None] * np.exp(sigma * rng.standard_normal((x.size, 400)))
    fit = seed_slopes(x, y)
    assert abs(fit.mean + 0.5) < 4 * want / 20
    assert abs(fit.sd / want - 1) < 0.1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one-dimensional"):
        seed_slopes([[1, 2, 3]], [[1, 2], [1, 2], [1, 2]])
    with pytest.raises(ValueError, match="shaped"):
        seed_slopes([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="r >= 2"):
        seed_slopes([1, 2, 3], [[1], [2], [3]])
    with pytest.raises(ValueError, match="positive"):
        seed_slopes([1, 2, 3], [[1, 1], [-1, 1], [2, 1]])
    with pytest.raises(ValueError, match="distinct"):
        seed_slopes([1, 1, 2], [[1, 1], [2, 2], [3, 3]])
