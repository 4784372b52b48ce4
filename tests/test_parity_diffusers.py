"""Parity with the reference implementation: diffusers' schedulers and our samplers, same model outputs, same noise.

The model is the exact score of a 2-D Gaussian mixture under the DDPM grid (1000 steps, betas 1e-4 to 0.02), given to
diffusers as a noise prediction eps = -sqrt(1 - abar) * score.  diffusers timestep j is our time (j + 1)/1000.
The correspondence of settings is tabulated on the book page book/appendix/parity.md.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffnotes.samplers import ddim, ddpm, dpm_solver_pp  # noqa: E402
from diffnotes.sde import DiscreteVP  # noqa: E402
from diffnotes.targets import ring_mixture  # noqa: E402

CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
STEPS = [5, 10, 25, 50]


def setup(scheduler_cls, **kw):
    sched = scheduler_cls(**CONFIG, timestep_spacing="trailing", **kw)
    sde = DiscreteVP(sched.betas.double())  # the very same grid
    target = ring_mixture(8, radius=4.0, std=0.3, sde=sde)
    abar = sde.alphas_cumprod

    def eps_model(x, j):
        j = int(j)
        return -torch.sqrt(1 - abar[j]) * target.score(x, (j + 1) / 1000)

    return sched, sde, target, eps_model


def start(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n", STEPS)
def test_ddim(n):
    sched, sde, target, eps_model = setup(diffusers.DDIMScheduler, set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(n)
    x = start()
    ref = x.clone()
    for j in sched.timesteps:
        ref = sched.step(eps_model(ref, j), j, ref).prev_sample
    times = torch.cat([sde.timesteps(n), torch.tensor([1 / 1000], dtype=torch.float64)])
    assert torch.equal((times[:-1] * 1000 - 1).round().long(), sched.timesteps.long())
    ours = ddim(target.score, x, times, sde=sde)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", STEPS)
def test_ddpm(n):
    sched, sde, target, eps_model = setup(diffusers.DDPMScheduler, clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(n)
    x = start()
    ref, gen = x.clone(), torch.Generator().manual_seed(1)
    for j in sched.timesteps:
        ref = sched.step(eps_model(ref, j), j, ref, generator=gen).prev_sample
    replay = torch.Generator().manual_seed(1)  # diffusers draws one noise per step, in order
    ours = ddpm(target.score, x, sde.timesteps(n), sde=sde, final_denoise=True,
                noise=lambda like: torch.randn(like.shape, generator=replay, dtype=like.dtype))
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", STEPS)
def test_euler_is_ddim_in_variance_exploding_coordinates(n):
    sched, sde, target, eps_model = setup(diffusers.EulerDiscreteScheduler, final_sigmas_type="zero")
    sched.set_timesteps(n)
    latents = start() * sched.init_noise_sigma  # diffusers works with x / alpha
    ref = latents.clone()
    for j in sched.timesteps:
        ref = sched.step(eps_model(sched.scale_model_input(ref, j), j), j, ref).prev_sample
    x = latents / torch.sqrt(sched.sigmas[0].double() ** 2 + 1)  # the same state in our (VP) coordinates
    ours = ddim(target.score, x, sde.timesteps(n), sde=sde, final_denoise=True)
    assert torch.allclose(ours, ref.double(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", STEPS)
def test_dpm_solver_pp_2m(n):
    sched, sde, target, eps_model = setup(diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver++",
                                          solver_order=2, final_sigmas_type="zero")
    sched.set_timesteps(n)
    x = start()
    ref = x.clone()
    for j in sched.timesteps:
        ref = sched.step(eps_model(ref, j), j, ref).prev_sample
    # diffusers' last step (to sigma = 0) is the first-order one: our final_denoise.
    ours = dpm_solver_pp(target.score, x, sde.timesteps(n), sde=sde, lower_order_final=False, final_denoise=True)
    assert torch.allclose(ours, ref.double(), atol=1e-5, rtol=0)
