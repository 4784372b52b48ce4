r"""Faster sampling: rectified flow, one-step distillation, consistency models and latent diffusion with PCA.

The review (Section 2.1, *acceleration methods*; book chapter *Faster sampling*) lists three ways to make sampling
cheaper than integrating the backward process with hundreds of score evaluations:

* **Rectified flow** :cite:p:`liu2023flow` learns a velocity field along the *straight* interpolant
  :math:`x_s = (1-s)\,x_0 + s\,z`, :math:`z\sim\mathsf N(0, I)`, :math:`s\in[0, 1]`, whose exact minimiser is the
  conditional velocity :math:`v^*(x, s) = \mathbb E[z - x_0\mid x_s = x]`; its ODE :math:`\dot x = v^*(x, s)`,
  integrated from s = 1 down to 0, transports :math:`\mathsf N(0, I)` to the data.  *Reflow* re-pairs each noise
  with the flow's own output and fits again, which straightens the paths so that few Euler steps suffice.
* **Distillation** :cite:p:`luhman2021knowledge,song2023consistency` fits a student to the map
  :math:`z\mapsto\mathrm{ODE}(z)` of a precise teacher sampler: a one-step student regresses the teacher's outputs;
  a consistency model :math:`f(x, t)` is trained so that :math:`f(x_t, t) = f(x_{t'}, t')` along teacher ODE steps,
  with :math:`f(x, t_0) = x` built in.
* **Consistency training** :cite:p:`song2023consistency,song2024improved` trains the same model without a teacher or
  a score: the ODE step is replaced by the same noise at two neighbouring times (:func:`consistency_training_loss`,
  :func:`fit_consistency`, with the published discretisation schedules, target network, Pseudo-Huber metric,
  log-normal noise levels and weighting).
* **Latent diffusion** :cite:p:`rombach2022high` diffuses in the coordinates of an encoder; here a PCA encoder, which
  for data on a linear subspace loses nothing and makes the latent score that of a low-dimensional exact target.

Every sampler here follows the package's conventions: the start ``x`` is a tensor or a shape drawn from
:math:`\mathsf N(0, I)` with an explicit ``generator``, and ``return_trajectory=True`` also returns the stacked path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _checks
from ._checks import positive_int, sample, sde_or_default
from .losses import _reduce
from .networks import _mlp, seeded
from .samplers import _check_times, _ddim_rows, _Loop, _start, exponential_multistep
from .sde import VPSDE, as_time
from .targets import GaussianMixture, SubspaceMixture
from .training import TrainResult, ema_update, train

__all__ = [
    "interpolant",
    "rectified_flow_loss",
    "exact_velocity",
    "flow_grid",
    "flow_euler",
    "reflow_pairs",
    "teacher_pairs",
    "distillation_loss",
    "fit_student",
    "StudentMLP",
    "ConsistencyModel",
    "consistency_distillation_loss",
    "noise_level",
    "karras_grid",
    "ct_discretisation",
    "ict_discretisation",
    "ct_ema_decay",
    "pseudo_huber",
    "lognormal_interval_probabilities",
    "consistency_training_loss",
    "ConsistencyFit",
    "fit_consistency",
    "consistency_sample",
    "PCAEncoder",
    "fit_pca",
    "latent_target",
    "latent_sample",
]


# -- validation ------------------------------------------------------------------------------------------------------
def _call(model, x, *args) -> torch.Tensor:
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    out = model(x, *args)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"the model must return a tensor shaped like its input {tuple(x.shape)}, got "
                         f"{getattr(out, 'shape', type(out))}")
    return out


# -- rectified flow --------------------------------------------------------------------------------------------------
def _flow_times(s, n: int, like: torch.Tensor) -> torch.Tensor:
    s = as_time(s, like=like)
    if s.ndim == 0:
        s = s.expand(n)
    if s.shape != (n,):
        raise ValueError(f"s must be one time or one per row ({n},), got shape {tuple(s.shape)}")
    if not torch.all(torch.isfinite(s)) or torch.any((s < 0) | (s > 1)):
        raise ValueError("the interpolation time s must lie in [0, 1]")
    return s


def interpolant(x0: torch.Tensor, z: torch.Tensor, s) -> torch.Tensor:
    r"""The straight interpolant :math:`x_s = (1-s)\,x_0 + s\,z` of rectified flow, s in [0, 1] (one or one per row).

    Its velocity :math:`\mathrm dx_s/\mathrm ds = z - x_0` is constant along each pair.  :cite:p:`liu2023flow`.

    Parameters
    ----------
    x0 : torch.Tensor
        Data, shape (n, D).
    z : torch.Tensor
        Noise, shaped like ``x0``.
    s : float or torch.Tensor
        One interpolation time, or one per row, in [0, 1].
    """
    x0, z = sample(x0, "x0"), sample(z, "z")
    if x0.shape != z.shape:
        raise ValueError(f"x0 and z must have the same shape, got {tuple(x0.shape)} and {tuple(z.shape)}")
    s = _flow_times(s, x0.shape[0], x0)[:, None]
    return (1 - s) * x0 + s * z


def rectified_flow_loss(model: Callable, x0: torch.Tensor, z: torch.Tensor | None = None, *, s=None,
                        generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""Velocity regression of rectified flow, a Monte Carlo estimate of

    .. math::

        L(v) = \int_0^1 \mathbb E\,\big\|v(x_s, s) - (z - x_0)\big\|_2^2\,\mathrm ds,\qquad
        x_s = (1-s)\,x_0 + s\,z,

    with one :math:`s_i\sim\mathsf U[0, 1]` per pair.  Among all functions it is minimised by the conditional velocity
    :math:`v^*(x, s) = \mathbb E[z - x_0\mid x_s = x]` (:func:`exact_velocity` for Gaussian mixtures), whose ODE
    has the same marginals as the interpolant :cite:p:`liu2023flow`.  Review Section 2.1 (acceleration); book chapter
    *Faster sampling*.

    Parameters
    ----------
    model : callable
        The velocity field ``v(x, s)`` (x of shape (n, D), s of shape (n,)), e.g. a
        :class:`~diffnotes.networks.ScoreMLP` with ``time_embedding="linear"``.
    x0 : torch.Tensor
        Data, shape (n, D).
    z : torch.Tensor, optional
        The noise paired with each data point (a coupling, e.g. from :func:`reflow_pairs`); default independent
        :math:`\mathsf N(0, I)` draws.
    s : float or torch.Tensor, optional
        Given interpolation times (one, or one per row), replacing the uniform draws.
    generator : torch.Generator, optional
        Source of the draws.
    reduction : {"mean", "none"}
        Batch mean, or the per-sample terms.
    """
    generator = _checks.generator(generator)
    x0 = sample(x0, "x0")
    n = x0.shape[0]
    if z is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    z = sample(z, "z").to(x0)
    if z.shape != x0.shape:
        raise ValueError(f"z must be shaped like x0 {tuple(x0.shape)}, got {tuple(z.shape)}")
    if s is None:
        s = torch.rand(n, generator=generator, dtype=x0.dtype)
    s = _flow_times(s, n, x0)
    xs = (1 - s[:, None]) * x0 + s[:, None] * z
    v = _call(model, xs, s)
    return _reduce(((v - (z - x0)) ** 2).sum(dim=1), reduction)


