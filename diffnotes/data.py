r"""Toy data sets for learning the score: two moons, a 2-D Swiss roll and draws of the exact targets.

The book chapter *Learning the score* (review Section 4.1) trains small networks on 2-D data.  The two moons and the
Swiss roll come from scikit-learn's generators, which ship with the package (nothing is downloaded); they are
returned as float64 tensors, *standardised isotropically* by default:

.. math::

    x \mapsto \frac{x - \bar x}{\sigma},\qquad \sigma^2 = \frac1D\sum_{j=1}^D \widehat{\operatorname{Var}}(x_j),

i.e. centred at the sample mean and divided by one scalar so that the average per-coordinate variance is 1 (the
scale of the forward process's stationary law :math:`\mathsf N(0, I)`) while the shape -- the aspect ratio of the
moons or the roll -- is preserved.  ``standardize="coordinate"`` instead gives every coordinate mean 0 and variance 1;
``standardize=None`` returns the raw coordinates.  Sample statistics (population variance, ``ddof=0``) are used.

:func:`mixture_data` draws from the exact Gaussian-mixture targets of :mod:`diffnotes.targets`, whose scores are
known, so that the learned score can be compared with the truth :cite:p:`song2019generative`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _checks

__all__ = ["two_moons", "swiss_roll", "mixture_data", "standardize"]


def _seed(generator) -> int | None:
    """An integer seed for scikit-learn (``random_state``) from ``generator`` (the package's convention: None, an
    int seed, a numpy or a torch Generator; see :func:`diffnotes._checks.generator`)."""
    if generator is None:
        return None
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        if generator < 0:
            raise ValueError(f"a seed must be non-negative, got {generator}")
        return int(generator) % (2**32)
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, 2**32 - 1))
    return int(torch.randint(0, 2**31 - 1, (1,), generator=_checks.generator(generator)))


def _count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    return int(n)


def _noise(noise) -> float:
    noise = float(noise)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    return noise


def standardize(x: np.ndarray, how: str | None = "isotropic") -> np.ndarray:
    r"""Centre and scale an (n, D) array: ``"isotropic"`` (one scale, average variance 1), ``"coordinate"`` or None.

    Parameters
    ----------
    x : array_like
        The data, shape (n, D).
    how : {"isotropic", "coordinate", None}
        ``"isotropic"`` (default) centres and divides by one scale so that the average variance is 1;
        ``"coordinate"`` gives every coordinate mean 0 and variance 1; None returns ``x`` as float64 unchanged.

    Returns
    -------
    numpy.ndarray
        The standardised data, float64, shape (n, D).

    Raises
    ------
    ValueError
        For an unknown ``how``, or data with zero variance (in some coordinate, for ``"coordinate"``).
    """
    x = np.asarray(x, dtype=np.float64)
    if how is None:
        return x
    centred = x - x.mean(axis=0)
    if how == "isotropic":
        scale = np.sqrt(centred.var(axis=0).mean())
    elif how == "coordinate":
        scale = centred.std(axis=0)
    else:
        raise ValueError(f"standardize must be 'isotropic', 'coordinate' or None, got {how!r}")
    if np.any(scale <= 0):
        raise ValueError("cannot standardise data with zero variance")
    return centred / scale


def two_moons(n: int, noise: float = 0.05, generator=None, *, standardize: str | None = "isotropic",
              return_labels: bool = False):
    r"""Two interleaving half circles in the plane (scikit-learn's ``make_moons``), as a float64 tensor.

    Parameters
    ----------
    n : int
        Number of points (split evenly between the moons).
    noise : float
        Standard deviation of the Gaussian noise added to the raw coordinates (before standardisation).
    generator : int, numpy.random.Generator, torch.Generator or None
        Source of randomness; an int gives the same data every time, None fresh data.
    standardize : {"isotropic", "coordinate", None}
        See the module docstring (default: centre and divide by one scale, average variance 1).
    return_labels : bool
        Also return which moon each point belongs to, a long tensor (n,) of 0/1.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        Points (n, 2), and the labels if requested.
    """
    from sklearn.datasets import make_moons

    state = _seed(generator)
    x, y = make_moons(n_samples=_count(n), noise=_noise(noise), random_state=state)
    out = torch.as_tensor(_standardize(x, standardize), dtype=torch.float64)
    return (out, torch.as_tensor(y, dtype=torch.long)) if return_labels else out


def swiss_roll(n: int, noise: float = 0.5, generator=None, *, standardize: str | None = "isotropic",
               return_position: bool = False):
    r"""A 2-D Swiss roll: the (x, z) coordinates of scikit-learn's ``make_swiss_roll``, as a float64 tensor.

    The 3-D roll is :math:`(u\cos u, y, u\sin u)` with :math:`u\in[1.5\pi, 4.5\pi]`; dropping the height y leaves the
    planar spiral :math:`(u\cos u, u\sin u)`, plus Gaussian noise of standard deviation ``noise`` in the raw units
    (the spiral's radius runs from about 4.7 to 14).

    Parameters
    ----------
    n : int
        Number of points.
    noise : float
        Noise standard deviation in the raw coordinates.
    generator : int, numpy.random.Generator, torch.Generator or None
        Source of randomness.
    standardize : {"isotropic", "coordinate", None}
        See the module docstring.
    return_position : bool
        Also return the position u along the spiral, a float64 tensor (n,).
    """
    from sklearn.datasets import make_swiss_roll

    state = _seed(generator)
    x, u = make_swiss_roll(n_samples=_count(n), noise=_noise(noise), random_state=state)
    out = torch.as_tensor(_standardize(x[:, [0, 2]], standardize), dtype=torch.float64)
    return (out, torch.as_tensor(u, dtype=torch.float64)) if return_position else out


_standardize = standardize


def mixture_data(target, n: int, generator: torch.Generator | None = None):
    r"""Draw n points and their *class* labels from an exact Gaussian-mixture target.

    ``target.sample(..., return_labels=True)`` gives component ids; this maps them to classes through
    ``target.labels`` (several components may form one class), which is what conditional training
    (:func:`diffnotes.losses.conditional_dsm_loss`) and classifiers need.

    Parameters
    ----------
    target : GaussianMixture
        An exact target of :mod:`diffnotes.targets`.
    n : int
        Number of points, >= 1.
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Points (n, D) in float64 and class labels (n,) as a long tensor.
    """
    generator = _checks.generator(generator)
    if not hasattr(target, "sample") or not hasattr(target, "labels"):
        raise TypeError(f"target must be a Gaussian mixture of diffnotes.targets, got {type(target).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    x, k = target.sample(int(n), generator, return_labels=True)
    return x.to(torch.float64), target.labels[k].long()
