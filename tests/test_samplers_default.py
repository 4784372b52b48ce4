"""The default sampler configuration (samplers.sample, DEFAULT_CONFIG) and the node rounding (samplers.on_nodes)."""

import pytest
import torch

from diffnotes.oracle import gaussian_output_law
from diffnotes.samplers import DEFAULT_CONFIG, SAMPLERS, exponential_multistep, on_nodes, sample, time_grid
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

    out = sample(score, x, 10, sde=sde, t0=1e-2)
    assert len(calls) == 10  # n_evals score evaluations, one a step
    ref = exponential_multistep(target.score, x, time_grid(sde, 1e-2, 10, "quadratic"), sde=sde, order=2,
                                corrector=True)
    assert torch.equal(out, ref)
    assert DEFAULT_CONFIG["sampler"] in SAMPLERS and not DEFAULT_CONFIG["final_denoise"]
    out, traj = sample(target.score, (7, 2), 5, sde=sde, generator=3, return_trajectory=True)
    assert out.shape == (7, 2) and traj.shape == (6, 7, 2)
    assert torch.equal(out, sample(target.score, (7, 2), 5, sde=sde, generator=3))


def test_sample_rounds_to_the_nodes_of_a_discrete_grid_and_converges():
    sde = DiscreteVP.ddpm()
    g = Gaussian([0.5], [[0.25]], sde)
    seen = []
    sample(lambda x, t: seen.append(t) or g.score(x, t), torch.zeros(3, 1, dtype=torch.float64), 10, sde=sde)
    k = torch.cat(seen) * 1000
    assert torch.allclose(k, k.round(), atol=1e-9)
    # the output law tends to the exact flow's as the budget grows (third order: 40 -> 80 steps gains > 4x)
    exact_v = float(g.moments(1e-3)[1]) / float(g.moments(1.0)[1])
    errs = []
    for n in (40, 80):
        times = on_nodes(time_grid(sde, 1e-3, n, "quadratic"), 1000)
        errs.append(abs(float(gaussian_output_law(exponential_multistep, g, times)[1]) - exact_v))
    assert errs[1] < errs[0] / 4


def test_on_nodes():
    t = torch.tensor([1.0, 0.5004, 0.0031, 0.0012, 0.0011, 0.001], dtype=torch.float64)
    out = on_nodes(t, 1000)
    assert torch.equal(out * 1000, torch.tensor([1000.0, 500, 4, 3, 2, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="does not fit"):
        on_nodes(torch.linspace(1, 1e-3, 12, dtype=torch.float64), 10)
    with pytest.raises(ValueError, match="positive integer"):
        sample(lambda x, t: -x, (2, 1), 0)