class _ExactVelocity:
    """The conditional velocity of a Gaussian mixture under the straight interpolant (see :func:`exact_velocity`)."""

    def __init__(self, target: GaussianMixture):
        self.target = target

    def __call__(self, x: torch.Tensor, s) -> torch.Tensor:
        tg = self.target
        x = tg._check_x(x)
        s = _flow_times(s, x.shape[0], x)[:, None, None]  # (n, 1, 1)
        a = 1 - s
        means, lam, U = tg.means.to(x), tg._evals.to(x), tg._evecs.to(x)
        y = x[:, None, :] - a * means[None]  # x - (1 - s) mu_k, (n, K, D)
        zc = torch.einsum("nkd,kde->nke", y, U)
        var = a**2 * lam[None] + s**2  # eigenvalues of C_k = (1-s)^2 Sigma_k + s^2 I
        if torch.any(var <= 0):
            raise ValueError("the conditional velocity is undefined at s = 0 for a degenerate covariance; use s > 0")
        cross = s - a * lam[None]  # eigenvalues of B_k = s I - (1-s) Sigma_k
        log_w = torch.log(tg.weights.to(x))[None] - 0.5 * ((zc**2 / var).sum(-1) + torch.log(var).sum(-1))
        w = torch.softmax(log_w, dim=1)
        comp = -means[None] + torch.einsum("nke,kde->nkd", zc * cross / var, U)
        return torch.einsum("nk,nkd->nd", w, comp)

    def __repr__(self) -> str:
        return f"exact_velocity({self.target!r})"


def exact_velocity(target: GaussianMixture) -> Callable:
    r"""The exact rectified-flow velocity :math:`v^*(x, s) = \mathbb E[z - x_0\mid x_s = x]` of a Gaussian mixture.

    Given component k, :math:`(x_0, x_s)` is jointly Gaussian with :math:`\mathbb E x_s = (1-s)\mu_k`,
    :math:`C_k = \mathrm{Cov}(x_s) = (1-s)^2\Sigma_k + s^2 I` and :math:`\mathrm{Cov}(z - x_0, x_s) = B_k =
    sI - (1-s)\Sigma_k`, so

    .. math::

        v^*(x, s) = \sum_k w_k(x, s)\Big[-\mu_k + B_k C_k^{-1}\big(x - (1-s)\mu_k\big)\Big],\qquad
        w_k \propto \pi_k\,\mathsf N\big(x;\,(1-s)\mu_k,\,C_k\big).

    At s = 1 it is :math:`x - \mathbb E x_0`.  Works for :class:`~diffnotes.targets.SubspaceMixture` too when s > 0.
    Returns a callable ``v(x, s)``.  :cite:p:`liu2023flow`; book chapter *Faster sampling*.

    Parameters
    ----------
    target : diffnotes.targets.GaussianMixture
        The data law (a :class:`~diffnotes.targets.SubspaceMixture` needs s > 0).

    Returns
    -------
    callable
        ``v(x, s)`` for x (n, D) and s one time or one per row in [0, 1].
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a GaussianMixture, got {type(target).__name__}")
    return _ExactVelocity(target)


def flow_grid(n_steps: int, s_end: float = 0.0) -> torch.Tensor:
    """A uniform decreasing grid of ``n_steps + 1`` interpolation times from 1 down to ``s_end`` (in [0, 1)).

    Parameters
    ----------
    n_steps : int
        Number of steps, a positive integer.
    s_end : float
        The last time, in [0, 1) (default 0).

    Returns
    -------
    torch.Tensor
        The grid, float64, shape (n_steps + 1,).
    """
    n_steps = positive_int(n_steps, "n_steps")
    s_end = float(s_end)
    if not 0 <= s_end < 1:
        raise ValueError(f"s_end must lie in [0, 1), got {s_end}")
    return torch.linspace(1.0, s_end, n_steps + 1, dtype=torch.float64)


def _check_flow_grid(times) -> torch.Tensor:
    if isinstance(times, (int, np.integer)) and not isinstance(times, bool):
        return flow_grid(times)
    times = as_time(times).to(torch.float64)
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a step count or a 1-D grid of at least 2 times, got shape "
                         f"{tuple(times.shape)}")
    if not torch.all(torch.isfinite(times)) or torch.any((times < 0) | (times > 1)):
        raise ValueError("flow times must lie in [0, 1]")
    if not torch.all(times[1:] < times[:-1]):
        raise ValueError("flow times must be strictly decreasing, from s = 1 (noise) towards s = 0 (data)")
    return times


def flow_euler(velocity: Callable, x, times=8, *, generator: torch.Generator | None = None,
               return_trajectory: bool = False):
    r"""Euler steps of the rectified-flow ODE :math:`\mathrm dx/\mathrm ds = v(x, s)` from s = 1 (noise) to s = 0.

    .. math:: x \leftarrow x - (s_k - s_{k+1})\,v(x, s_k),

    one velocity evaluation per step (never at s = 0).  A perfectly straight flow is integrated exactly by one step.
    :cite:p:`liu2023flow`; book chapter *Faster sampling*.

    Parameters
    ----------
    velocity : callable
        ``v(x, s)`` with s an (n,) tensor.
    x : torch.Tensor or tuple
        The start at s = 1, or its shape (then drawn from :math:`\mathsf N(0, I)` with ``generator``).
    times : int or sequence
        A number of uniform steps (default 8) or a decreasing grid in [0, 1] (see :func:`flow_grid`).
    generator : torch.Generator, optional
        Source of the start when only its shape is given.
    return_trajectory : bool
        Also return the states at every grid time, shape (N + 1, n, D).
    """
    if not callable(velocity):
        raise TypeError("velocity must be a callable v(x, s)")
    times = _check_flow_grid(times)
    loop = _Loop(x, generator, None, return_trajectory, what="the flow")  # the samplers' loop (diffnotes.samplers)
    with torch.no_grad():
        for k in range(times.numel() - 1):
            s = float(times[k])
            ds = s - float(times[k + 1])
            x = loop.x
            loop.record(x - ds * _call(velocity, x, torch.full((x.shape[0],), s, dtype=x.dtype)))
    return loop.result("the steps are too large for this velocity")


def reflow_pairs(velocity: Callable, z: torch.Tensor, times=100) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The coupling of one *reflow* step: each noise :math:`z` paired with the flow's own output.

    Returns ``(x0, z)`` with :math:`x_0 = \mathrm{ODE}_v(z)` solved by :func:`flow_euler` on ``times`` (default 100
    steps).  Fitting :func:`rectified_flow_loss` to these pairs (pass both tensors as data) gives the rectified flow
    of the coupling, whose paths are straighter, so fewer Euler steps are needed :cite:p:`liu2023flow`.

    Parameters
    ----------
    velocity : callable
        The flow's velocity ``v(x, s)``.
    z : torch.Tensor
        Noise, shape (n, D).
    times : int or sequence
        A number of uniform Euler steps (default 100) or a decreasing grid in [0, 1] (see :func:`flow_grid`).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``(x0, z)``: the flow's outputs and a copy of the noise, each shape (n, D).
    """
    z = sample(z, "z")
    return flow_euler(velocity, z, times), z.clone()


