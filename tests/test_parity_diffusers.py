"""Parity with the reference implementation: diffusers' schedulers and our samplers, same model outputs, same noise.

Set-up in tests/_parity.py (exact mixture score on a 1000-step grid built from diffusers' betas, given to diffusers as
a noise prediction; diffusers timestep j is our time (j + 1)/1000).  Step counts that divide 1000 and ones that do
not, three beta schedules.  The findings (which side departs from the stated method, and by how much) are on the book
page book/appendix/parity.md.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from _parity import SCHEDULES, run, setup, start  # noqa: E402

from diffnotes.samplers import ddim, ddpm, diffusers_ddim_arrivals, dpm_solver_pp  # noqa: E402

STEPS = [5, 7, 10, 13, 25, 30, 50, 64, 333]  # 7, 13, 30, 64, 333 do not divide 1000
FEWER = [5, 7, 10, 13, 30, 64]  # for the schedulers whose differences are round-off only
FLOAT32 = 1e-5  # diffusers keeps alphas_cumprod (and DPM-Solver's and Euler's state) in float32


def _ddim_times(sde, n):
    return torch.cat([sde.timesteps(n), torch.tensor([1 / 1000], dtype=torch.float64)])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", STEPS)
def test_ddim(n, schedule):
    # diffusers' DDIM steps from j to j - 1000 // n, which is its next timestep only when n divides 1000: with the
    # arrival times of diffusers_ddim_arrivals our ddim reproduces it for every n (to its float32 round-off, and to
    # float64 round-off once its alphas_cumprod are float64) ...
    x = start()
    for float64, tol in ((False, FLOAT32), (True, 1e-11)):
        sched, sde, target, eps_model = setup(diffusers.DDIMScheduler, schedule, float64=float64,
                                              set_alpha_to_one=False, clip_sample=False)
        sched.set_timesteps(n)
        ref = run(sched, eps_model, x)
        times = _ddim_times(sde, n)
        assert torch.equal((times[:-1] * 1000 - 1).round().long(), sched.timesteps.long())
        ours = ddim(target.score, x, times, sde=sde, arrival=diffusers_ddim_arrivals(sde, n))
        assert torch.allclose(ours, ref, atol=tol, rtol=0), float((ours - ref).abs().max())
    # ... while the DDIM of the method (each step to the next grid time) is ddim on the same grid: equal to diffusers
    # when n divides 1000, and away from it by 1e-3 to 7e-2 when not.
    plain = ddim(target.score, x, times, sde=sde)
    gap = float((plain - ref).abs().max())
    assert gap < 1e-11 if 1000 % n == 0 else gap > 1e-3, gap


def test_ddim_arrivals():
    _, sde, _, _ = setup(diffusers.DDIMScheduler, set_alpha_to_one=False, clip_sample=False)
    arr = diffusers_ddim_arrivals(sde, 7)  # timesteps 999, 856, ..., 142; stride 142
    assert torch.allclose(arr * 1000, torch.tensor([858.0, 715, 572, 429, 287, 144, 1], dtype=torch.float64))
    assert torch.equal(diffusers_ddim_arrivals(sde, 10), _ddim_times(sde, 10)[1:])  # 10 divides 1000
    assert float(diffusers_ddim_arrivals(sde, 333, set_alpha_to_one=True)[-1]) == 0.0  # 2 - 3 < 0: abar = 1
    with pytest.raises(TypeError, match="DiscreteVP"):
        diffusers_ddim_arrivals(None, 7)
    x = start(4)
    with pytest.raises(ValueError, match="one time per step"):
        ddim(lambda x, t: -x, x, _ddim_times(sde, 7), sde=sde, arrival=diffusers_ddim_arrivals(sde, 7)[:-1])
    with pytest.raises(ValueError, match="finite"):
        ddim(lambda x, t: -x, x, _ddim_times(sde, 7), sde=sde, arrival=torch.full((7,), float("nan")))
    with pytest.raises(ValueError, match="not below"):
        ddim(lambda x, t: -x, x, _ddim_times(sde, 7), sde=sde, arrival=torch.ones(7, dtype=torch.float64))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", STEPS)
def test_ddpm(n, schedule):
    # diffusers' DDPM steps to its next timestep: it is our ddpm on the same grid.  With diffusers' own float32
    # alphas_cumprod the two differ by up to 7e-4 (squaredcos_cap_v2, where abar(T) = 2.4e-9); with float64 ones they
    # agree to 1e-9.
    x = start()
    for float64 in (False, True):
        sched, sde, target, eps_model = setup(diffusers.DDPMScheduler, schedule, float64=float64, clip_sample=False,
                                              variance_type="fixed_small")
        sched.set_timesteps(n)
        ref = run(sched, eps_model, x, generator=torch.Generator().manual_seed(1))
        replay = torch.Generator().manual_seed(1)  # diffusers draws one noise per step, in order
        ours = ddpm(target.score, x, sde.timesteps(n), sde=sde, final_denoise=True,
                    noise=lambda like, g=replay: torch.randn(like.shape, generator=g, dtype=like.dtype))
        gap = float((ours - ref).abs().max())
        if float64:
            assert gap < 1e-9, gap
        else:
            assert gap < (1e-3 if schedule == "squaredcos_cap_v2" else 3e-4), gap
            if schedule == "linear" and n in (5, 7, 10, 25, 50):
                assert gap < FLOAT32, gap


def _float32_tol(schedule, n):
    # squaredcos_cap_v2 ends at abar(T) = 2.4e-9: diffusers' float32 state loses about 1e-7 / sqrt(abar) in its first
    # x0-prediction, an error that shrinks with the first step (measured 9.6e-4 at 5 steps, 9.4e-6 at 333).
    return 5e-3 / n if schedule == "squaredcos_cap_v2" else FLOAT32


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", FEWER)
def test_euler_is_ddim_in_variance_exploding_coordinates(n, schedule):
    sched, sde, target, eps_model = setup(diffusers.EulerDiscreteScheduler, schedule, final_sigmas_type="zero")
    sched.set_timesteps(n)
    latents = start() * sched.init_noise_sigma  # diffusers works with x / alpha
    ref = run(sched, eps_model, latents, scale_input=True)
    x = latents / torch.sqrt(sched.sigmas[0].double() ** 2 + 1)  # the same state in our (VP) coordinates
    ours = ddim(target.score, x, sde.timesteps(n), sde=sde, final_denoise=True)
    assert torch.allclose(ours, ref, atol=_float32_tol(schedule, n), rtol=0), float((ours - ref).abs().max())


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", FEWER)
def test_dpm_solver_pp_2m(n, schedule):
    sched, sde, target, eps_model = setup(diffusers.DPMSolverMultistepScheduler, schedule,
                                          algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    sched.set_timesteps(n)
    ref = run(sched, eps_model, start())
    # diffusers' last step (to sigma = 0) is the first-order one: our final_denoise.
    ours = dpm_solver_pp(target.score, start(), sde.timesteps(n), sde=sde, lower_order_final=False,
                         final_denoise=True)
    assert torch.allclose(ours, ref, atol=_float32_tol(schedule, n), rtol=0), float((ours - ref).abs().max())
