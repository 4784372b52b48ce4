r"""Score-matching objectives: explicit, denoising, sliced and conditional (label-dropout) score matching.

Section 4.1 of the review (book chapter *Learning the score*) learns the score by minimising the weighted quadratic
objective

.. math::

    \int_{t_0}^T w(t)\,\mathbb E_{x_t\sim P_t}\big\|s(x_t, t) - \nabla\log p_t(x_t)\big\|_2^2\,\mathrm dt,

which cannot be computed because the score is unknown, and replaces it by denoising score matching, equal to it up to
a constant that does not depend on :math:`s` :cite:p:`vincent2011connection`:

.. math::

    \int_{t_0}^T w(t)\,\mathbb E_{x_0}\mathbb E_{x_t\mid x_0}\Big\|s(x_t, t) + \frac{x_t - \alpha(t) x_0}{h(t)}
    \Big\|_2^2\,\mathrm dt .

Every loss here is the Monte Carlo estimate of such an objective *per unit time*, i.e. divided by :math:`T - t_0`:
one time :math:`t_i\sim\mathsf U[t_0, T]` per data point and :math:`x_t = \alpha(t)x_0 + \sqrt{h(t)}\,\varepsilon`
from the forward kernel, averaged over the batch.  Passing the times ``t`` and the noise ``eps`` explicitly evaluates
several losses on the *same* draws (common random numbers), which is how the book shows that DSM and ESM differ by a
constant (inventory claim T3); ``reduction="none"`` returns the per-sample terms for error bars.

All losses return a scalar tensor differentiable with respect to the parameters of the model.  A *model* is any score
function ``score(x, t)`` (``score(x, y, t)`` for :func:`conditional_dsm_loss`), for instance a network wrapped by
:func:`diffnotes.networks.as_score`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks
from ._checks import positive_int, sample, sde_or_default
from .sde import VPSDE, as_time

__all__ = [
    "sample_times",
    "esm_loss",
    "dsm_loss",
    "sliced_score_matching_loss",
    "drop_labels",
    "conditional_dsm_loss",
]


# -- validation and random draws ------------------------------------------------------------------------------
def _interval(sde: VPSDE, t0, T) -> tuple[float, float]:
    T = sde.T if T is None else float(T)
    t0 = float(t0)
    if not (math.isfinite(T) and 0 < T <= sde.T * (1 + 1e-12)):
        raise ValueError(f"T must lie in (0, sde.T] = (0, {sde.T:g}], got T = {T:g}")
    if not (math.isfinite(t0) and 0 < t0 < T):
        raise ValueError(f"t0 outside (0, T): the early-stopping time must satisfy 0 < t0 < T = {T:g}, got t0 = {t0:g}")
    return t0, T


def _draw(kind: str, shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform or Gaussian draws made on the generator's device, then moved to ``like``'s (reproducible anywhere)."""
    device = generator.device if generator is not None else like.device
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(tuple(shape), generator=generator, dtype=like.dtype, device=device).to(like.device)


