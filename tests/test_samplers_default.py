"""The default sampler configuration (samplers.sample, DEFAULT_CONFIG) and the node rounding (samplers.on_nodes)."""

import pytest
import torch

from diffnotes.oracle import gaussian_output_law
from diffnotes.samplers import (
    DEFAULT_CONFIG,
    SAMPLERS,
    exponential_multistep,
    on_nodes,
    power_grid,
    sample,
    time_grid,
)
from diffnotes.sde import ConstantVP, DiscreteVP
from diffnotes.targets import Gaussian, ring_mixture


def test_sample_is_the_default_configuration():
    sde = ConstantVP(T=5.0)
    target = ring_mixture(4, radius=2.0, std=0.3, sde=sde)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def score(x, t):
        calls.append(float(t[0]))
        return target.score(x, t)

    out = sample(score, x, 10, sde=sde)
    assert len(calls) == 10  # n_evals score evaluations: 9 steps and the final denoising call
    assert calls[-1] == pytest.approx(0.03 * 5.0) and calls[0] == 5.0
    times = power_grid(sde, 0.15, 9, 2.5)
    ref = exponential_multistep(target.score, x, times, sde=sde, order=3, corrector=True, final_denoise=True)
    assert torch.equal(out, ref)
    assert DEFAULT_CONFIG["sampler"] in SAMPLERS and DEFAULT_CONFIG["final_denoise"]
    out, traj = sample(target.score, (7, 2), 5, sde=sde, generator=3, return_trajectory=True)
    assert out.shape == (7, 2) and traj.shape == (6, 7, 2)
    assert torch.equal(out, sample(target.score, (7, 2), 5, sde=sde, generator=3))


def test_power_grid():
    sde = ConstantVP(T=4.0)
    g = power_grid(sde, 0.01, 8, 2.0)
    assert torch.allclose(g, time_grid(sde, 0.01, 8, "quadratic"), rtol=1e-14, atol=0)
    assert torch.allclose(power_grid(sde, 0.01, 8, 1.0), time_grid(sde, 0.01, 8, "uniform"), rtol=1e-14, atol=1e-15)
    g = power_grid(sde, 0.01, 8, 2.5, T=2.0)
    assert g[0] == 2.0 and g[-1] == 0.01 and torch.all(g[1:] < g[:-1])
    assert torch.allclose(g ** (1 / 2.5), torch.linspace(2.0 ** 0.4, 0.01 ** 0.4, 9, dtype=torch.float64))
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rho"):
            power_grid(sde, 0.01, 8, bad)
    with pytest.raises(ValueError, match="t0"):
        power_grid(sde, 5.0, 8, 2.0)


def test_sample_rounds_to_the_nodes_of_a_discrete_grid_and_converges():
    sde = DiscreteVP.ddpm()
    g = Gaussian([0.5], [[0.25]], sde)
    seen = []
    sample(lambda x, t: seen.append(t) or g.score(x, t), torch.zeros(3, 1, dtype=torch.float64), 10, sde=sde)
    k = torch.cat(seen) * 1000
    assert torch.allclose(k, k.round(), atol=1e-9)
    # the default's solver on its grid converges to the exact law of the final denoising from the exact flow:
    # N(0.5, 0.25 - floor), floor = 0.25 - 0.25^2 alpha^2 / v(t_last) (Tweedie's estimate shrinks); started at the
    # exact law at T, on the unrounded grid (the rounded one stalls at the DDPM nodes' spacing near t_last)
    floor = 0.25 - 0.25**2 * float(sde.alpha(torch.tensor(1e-3))) ** 2 / float(g.moments(1e-3)[1])
    errs = []
    for n in (80, 160):
        m, v = gaussian_output_law(exponential_multistep, g, power_grid(sde, 1e-3, n, 2.5), order=3,
                                   final_denoise=True, start_mean=float(g.moments(1.0)[0]),
                                   start_var=float(g.moments(1.0)[1]))
        assert float(m) == pytest.approx(0.5, abs=1e-12)
        errs.append(abs(float(v) - (0.25 - floor)))
    assert errs[1] < errs[0] / 4 and errs[1] < 3e-6, errs
    with pytest.raises(ValueError, match="n_evals"):
        sample(g.score, (2, 1), 1, sde=sde)


def test_on_nodes():
    t = torch.tensor([1.0, 0.5004, 0.0031, 0.0012, 0.0011, 0.001], dtype=torch.float64)
    out = on_nodes(t, 1000)
    assert torch.equal(out * 1000, torch.tensor([1000.0, 500, 4, 3, 2, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="does not fit"):
        on_nodes(torch.linspace(1, 1e-3, 12, dtype=torch.float64), 10)
    with pytest.raises(ValueError, match="n_evals"):
        sample(lambda x, t: -x, (2, 1), 0)
