"""Log-log slopes with bootstrap intervals."""

import numpy as np
import pytest

from diffnotes.rates import local_orders, loglog_slope, richardson_order


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


def test_local_orders_read_the_exponent_of_a_power_law_with_a_correction():
    ns = 2.0 ** np.arange(3, 12)
    err = 3.0 * ns**-2 * (1 + 5 / ns)
    s = local_orders(err, ns)
    assert s.shape == (len(ns) - 1,)
    # s_k = 2 + log((1 + 5/N_k) / (1 + 5/N_{k+1})) / log 2, computed directly
    expected = 2 + np.log((1 + 5 / ns[:-1]) / (1 + 5 / ns[1:])) / np.log(2)
    np.testing.assert_allclose(s, expected, rtol=1e-12)
    order, tol = richardson_order(err, ns)
    # the 1/N correction is removed: the estimate is much closer to 2 than the last local order
    assert abs(order - 2) < 0.1 * abs(s[-1] - 2)
    assert abs(order - 2) <= tol


def test_orders_reject_bad_input():
    with pytest.raises(ValueError, match="positive and finite"):
        local_orders([1.0, np.nan], [1, 2])
    with pytest.raises(ValueError, match="increasing"):
        local_orders([1.0, 0.5], [2, 1])
    with pytest.raises(ValueError, match="same length"):
        local_orders([1.0, 0.5, 0.2], [1, 2])
    with pytest.raises(ValueError, match="double"):
        richardson_order([1.0, 0.5, 0.2], [1, 2, 3])
    with pytest.raises(ValueError, match="three or more"):
        richardson_order([1.0, 0.5], [1, 2])