# -- one-step distillation -------------------------------------------------------------------------------------------
def teacher_pairs(score: Callable, z: torch.Tensor, times, *, sde: VPSDE | None = None,
                  sampler: Callable = exponential_multistep, **options) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Pairs :math:`(z, \mathrm{ODE}(z))` of the probability-flow map, made by a precise deterministic teacher.

    ``sampler(score, z, times, sde=sde, **options)`` (default :func:`~diffnotes.samplers.exponential_multistep`) is
    run from the noise ``z`` at :math:`T` to the early-stopping time; ``score`` is exact or learned.  The student
    of :func:`fit_student` then learns the map in one evaluation: knowledge distillation of the sampler
    :cite:p:`luhman2021knowledge` (not progressive distillation :cite:p:`salimans2022progressive`, which halves the
    number of steps repeatedly with a two-step DDIM target and is not implemented).  Returns ``(z, x)``.

    Parameters
    ----------
    score : callable
        The teacher's score ``score(x, t)``.
    z : torch.Tensor
        Noise at the first time of ``times``, shape (n, D).
    times : sequence
        The teacher's strictly decreasing grid, from at most T down to the early-stopping time t0 > 0.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    sampler : callable
        A deterministic sampler of :mod:`diffnotes.samplers` (default
        :func:`~diffnotes.samplers.exponential_multistep`).
    **options
        Passed to the sampler; ``generator`` and ``noise`` are refused (``TypeError``): the teacher is deterministic.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``(z, x)``: a copy of the noise and the teacher's outputs, each shape (n, D).
    """
    z = sample(z, "z")
    if not callable(sampler):
        raise TypeError("sampler must be one of the samplers of diffnotes.samplers")
    if "generator" in options or "noise" in options:
        raise TypeError("the teacher must be deterministic: do not pass generator or noise")
    x = sampler(score, z, times, sde=sde_or_default(sde), **options)
    return z.clone(), x


def distillation_loss(student: Callable, z: torch.Tensor, x: torch.Tensor, *, generator=None,
                      reduction: str = "mean") -> torch.Tensor:
    r"""Regression of a one-step student on teacher pairs: :math:`\frac1n\sum_i\|G(z_i) - x_i\|_2^2`.

    ``generator`` is accepted (and unused) so the loss plugs into :func:`~diffnotes.training.train`.

    Parameters
    ----------
    student : callable
        The one-step generator ``G(z)``, returning a tensor shaped like z.
    z, x : torch.Tensor
        The teacher pairs, each shape (n, D).
    generator : optional
        Unused (checked to be a valid generator argument).
    reduction : {"mean", "none"}
        Batch mean, or the per-sample terms.
    """
    generator = _checks.generator(generator)
    z, x = sample(z, "z"), sample(x, "x")
    if z.shape != x.shape:
        raise ValueError(f"z and x must have the same shape, got {tuple(z.shape)} and {tuple(x.shape)}")
    return _reduce(((_call(student, z) - x) ** 2).sum(dim=1), reduction)


class StudentMLP(nn.Module):
    r"""A one-step generator :math:`G(z) = z + \mathrm{MLP}(z)` (a residual MLP, SiLU activations).

    ``generator`` (an int, a torch or a numpy generator) is the source of the initial weights
    (:func:`~diffnotes.networks.seeded`); by default torch's global generator.

    Parameters
    ----------
    dim : int
        Data dimension D.
    hidden, depth : int
        Width and number of hidden layers of the MLP (defaults 64 and 2), positive integers.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, *, generator=None):
        super().__init__()
        dim, hidden, depth = (positive_int(v, k) for k, v in (("dim", dim), ("hidden", hidden), ("depth", depth)))
        with seeded(generator):  # initial weights from the generator (int, torch or numpy), if given
            self.dim, self.net = dim, _mlp(dim, hidden, depth, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """G(z) for z of shape (n, dim), in the dtype of z.

        Parameters
        ----------
        z : torch.Tensor
            Noise, shape (n, dim).
        """
        z = sample(z, "z")
        if z.shape[1] != self.dim:
            raise ValueError(f"z must have {self.dim} columns, got {z.shape[1]}")
        p = next(self.parameters())
        return (z.to(p) + self.net(z.to(p))).to(z.dtype)


def fit_student(student: nn.Module, z: torch.Tensor, x: torch.Tensor, *, steps: int, **train_options) -> TrainResult:
    """Fit a student ``G`` to teacher pairs ``(z, x)`` with :func:`distillation_loss` and
    :func:`~diffnotes.training.train` (its options, e.g. ``lr``, ``batch_size``, ``generator``, ``progress``).

    Parameters
    ----------
    student : torch.nn.Module
        The one-step generator, e.g. a :class:`StudentMLP`.
    z, x : torch.Tensor
        The teacher pairs (see :func:`teacher_pairs`), each shape (n, D).
    steps : int
        Number of optimisation steps.
    **train_options
        Passed to :func:`~diffnotes.training.train`.

    Returns
    -------
    diffnotes.training.TrainResult
        The losses and the trained student.
    """
    z, x = sample(z, "z"), sample(x, "x")
    if z.shape != x.shape:
        raise ValueError(f"z and x must have the same shape, got {tuple(z.shape)} and {tuple(x.shape)}")
    return train(student, distillation_loss, (z, x), steps=steps, **train_options)


# -- consistency models ----------------------------------------------------------------------------------------------
#: Relative tolerance within which a time counts as t0 (float32 rounding is 6e-8).
_T0_RTOL = 1e-6

class ConsistencyModel(nn.Module):
    r"""A consistency function :math:`f_\theta(x, t) = c_{\rm skip}(t)\,x + c_{\rm out}(t)\,F_\theta(x, t)`.

    With the noise-to-signal ratio :math:`\sigma(t) = \sqrt{h(t)}/\alpha(t)` and :math:`u = \sigma(t) - \sigma(t_0)`,

    .. math::

        c_{\rm skip}(t) = \frac{\sigma_d^2}{u^2 + \sigma_d^2},\qquad
        c_{\rm out}(t) = \frac{\sigma_d\,u}{\sqrt{u^2 + \sigma_d^2}},

    the skip parameterisation of :cite:t:`song2023consistency` written for the VP process, so that the boundary
    condition :math:`f_\theta(x, t_0) = x` holds exactly for every :math:`\theta` (u = 0 there, also for a float32 time
    that rounds :math:`t_0`).  Times must lie in :math:`[t_0, T]`.

    Parameters
    ----------
    net : callable
        :math:`F_\theta(x, t)` (e.g. :class:`~diffnotes.networks.ScoreMLP`).
    sde : VPSDE, optional
        The forward process.
    t0 : float
        The early-stopping time where f is the identity.
    sigma_data : float
        The data scale :math:`\sigma_d > 0`.
    """

    def __init__(self, net: Callable, sde: VPSDE | None = None, t0: float = 1e-3, sigma_data: float = 1.0):
        super().__init__()
        if not callable(net):
            raise TypeError("net must be a callable F(x, t)")
        self.sde = sde_or_default(sde)
        t0, sigma_data = float(t0), float(sigma_data)
        if not 0 < t0 < self.sde.T:
            raise ValueError(f"t0 must lie in (0, T) = (0, {self.sde.T:g}), got {t0}")
        if not (math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net, self.t0, self.sigma_data = net, t0, sigma_data
        self._sigma0 = float(self._sigma(torch.tensor(t0, dtype=torch.float64)))

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return noise_level(self.sde, t)  # sqrt(h) / alpha

    def coefficients(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`c_{\rm skip}(t)` and :math:`c_{\rm out}(t)`; exactly 1 and 0 at :math:`t_0`.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in :math:`[t_0, T]` (a time within a relative 1e-6 of :math:`t_0` counts as :math:`t_0`).

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            :math:`c_{\rm skip}(t)` and :math:`c_{\rm out}(t)`, float64, shaped like ``t``.
        """
        t = as_time(t).to(torch.float64)
        at_t0 = (t - self.t0).abs() <= _T0_RTOL * self.t0  # t0 up to the rounding of a float32 time
        if torch.any((t < self.t0) & ~at_t0) or torch.any(t > self.sde.T * (1 + 1e-12)):
            raise ValueError(f"consistency times must lie in [t0, T] = [{self.t0:g}, {self.sde.T:g}]")
        u = torch.clamp(self._sigma(t) - self._sigma0, min=0.0)
        u = torch.where(at_t0, torch.zeros_like(u), u)
        sd = self.sigma_data
        return sd**2 / (u**2 + sd**2), sd * u / torch.sqrt(u**2 + sd**2)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(x, t) for x (n, D) and t one time or one per row, in [t0, T].

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in [t0, T].
        """
        x = sample(x, "x")
        t = as_time(t).to(torch.float64)  # a Python float stays exact
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        c_skip, c_out = self.coefficients(t)
        F = _call(self.net, x, t.to(dtype=x.dtype, device=x.device))
        return c_skip.to(x)[:, None] * x + c_out.to(x)[:, None] * F


def consistency_distillation_loss(model: ConsistencyModel, x0: torch.Tensor, *, score: Callable, times,
                                  target_model: Callable | None = None, teacher_substeps: int = 1,
                                  generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""Consistency distillation: make :math:`f_\theta` agree with itself one teacher ODE step apart.

    For each data point draw an interval :math:`k` of the increasing grid :math:`t_0 = \tau_0 < \dots < \tau_N = T`,
    :math:`x_{\tau_{k+1}} = \alpha x_0 + \sqrt h\,\varepsilon`, take one deterministic teacher step of the
    probability-flow ODE to :math:`\hat x_{\tau_k}` (DDIM, split into ``teacher_substeps`` parts, with the exact or
    learned ``score``), and minimise

    .. math::

        \big\|f_\theta(x_{\tau_{k+1}}, \tau_{k+1})
        - \operatorname{sg} f_{\theta^-}(\hat x_{\tau_k}, \tau_k)\big\|^2,

    sg the stop-gradient, :math:`\theta^-` the ``target_model`` (default the model itself, without gradient).  With
    :math:`f(x, \tau_0) = x` built in, the fixed point is the ODE's map to :math:`t_0` :cite:p:`song2023consistency`.

    Parameters
    ----------
    model : ConsistencyModel
        The consistency function being trained.
    x0 : torch.Tensor
        Data, shape (n, D).
    score : callable
        The teacher's score ``score(x, t)``.
    times : sequence
        The grid of times (either order), from ``model.t0`` to at most T, at least 2 points.
    target_model : callable, optional
        :math:`f_{\theta^-}` (e.g. an EMA copy).
    teacher_substeps : int
        DDIM substeps per teacher step.
    generator : torch.Generator, optional
        Source of the intervals and the noise.
    reduction : {"mean", "none"}
        Batch mean, or per-sample terms.
    """
    generator = _checks.generator(generator)
    if not isinstance(model, ConsistencyModel):
        raise TypeError(f"model must be a ConsistencyModel, got {type(model).__name__}")
    x0 = sample(x0, "x0")
    grid = torch.sort(as_time(times).to(torch.float64).reshape(-1)).values
    _check_times(torch.flip(grid, [0]), model.sde)
    if abs(float(grid[0]) - model.t0) > 1e-12 * max(1.0, model.t0):
        raise ValueError(f"the grid must start at the model's t0 = {model.t0:g}, got {float(grid[0]):g}")
    substeps = positive_int(teacher_substeps, "teacher_substeps")
    n = x0.shape[0]
    k = torch.randint(0, grid.numel() - 1, (n,), generator=generator)
    t_hi, t_lo = grid[k + 1], grid[k]
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    sde = model.sde
    xt = sde.alpha(t_hi).to(x0)[:, None] * x0 + sde.sigma(t_hi).to(x0)[:, None] * eps
    with torch.no_grad():
        x_lo = _ddim_rows(score, sde, xt, t_hi, t_lo, substeps)
        target = (target_model if target_model is not None else model)(x_lo, t_lo.to(x0))
    out = model(xt, t_hi.to(x0))
    return _reduce(((out - target) ** 2).sum(dim=1), reduction)


# -- consistency training: no teacher, no score ------------------------------------------------------------------------
def noise_level(sde: VPSDE, t) -> torch.Tensor:
    r"""The noise-to-signal ratio :math:`\sigma(t) = \sqrt{h(t)}/\alpha(t) = \sqrt{\mathrm{expm1}\,G(t)}` of VP times.

    :math:`x_t/\alpha(t) = x_0 + \sigma(t)\,z` is the variance-exploding variable in which
    :cite:t:`song2023consistency` and :cite:t:`song2024improved` write consistency training (their :math:`\sigma`
    runs from :math:`\sigma_{\min} = 0.002` to :math:`\sigma_{\max} = 80`; here from :math:`\sigma(t_0)` to
    :math:`\sigma(T)`).  It is the :math:`\sigma` of :class:`ConsistencyModel`'s :math:`c_{\rm skip}, c_{\rm out}`.

    Parameters
    ----------
    sde : VPSDE
        The forward process.
    t : float or torch.Tensor
        Time(s) in [0, T].

    Returns
    -------
    torch.Tensor
        :math:`\sigma(t)`, float64, shaped like ``t``.
    """
    return torch.sqrt(torch.expm1(sde.integral(as_time(t).to(torch.float64))))


def karras_grid(sde: VPSDE, t0: float, n_points: int, rho: float = 7.0) -> torch.Tensor:
    r"""The increasing grid :math:`t_0 = t_1 < \dots < t_N = T` of consistency training, uniform in
    :math:`\sigma^{1/\rho}`:

    .. math::

        \sigma(t_i) = \Big(\sigma_{\min}^{1/\rho} + \tfrac{i-1}{N-1}\big(\sigma_{\max}^{1/\rho}
        - \sigma_{\min}^{1/\rho}\big)\Big)^{\rho},\qquad i = 1, \dots, N,

    with :math:`\sigma_{\min} = \sigma(t_0)`, :math:`\sigma_{\max} = \sigma(T)` (:func:`noise_level`) and
    :math:`\rho = 7`: the discretisation of :cite:t:`song2023consistency` and :cite:t:`song2024improved` (after
    :cite:t:`karras2022elucidating`), mapped to VP times by :math:`t = G^{-1}(\log(1 + \sigma^2))`.  The end points
    are set to exactly :math:`t_0` and :math:`T`.

    Parameters
    ----------
    sde : VPSDE
        The forward process.
    t0 : float
        The early-stopping time, in (0, T).
    n_points : int
        The number N >= 2 of grid points (N - 1 intervals).
    rho : float
        The exponent :math:`\rho > 0` (default 7).

    Returns
    -------
    torch.Tensor
        The N times, float64, strictly increasing.
    """
    sde = sde_or_default(sde)
    n_points = positive_int(n_points, "n_points", 2)
    t0, rho = float(t0), float(rho)
    if not 0 < t0 < sde.T:
        raise ValueError(f"t0 must lie in (0, T) = (0, {sde.T:g}), got {t0}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be positive, got {rho}")
    lo, hi = float(noise_level(sde, t0)) ** (1 / rho), float(noise_level(sde, sde.T)) ** (1 / rho)
    frac = torch.arange(n_points, dtype=torch.float64) / (n_points - 1)
    sig = (lo + frac * (hi - lo)) ** rho
    times = sde.inverse_integral(torch.log1p(sig**2)).to(torch.float64)
    times[0], times[-1] = t0, sde.T
    if not torch.all(times[1:] > times[:-1]):
        raise ValueError(f"{n_points} points are too many for this process: two grid times coincide")
    return times


def _schedule_ints(k, total, s0, s1, min_s0: int) -> tuple[int, int, int, int]:
    total = positive_int(total, "total")
    k = positive_int(k, "k", 0)
    if k > total:
        raise ValueError(f"the step k must lie in [0, total] = [0, {total}], got {k}")
    s0, s1 = positive_int(s0, "s0", min_s0), positive_int(s1, "s1", min_s0)
    if s1 < s0:
        raise ValueError(f"s1 must be at least s0, got s0 = {s0} and s1 = {s1}")
    return k, total, s0, s1


def ct_discretisation(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    r"""The number of grid points :math:`N(k)` at step k of consistency training (:cite:t:`song2023consistency`):

    .. math:: N(k) = \Big\lceil\sqrt{\tfrac kK\big((s_1 + 1)^2 - s_0^2\big) + s_0^2} - 1\Big\rceil + 1,

    growing from :math:`N(0) = s_0` to :math:`N(K) = s_1 + 1`; their CIFAR-10 values :math:`s_0 = 2`,
    :math:`s_1 = 150` are the defaults.

    Parameters
    ----------
    k : int
        The training step, in [0, K].
    total : int
        The number K of training steps.
    s0, s1 : int
        The initial and final discretisation, 2 <= s0 <= s1.

    Returns
    -------
    int
        N(k), the number of points of :func:`karras_grid`.
    """
    k, total, s0, s1 = _schedule_ints(k, total, s0, s1, 2)
    return math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ict_discretisation(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    r"""The doubling discretisation :math:`N(k)` of improved consistency training (:cite:t:`song2024improved`):

    .. math::

        N(k) = \min\big(s_0\,2^{\lfloor k/K'\rfloor},\ s_1\big) + 1,\qquad
        K' = \Big\lfloor\frac{K}{\lfloor\log_2\lfloor s_1/s_0\rfloor\rfloor + 1}\Big\rfloor

    (:math:`K'` at least 1), with their defaults :math:`s_0 = 10`, :math:`s_1 = 1280`: 11, 21, 41, ..., 1281 points,
    each for K/8 steps.

    Parameters
    ----------
    k : int
        The training step, in [0, K].
    total : int
        The number K of training steps.
    s0, s1 : int
        The initial and final number of intervals, 1 <= s0 <= s1.

    Returns
    -------
    int
        N(k), the number of points of :func:`karras_grid`.
    """
    k, total, s0, s1 = _schedule_ints(k, total, s0, s1, 1)
    stage = max(1, total // (int(math.floor(math.log2(s1 // s0))) + 1))
    return min(s0 * 2 ** (k // stage), s1) + 1


def ct_ema_decay(n_points: int, s0: int = 2, mu0: float = 0.9) -> float:
    r"""The decay :math:`\mu(k) = \exp\big(s_0\log\mu_0/N(k)\big)` of the target network of consistency training
    :cite:p:`song2023consistency` (default :math:`\mu_0 = 0.9`, :math:`s_0 = 2`: :math:`\mu = \mu_0` at the first
    step, closer to 1 as N grows).  :cite:t:`song2024improved` drop this average (:math:`\mu = 0`).

    Parameters
    ----------
    n_points : int
        N(k), at least 2.
    s0 : int
        The initial discretisation of :func:`ct_discretisation`, a positive integer.
    mu0 : float
        The initial decay, in [0, 1).

    Returns
    -------
    float
        :math:`\mu(k)` in [0, 1).
    """
    n_points, s0 = positive_int(n_points, "n_points", 2), positive_int(s0, "s0")
    mu0 = _checks.probability(mu0, "mu0", open_right=True)
    return 0.0 if mu0 == 0 else math.exp(s0 * math.log(mu0) / n_points)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    r"""The Pseudo-Huber distance of each row, :math:`d(x, y) = \sqrt{\|x - y\|_2^2 + c^2} - c`
    :cite:p:`song2024improved`.

    Computed as :math:`\|x-y\|^2/(\sqrt{\|x-y\|^2 + c^2} + c)`, without cancellation.  It is
    :math:`\|x - y\|^2/(2c)` for :math:`\|x-y\| \ll c` and :math:`\|x - y\| - c` for :math:`\|x-y\| \gg c`: a
    squared loss near zero, a robust norm beyond c.

    Parameters
    ----------
    x, y : torch.Tensor
        Points, each shape (n, D).
    c : float
        The scale c > 0 (:cite:t:`song2024improved` take :math:`c = 0.00054\sqrt D`).

    Returns
    -------
    torch.Tensor
        The n distances, shape (n,).
    """
    x, y = sample(x, "x"), sample(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    c = float(c)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"the Pseudo-Huber scale c must be positive, got {c}")
    sq = ((x - y) ** 2).sum(dim=1)
    return sq / (torch.sqrt(sq + c * c) + c)


def lognormal_interval_probabilities(times, sde: VPSDE | None = None, p_mean: float = -1.1,
                                     p_std: float = 2.0) -> torch.Tensor:
    r"""The discretised log-normal law of the interval :math:`[t_i, t_{i+1}]` of improved consistency training:

    .. math::

        p(i) \propto \operatorname{erf}\Big(\frac{\log\sigma_{i+1} - P_{\rm mean}}{\sqrt2\,P_{\rm std}}\Big)
        - \operatorname{erf}\Big(\frac{\log\sigma_i - P_{\rm mean}}{\sqrt2\,P_{\rm std}}\Big),

    :math:`\sigma_i = \sigma(t_i)` (:func:`noise_level`), the published :math:`P_{\rm mean} = -1.1`,
    :math:`P_{\rm std} = 2` by default (set for data of scale :math:`\sigma_d = 0.5`) :cite:p:`song2024improved`.

    Parameters
    ----------
    times : sequence
        The increasing grid :math:`t_1 < \dots < t_N` (e.g. :func:`karras_grid`), N >= 2.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    p_mean, p_std : float
        Mean and standard deviation of :math:`\log\sigma`; ``p_std > 0``.

    Returns
    -------
    torch.Tensor
        The N - 1 probabilities, float64, summing to 1.
    """
    sde = sde_or_default(sde)
    times = as_time(times).to(torch.float64)
    if times.ndim != 1 or times.numel() < 2 or not torch.all(times[1:] > times[:-1]):
        raise ValueError("times must be a strictly increasing 1-D grid of at least 2 times")
    p_mean, p_std = float(p_mean), float(p_std)
    if not (math.isfinite(p_mean) and math.isfinite(p_std) and p_std > 0):
        raise ValueError(f"need a finite p_mean and p_std > 0, got {p_mean} and {p_std}")
    cdf = torch.special.ndtr((torch.log(noise_level(sde, times)) - p_mean) / p_std)  # (1 + erf(./sqrt 2)) / 2
    p = torch.clamp(cdf[1:] - cdf[:-1], min=0.0)
    if not float(p.sum()) > 0:
        raise ValueError("the log-normal law puts no mass on this grid: check p_mean and p_std")
    return p / p.sum()


_METRICS = ("l2", "pseudo_huber")
_WEIGHTINGS = ("uniform", "inverse_gap")


def consistency_training_loss(model: ConsistencyModel, x0: torch.Tensor, *, times, target_model: Callable | None = None,
                              metric: str = "l2", c: float | None = None, weighting: str = "uniform",
                              interval_probabilities=None, generator: torch.Generator | None = None,
                              reduction: str = "mean") -> torch.Tensor:
    r"""Consistency training: the consistency loss with the ODE step replaced by the *same noise* at both times.

    On the increasing grid :math:`t_1 = t_0 < \dots < t_N \le T` draw an interval :math:`n` (uniformly, or with
    ``interval_probabilities``) and one :math:`z\sim\mathsf N(0, I)` per data point, set

    .. math::

        x_{t_{n+1}} = \alpha(t_{n+1})\,x_0 + \sqrt{h(t_{n+1})}\,z,\qquad
        x_{t_n} = \alpha(t_n)\,x_0 + \sqrt{h(t_n)}\,z,

    and minimise :math:`\lambda(t_n)\,d\big(f_\theta(x_{t_{n+1}}, t_{n+1}),\ \operatorname{sg}
    f_{\theta^-}(x_{t_n}, t_n)\big)` :cite:p:`song2023consistency`.  In the variable :math:`y = x/\alpha` of
    :func:`noise_level` the pair is :math:`y_{n+1} = x_0 + \sigma_{n+1}z`, :math:`y_n = y_{n+1} - (\sigma_{n+1} -
    \sigma_n)\,z`: one Euler step of the probability-flow ODE :math:`\mathrm dy/\mathrm d\sigma =
    \mathbb E[z\mid y]` with the one-sample estimate :math:`z` of :math:`\mathbb E[z\mid y]` -- the DDIM step of
    :func:`consistency_distillation_loss` with :math:`-z/\sqrt{h}` in place of the score.  No teacher and no score
    are needed; the price is a bias: with the squared metric the fixed point satisfies
    :math:`f(y_{n+1}) = \mathbb E[f(y_{n+1} - \Delta\sigma\,z)\mid y_{n+1}]`, which is the fixed point of
    distillation with one exact-score DDIM step where f is linear in y (Gaussian data) and differs from it by
    :math:`O(\Delta\sigma^2)` per interval where f is curved; either way it reaches the ODE's map only as the grid is
    refined.  Even the exact consistency function has a positive loss, of order :math:`\Delta\sigma^2` per interval
    (zero only for data at a single point, where every pair lies on one ODE path).

    Implemented pieces: ``metric="l2"`` is :math:`d(x, y) = \|x - y\|_2^2` (the published ``l2`` metric; LPIPS, a
    learned image metric, has no meaning here), ``metric="pseudo_huber"`` is :func:`pseudo_huber` with
    ``c`` (default :math:`0.00054\sqrt D`) :cite:p:`song2024improved`; ``weighting="uniform"`` is
    :math:`\lambda = 1`, ``"inverse_gap"`` is :math:`\lambda(t_n) = 1/(\sigma_{n+1} - \sigma_n)`
    :cite:p:`song2024improved`; ``target_model`` is :math:`\theta^-` (an EMA copy, Song et al. 2023; default the
    model itself under stop-gradient, as in the improved version).  :func:`fit_consistency` assembles the two
    published recipes.

    Parameters
    ----------
    model : ConsistencyModel
        The consistency function being trained.
    x0 : torch.Tensor
        Data, shape (n, D).
    times : sequence
        The grid (either order, e.g. :func:`karras_grid`) from ``model.t0`` to at most T, at least 2 points.
    target_model : callable, optional
        :math:`f_{\theta^-}`, evaluated without gradient (default ``model``).
    metric : {"l2", "pseudo_huber"}
        The distance d.
    c : float, optional
        The Pseudo-Huber scale (only with ``metric="pseudo_huber"``).
    weighting : {"uniform", "inverse_gap"}
        The weight :math:`\lambda(t_n)`.
    interval_probabilities : sequence, optional
        The law of n over the N - 1 intervals (e.g. :func:`lognormal_interval_probabilities`); default uniform.
    generator : torch.Generator, optional
        Source of the intervals and the noise.
    reduction : {"mean", "none"}
        Batch mean, or per-sample terms.
    """
    generator = _checks.generator(generator)
    if not isinstance(model, ConsistencyModel):
        raise TypeError(f"model must be a ConsistencyModel, got {type(model).__name__}")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    if c is not None and metric != "pseudo_huber":
        raise ValueError("c is the Pseudo-Huber scale: pass it only with metric='pseudo_huber'")
    x0 = sample(x0, "x0")
    sde = model.sde
    grid = torch.sort(as_time(times).to(torch.float64).reshape(-1)).values
    _check_times(torch.flip(grid, [0]), sde)
    if abs(float(grid[0]) - model.t0) > 1e-12 * max(1.0, model.t0):
        raise ValueError(f"the grid must start at the model's t0 = {model.t0:g}, got {float(grid[0]):g}")
    m = grid.numel() - 1
    p = None
    if interval_probabilities is not None:
        p = as_time(interval_probabilities).to(torch.float64)
        if p.shape != (m,) or not torch.all(torch.isfinite(p)) or torch.any(p < 0) or not float(p.sum()) > 0:
            raise ValueError(f"interval_probabilities must be {m} non-negative numbers (one per interval) with a "
                             f"positive sum, got shape {tuple(p.shape)}")
        p = p / p.sum()
    table = _GridTable(sde, grid, p)
    return _reduce(_ct_terms(model, x0, table, target_model, metric, c, weighting, generator), reduction)


class _GridTable:
    """A checked grid with alpha, sqrt(h) and sigma at its points and the law of its intervals (None: uniform)."""

    def __init__(self, sde, grid, probabilities):
        self.grid, self.p = grid, probabilities
        self.a, self.s, self.sig = sde.alpha(grid), sde.sigma(grid), noise_level(sde, grid)


def _ct_terms(model, x0, table, target_model, metric, c, weighting, generator) -> torch.Tensor:
    """The per-sample terms of :func:`consistency_training_loss` (inputs already checked)."""
    n, m = x0.shape[0], table.grid.numel() - 1
    if table.p is None:
        k = torch.randint(0, m, (n,), generator=generator)
    else:
        k = torch.multinomial(table.p, n, replacement=True, generator=generator)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    a, s = table.a.to(x0), table.s.to(x0)
    x_hi = a[k + 1, None] * x0 + s[k + 1, None] * z
    x_lo = a[k, None] * x0 + s[k, None] * z  # the same z
    t_hi, t_lo = table.grid[k + 1].to(x0), table.grid[k].to(x0)
    with torch.no_grad():
        target = (target_model if target_model is not None else model)(x_lo, t_lo)
    out = model(x_hi, t_hi)
    if metric == "l2":
        per = ((out - target) ** 2).sum(dim=1)
    else:
        per = pseudo_huber(out, target, 0.00054 * math.sqrt(x0.shape[1]) if c is None else c)
    if weighting == "inverse_gap":
        per = per / (table.sig[k + 1] - table.sig[k]).to(per)
    return per


@dataclass
class ConsistencyFit(TrainResult):
    r"""What :func:`fit_consistency` returns: a :class:`~diffnotes.training.TrainResult` (it unpacks as
    ``losses, model, ema_model``) with the target network and the discretisation schedule.

    Parameters
    ----------
    losses : numpy.ndarray
        The minibatch loss at every step.
    model : torch.nn.Module
        The trained consistency model (the object passed in).
    ema_model : torch.nn.Module or None
        The sampling EMA of :func:`~diffnotes.training.train` when ``ema=`` was passed, else None.
    target_model : torch.nn.Module or None
        The EMA target network :math:`\theta^-` of ``method="ct"``; None for ``"ict"`` (the model itself).
    discretisation : numpy.ndarray or None
        N(k), the number of grid points used at each step.
    """

    target_model: nn.Module | None = None
    discretisation: np.ndarray | None = None


class _CTObjective:
    """The loss of one consistency-training run: N(k), the grid and the EMA target, step by step."""

    def __init__(self, model, steps, method, s0, s1, mu0, rho, c, p_mean, p_std):
        self.model, self.steps, self.method = model, steps, method
        self.s0, self.s1, self.mu0, self.rho, self.c = s0, s1, mu0, rho, c
        self.p_mean, self.p_std = p_mean, p_std
        self.k, self.n_points, self._grids = 0, np.zeros(steps, dtype=np.int64), {}
        self.target = None
        if method == "ct":
            self.target = copy.deepcopy(model)
            self.target.requires_grad_(False)

    def table(self, N):
        if N not in self._grids:
            times = karras_grid(self.model.sde, self.model.t0, N, self.rho)
            probs = None
            if self.method == "ict":
                probs = lognormal_interval_probabilities(times, self.model.sde, self.p_mean, self.p_std)
            self._grids[N] = _GridTable(self.model.sde, times, probs)
        return self._grids[N]

    def __call__(self, model, x0, *, generator=None):
        k = min(self.k, self.steps - 1)
        if self.method == "ct":
            N = ct_discretisation(k, self.steps, self.s0, self.s1)
            terms = _ct_terms(model, x0, self.table(N), self.target, "l2", None, "uniform", generator)
        else:
            N = ict_discretisation(k, self.steps, self.s0, self.s1)
            terms = _ct_terms(model, x0, self.table(N), None, "pseudo_huber", self.c, "inverse_gap", generator)
        self.n_points[k] = N
        return terms.mean()

    def after_step(self, model):  # theta^- <- mu theta^- + (1 - mu) sg theta, with mu of this step's N(k)
        if self.target is not None:
            ema_update(self.target, model, ct_ema_decay(int(self.n_points[min(self.k, self.steps - 1)]), self.s0,
                                                        self.mu0))
        self.k += 1


def fit_consistency(model: ConsistencyModel, x0: torch.Tensor, *, steps: int, method: str = "ict",
                    s0: int | None = None, s1: int | None = None, mu0: float | None = None, rho: float = 7.0,
                    c: float | None = None, p_mean: float | None = None, p_std: float | None = None,
                    **train_options) -> ConsistencyFit:
    r"""Train a consistency model from data alone, by one of the two published recipes of consistency training.

    Step k of K = ``steps`` minimises :func:`consistency_training_loss` on the :func:`karras_grid` of N(k) points
    (:math:`\rho` = ``rho``), with the optimiser and minibatches of :func:`~diffnotes.training.train`:

    * ``method="ct"`` (:cite:t:`song2023consistency`, Algorithm 3): :math:`N(k)` of :func:`ct_discretisation`
      (defaults :math:`s_0 = 2`, :math:`s_1 = 150`), n uniform, :math:`\lambda = 1`, the squared :math:`\ell_2`
      metric, and a target network :math:`\theta^-` initialised to :math:`\theta` and updated after every step by
      :math:`\theta^- \leftarrow \mu(k)\,\theta^- + (1 - \mu(k))\,\theta` with :math:`\mu(k)` of
      :func:`ct_ema_decay` (default :math:`\mu_0 = 0.9`);
    * ``method="ict"`` (:cite:t:`song2024improved`): :math:`N(k)` of :func:`ict_discretisation` (defaults
      :math:`s_0 = 10`, :math:`s_1 = 1280`), n from :func:`lognormal_interval_probabilities` (``p_mean``, ``p_std``),
      :math:`\lambda = 1/(\sigma_{n+1} - \sigma_n)`, the :func:`pseudo_huber` metric (``c``, default
      :math:`0.00054\sqrt D`), and no target EMA: :math:`\theta^- = \operatorname{sg}\theta`.

    Not implemented from the papers: their networks (U-Nets with dropout), learning rates and batch sizes (the
    caller's ``train_options``), the LPIPS metric, and the separate slow EMA they evaluate (``ema=`` of
    :func:`~diffnotes.training.train` provides one, bias-corrected).  Single process only.

    Parameters
    ----------
    model : ConsistencyModel
        The consistency function, trained in place.
    x0 : torch.Tensor
        The training data, shape (n, D).
    steps : int
        The number K of optimisation steps.
    method : {"ict", "ct"}
        The recipe.
    s0, s1 : int, optional
        The discretisation schedule's bounds (defaults per method, above).
    mu0 : float, optional
        The initial target decay of ``"ct"``, in [0, 1) (default 0.9).
    rho : float
        The exponent of :func:`karras_grid`.
    c : float, optional
        The Pseudo-Huber scale of ``"ict"``.
    p_mean, p_std : float, optional
        The log-normal law of :math:`\log\sigma` of ``"ict"`` (defaults -1.1 and 2).
    **train_options
        Passed to :func:`~diffnotes.training.train` (``batch_size``, ``lr``, ``generator``, ``ema``, ``progress``,
        ``callback``, ...); ``distributed`` and ``draws`` are refused (``TypeError``).

    Returns
    -------
    ConsistencyFit
        The losses, the model, the optional sampling EMA, the target network of ``"ct"`` and N(k).
    """
    if not isinstance(model, ConsistencyModel):
        raise TypeError(f"model must be a ConsistencyModel, got {type(model).__name__}")
    if method not in ("ct", "ict"):
        raise ValueError(f"method must be 'ct' or 'ict', got {method!r}")
    for key in ("distributed", "draws"):
        if key in train_options:
            raise TypeError(f"fit_consistency trains on one process and draws its own noise: do not pass {key}")
    if method == "ict" and mu0 is not None:
        raise ValueError("mu0 is the target decay of method='ct'; the improved recipe has no target EMA")
    if method == "ct" and (c is not None or p_mean is not None or p_std is not None):
        raise ValueError("c, p_mean and p_std belong to method='ict'")
    mu0 = 0.9 if mu0 is None else mu0
    p_mean = -1.1 if p_mean is None else p_mean
    p_std = 2.0 if p_std is None else p_std
    steps = positive_int(steps, "steps")
    s0 = (2 if method == "ct" else 10) if s0 is None else s0
    s1 = (150 if method == "ct" else 1280) if s1 is None else s1
    schedule = ct_discretisation if method == "ct" else ict_discretisation
    schedule(0, steps, s0, s1)  # checks s0 and s1 before any training
    if method == "ct":
        ct_ema_decay(2, s0, mu0)
    objective = _CTObjective(model, steps, method, s0, s1, mu0, rho, c, p_mean, p_std)
    user_callback = train_options.pop("callback", None)
    if user_callback is not None and not callable(user_callback):
        raise TypeError("callback must be callable(step, model, loss)")

    def callback(step, trained, value):
        objective.after_step(trained)
        if user_callback is not None:
            user_callback(step, trained, value)

    result = train(model, objective, sample(x0, "x0"), steps=steps, callback=callback, distributed=False,
                   **train_options)
    return ConsistencyFit(result.losses, result.model, result.ema_model, objective.target, objective.n_points)


def consistency_sample(model: ConsistencyModel, x, times=None, *, generator: torch.Generator | None = None,
                       noise: Callable | None = None, return_trajectory: bool = False):
    r"""One-step or few-step sampling with a consistency model.

    From :math:`x_T` (given, or drawn from :math:`\mathsf N(0, I)`), :math:`\hat x = f(x_T, T)`; then for each further
    time :math:`\tau` of the decreasing ``times`` (all in :math:`(t_0, T]`) the estimate is noised forward from
    :math:`t_0` to :math:`\tau`, :math:`x_\tau = r\hat x + \sqrt{1 - r^2}\,\xi`, :math:`r = \alpha(\tau)/\alpha(t_0)`,
    and mapped again, :math:`\hat x = f(x_\tau, \tau)` :cite:p:`song2023consistency`.  ``times=None`` is one step
    from T.  Each step is one network evaluation.  Returns :math:`\hat x` (and the estimates after each step).
    ``noise(like)``, if given, replaces the Gaussian draws :math:`\xi` (one call a step after the first), as in
    :mod:`diffnotes.samplers`, whose loop (start, noise, trajectory, finite check) this sampler shares.

    Parameters
    ----------
    model : ConsistencyModel
        The consistency function.
    x : torch.Tensor or tuple
        The start :math:`x_T`, shape (n, D), or its shape (then drawn from :math:`\mathsf N(0, I)` with
        ``generator``).
    times : sequence, optional
        A strictly decreasing grid in :math:`(t_0, T]` (default None: the one time T).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the start (when only its shape is given) and of the noise.
    noise : callable, optional
        ``noise(like)`` replacing the Gaussian draws.
    return_trajectory : bool
        Also return the estimates after each step.
    """
    if not isinstance(model, ConsistencyModel):
        raise TypeError(f"model must be a ConsistencyModel, got {type(model).__name__}")
    sde = model.sde
    times = torch.tensor([sde.T], dtype=torch.float64) if times is None else as_time(times).to(torch.float64)
    if times.ndim != 1 or times.numel() < 1:
        raise ValueError("times must be a non-empty 1-D decreasing grid")
    if not torch.all(times[1:] < times[:-1]) or torch.any(times <= model.t0) or torch.any(times > sde.T):
        raise ValueError(f"times must be strictly decreasing in (t0, T] = ({model.t0:g}, {sde.T:g}]")
    loop = _Loop(x, generator, noise, return_trajectory, record_start=False, what="consistency sampling")
    a0 = float(sde.alpha(torch.tensor(model.t0, dtype=torch.float64)))
    with torch.no_grad():
        for j, tau in enumerate(times.tolist()):
            x = loop.x
            if j > 0:
                r = float(sde.alpha(torch.tensor(tau, dtype=torch.float64))) / a0
                x = r * x + math.sqrt(max(0.0, 1 - r * r)) * loop.draw(x)
            loop.record(model(x, tau))
    return loop.result("the model is not finite on these inputs")


# -- latent diffusion with a PCA encoder -----------------------------------------------------------------------------
class PCAEncoder:
    r"""A linear encoder :math:`E(x) = V^\top(x - \mu)` and decoder :math:`D(z) = \mu + Vz`, V with orthonormal
    columns (D x k).  :math:`D(E(x)) = x` exactly for x in :math:`\mu + \mathrm{span}(V)`: the autoencoder of latent
    diffusion :cite:p:`rombach2022high` in its simplest, linear form (review Sections 2.1 and 4.2).

    Parameters
    ----------
    mean : array_like
        The centre :math:`\mu`, shape (D,).
    components : array_like
        V, shape (D, k) with k <= D and orthonormal columns (to 1e-8).
    """

    def __init__(self, mean, components):
        mean = as_time(mean).to(torch.float64)
        V = as_time(components).to(torch.float64)
        if V.ndim != 2 or V.shape[1] > V.shape[0] or mean.shape != (V.shape[0],):
            raise ValueError(f"need components of shape (D, k) with k <= D and a mean of shape (D,), got "
                             f"{tuple(V.shape)} and {tuple(mean.shape)}")
        if not torch.allclose(V.T @ V, torch.eye(V.shape[1], dtype=torch.float64), atol=1e-8):
            raise ValueError("the components must be orthonormal columns")
        self.mean, self.components = mean, V

    @property
    def dim(self) -> int:
        """Ambient dimension D."""
        return self.components.shape[0]

    @property
    def latent_dim(self) -> int:
        """Latent dimension k."""
        return self.components.shape[1]

    def encode(self, x) -> torch.Tensor:
        """Codes :math:`V^\\top(x - \\mu)`, shape (n, k).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        """
        x = sample(x, "x")
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} columns, got {x.shape[1]}")
        return (x - self.mean.to(x)) @ self.components.to(x)

    def decode(self, z) -> torch.Tensor:
        r"""Points :math:`\mu + Vz`, shape (n, D).

        Parameters
        ----------
        z : torch.Tensor
            Codes, shape (n, k).
        """
        z = sample(z, "z")
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have {self.latent_dim} columns, got {z.shape[1]}")
        return self.mean.to(z) + z @ self.components.to(z).T

    def __repr__(self) -> str:
        return f"PCAEncoder(D={self.dim}, k={self.latent_dim})"


def fit_pca(x, k: int) -> PCAEncoder:
    """The PCA encoder of the top-k principal directions of the sample x (n, D): the sample mean and the leading
    right singular vectors of the centred data.

    Parameters
    ----------
    x : torch.Tensor
        The sample, shape (n, D).
    k : int
        Number of principal directions, 1 <= k <= D.
    """
    x = sample(x, "x").to(torch.float64)
    k = positive_int(k, "k")
    if k > x.shape[1]:
        raise ValueError(f"k = {k} cannot exceed the dimension D = {x.shape[1]}")
    mean = x.mean(0)
    _, _, Vh = torch.linalg.svd(x - mean, full_matrices=False)
    return PCAEncoder(mean, Vh[:k].T)


def latent_target(encoder: PCAEncoder, target: SubspaceMixture) -> GaussianMixture:
    r"""The exact law of the codes :math:`E(x)` of data :math:`x = Az` on a subspace, as a Gaussian mixture.

    If :math:`\mathrm{span}(V) = \mathrm{span}(A)`, then :math:`R = V^\top A` is orthogonal and
    :math:`E(x) = Rz - V^\top\mu`: the latent mixture rotated and shifted (means :math:`R\mu_k - V^\top\mu`,
    covariances :math:`R\Sigma_kR^\top`), diffused by the same forward process.  Its score is then the exact latent
    score.  Raises if the encoder's subspace does not contain the data's.

    Parameters
    ----------
    encoder : PCAEncoder
        The encoder, with k equal to the subspace dimension d and D the data dimension.
    target : diffnotes.targets.SubspaceMixture
        The data law on a subspace; ``span(V)`` must equal ``span(A)`` (``ValueError`` otherwise).

    Returns
    -------
    diffnotes.targets.GaussianMixture
        The exact law of the codes, with the forward process of ``target``'s latent mixture.
    """
    if not isinstance(encoder, PCAEncoder):
        raise TypeError(f"encoder must be a PCAEncoder, got {type(encoder).__name__}")
    if not isinstance(target, SubspaceMixture):
        raise TypeError(f"target must be a SubspaceMixture, got {type(target).__name__}")
    A, V = target.A, encoder.components
    if A.shape[0] != V.shape[0] or A.shape[1] != V.shape[1]:
        raise ValueError(f"the encoder (D={V.shape[0]}, k={V.shape[1]}) must match the subspace (D={A.shape[0]}, "
                         f"d={A.shape[1]})")
    R = V.T @ A
    if not torch.allclose(R.T @ R, torch.eye(R.shape[0], dtype=torch.float64), atol=1e-8):
        raise ValueError("the encoder's subspace differs from the data's: the latent score would not be exact")
    lat = target.latent
    shift = encoder.mean @ V
    return GaussianMixture(lat.weights, lat.means @ R.T - shift, R @ lat.covs @ R.T, lat.sde, lat.labels)


def latent_sample(encoder: PCAEncoder, latent_score: Callable, x, times, *, sampler: Callable = exponential_multistep,
                  sde: VPSDE | None = None, generator: torch.Generator | None = None, **options) -> torch.Tensor:
    r"""Latent diffusion: run ``sampler`` on the codes with ``latent_score`` and decode.

    .. math:: x = D\big(\mathrm{sampler}(s^{\rm ld}, z_T)\big),\qquad z_T\sim\mathsf N(0, I_k),

    ``x`` being the latent start (n, k) or its shape.  Every score evaluation costs a k-dimensional network instead of
    a D-dimensional one, and the stiff orthogonal term :math:`-(I - AA^\top)x/h(t)` of the ambient score (review
    Section 4.1) never appears: the output lies on the encoder's subspace exactly :cite:p:`rombach2022high`.

    Parameters
    ----------
    encoder : PCAEncoder
        The decoder of the codes.
    latent_score : callable
        The score ``s(z, t)`` of the codes' diffused law.
    x : torch.Tensor or tuple
        The latent start, shape (n, k), or its shape (then drawn from :math:`\mathsf N(0, I_k)` with ``generator``).
    times : sequence
        The sampler's strictly decreasing time grid.
    sampler : callable
        A sampler of :mod:`diffnotes.samplers` (default :func:`~diffnotes.samplers.exponential_multistep`).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the start and of the sampler's noise.
    **options
        Passed to the sampler.

    Returns
    -------
    torch.Tensor
        The decoded samples, shape (n, D).
    """
    generator = _checks.generator(generator)
    if not isinstance(encoder, PCAEncoder):
        raise TypeError(f"encoder must be a PCAEncoder, got {type(encoder).__name__}")
    z = _start(x, generator, encoder.latent_dim)
    out = sampler(latent_score, z, times, sde=sde_or_default(sde), generator=generator, **options)
    return encoder.decode(out)

