"""DPM-Solver++ 3M: how our third-order exponential multistep predictor differs from diffusers', exactly.

diffusers' ``DPMSolverMultistepScheduler`` (``solver_order=3``) weights the second divided difference D2 of its
third-order update with -phi_3, half the weight -2 phi_3 = h J_2(h) of the exact integral of the quadratic
interpolant that ``exponential_multistep(order=3)`` uses; and our first step (DDIM) is corrected, diffusers' is not.
A direct implementation of the 3M recursion with these two switches reproduces both.  The setting is that of
tests/_parity.py (exact mixture score on the DDPM grid, given to diffusers as a noise prediction).
"""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from _parity import setup as parity_setup  # noqa: E402
from _parity import start  # noqa: E402

from diffnotes.samplers import exponential_multistep  # noqa: E402


def setup():
    # solver_type="heun": the second-order step integrates the linear interpolant exactly, as ours does;
    # lower_order_final=False with final_sigmas_type="zero": orders 1, 2, 3, ..., 3, then the step to sigma = 0,
    # which is Tweedie's denoised estimate (our final_denoise).
    return parity_setup(diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=3,
                        solver_type="heun", lower_order_final=False, final_sigmas_type="zero")


def three_m(score, x, times, sde, d2_weight, correct_first_step):
    """The 3M recursion in data prediction, written out: D2 weighted by d2_weight * (-phi_3), then Tweedie at t0."""
    a, s = sde.alpha(times).tolist(), sde.h(times).sqrt().tolist()
    lam = [math.log(ai / si) for ai, si in zip(a, s, strict=True)]

    def predict(x, k):
        return (x + s[k] ** 2 * score(x, torch.full((x.shape[0],), float(times[k]), dtype=x.dtype))) / a[k]

    f, x_start = [], x
    for k in range(len(times) - 1):
        f.append(predict(x, k))
        if k == 1 and correct_first_step:  # x_1 again, from x_0 with the line through f_0 and f_1, integrated exactly
            d = lam[1] - lam[0]
            phi1 = math.expm1(-d)
            x = s[1] / s[0] * x_start - a[1] * phi1 * f[0] + a[1] * (phi1 / d + 1) * (f[1] - f[0])
        d = lam[k + 1] - lam[k]
        phi1 = math.expm1(-d)
        phi2 = phi1 / d + 1
        phi3 = phi2 / d - 0.5
        out = s[k + 1] / s[k] * x - a[k + 1] * phi1 * f[k]
        if k == 1:
            out = out + a[k + 1] * phi2 * (f[k] - f[k - 1]) / ((lam[k] - lam[k - 1]) / d)
        elif k >= 2:
            r0, r1 = (lam[k] - lam[k - 1]) / d, (lam[k - 1] - lam[k - 2]) / d
            d10, d11 = (f[k] - f[k - 1]) / r0, (f[k - 1] - f[k - 2]) / r1
            D1, D2 = d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)
            out = out + a[k + 1] * phi2 * D1 - d2_weight * a[k + 1] * phi3 * D2
        x = out
    return predict(x, len(times) - 1)


@pytest.mark.parametrize("n", [10, 25])
def test_3m_differs_from_diffusers_by_the_weight_of_d2_and_the_corrected_first_step(n):
    sched, sde, target, eps_model = setup()
    sched.set_timesteps(n)
    x = start()
    ref = x.clone()
    for j in sched.timesteps:
        ref = sched.step(eps_model(ref, j), j, ref).prev_sample
    ref = ref.double()
    times = sde.timesteps(n)
    assert torch.equal((times * 1000 - 1).round().long(), sched.timesteps.long())
    # diffusers is the recursion with the halved weight and a plain first step (to its float32 round-off) ...
    theirs = three_m(target.score, x, times, sde, d2_weight=1.0, correct_first_step=False)
    assert torch.allclose(theirs, ref, atol=1e-5, rtol=0)
    # ... ours the one with the exact weight and the corrected first step (to float64 round-off)
    ours = exponential_multistep(target.score, x, times, sde=sde, order=3, corrector=False, lower_order_final=False,
                                 final_denoise=True)
    exact = three_m(target.score, x, times, sde, d2_weight=2.0, correct_first_step=True)
    assert torch.allclose(ours, exact, atol=1e-10, rtol=0)
    # and the two really differ (about 1e-2 at 10 steps).
    gap = float((ours - ref).abs().max())
    assert gap > 1e-3 if n == 10 else gap > 1e-5, gap
