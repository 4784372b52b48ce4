r"""Exact output laws of samplers on Gaussian data, without Monte Carlo.

For Gaussian data with a diagonal covariance the exact score is affine and acts coordinate by coordinate, so every
sampler of :mod:`diffnotes.samplers` is an affine map of its start and of its noise draws:

.. math::

    x_N = c \odot x_0 + d + \sum_{j} b_j \odot \xi_j .

Running the sampler on a few basis inputs identifies :math:`c`, :math:`d` and every :math:`b_j`: a zero start with no
noise gives :math:`d`; a start of ones gives :math:`c + d`; a zero start whose j-th noise draw is ones (all other draws
zero) gives :math:`b_j + d`.  With :math:`x_0 \sim \mathsf N(m_0, v_0)` the output is then exactly

.. math::

    \mathsf N\Big(c\,m_0 + d,\; c^2 v_0 + \sum_j b_j^2\Big)

per coordinate.  This separates the discretisation error from Monte Carlo error completely (book chapters
*Forward and backward processes* and *Samplers*).
"""

from __future__ import annotations

import torch

from .samplers import _check_times
from .sde import as_time
from .targets import Gaussian

__all__ = ["gaussian_output_law"]


def gaussian_output_law(sampler, target: Gaussian, times, *, start_mean=0.0, start_var=1.0, score=None, **options):
    r"""Exact mean and variance of a sampler's output when the data are Gaussian with diagonal covariance.

    Parameters
    ----------
    sampler : callable
        Any sampler of :mod:`diffnotes.samplers` (or one with the same signature and an affine step).
    target : Gaussian
        The data law, with a diagonal covariance; its ``score`` drives the sampler unless ``score`` is given.
    times : tensor
        The decreasing time grid.
    start_mean, start_var : float or array of shape (D,)
        The start law :math:`\mathsf N(m_0, v_0)`, by default the reference :math:`\mathsf N(0, I)`.
    score : callable, optional
        Another affine, coordinate-wise score (e.g. a perturbed exact score).
    **options
        Passed to the sampler (e.g. ``eta`` of DDIM).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The exact output mean and variance, each of shape (D,).
    """
    if not isinstance(target, Gaussian):
        raise TypeError(f"target must be a diffnotes.targets.Gaussian, got {type(target).__name__}")
    cov = target.covs[0]
    if not torch.equal(cov, torch.diag(torch.diagonal(cov))):
        raise ValueError("the oracle needs a diagonal data covariance (coordinates must decouple)")
    times = _check_times(times, target.sde)
    D = target.dim
    score = target.score if score is None else score
    m0 = torch.broadcast_to(as_time(start_mean), (D,))
    v0 = torch.broadcast_to(as_time(start_var), (D,))
    if torch.any(v0 < 0):
        raise ValueError("start_var must be non-negative")

    count = [0]

    def zeros(like):
        count[0] += 1
        return torch.zeros_like(like)

    sampler(score, torch.zeros(1, D, dtype=torch.float64), times, sde=target.sde, noise=zeros, **options)
    J = count[0]

    # Row 0: zero start, no noise -> d.  Row 1: start of ones -> c + d.  Row 1 + j: noise draw j is ones -> b_j + d.
    x = torch.zeros(2 + J, D, dtype=torch.float64)
    x[1] = 1.0
    draw = [0]

    def basis(like):
        e = torch.zeros_like(like)
        e[2 + draw[0]] = 1.0
        draw[0] += 1
        return e

    out = sampler(score, x, times, sde=target.sde, noise=basis, **options)
    d = out[0]
    c = out[1] - d
    b = out[2:] - d
    return c * m0 + d, c**2 * v0 + (b**2).sum(0)
