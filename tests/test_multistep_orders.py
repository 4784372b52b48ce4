"""Orders of the exponential multistep solver down to errors near 1e-11 (all predictor orders, with and without the
corrector), measured on the exact Gaussian oracle: 3-D data with a full covariance and a non-zero mean, the sampler
started at the exact law at T, so that the error of the output law is the discretisation error alone.

Before issue 18 was fixed the third-order predictor's first step was a plain DDIM step (local error h^2), which left a
global h^2 term proportional to alpha(T)^2: invisible at moderate step counts, it held the error near 1e-8 on fine
grids (local orders 1.5-1.9 between 768 and 3072 steps).
"""

import math

import pytest
import torch

from diffnotes.oracle import gaussian_output_law_full
from diffnotes.samplers import exponential_multistep, time_grid
from diffnotes.sde import ConstantVP, LinearVP
from diffnotes.targets import Gaussian

COV = torch.tensor([[1.0, 0.3, -0.2], [0.3, 0.5, 0.1], [-0.2, 0.1, 0.3]], dtype=torch.float64)
MEAN = [0.5, -1.0, 0.25]
T0 = 1e-3
STEPS = (1536, 3072)  # fine enough for errors near 1e-11 at orders 3 and 4


def law_error(sde, n, spacing, order, corrector):
    target = Gaussian(MEAN, COV, sde)
    m_T, V_T = target.moments(sde.T)
    m_0, V_0 = target.moments(T0)
    m, V = gaussian_output_law_full(exponential_multistep, target, time_grid(sde, T0, n, spacing), start_mean=m_T,
                                    start_cov=V_T, order=order, corrector=corrector, lower_order_final=False)
    return float((m - m_0).abs().max() + (V - V_0).abs().max())


def local_order(sde, spacing, order, corrector, steps=STEPS):
    errs = [law_error(sde, n, spacing, order, corrector) for n in steps]
    return -math.log(errs[1] / errs[0]) / math.log(steps[1] / steps[0]), errs


LINEAR, CONSTANT = LinearVP(), ConstantVP(T=10.0)


@pytest.mark.parametrize(
    "sde,spacing,order,corrector,expected",
    [(LINEAR, "logsnr", 1, False, 1), (LINEAR, "logsnr", 1, True, 2), (LINEAR, "logsnr", 2, False, 2),
     (LINEAR, "logsnr", 2, True, 3), (LINEAR, "logsnr", 3, True, 4), (CONSTANT, "logsnr", 3, True, 4),
     (LINEAR, "quadratic", 3, True, 4), (LINEAR, "quadratic", 3, False, 3)],
    ids=["AB1", "AB1+AM", "AB2", "AB2+AM", "AB3+AM", "AB3+AM-constant", "AB3+AM-quadratic", "AB3-quadratic"],
)
def test_order_p_or_p_plus_one_on_fine_grids(sde, spacing, order, corrector, expected):
    # The local slope differs from the order by terms of relative size 1/N and by the next error term (a few
    # hundredths at these N); 0.15 leaves room for that and for nothing of a lower order.
    slope, errs = local_order(sde, spacing, order, corrector)
    assert abs(slope - expected) < 0.15, (slope, errs)


@pytest.mark.parametrize("sde", [LINEAR, CONSTANT], ids=repr)
def test_third_order_predictor_on_the_log_snr_grid(sde):
    # For Gaussian data on the log-SNR grid the h^3 term of the error is the integral of an exact derivative in
    # lambda (see the docstring of exponential_multistep), so the slope lies between p = 3 and the next order 4; it
    # must reach errors near 1e-11 (it stalled near 1e-8 before the first step was corrected).
    slope, errs = local_order(sde, "logsnr", 3, False)
    assert 3 - 0.15 < slope < 4 + 0.15 and errs[1] < 1e-10, (slope, errs)