def sample_times(n: int, t0: float = 1e-3, T: float | None = None, *, sde: VPSDE | None = None,
                 generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""Draw n times uniformly on :math:`[t_0, T]`, the Monte Carlo time of the early-stopped loss (review §4.1).

    Parameters
    ----------
    n : int
        Number of times.
    t0 : float
        Early-stopping time, :math:`0 < t_0 < T`.
    T : float, optional
        Horizon, at most ``sde.T`` (default ``sde.T``).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : torch.Generator, optional
        Source of randomness.
    dtype, device
        Of the result.
    """
    generator = _checks.generator(generator)
    t0, T = _interval(sde_or_default(sde), t0, T)
    n = positive_int(n, "n", floats=True)
    like = torch.empty(0, dtype=dtype, device=device)
    return t0 + (T - t0) * _draw("uniform", (int(n),), generator, like)


def _times_and_noise(x0, sde, t0, T, generator, t, eps):
    """The times (n,) and noise (n, D) of one Monte Carlo draw: given ones checked, missing ones drawn."""
    n = x0.shape[0]
    if t is None:
        t = sample_times(n, t0, T, sde=sde, generator=generator, dtype=x0.dtype, device=x0.device)
    else:
        t = sde.check_time(as_time(t, like=x0))
        t = t.to(dtype=x0.dtype, device=x0.device)
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t must be one time or one per row of x0 (shape ({n},)), got shape {tuple(t.shape)}")
    if eps is None:
        eps = _draw("normal", x0.shape, generator, x0)
    else:
        if not isinstance(eps, torch.Tensor) or eps.shape != x0.shape:
            raise ValueError(f"eps must be a tensor shaped like x0 {tuple(x0.shape)}, got "
                             f"{getattr(eps, 'shape', type(eps))}")
        eps = eps.to(dtype=x0.dtype, device=x0.device)
    return t, eps


def _weight(weight, sde: VPSDE, t: torch.Tensor) -> torch.Tensor:
    if isinstance(weight, str):
        if weight == "h":
            return sde.h(t)
        if weight == "none":
            return torch.ones_like(t)
        raise ValueError(f"weight must be 'h', 'none' or a callable w(t), got {weight!r}")
    if not callable(weight):
        raise TypeError(f"weight must be 'h', 'none' or a callable w(t), got {type(weight).__name__}")
    w = torch.as_tensor(weight(t), dtype=t.dtype, device=t.device)
    w = w.expand(t.shape) if w.ndim == 0 else w.reshape(-1)
    if w.shape != t.shape:
        raise ValueError(f"weight(t) must return a number or one weight per time {tuple(t.shape)}, "
                         f"got {tuple(w.shape)}")
    if not torch.all(torch.isfinite(w)) or torch.any(w < 0):
        raise ValueError("weight(t) must be finite and non-negative")
    return w


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _call(model, *args) -> torch.Tensor:
    x = args[0]
    if not callable(model):
        raise TypeError(f"model must be a callable score function, got {type(model).__name__}")
    out = model(*args)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"the model must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{getattr(out, 'shape', type(out))}")
    return out


# -- explicit and denoising score matching -----------------------------------------------------------------------
def esm_loss(model: Callable, score_true: Callable, x0: torch.Tensor, t0: float = 1e-3, T: float | None = None, *,
             weight="h", sde: VPSDE | None = None, generator: torch.Generator | None = None, t=None, eps=None,
             reduction: str = "mean") -> torch.Tensor:
    r"""Explicit score matching against a known score: the review's weighted quadratic objective.

    .. math::

        L_{\rm ESM}(s) = \frac{1}{T - t_0}\int_{t_0}^T w(t)\,\mathbb E_{x_t\sim P_t}
        \big\|s(x_t, t) - \nabla\log p_t(x_t)\big\|_2^2\,\mathrm dt,

    estimated with one :math:`t_i\sim\mathsf U[t_0, T]` per data point :math:`x_{0,i}` and
    :math:`x_{t,i} = \alpha(t_i)x_{0,i} + \sqrt{h(t_i)}\,\varepsilon_i`.  Computable only when the true score is known
    (the exact targets of :mod:`diffnotes.targets`); with ``weight="none"`` it is the mean squared score error used
    to measure a learned score.  Review Section 4.1; book chapter *Learning the score*;
    :cite:p:`hyvarinen2005estimation,vincent2011connection`.

    Parameters
    ----------
    model : callable
        The score function ``s(x, t)`` being assessed.
    score_true : callable
        The true score ``score_true(x, t)`` (evaluated without gradient).
    x0 : torch.Tensor
        Data, shape (n, D).
    t0 : float
        Early-stopping time, :math:`0 < t_0 < T`.
    T : float, optional
        Horizon (default ``sde.T``).
    weight : {"h", "none"} or callable
        :math:`w(t)`: ``"h"`` is :math:`h(t)` (default), ``"none"`` is 1, a callable maps an (n,) tensor of times
        to non-negative weights.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : torch.Generator, optional
        Source of the times and noise.
    t : float or torch.Tensor, optional
        Given times (one, or one per row), replacing the uniform draws.
    eps : torch.Tensor, optional
        Given noise shaped like x0, replacing the Gaussian draws.
    reduction : {"mean", "none"}
        Return the batch mean (a scalar) or the per-sample terms (n,).

    Returns
    -------
    torch.Tensor
        The loss.
    """
    generator = _checks.generator(generator)
    sde = sde_or_default(sde)
    x0 = sample(x0)
    t0, T = _interval(sde, t0, T)
    t, eps = _times_and_noise(x0, sde, t0, T, generator, t, eps)
    xt, _ = sde.perturb(x0, t, eps)
    with torch.no_grad():
        target = _call(score_true, xt, t).to(xt)
    s = _call(model, xt, t)
    per_sample = _weight(weight, sde, t) * ((s - target) ** 2).sum(dim=1)
    return _reduce(per_sample, reduction)


def dsm_loss(model: Callable, x0: torch.Tensor, t0: float = 1e-3, T: float | None = None, *, weight="h",
             sde: VPSDE | None = None, generator: torch.Generator | None = None, t=None, eps=None,
             reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score matching, the implementable early-stopped objective of the review.

    .. math::

        L_{\rm DSM}(s) = \frac{1}{T - t_0}\int_{t_0}^T w(t)\,\mathbb E_{x_0}\mathbb E_{\varepsilon}
        \Big\|s(x_t, t) + \frac{\varepsilon}{\sqrt{h(t)}}\Big\|_2^2\,\mathrm dt,\qquad
        x_t = \alpha(t)x_0 + \sqrt{h(t)}\,\varepsilon,

    whose target :math:`\nabla_{x_t}\log\phi_t(x_t\mid x_0) = -(x_t - \alpha x_0)/h = -\varepsilon/\sqrt h` is the
    score of the forward kernel.  :math:`L_{\rm DSM}(s) = L_{\rm ESM}(s) + C` with C independent of s
    :cite:p:`vincent2011connection`, so both have the same minimiser, the true score.  With the default
    :math:`w = h` the integrand is :math:`\|\sqrt h\,s + \varepsilon\|^2 = \|\varepsilon_\theta - \varepsilon\|^2`
    for :math:`s = -\varepsilon_\theta/\sqrt h`: the noise-prediction loss of DDPM :cite:p:`ho2020denoising`
    (summed over coordinates).  The early-stopping time :math:`t_0 > 0` keeps the objective finite for data on
    low-dimensional structures, whose score blows up like :math:`1/h(t)` as :math:`t\to0` :cite:p:`chen2023score`.
    Review Section 4.1; book chapter *Learning the score*.

    Parameters
    ----------
    model : callable
        The score function ``s(x, t)`` being fitted.
    x0 : torch.Tensor
        Data, shape (n, D).
    t0, T, weight, sde, generator, t, eps, reduction
        As in :func:`esm_loss`; passing the same ``t`` and ``eps`` to both gives common random numbers.

    Returns
    -------
    torch.Tensor
        The loss (a scalar, or (n,) with ``reduction="none"``).
    """
    generator = _checks.generator(generator)
    sde = sde_or_default(sde)
    x0 = sample(x0)
    t0, T = _interval(sde, t0, T)
    t, eps = _times_and_noise(x0, sde, t0, T, generator, t, eps)
    h = sde.h(t[:, None])
    xt, _ = sde.perturb(x0, t, eps)
    s = _call(model, xt, t)
    per_sample = _weight(weight, sde, t) * ((s + eps / torch.sqrt(h)) ** 2).sum(dim=1)
    return _reduce(per_sample, reduction)


# -- sliced score matching ------------------------------------------------------------------------------------
def sliced_score_matching_loss(model: Callable, x: torch.Tensor, t, *, n_projections: int = 1,
                               projection: str = "gaussian", variance_reduction: bool = True,
                               generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""Sliced score matching of Song et al. for the law of the samples ``x`` (supporting material).

    Hyvärinen's score matching :cite:p:`hyvarinen2005estimation` writes
    :math:`\tfrac12\mathbb E\|s - \nabla\log p\|^2 = \mathbb E[\operatorname{tr}\nabla_x s + \tfrac12\|s\|^2] + C`;
    sliced score matching :cite:p:`song2020sliced` replaces the trace by random projections
    :math:`v` with :math:`\mathbb E[vv^\top] = I`:

    .. math::

        J(s) = \mathbb E_x\mathbb E_v\Big[v^\top\nabla_x s(x, t)\,v + \tfrac12\big(v^\top s(x, t)\big)^2\Big],

    and the variance-reduced form (SSM-VR) integrates the second term exactly,
    :math:`\mathbb E_v[(v^\top s)^2] = \|s\|^2`.  So :math:`J(s) = \tfrac12\mathbb E\|s - \nabla\log p_t\|^2 + C`
    for samples :math:`x\sim P_t`.  The directional derivative is one vector-Jacobian product; rows must be processed
    independently by the model (true for MLPs).  The review (Section 4.1) uses denoising score matching; this loss is
    supporting material in the book chapter *Learning the score*.

    Parameters
    ----------
    model : callable
        The score function ``s(x, t)``.
    x : torch.Tensor
        Samples of the law whose score is matched, shape (n, D) (e.g. draws of :math:`P_t`).
    t : float or torch.Tensor
        The time argument passed to the model (one, or one per row).
    n_projections : int
        Number of projections per sample.
    projection : {"gaussian", "rademacher"}
        Law of :math:`v`.
    variance_reduction : bool
        Use the SSM-VR form.
    generator : torch.Generator, optional
        Source of the projections.
    reduction : {"mean", "none"}
        Batch mean, or the per-sample terms.
    """
    generator = _checks.generator(generator)
    x = sample(x, "x")
    if isinstance(n_projections, bool) or int(n_projections) != n_projections or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    if projection not in ("gaussian", "rademacher"):
        raise ValueError(f"projection must be 'gaussian' or 'rademacher', got {projection!r}")
    n, D = x.shape
    m = int(n_projections)
    v = _draw("normal", (m, n, D), generator, x)
    if projection == "rademacher":
        v = torch.sign(v)
    t_rows = as_time(t, like=x)
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        s = _call(model, xr, t_rows.expand(n) if t_rows.ndim == 0 else t_rows)
        per_sample = torch.zeros(n, dtype=s.dtype, device=s.device)
        for k in range(m):
            (jv,) = torch.autograd.grad((s * v[k]).sum(), xr, create_graph=True)
            per_sample = per_sample + (jv * v[k]).sum(dim=1) / m
            if not variance_reduction:
                per_sample = per_sample + 0.5 * (s * v[k]).sum(dim=1) ** 2 / m
        if variance_reduction:
            per_sample = per_sample + 0.5 * (s**2).sum(dim=1)
    return _reduce(per_sample, reduction)


# -- conditional score matching with label dropout ------------------------------------------------------------------
def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Replace each label by the null label :math:`\varnothing` independently with probability ``p_uncond``.

    This is the mask :math:`\tau\in\{\varnothing, \mathrm{id}\}` of classifier-free training, with
    :math:`P_\tau(\varnothing) = p_{\rm uncond}` (review Section 5.1; :cite:p:`ho2022classifier`).

    Parameters
    ----------
    y : torch.Tensor
        Integer labels, shape (n,).
    p_uncond : float
        Dropout probability, in [0, 1].
    null_label : int
        The index of the null label.
    generator : torch.Generator, optional
        Source of the Bernoulli draws.
    """
    generator = _checks.generator(generator)
    p = float(p_uncond)
    if not 0 <= p <= 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    like = torch.empty(0, dtype=torch.float64, device=y.device)
    drop = _draw("uniform", y.shape, generator, like) < p
    return torch.where(drop, torch.full_like(y, int(null_label)), y)


def conditional_dsm_loss(model: Callable, x0: torch.Tensor, y, t0: float = 1e-3, T: float | None = None, *,
                         p_uncond: float = 0.1, n_classes: int | None = None, null_label: int | None = None,
                         weight="h", sde: VPSDE | None = None, generator: torch.Generator | None = None, t=None,
                         eps=None, reduction: str = "mean") -> torch.Tensor:
    r"""Conditional denoising score matching with label dropout: classifier-free training.

    .. math::

        \frac{1}{T - t_0}\int_{t_0}^T w(t)\,\mathbb E_{(x_0, y)}\mathbb E_{\tau\sim P_\tau}\mathbb E_\varepsilon
        \Big\|s(x_t, \tau y, t) + \frac{\varepsilon}{\sqrt{h(t)}}\Big\|_2^2\,\mathrm dt,\qquad
        \varnothing y := \varnothing,

    where each label is replaced by the null label with probability :math:`P_\tau(\varnothing) = p_{\rm uncond}`
    (:func:`drop_labels`).  One network thus learns the conditional score :math:`\nabla\log p_t(x\mid y)` and the
    unconditional one :math:`\nabla\log p_t(x) = s(x, \varnothing, t)`.  With ``p_uncond = 0`` it is the plain
    conditional loss of the review, equal to the conditional explicit objective up to a constant.
    Review Section 5.1; book chapter *Conditional diffusion and guidance*; :cite:p:`ho2022classifier`.

    Parameters
    ----------
    model : callable
        The conditional score function ``s(x, y, t)`` (e.g. ``as_score(ConditionalScoreMLP(...), "eps", sde)``).
    x0 : torch.Tensor
        Data, shape (n, D).
    y : torch.Tensor
        Integer class labels in :math:`0..C-1`, shape (n,).
    t0, T
        The time interval, as in :func:`dsm_loss`.
    p_uncond : float
        Label-dropout probability, in [0, 1].
    n_classes : int, optional
        Number of classes C (default ``model.n_classes``).
    null_label : int, optional
        The null label (default ``model.null_label``, else C).
    weight, sde, generator, t, eps, reduction
        As in :func:`dsm_loss`.
    """
    generator = _checks.generator(generator)
    sde = sde_or_default(sde)
    x0 = sample(x0)
    t0, T = _interval(sde, t0, T)
    p = float(p_uncond)
    if not 0 <= p <= 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    if n_classes is None:
        n_classes = getattr(model, "n_classes", None)
    if n_classes is None:
        raise TypeError("the number of classes is unknown: pass n_classes (or a model with an n_classes attribute)")
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    n_classes = int(n_classes)
    if null_label is None:
        null_label = getattr(model, "null_label", n_classes)
    if 0 <= int(null_label) < n_classes:
        raise ValueError(f"the null label must not be a class id 0..{n_classes - 1}, got {null_label}")
    y = torch.as_tensor(y, device=x0.device)
    if y.is_floating_point() or y.dtype == torch.bool or y.shape != (x0.shape[0],):
        raise ValueError(f"y must hold one integer label per row of x0 (shape ({x0.shape[0]},)), got "
                         f"dtype {y.dtype} and shape {tuple(y.shape)}")
    y = y.long()
    if torch.any((y < 0) | (y >= n_classes)):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {sorted(set(y.tolist()))}")
    t, eps = _times_and_noise(x0, sde, t0, T, generator, t, eps)
    y_used = drop_labels(y, p, int(null_label), generator=generator)
    h = sde.h(t[:, None])
    xt, _ = sde.perturb(x0, t, eps)
    s = _call(model, xt, y_used, t)
    per_sample = _weight(weight, sde, t) * ((s + eps / torch.sqrt(h)) ** 2).sum(dim=1)
    return _reduce(per_sample, reduction)
