"""Shared set-up of the parity tests (tests/test_parity_diffusers.py, tests/test_parity_3m.py).

The model is the exact score of the 8-Gaussian ring (radius 4, std 0.3) under a 1000-step DDPM grid built from
diffusers' own betas, handed to diffusers as a noise prediction eps = -sqrt(1 - abar) * score; diffusers timestep j
is our time (j + 1)/1000.  Not a test module (no test_ prefix); pytest puts tests/ on the path.
"""

import torch

from diffnotes.sde import DiscreteVP
from diffnotes.targets import ring_mixture

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]


def config(schedule="linear"):
    return dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule=schedule)


def setup(scheduler_cls, schedule="linear", *, float64=False, spacing="trailing", **kw):
    """(scheduler, sde, target, eps_model).  ``float64=True`` replaces the scheduler's float32 betas, alphas and
    alphas_cumprod (and DPM-Solver's alpha_t, sigma_t, lambda_t) by the float64 values of our grid."""
    sched = scheduler_cls(**config(schedule), timestep_spacing=spacing, **kw)
    sde = DiscreteVP(sched.betas.double())  # the very same grid
    target = ring_mixture(8, radius=4.0, std=0.3, sde=sde)
    abar = sde.alphas_cumprod
    if float64:
        sched.betas = sde.betas.clone()
        sched.alphas = 1 - sched.betas
        sched.alphas_cumprod = abar.clone()
        if hasattr(sched, "final_alpha_cumprod") and not getattr(sched.config, "set_alpha_to_one", True):
            sched.final_alpha_cumprod = abar[0].clone()
        if hasattr(sched, "alpha_t"):
            sched.alpha_t, sched.sigma_t = abar.sqrt(), (1 - abar).sqrt()
            sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()

    def eps_model(x, j):
        j = int(round(float(j)))
        return -torch.sqrt(1 - abar[j]) * target.score(x, (j + 1) / 1000)

    return sched, sde, target, eps_model


def start(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(sched, eps_model, x, generator=None, scale_input=False):
    """Drive a scheduler over its timesteps (set_timesteps called by the caller); returns the last sample."""
    ref = x.clone()
    extra = {} if generator is None else {"generator": generator}
    for j in sched.timesteps:
        inp = sched.scale_model_input(ref, j) if scale_input else ref
        ref = sched.step(eps_model(inp, j), j, ref, **extra).prev_sample
    return ref.double()
