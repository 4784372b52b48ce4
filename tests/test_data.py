"""Tests of diffnotes.data: shapes, determinism, standardisation, mixture labels."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

from diffnotes.data import mixture_data, standardize, swiss_roll, two_moons
from diffnotes.sde import ConstantVP
from diffnotes.targets import GaussianMixture


@pytest.mark.parametrize("make", [two_moons, swiss_roll])
def test_shape_dtype_and_determinism(make):
    x = make(500, generator=3)
    assert isinstance(x, torch.Tensor) and x.shape == (500, 2) and x.dtype == torch.float64
    assert torch.equal(x, make(500, generator=3))
    assert not torch.equal(x, make(500, generator=4))
    assert torch.equal(make(100, generator=np.random.default_rng(0)), make(100, generator=np.random.default_rng(0)))
    assert torch.equal(make(100, generator=torch.Generator().manual_seed(0)),
                       make(100, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("make", [two_moons, swiss_roll])
def test_standardisation(make):
    x = make(1000, generator=0).numpy()
    assert np.allclose(x.mean(0), 0, atol=1e-12)
    assert abs(x.var(0).mean() - 1) < 1e-12  # isotropic: average per-coordinate variance 1
    assert not np.allclose(x.var(0), 1, atol=1e-2)  # ... and the aspect ratio is kept
    z = make(1000, generator=0, standardize="coordinate").numpy()
    assert np.allclose(z.mean(0), 0, atol=1e-12) and np.allclose(z.var(0), 1, atol=1e-12)
    raw = make(1000, generator=0, standardize=None).numpy()
    assert np.allclose(standardize(raw), x, atol=1e-12)
    with pytest.raises(ValueError, match="standardize"):
        make(10, generator=0, standardize="minmax")


def test_two_moons_matches_scikit_learn_and_labels():
    x, y = two_moons(200, noise=0.1, generator=5, standardize=None, return_labels=True)
    ref, ref_y = make_moons(n_samples=200, noise=0.1, random_state=5)
    assert np.array_equal(x.numpy(), ref) and np.array_equal(y.numpy(), ref_y)
    assert y.dtype == torch.long and set(y.tolist()) == {0, 1}


def test_swiss_roll_is_the_planar_spiral():
    x, u = swiss_roll(300, noise=0.0, generator=1, standardize=None, return_position=True)
    assert torch.allclose(x, torch.stack([u * torch.cos(u), u * torch.sin(u)], 1), atol=1e-10)
    assert u.min() >= 1.5 * np.pi and u.max() <= 4.5 * np.pi


@pytest.mark.parametrize("bad", [dict(n=1), dict(n=10.5), dict(n=10, noise=-1.0), dict(n=10, generator=-3),
                                 dict(n=10, generator="a")])
def test_bad_arguments(bad):
    with pytest.raises((ValueError, TypeError)):
        two_moons(**bad)


def test_mixture_data_returns_class_labels():
    target = GaussianMixture([0.25, 0.25, 0.5], [[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], [0.01, 0.01, 0.01],
                             ConstantVP(), labels=[0, 0, 1])
    x, y = mixture_data(target, 2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 2) and x.dtype == torch.float64 and y.shape == (2000,) and y.dtype == torch.long
    assert set(y.tolist()) == {0, 1}
    assert torch.all((y == 1) == (x[:, 1] > 1.5))  # class 1 is the upper component
    assert abs(float((y == 1).double().mean()) - 0.5) < 0.05
    x2, y2 = mixture_data(target, 2000, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError):
        mixture_data(target, 0)
    with pytest.raises(TypeError):
        mixture_data("not a target", 5)
