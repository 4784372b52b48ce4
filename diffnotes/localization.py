r"""Stochastic localization, and its equivalence with the DDPM backward process.

Stochastic localization (SL) began as a measure-valued process in convex geometry :cite:p:`eldan2013thin`; El Alaoui,
Montanari and Sellke turned it into a sampling algorithm :cite:p:`elalaoui2022sampling`, and Montanari showed that it
is the DDPM backward process in other coordinates :cite:p:`montanari2023sampling` (review Section 4.3, *Stochastic
localization*; book chapter *Stochastic localization and computational hardness*).  Its simplest form observes
:math:`x \sim P_{\rm data}` through a Gaussian channel whose signal-to-noise ratio :math:`s` grows from 0 to
:math:`\infty`,

.. math::

    Y_s = s\,x + B_s, \qquad\text{so that}\qquad Y_s \overset{d}{=} s\,x + \sqrt s\,g,\quad g \sim \mathsf N(0, I),
    \qquad Y_s/s \to x ,

and, as a process in its own filtration, :math:`Y` solves

.. math::

    \mathrm dY_s = m_s(Y_s)\,\mathrm ds + \mathrm dB_s,\quad Y_0 = 0, \qquad
    m_s(y) = \mathbb E\big[x \mid s\,x + \sqrt s\,g = y\big].

The posterior mean is Tweedie's formula for this channel, :math:`m_s(y) = y/s + \nabla\log q_s(y)` with :math:`q_s`
the law of :math:`Y_s` (the noise variance is :math:`s`, and :math:`\mathbb E[s x \mid Y] = Y + s\nabla\log q_s(Y)`).

**The time change.**  Along the forward process :math:`X_t = \alpha(t)\,x + \sqrt{h(t)}\,g` put

.. math::

    s(t) = \frac{\alpha(t)^2}{h(t)} = e^{\lambda(t)}, \qquad Y = c(t)\,X_t,\qquad
    c(t) = \frac{\alpha(t)}{h(t)} = \sqrt{\frac{s(t)}{h(t)}},

(:math:`\lambda` the log-SNR).  Then :math:`c X_t = s\,x + \sqrt s\,g`: the two processes have the same marginals,
and :math:`m_s(y) = \mathbb E[x \mid X_t = y/c(t)]`, Tweedie's denoiser of the OU process,
:math:`(x_t + h\nabla\log p_t(x_t))/\alpha`, evaluated at :math:`x_t = h\,y/\alpha`.  Pathwise, Itô's formula
applied to :math:`Y = c(t)X` along the backward SDE :math:`\mathrm dX = g(t)[\tfrac12 X + \nabla\log p_t(X)]\,\mathrm
d\tau + \sqrt{g(t)}\,\mathrm d\bar W_\tau` (:math:`t = T - \tau`) gives, with :math:`\mathrm ds = g\,s(1+s)\,\mathrm
d\tau` and :math:`\mathrm dc = g\,c\,(\tfrac12 + s)\,\mathrm d\tau`,

.. math::

    \mathrm dY = c\,g\big[(1+s)X + \nabla\log p_t(X)\big]\mathrm d\tau + c\sqrt g\,\mathrm d\bar W
    = m_s(Y)\,\mathrm ds + \mathrm dB_s,\qquad \mathrm dB_s = c\sqrt g\,\mathrm d\bar W_\tau,

because :math:`1 + s = 1/h` and Tweedie gives :math:`X/h + \nabla\log p_t = \alpha\,m/h`; :math:`B` is a Brownian
motion in :math:`s` since :math:`c^2 g\,\mathrm d\tau = \mathrm ds`.  The backward SDE *is* SL, run from
:math:`s(T) \approx 0` to :math:`s(t_0) \approx 1/t_0`.

**The discrete identity.**  The Euler step of SL, :math:`Y' = Y + (s'-s)\,m_s(Y) + \sqrt{s'-s}\;\xi`, freezes the
posterior mean over the step; the backward step that freezes Tweedie's :math:`\hat x_0` and integrates the rest
exactly is DDPM's ancestral step :math:`q(x_{t'} \mid x_t, \hat x_0)` (:func:`diffnotes.samplers.ddpm`).  With
:math:`\bar\alpha = \alpha(t)^2`, :math:`\beta = 1 - \bar\alpha/\bar\alpha'` and
:math:`\tilde\beta = \beta\,h'/h`, one checks

.. math::

    c'\,\frac{x + \beta\,\nabla\log p_t(x)}{\sqrt{1-\beta}} = c\,x + (s' - s)\,m_s(c\,x), \qquad
    c'^2\,\tilde\beta = \frac{\bar\alpha' - \bar\alpha}{h h'} = s' - s,

so the two steps coincide **exactly**, path by path when fed the same Gaussian :math:`\xi`, on every grid and every
VP schedule (:func:`ou_path_to_sl` maps one path onto the other).  The Euler-Maruyama step and the exponential
integrator freeze the *score* instead; they agree with SL only to first order in the step.

Conventions: float64 tensors of shape (n, D); a posterior-mean function is called ``m(y, s)`` with ``s`` a tensor of
one SNR per row, and returns a tensor shaped like ``y`` (the SL counterpart of the package's ``score(x, t)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks
from .samplers import _Loop
from .sde import VPSDE, ConstantVP, as_time
from .targets import GaussianMixture

__all__ = [
    "sl_time",
    "ou_time",
    "sl_scale",
    "ou_to_sl",
    "sl_to_ou",
    "ou_path_to_sl",
    "sl_path_to_ou",
    "localization_grid",
    "posterior_mean_from_score",
    "mixture_posterior_mean",
    "stochastic_localization",
]

PosteriorMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Horizon of the forward process used internally by :func:`mixture_posterior_mean`: :math:`s(700) \approx 10^{-304}`,
#: the smallest positive SNR at which the OU coefficients are still normal float64 numbers.
_LONG_HORIZON = 700.0


# -- the time change ------------------------------------------------------------------------------------------
def _positive_times(t, name="t") -> torch.Tensor:
    t = as_time(t).to(torch.float64)
    if not torch.all(torch.isfinite(t)) or not torch.all(t > 0):
        raise ValueError(f"{name} must be finite and > 0 (t = 0 is s = infinity), got values in "
                         f"[{float(t.min()):g}, {float(t.max()):g}]")
    return t


def sl_time(t, sde: VPSDE | None = None) -> torch.Tensor:
    r"""The SL time (signal-to-noise ratio) of the OU time t: :math:`s = \alpha(t)^2/h(t) = e^{\lambda(t)}`.

    ``t > 0`` may exceed the horizon of ``sde`` (only the schedule is used).  For :class:`~diffnotes.sde.ConstantVP`
    with :math:`g = 1`, :math:`s = 1/(e^t - 1)`.  :cite:p:`montanari2023sampling`.

    Parameters
    ----------
    t : float or torch.Tensor
        OU time(s), finite and > 0.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    torch.Tensor
        The SL time(s) s, float64, shaped like ``t``.
    """
    return torch.exp(_checks.sde_or_default(sde).log_snr(_positive_times(t)))


def ou_time(s, sde: VPSDE | None = None) -> torch.Tensor:
    r"""The OU time of the SL time s > 0, inverse of :func:`sl_time`: :math:`\lambda(t) = \log s`.

    :math:`s \to 0` is :math:`t \to \infty`, so s = 0 is refused.  For :class:`~diffnotes.sde.ConstantVP` with
    :math:`g = 1`, :math:`t = \log(1 + 1/s)`.

    Parameters
    ----------
    s : float or torch.Tensor
        SL time(s), finite and > 0.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    torch.Tensor
        The OU time(s) t, float64, shaped like ``s`` (they may exceed the horizon of ``sde``).
    """
    s = as_time(s).to(torch.float64)
    if not torch.all(torch.isfinite(s)) or not torch.all(s > 0):
        raise ValueError(f"s must be finite and > 0 (s = 0 is the OU time t = infinity), got values in "
                         f"[{float(s.min()):g}, {float(s.max()):g}]")
    return _checks.sde_or_default(sde).time_of_log_snr(torch.log(s))


def sl_scale(t, sde: VPSDE | None = None) -> torch.Tensor:
    r"""The scale :math:`c(t) = \alpha(t)/h(t) = \sqrt{s/h}` with :math:`Y_s = c(t)\,X_t`.

    Parameters
    ----------
    t : float or torch.Tensor
        OU time(s), finite and > 0.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """
    sde = _checks.sde_or_default(sde)
    t = _positive_times(t)
    return sde.alpha(t) / sde.h(t)


def ou_to_sl(x: torch.Tensor, t, sde: VPSDE | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Map OU coordinates :math:`(x, t)` to SL coordinates :math:`(y, s) = (c(t)\,x,\ \alpha^2/h)`.

    ``t`` is one time or one per row.  Returns ``(y, s)`` with ``s`` shaped like ``t``.

    Parameters
    ----------
    x : torch.Tensor
        OU states, shape (n, D).
    t : float or torch.Tensor
        One OU time, or one per row, finite and > 0.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """
    x = _checks.points(x, "x")
    s = sl_time(t, sde)
    return _checks.time_column(sl_scale(t, sde), x.shape[0], "t").to(x) * x, s


