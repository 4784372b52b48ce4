"""One randomness convention: every public function that draws takes ``generator=`` (None, an int seed, a torch or a
numpy generator), an int seed is the torch generator seeded with it, and ``None`` never means a fixed seed."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from diffnotes import _checks, data, metrics
from diffnotes.acceleration import flow_euler
from diffnotes.ising import MessagePassingResNet, random_couplings
from diffnotes.losses import dsm_loss, sample_times
from diffnotes.manifold import Circle
from diffnotes.rates import loglog_slope
from diffnotes.samplers import SAMPLERS, time_grid
from diffnotes.sde import ConstantVP
from diffnotes.spins import CurieWeiss, SherringtonKirkpatrick
from diffnotes.targets import GaussianMixture, orthonormal_basis

SDE = ConstantVP(T=5.0)
MIX = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [torch.eye(2) * 0.3] * 2, SDE)
X0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
TIMES = time_grid(SDE, 1e-2, 4)

# Each draws with torch from generator=; called with a torch generator, an int seed or a numpy generator.
TORCH_DRAWS = {
    "GaussianMixture.sample": lambda g: MIX.sample(8, generator=g),
    "GaussianMixture.sample_marginal": lambda g: MIX.sample_marginal(8, 0.5, generator=g),
    "VPSDE.perturb": lambda g: SDE.perturb(X0, 0.5, generator=g)[0],
    "VPSDE.forward_path": lambda g: SDE.forward_path(X0, torch.tensor([0.0, 0.5, 1.0]), generator=g),
    "VPSDE.prior_sample": lambda g: SDE.prior_sample((4, 2), generator=g),
    "Circle.sample": lambda g: Circle(1.0, SDE).sample(8, generator=g),
    "CurieWeiss.sample": lambda g: CurieWeiss(4, 0.5).sample(8, generator=g),
    "orthonormal_basis": lambda g: orthonormal_basis(4, 2, generator=g),
    "random_couplings": lambda g: random_couplings(4, 0.2, generator=g),
    "sample_times": lambda g: sample_times(8, 1e-2, 5.0, generator=g),
    "dsm_loss": lambda g: dsm_loss(MIX.score, X0, sde=SDE, generator=g),
    "mixture_data": lambda g: data.mixture_data(MIX, 8, generator=g)[0],
    "flow_euler": lambda g: flow_euler(lambda x, s: -x, (4, 2), generator=g),
    "SherringtonKirkpatrick": lambda g: SherringtonKirkpatrick(4, 0.5, generator=g).J,
    "MessagePassingResNet": lambda g: MessagePassingResNet(3, 2, generator=g).W2.detach(),
} | {f"samplers.{name}": functools.partial(lambda g, sampler: sampler(MIX.score, (6, 2), TIMES, sde=SDE,
                                                                      generator=g), sampler=sampler)
     for name, sampler in SAMPLERS.items()}


@pytest.mark.parametrize("name", sorted(TORCH_DRAWS))
def test_every_torch_draw_takes_the_one_convention(name):
    draw = TORCH_DRAWS[name]
    a = draw(torch.Generator().manual_seed(5))
    assert torch.equal(draw(5), a)  # an int seed is the torch generator seeded with it
    assert torch.equal(draw(np.random.default_rng(1)), draw(np.random.default_rng(1)))
    assert torch.equal(draw(_checks.generator(np.random.default_rng(1))), draw(np.random.default_rng(1)))
    with pytest.raises(TypeError, match="generator"):
        draw("seed")


X = np.random.default_rng(0).standard_normal((60, 2))
Y = np.random.default_rng(1).standard_normal((60, 2)) + 0.3
NUMPY_DRAWS = {
    "sliced_wasserstein": lambda g: metrics.sliced_wasserstein(X, Y, 20, generator=g),
    "energy_permutation_test": lambda g: metrics.energy_permutation_test(X, Y, 30, generator=g).pvalue,
    "noise_floor": lambda g: metrics.noise_floor(metrics.energy_distance, lambda n, r: r.standard_normal((n, 2)), 20,
                                                 repeats=3, generator=g).mean,
    "loglog_slope": lambda g: loglog_slope([1.0, 2.0, 4.0, 8.0], [[1.0, 1.1], [0.7, 0.75], [0.5, 0.52],
                                                                  [0.36, 0.34]], n_boot=100, generator=g).low,
}


@pytest.mark.parametrize("name", sorted(NUMPY_DRAWS))
def test_every_numpy_draw_takes_the_one_convention(name):
    draw = NUMPY_DRAWS[name]
    # An int seed is numpy.random.default_rng(seed): the numbers of every chapter that passed a seed are unchanged.
    assert draw(7) == draw(np.random.default_rng(7))
    assert draw(torch.Generator().manual_seed(3)) == draw(torch.Generator().manual_seed(3))
    with pytest.raises(TypeError, match="generator"):
        draw(1.5)


def test_none_is_fresh_entropy_everywhere():
    # sliced_wasserstein's None used to mean seed 0, unlike every other metric: now it draws fresh directions.
    values = {metrics.sliced_wasserstein(X, Y, 5) for _ in range(4)}
    assert len(values) > 1
    assert len({metrics.energy_permutation_test(X, Y, 30).pvalue for _ in range(6)}) > 1


@pytest.mark.parametrize("call", [
    lambda **kw: metrics.noise_floor(metrics.energy_distance, lambda n, r: r.standard_normal((n, 1)), 10, repeats=3,
                                     **kw).values,
    lambda **kw: loglog_slope([1.0, 2.0, 4.0], [1.0, 0.7, 0.5], n_boot=100, **kw),
    lambda **kw: metrics.sliced_wasserstein(X, Y, 5, **kw),
    lambda **kw: metrics.energy_permutation_test(X, Y, 20, **kw).pvalue,
])
def test_rng_keyword_is_deprecated_but_still_means_generator(call):
    with pytest.warns(DeprecationWarning, match="rng= is deprecated"):
        old = call(rng=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert call(generator=4) == old
    with pytest.raises(TypeError, match="generator= only"):
        call(rng=4, generator=4)


@pytest.mark.parametrize("make", [data.two_moons, data.swiss_roll])
def test_the_data_sets_take_the_one_convention(make):
    # scikit-learn draws these: an int seed is its random_state (the data sets of before, unchanged), a torch or numpy
    # generator is consumed once for one.
    assert torch.equal(make(8, generator=3), make(8, generator=3))
    assert torch.equal(make(8, generator=torch.Generator().manual_seed(2)),
                       make(8, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(make(8, generator=np.random.default_rng(2)), make(8, generator=np.random.default_rng(2)))
    with pytest.raises(TypeError, match="generator"):
        make(8, generator="seed")
    with pytest.raises(TypeError):
        make(8, seed=3)  # the former keyword (no chapter used it): gone, not silently ignored


def test_train_takes_the_one_convention():
    from diffnotes.networks import ScoreMLP
    from diffnotes.training import train

    def run(gen):
        model = ScoreMLP(2, hidden=8, depth=1, generator=0).double()
        loss = functools.partial(dsm_loss, sde=SDE)
        return train(model, lambda m, xb, generator=None: loss(m, xb, generator=generator), X0, steps=3,
                     batch_size=4, progress=False, generator=gen).losses

    assert np.array_equal(run(2), run(torch.Generator().manual_seed(2)))
    assert np.array_equal(run(np.random.default_rng(1)), run(np.random.default_rng(1)))
    with pytest.raises(TypeError, match="generator"):
        run("seed")
