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
* **Latent diffusion** :cite:p:`rombach2022high` diffuses in the coordinates of an encoder; here a PCA encoder, which
  for data on a linear subspace loses nothing and makes the latent score that of a low-dimensional exact target.

Every sampler here follows the package's conventions: the start ``x`` is a tensor or a shape drawn from
:math:`\mathsf N(0, I)` with an explicit ``generator``, and ``return_trajectory=True`` also returns the stacked path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
from .training import TrainResult, train

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
        return torch.sqrt(torch.expm1(self.sde.integral(t)))  # sqrt(h) / alpha

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