def sl_to_ou(y: torch.Tensor, s, sde: VPSDE | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Map SL coordinates :math:`(y, s)`, s > 0, to OU coordinates :math:`(x, t) = (y/c(t),\ t(s))`.

    Parameters
    ----------
    y : torch.Tensor
        SL states, shape (n, D).
    s : float or torch.Tensor
        One SL time, or one per row, finite and > 0.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``(x, t)``: the OU states shaped like ``y`` and the OU times shaped like ``s``.
    """
    y = _checks.points(y, "y")
    t = ou_time(s, sde)
    return y / _checks.time_column(sl_scale(t, sde), y.shape[0], "s").to(y), t


def _check_path(path, name) -> torch.Tensor:
    if not isinstance(path, torch.Tensor) or path.ndim != 3 or not path.is_floating_point():
        got = getattr(path, "shape", type(path))
        raise ValueError(f"{name} must be a floating tensor of shape (K, n, D), got {got}")
    return path


def ou_path_to_sl(path: torch.Tensor, times, sde: VPSDE | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Map a whole OU backward path to an SL path.

    Parameters
    ----------
    path : torch.Tensor
        States :math:`X_{t_0}, X_{t_1}, \dots` shaped (K, n, D), e.g. the trajectory a sampler of
        :mod:`diffnotes.samplers` returns with ``return_trajectory=True``.
    times : array_like
        The K times :math:`t_k > 0` of the states (a sampler's decreasing grid).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The SL times :math:`s_k = \alpha(t_k)^2/h(t_k)` (increasing when ``times`` decrease), shape (K,), and the SL
        path :math:`Y_{s_k} = c(t_k)\,X_{t_k}`, shape (K, n, D).
    """
    path = _check_path(path, "path")
    times = _positive_times(times, "times")
    if times.ndim != 1 or times.shape[0] != path.shape[0]:
        raise ValueError(f"times must be 1-D with one time per state ({path.shape[0]}), got shape {tuple(times.shape)}")
    c = sl_scale(times, sde).to(path)
    return sl_time(times, sde), c[:, None, None] * path


def sl_path_to_ou(path: torch.Tensor, s_grid, sde: VPSDE | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Map an SL path (states at SNRs :math:`s_k > 0`, shape (K, n, D)) to OU coordinates: returns (times, path).

    The inverse of :func:`ou_path_to_sl`.  The state at :math:`s = 0` (OU time :math:`\infty`) has no OU image:
    drop it first.

    Parameters
    ----------
    path : torch.Tensor
        SL states, a floating tensor of shape (K, n, D).
    s_grid : array_like or torch.Tensor
        The K SNRs :math:`s_k > 0` of the states, 1-D.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The OU times, shape (K,), and the OU path :math:`X_{t_k} = Y_{s_k}/c(t_k)`, shape (K, n, D).
    """
    path = _check_path(path, "path")
    s_grid = as_time(s_grid).to(torch.float64)
    if s_grid.ndim != 1 or s_grid.shape[0] != path.shape[0]:
        raise ValueError(f"s_grid must be 1-D with one SNR per state ({path.shape[0]}), got shape "
                         f"{tuple(s_grid.shape)}")
    times = ou_time(s_grid, sde)
    return times, path / sl_scale(times, sde).to(path)[:, None, None]


def localization_grid(s_max: float, n_steps: int, s_min: float | None = None, *, start_at_zero: bool = True):
    r"""An increasing SL grid: (optionally) 0, then ``n_steps`` geometric steps from ``s_min`` to ``s_max``.

    A geometric grid in s is a grid uniform in the OU log-SNR (:func:`diffnotes.samplers.time_grid` with
    ``spacing="logsnr"``).  With ``start_at_zero`` the grid is :math:`0 = s_0 < s_1 = s_{\min} < \dots < s_{\max}`
    (``n_steps + 1`` points: the first step is from 0 to ``s_min``); otherwise it starts at ``s_min``.
    ``s_min`` defaults to :math:`s_{\max}\cdot 10^{-6}`.

    Parameters
    ----------
    s_max : float
        The last SNR, positive and finite.
    n_steps : int
        Number of steps, a positive integer.
    s_min : float, optional
        The first positive SNR, :math:`0 < s_{\min} < s_{\max}` (default :math:`s_{\max}\cdot 10^{-6}`).
    start_at_zero : bool
        Start the grid at s = 0 (default True).

    Returns
    -------
    torch.Tensor
        The increasing grid, float64, ``n_steps + 1`` points.
    """
    s_max = float(s_max)
    if not (math.isfinite(s_max) and s_max > 0):
        raise ValueError(f"s_max must be a positive finite number, got {s_max}")
    s_min = s_max * 1e-6 if s_min is None else float(s_min)
    if not 0 < s_min < s_max:
        raise ValueError(f"s_min must satisfy 0 < s_min < s_max = {s_max:g}, got {s_min:g}")
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    n_geo = int(n_steps) if start_at_zero else int(n_steps) + 1
    grid = torch.exp(torch.linspace(math.log(s_min), math.log(s_max), n_geo, dtype=torch.float64))
    grid[0], grid[-1] = s_min, s_max
    if start_at_zero:
        grid = torch.cat([torch.zeros(1, dtype=torch.float64), grid])
    return grid


# -- posterior means -------------------------------------------------------------------------------------------
def posterior_mean_from_score(score: Callable, sde: VPSDE | None = None, prior_mean=None) -> PosteriorMean:
    r"""Turn an OU score function into the SL posterior mean, through the time change and Tweedie's formula.

    .. math::

        m_s(y) = \frac{x_t + h(t)\,\nabla\log p_t(x_t)}{\alpha(t)},\qquad t = t(s),\quad
        x_t = \frac{h(t)}{\alpha(t)}\,y,

    valid for every :math:`s \ge s(T)` (the score is only defined on :math:`(0, T]`).  At :math:`s = 0` the channel
    carries no information and :math:`m_0 = \mathbb E[x]`: give ``prior_mean`` (shape (D,)) to allow rows with
    s = 0.  The returned ``m(y, s)`` takes ``s`` as a scalar or one SNR per row.

    Parameters
    ----------
    score : callable
        The OU score ``score(x, t)`` of the data law under ``sde``.
    sde : VPSDE, optional
        The forward process of ``score`` (default :class:`~diffnotes.sde.ConstantVP`).
    prior_mean : array_like, optional
        The data mean :math:`\mathbb E[x]`, shape (D,), used at s = 0 (rows with s = 0 are refused without it).

    Returns
    -------
    callable
        ``m(y, s)``: the posterior mean for states y (n, D) at SNRs s >= 0, with :math:`s \ge s(T)` where s > 0.
    """
    if not callable(score):
        raise TypeError("score must be a callable score(x, t)")
    sde = _checks.sde_or_default(sde)
    if prior_mean is not None:
        prior_mean = torch.as_tensor(prior_mean, dtype=torch.float64)
        if prior_mean.ndim != 1:
            raise ValueError(f"prior_mean must be a vector (D,), got shape {tuple(prior_mean.shape)}")

    def posterior_mean(y: torch.Tensor, s) -> torch.Tensor:
        y = _checks.points(y, "y")
        n = y.shape[0]
        s = as_time(s).to(torch.float64)
        s = s.expand(n) if s.ndim == 0 else s
        if s.shape != (n,):
            raise ValueError(f"s must be a scalar or have one entry per row ({n}), got shape {tuple(s.shape)}")
        if not torch.all(torch.isfinite(s)) or torch.any(s < 0):
            raise ValueError("s must be finite and >= 0")
        zero = s == 0
        out = torch.empty_like(y)
        if torch.any(zero):
            if prior_mean is None:
                raise ValueError("m_s at s = 0 is the prior mean E[x]: pass prior_mean to allow s = 0")
            if prior_mean.shape[0] != y.shape[1]:
                raise ValueError(f"prior_mean has {prior_mean.shape[0]} entries, y has D = {y.shape[1]}")
            out[zero] = prior_mean.to(y)
        pos = ~zero
        if torch.any(pos):
            t = ou_time(s[pos], sde)
            if torch.any(t > sde.T * (1 + 1e-12)):
                raise ValueError(f"s = {float(s[pos].min()):g} is below s(T) = {float(sl_time(sde.T, sde)):g}: the "
                                 "score is not defined beyond the horizon T; use a longer horizon")
            a, h = sde.alpha(t).to(y)[:, None], sde.h(t).to(y)[:, None]
            x_t = h / a * y[pos]
            sc = score(x_t, t.to(y))
            if not isinstance(sc, torch.Tensor) or sc.shape != x_t.shape:
                raise ValueError(f"score(x, t) must return a tensor shaped like x {tuple(x_t.shape)}")
            out[pos] = (x_t + h * sc) / a
        return out

    return posterior_mean


def mixture_posterior_mean(target: GaussianMixture) -> PosteriorMean:
    r"""The exact SL posterior mean :math:`m_s(y) = \mathbb E[x \mid s x + \sqrt s g = y]` of a Gaussian mixture.

    Computed from the mixture's exact score by :func:`posterior_mean_from_score`, on a copy of the mixture whose
    forward process is :class:`~diffnotes.sde.ConstantVP` with horizon 700 (:math:`s(t)` depends only on the SNR,
    not on the schedule, so any schedule gives the same :math:`m_s`; the long horizon allows
    :math:`s \ge 10^{-304}`), and :math:`m_0 = \mathbb E[x]`.  In closed form it is
    :math:`\sum_k w_k(y)\,[\mu_k + \Sigma_k (s\Sigma_k + I)^{-1}(y - s\mu_k)]` with
    :math:`w_k \propto \pi_k\,\mathsf N(y; s\mu_k, s^2\Sigma_k + sI)`.

    Parameters
    ----------
    target : diffnotes.targets.GaussianMixture
        The data law.

    Returns
    -------
    callable
        ``m(y, s)`` as :func:`posterior_mean_from_score` returns it, defined at s = 0 and at every s >= 1e-304.
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a GaussianMixture, got {type(target).__name__}")
    long = GaussianMixture(target.weights, target.means, target.covs, ConstantVP(T=_LONG_HORIZON), target.labels)
    return posterior_mean_from_score(long.score, long.sde, prior_mean=target.mean())


# -- the sampler -----------------------------------------------------------------------------------------------
def _check_grid(s_grid) -> torch.Tensor:
    s_grid = as_time(s_grid).to(torch.float64)
    if s_grid.ndim != 1 or s_grid.numel() < 2:
        raise ValueError(f"s_grid must be a 1-D grid of at least 2 SNRs, got shape {tuple(s_grid.shape)}")
    if not torch.all(torch.isfinite(s_grid)):
        raise ValueError("s_grid must be finite (stop at a large s_max: Y_s/s -> x)")
    if s_grid[0] < 0:
        raise ValueError(f"s_grid must start at s >= 0, got {float(s_grid[0]):g}")
    if not torch.all(s_grid[1:] > s_grid[:-1]):
        raise ValueError("s_grid must be strictly increasing (SL runs from s = 0 towards s = infinity)")
    return s_grid


def stochastic_localization(posterior_mean: PosteriorMean, y, s_grid, *, generator: torch.Generator | None = None,
                            noise: Callable | None = None, return_trajectory: bool = False,
                            final_denoise: bool = False, method: str = "euler"):
    r"""Simulate stochastic localization on an increasing grid of SNRs, by Euler or Heun steps.

    The Euler scheme (``method="euler"``, default) is

    .. math::

        Y_{k+1} = Y_k + \Delta_k\,m_{s_k}(Y_k) + \sqrt{\Delta_k}\;\xi_k,\qquad \Delta_k = s_{k+1} - s_k,\quad
        \xi_k \sim \mathsf N(0, I),

    an approximation of :math:`\mathrm dY = m_s(Y)\,\mathrm ds + \mathrm dB_s`
    :cite:p:`elalaoui2022sampling,montanari2023sampling`.  On the grid :math:`s_k = \alpha(t_k)^2/h(t_k)` and with
    the same :math:`\xi_k`, it is exactly DDPM's ancestral sampler mapped by :math:`Y = c(t)X` (module docstring).
    Its weak error is of first order in the step.

    ``method="heun"`` is Heun's predictor-corrector with the same Gaussian increment in both stages,

    .. math::

        \bar Y = Y_k + \Delta_k\,m_{s_k}(Y_k) + \sqrt{\Delta_k}\,\xi_k,\qquad
        Y_{k+1} = Y_k + \tfrac12\Delta_k\big(m_{s_k}(Y_k) + m_{s_{k+1}}(\bar Y)\big) + \sqrt{\Delta_k}\,\xi_k,

    two posterior-mean calls a step; for additive noise, as here, its weak order is two (checked on Gaussian data in
    the tests).  Not in the review: a standard higher-order SDE scheme, useful where the drift is stiff early on the
    path (the spin models of :mod:`diffnotes.spins`).

    Parameters
    ----------
    posterior_mean : callable
        ``m(y, s)`` with ``y`` shaped (n, D) and ``s`` a tensor of one SNR per row; returns a tensor shaped like
        ``y`` (e.g. :func:`mixture_posterior_mean`, or the exact tilted mean of a spin model).
    y : torch.Tensor or tuple
        The start :math:`Y_{s_0}`, shape (n, D); or a shape (n, D), which starts at :math:`Y_0 = 0` and requires
        ``s_grid[0] == 0``.
    s_grid : array_like
        Strictly increasing SNRs :math:`s_0 \ge 0` up to :math:`s_{\max}` (see :func:`localization_grid`).
    generator : torch.Generator, optional
        Source of the Gaussian increments.
    noise : callable, optional
        ``noise(like)`` replaces the Gaussian draw :math:`\xi_k` (one call a step, in order), for common random
        numbers, as in :mod:`diffnotes.samplers`.
    return_trajectory : bool
        Also return the path, shape (K, n, D) with K = len(s_grid) (K + 1 with ``final_denoise``).
    final_denoise : bool
        Return :math:`m_{s_{\max}}(Y_{s_{\max}})`, the posterior-mean estimate of x, instead of the state.
        (The plain estimate :math:`Y_{s_{\max}}/s_{\max}` has law :math:`x + g/\sqrt{s_{\max}}` for the exact
        process.)
    method : str
        ``"euler"`` (default) or ``"heun"``.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The final state (or estimate), and with ``return_trajectory`` the path.
    """
    if not callable(posterior_mean):
        raise TypeError("posterior_mean must be a callable m(y, s)")
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    s_grid = _check_grid(s_grid)
    if isinstance(y, torch.Tensor):
        y = _checks.points(y, "the start y").clone()
        if s_grid[0] == 0 and torch.any(y != 0):
            raise ValueError("at s = 0 the localization process starts at Y_0 = 0; pass a shape (n, D) or zeros")
    else:
        shape = tuple(int(v) for v in y)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"a start shape must be (n, D) with n, D >= 1, got {y!r}")
        if s_grid[0] != 0:
            raise ValueError("a start given as a shape means Y_0 = 0, which needs s_grid[0] == 0; pass the state "
                             "Y_{s_0} as a tensor to start later")
        y = torch.zeros(shape, dtype=torch.float64)
    n = y.shape[0]
    loop = _Loop(y, generator, noise, return_trajectory, what="stochastic localization")  # the samplers' loop

    def m(state, s):
        out = posterior_mean(state, torch.full((n,), s, dtype=state.dtype))
        if not isinstance(out, torch.Tensor) or out.shape != state.shape:
            raise ValueError(f"posterior_mean(y, s) must return a tensor shaped like y {tuple(state.shape)}, got "
                             f"{getattr(out, 'shape', type(out))}")
        return out

    with torch.no_grad():
        for s, s_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist(), strict=True):
            ds = s_next - s
            y = loop.x
            xi = loop.draw(y)
            drift = m(y, s)
            if method == "heun":
                drift = 0.5 * (drift + m(y + ds * drift + math.sqrt(ds) * xi, s_next))
            loop.record(y + ds * drift + math.sqrt(ds) * xi)
        if final_denoise:
            loop.record(m(loop.x, float(s_grid[-1])))
    return loop.result("the steps are too large")
