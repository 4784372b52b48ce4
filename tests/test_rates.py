"""Log-log slopes with bootstrap intervals."""

import numpy as np
import pytest

from diffnotes.rates import loglog_slope


def test_exact_power_law():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    fit = loglog_slope(x, 3 * x**-0.4, n_boot=200, generator=0)
    assert abs(fit.slope + 0.4) < 1e-12 and abs(np.exp(fit.intercept) - 3) < 1e-10
    assert abs(fit.low + 0.4) < 1e-12 and abs(fit.high + 0.4) < 1e-12


@pytest.mark.parametrize("repeats", [1, 8])
def test_noisy_slope_is_recovered_and_covered(repeats):
    rng = np.random.default_rng(1)
    x = 2.0 ** np.arange(6, 14)
    covered = 0
    for _ in range(40):
        noise = np.exp(0.1 * rng.standard_normal((x.size, repeats)))
        y = (x**-0.5)[:, None] * noise
        fit = loglog_slope(x, y[:, 0] if repeats == 1 else y, n_boot=400, generator=rng)
        assert abs(fit.slope + 0.5) < 0.1
        covered += fit.covers(-0.5)
    assert covered >= 30  # a 95% interval; the pairs bootstrap on 8 points is a little narrow


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1, 2, 3], [1, -1, 2])
    with pytest.raises(ValueError, match="distinct"):
        loglog_slope([1, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="shaped"):
        loglog_slope([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="n_boot"):
        loglog_slope([1, 2, 3], [1, 2, 3], n_boot=10)
    with pytest.raises(ValueError, match="level"):
        loglog_slope([1, 2, 3], [1, 2, 3], level=1.5)


def test_covered_tol_is_the_coverage_of_the_bootstrap_interval():
    from diffnotes.rates import covered_tol

    rng = np.random.default_rng(3)
    x = np.geomspace(10, 1e4, 8)
    fit = loglog_slope(x, x**-0.5 * np.exp(rng.normal(0, 0.1, x.size)), generator=rng)
    for theory in np.linspace(fit.slope - 0.5, fit.slope + 0.5, 41):
        covered = fit.low <= theory <= fit.high
        assert (abs(fit.slope - theory) <= covered_tol(fit, theory)) is covered
